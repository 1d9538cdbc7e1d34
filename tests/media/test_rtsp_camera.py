"""RTSP cameras against GStreamer's RTSP server: Motion JPEG over RTP, interleaved on the
RTSP connection, with Basic and Digest passwords, over TLS, and the refusals a camera
installer meets (wrong password, wrong path, a codec watchkeep does not record).

GStreamer's RTSP server and RTP/JPEG payloader are an implementation independent of
watchkeep's; libjpeg (Pillow) judges the pictures that come out.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import ssl
from pathlib import Path

from camera_support import make_ca_and_server_cert, take
from PIL import Image, ImageChops

from rtsp_support import colour_bars, gst_rtsp_camera, jpeg_files, wait_until_port_free
from watchkeep.media import Frame, RtspCamera, SyntheticCamera

# Each test its own loopback address.
BARS = "127.0.61.1"
FILES = "127.0.61.2"
DIGEST = "127.0.61.3"
BASIC = "127.0.61.4"
REFUSALS = "127.0.61.5"
TLS = "127.0.61.6"
RESTART = "127.0.61.7"


async def last_error(camera: RtspCamera, within: float = 20.0) -> str:
    """Run ``camera`` until a connection has failed; why it failed."""
    await camera.start()
    task = asyncio.create_task(take(camera, 1, within))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while camera.stats.reconnects == 0 and loop.time() < deadline:
        await asyncio.sleep(0.02)
    await camera.stop()
    frames = await task
    assert frames == [], "a refused camera sent frames"
    assert camera.stats.last_error is not None, "the camera never failed"
    return camera.stats.last_error


def decoded(frame: Frame) -> Image.Image:
    image = Image.open(io.BytesIO(frame.jpeg))
    image.load()  # raises on a damaged picture
    return image


async def test_colour_bars_at_4_2_0_and_4_2_2_arrive_as_whole_pictures() -> None:
    mounts = {"/main": colour_bars(), "/hq": colour_bars(width=640, height=480, sampling="Y42B")}
    with gst_rtsp_camera(BARS, mounts) as port:
        for path, size in (("/main", (320, 240)), ("/hq", (640, 480))):
            camera = RtspCamera("bars", f"rtsp://{BARS}:{port}{path}")
            await camera.start()
            frames = await take(camera, 25, within=20)
            assert len(frames) == 25, camera.stats
            assert [f.sequence for f in frames] == list(range(25))
            assert all(decoded(f).size == size for f in frames)
            # The bars' first column is white-ish and their last, at the top, blue.
            top = decoded(frames[-1]).convert("RGB")
            assert min(top.getpixel((2, 2))) > 150  # type: ignore[arg-type]
            red, green, blue = top.getpixel((size[0] - 3, 2))  # type: ignore[misc]
            assert blue > 150 > max(red, green)
            # Stamped on arrival, in order, about 25 a second.
            stamps = [f.timestamp for f in frames]
            assert stamps == sorted(stamps)
            assert 0.5 < stamps[-1] - stamps[0] < 3
            assert camera.stats.connections == 1
            assert camera.stats.bad_parts == 0


async def test_pictures_come_out_pixel_for_pixel_as_they_went_in(tmp_path: Path) -> None:
    # watchkeep's own synthetic pictures (restart markers after every row, comments),
    # through GStreamer's payloader and back: libjpeg decodes the same pixels.
    synthetic = SyntheticCamera("source", 640, 360, 25, 20_000)
    await synthetic.start()
    originals = [synthetic.render(n, 1_700_000_000 + n / 25).jpeg for n in range(8)]
    for index, jpeg in enumerate(originals):
        (tmp_path / f"f{index}.jpg").write_bytes(jpeg)
    pixels = [Image.open(io.BytesIO(j)).convert("RGB") for j in originals]
    mounts = {"/files": jpeg_files(str(tmp_path / "f%d.jpg"), 640, 360)}
    with gst_rtsp_camera(FILES, mounts) as port:
        camera = RtspCamera("files", f"rtsp://{FILES}:{port}/files")
        await camera.start()
        frames = await take(camera, 16, within=20)
    assert len(frames) >= 16
    for frame in frames:
        image = decoded(frame).convert("RGB")
        assert any(ImageChops.difference(image, p).getbbox() is None for p in pixels)


async def test_digest_and_basic_passwords_from_the_url() -> None:
    for address, auth in ((DIGEST, "digest"), (BASIC, "basic")):
        with gst_rtsp_camera(
            address, {"/cam": colour_bars()}, user="viewer", password="p@ss:word", auth=auth
        ) as port:
            url = f"rtsp://viewer:p%40ss%3Aword@{address}:{port}/cam"
            camera = RtspCamera("door", url)
            await camera.start()
            assert len(await take(camera, 3, within=20)) == 3, (auth, camera.stats)

            wrong = RtspCamera("door", f"rtsp://viewer:nope@{address}:{port}/cam")
            assert "refused user 'viewer'" in await last_error(wrong), auth
            anonymous = RtspCamera("door", f"rtsp://{address}:{port}/cam")
            why = await last_error(anonymous)
            assert "asks for a user name and password" in why, auth
            assert "fix:" in why


async def test_a_wrong_path_and_a_codec_watchkeep_does_not_record_say_so() -> None:
    raw = (
        "videotestsrc is-live=true ! video/x-raw,format=I420,width=64,height=48,"
        "framerate=5/1 ! rtpvrawpay name=pay0 pt=96"
    )
    with gst_rtsp_camera(REFUSALS, {"/cam": colour_bars(), "/raw": raw}) as port:
        missing = RtspCamera("gate", f"rtsp://{REFUSALS}:{port}/no-such-stream")
        why = await last_error(missing)
        assert "RTSP 404" in why
        assert "path" in why

        not_mjpeg = RtspCamera("gate", f"rtsp://{REFUSALS}:{port}/raw")
        why = await last_error(not_mjpeg)
        assert "offers RAW" in why
        assert "Motion JPEG" in why
        assert "fix:" in why

    # Nothing listens there any more.
    gone = RtspCamera("gate", f"rtsp://{REFUSALS}:{port}/cam")
    assert "ConnectionRefusedError" in await last_error(gone)


async def test_rtsps_is_verified_against_the_given_trust(tmp_path: Path) -> None:
    ca, cert, key = make_ca_and_server_cert(tmp_path, TLS)
    with gst_rtsp_camera(
        TLS, {"/cam": colour_bars()}, user="u", password="p", tls=(cert, key)
    ) as port:
        url = f"rtsps://u:p@{TLS}:{port}/cam"
        trusting = RtspCamera("lab", url, ssl.create_default_context(cafile=str(ca)))
        await trusting.start()
        assert len(await take(trusting, 3, within=20)) == 3, trusting.stats

        untrusting = RtspCamera("lab", url, backoff_initial=0.05)
        assert "certificate verification failed" in await last_error(untrusting)
    assert RtspCamera("lab", "rtsps://cam.example/x")._port == 322
    assert RtspCamera("lab", "rtsp://cam.example/x")._port == 554


async def test_a_camera_that_restarts_is_pulled_again() -> None:
    with gst_rtsp_camera(RESTART, {"/cam": colour_bars()}) as port:
        camera = RtspCamera(
            "yard", f"rtsp://{RESTART}:{port}/cam", read_timeout=2, backoff_initial=0.1
        )
        await camera.start()
        got: list[Frame] = []
        wanted = 5
        enough = asyncio.Event()

        async def consume() -> None:
            async for frame in camera:
                got.append(frame)
                if len(got) >= wanted:
                    enough.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(enough.wait(), 20)
    # The server is gone (killed); it comes back on the same port.
    wait_until_port_free(RESTART, port)
    before = len(got)
    wanted = before + 5
    enough.clear()
    with gst_rtsp_camera(RESTART, {"/cam": colour_bars()}, port=port):
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(enough.wait(), 20)
        await camera.stop()
        await task
    assert len(got) >= before + 5, camera.stats
    assert camera.stats.reconnects >= 1
    assert camera.stats.connections == 2
    sequences = [f.sequence for f in got]
    assert sequences == list(range(len(got)))  # numbered on, across the reconnection


def test_urls_are_checked_when_the_camera_is_made() -> None:
    import pytest

    for bad, why in (
        ("http://cam/x", "rtsp:// or rtsps://"),
        ("rtsp:///x", "no host"),
        ("rtsp://cam:99999/x", "bad port"),
    ):
        with pytest.raises(ValueError, match=why):
            RtspCamera("cam", bad)
    camera = RtspCamera("cam", "rtsp://admin:secret@cam.example:8554/live?profile=1")
    assert camera.request_url == "rtsp://cam.example:8554/live?profile=1"
    assert camera.safe_url == "rtsp://admin:***@cam.example:8554/live?profile=1"
