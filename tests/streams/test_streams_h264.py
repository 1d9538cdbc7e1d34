"""An H.264 camera on an encrypted site: added with the CLI, recorded by its recording
server as the camera sends it, played back over HLS by FFmpeg (its own TLS and HLS client,
verifying the site CA, the token in a header) and refused without the CA or the token.

Given a site of its own: a management server, rs1 and a mobile server, encrypted through
the CLI, and GStreamer's RTSP server as the camera (x264).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageStat
from playwright.sync_api import Page
from stream_support import DEADLINE, add_camera, add_user, build_site, cli_ok, request

from browser_support import chromium, nss_home
from rtsp_support import gst_rtsp_camera, h264_bars, h265_bars
from watchkeep.media import read_video_file
from watchkeep.site import ServerRole
from watchkeep.testing import LocalSite, eventually

pytestmark = pytest.mark.slow

CAMERA_ADDRESS = "127.0.63.1"


@pytest.fixture(scope="module")
def rtsp_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    log = tmp_path_factory.mktemp("rtsp") / "gst.log"
    mounts = {"/h264": h264_bars(), "/h265": h265_bars()}
    with gst_rtsp_camera(CAMERA_ADDRESS, mounts, log=log) as port:
        yield port


@pytest.fixture(scope="module")
def site(site_factory: Callable[[str], LocalSite], rtsp_port: int) -> LocalSite:
    site = site_factory("h264")
    build_site(
        site,
        [
            ("ms", ServerRole.MANAGEMENT),
            ("rs1", ServerRole.RECORDING),
            ("mobile1", ServerRole.MOBILE),
        ],
    )
    site.encrypt("rs1", "mobile1", "ms")
    url = f"rtsp://{CAMERA_ADDRESS}:{rtsp_port}/h264"
    cli_ok(site, "camera", "add", "door", "--recording-server", "rs1", "--rtsp-url", url)
    cli_ok(
        site,
        "camera",
        "add",
        "yard",
        "--recording-server",
        "rs1",
        "--rtsp-url",
        url.replace("h264", "h265"),
    )
    add_camera(site, "lobby", "rs1")  # Motion JPEG, for export
    return site


def iso(moment: float) -> str:
    return dt.datetime.fromtimestamp(moment, dt.UTC).isoformat().replace("+00:00", "Z")


def recorded_span(site: LocalSite, seconds: float) -> tuple[float, float]:
    """Wait until rs1 has ``seconds`` of door flushed; that stretch (UTC seconds)."""
    directory = site.servers["rs1"].directory / "data" / "recordings" / "door"

    def long_enough() -> tuple[float, float]:
        files = sorted(directory.glob("*.mp4"))
        assert files, "nothing recorded yet"
        fragments = read_video_file(str(files[0])).fragments
        assert fragments, "no picture recorded yet"
        first, last = (
            fragments[0].presentation_time / 90_000,
            fragments[-1].presentation_time / 90_000,
        )
        assert last - first >= seconds + 1, f"{last - first:.1f} s recorded"
        return first, last

    return eventually(long_enough, what=f"{seconds} s of door recorded")


def ffmpeg(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ffmpeg", "-v", "error", "-y", *args], capture_output=True, text=True, timeout=120
    )


def test_a_recording_plays_over_hls_with_the_site_ca_and_a_token_only(
    site: LocalSite, tmp_path: Path
) -> None:
    first, _ = recorded_span(site, 3)
    start, end = first + 0.5, first + 2.5
    rs1 = site.servers["rs1"]
    path = f"/api/v1/cameras/door/playback.m3u8?from={iso(start)}&to={iso(end)}"
    url = f"https://{rs1.address}:{rs1.ports['data']}{path}"
    token = site.stream_token("door")
    ca = site.home.ca_cert
    out = tmp_path / "clip.mp4"

    # When FFmpeg reads the playlist, trusting the site CA and sending the token
    done = ffmpeg("-tls_verify", "1", "-ca_file", str(ca), "-headers", f"Authorization: Bearer {token}\r\n",
                  "-i", url, "-c", "copy", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    # Then every picture of the keyframe intervals around the range decodes
    with request(rs1, "data", path, ca=ca, token=token) as response:
        playlist = response.read().decode()
        assert response.status == 200, playlist
    assert "#EXT-X-MAP" in playlist
    assert playlist.rstrip().endswith("#EXT-X-ENDLIST")
    ranges = [
        line.split(":", 1)[1]
        for line in playlist.splitlines()
        if line.startswith("#EXT-X-BYTERANGE")
    ]
    assert len(ranges) == 3  # a keyframe a second: the intervals of 0.5-1, 1-2 and 2-2.5 s
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-show_entries", "stream=codec_name,width,height,nb_read_frames",
         "-of", "csv=p=0", str(out)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert probe.stdout.strip() == "h264,320,240,75"
    assert ffmpeg("-i", str(out), "-f", "null", "-").stderr == ""

    # And without the site CA, or without the token, FFmpeg gets nothing
    untrusted = ffmpeg("-tls_verify", "1", "-headers", f"Authorization: Bearer {token}\r\n", "-i", url,
                       "-c", "copy", str(tmp_path / "no-ca.mp4"))  # fmt: skip
    assert untrusted.returncode != 0
    assert not (tmp_path / "no-ca.mp4").exists() or (tmp_path / "no-ca.mp4").stat().st_size == 0
    anonymous = ffmpeg(
        "-tls_verify",
        "1",
        "-ca_file",
        str(ca),
        "-i",
        url,
        "-c",
        "copy",
        str(tmp_path / "no-token.mp4"),
    )
    assert anonymous.returncode != 0
    assert "401" in anonymous.stderr


def test_an_h264_camera_is_not_served_as_jpeg(site: LocalSite) -> None:
    recorded_span(site, 0)
    rs1 = site.servers["rs1"]
    token = site.stream_token("door")
    for path in ("/api/v1/cameras/door/live.mjpeg", "/api/v1/cameras/door/snapshot.jpg"):
        with request(rs1, "data", path, ca=site.home.ca_cert, token=token) as response:
            body = response.read()
            assert response.status == 415, body
            assert b"H.264" in body
    now = time.time()
    with request(rs1, "data", f"/api/v1/cameras/door/playback.mjpeg?from={now - 60}&to={now}",
                 ca=site.home.ca_cert, token=token) as response:  # fmt: skip
        assert response.status == 415


def test_the_mobile_server_relays_the_playlist_and_its_byte_ranges(
    site: LocalSite, tmp_path: Path
) -> None:
    first, _ = recorded_span(site, 3)
    mobile = site.servers["mobile1"]
    path = f"/api/v1/cameras/door/playback.m3u8?from={iso(first + 0.2)}&to={iso(first + 1.5)}"
    url = f"https://{mobile.address}:{mobile.ports['https']}{path}"
    token = site.login_token(via="mobile1")
    out = tmp_path / "relayed.mp4"
    done = ffmpeg("-tls_verify", "1", "-ca_file", str(site.home.ca_cert),
                  "-headers", f"Authorization: Bearer {token}\r\n", "-i", url, "-c", "copy", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-show_entries", "stream=nb_read_frames", "-of", "csv=p=0",
         str(out)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert probe.stdout.strip() == "50"  # the keyframe intervals of 0.2-1 and 1-1.5 s


def probe(path: Path) -> dict[str, Any]:
    """FFmpeg's view of an MP4 file: its stream, every picture decoded, and its boxes' order."""
    ran = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-show_entries",
         "stream=codec_name,width,height,nb_read_frames:format=format_name", "-of", "json", str(path)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    found: dict[str, Any] = json.loads(ran.stdout)["streams"][0]
    data = path.read_bytes()
    found["moov_first"] = 0 < data.find(b"moov") < data.find(b"mdat")
    # Decoded on the file's own time base: pictures a few milliseconds apart (a Motion JPEG
    # camera's times are when its pictures came, bunched when the machine is loaded) share
    # a tick of the one FFmpeg guesses from the frame rate, and its null muxer says so.
    found["errors"] = ffmpeg("-i", str(path), "-enc_time_base", "-1", "-f", "null", "-").stderr
    found["first_picture"] = subprocess.run(
        ["ffprobe", "-v", "error", "-read_intervals", "%+#1", "-show_entries", "frame=key_frame",
         "-of", "csv=p=0", str(path)],
        capture_output=True, text=True, check=True,
    ).stdout.split()[0]  # fmt: skip
    return found


def test_export_writes_a_standard_mp4_from_the_keyframe_before_the_start(
    site: LocalSite, tmp_path: Path
) -> None:
    first, _ = recorded_span(site, 3)
    out = tmp_path / "door.mp4"
    # When the administrator exports from the middle of a second (a keyframe a second) to
    # between two pictures
    report = json.loads(
        cli_ok(
            site,
            "export",
            "door",
            "--from",
            iso(first + 1.5),
            "--to",
            iso(first + 2.98),
            "--out",
            str(out),
            "--json",
        )
    )
    # Then the file starts at the keyframe at 1 s and ends at 2.96 s, every picture decodes
    assert report["codec"] == "H264"
    assert report["encrypted"] is True
    assert report["frames"] == 50
    assert abs(report["start"] - (first + 1.0)) < 0.002
    found = probe(out)
    assert (found["codec_name"], found["width"], found["height"]) == ("h264", 320, 240)
    assert int(found["nb_read_frames"]) == 50
    assert found["moov_first"]
    assert found["errors"] == ""
    assert found["first_picture"] == "1"

    # And `watchkeep playback --out FILE.mp4` writes the same
    again = tmp_path / "playback.mp4"
    cli_ok(
        site,
        "playback",
        "door",
        "--from",
        iso(first + 1.5),
        "--to",
        iso(first + 2.98),
        "--out",
        str(again),
    )
    assert again.read_bytes() == out.read_bytes()


def test_export_of_a_motion_jpeg_camera(site: LocalSite, tmp_path: Path) -> None:
    # Two seconds the camera (added with the site) has recorded, or is about to.
    directory = site.servers["rs1"].directory / "data" / "recordings" / "lobby"
    files = eventually(lambda: sorted(directory.glob("*.wkseg")) or None, what="lobby recorded")
    began = max(time.time() - 3, int(files[0].name.split(".")[0].split("-")[0]) / 1e6)
    out = tmp_path / "lobby.mp4"

    def exported() -> dict[str, Any]:
        ran = site.cli(
            "export",
            "lobby",
            "--from",
            iso(began),
            "--to",
            iso(began + 2),
            "--out",
            str(out),
            "--json",
        )
        assert ran.returncode == 0, ran.stderr
        report: dict[str, Any] = json.loads(ran.stdout)
        assert report["frames"] >= 15, report
        return report

    report = eventually(exported, what="two seconds of lobby exported")
    found = probe(out)
    assert found["codec_name"] == "mjpeg"
    assert int(found["nb_read_frames"]) == report["frames"]
    assert found["moov_first"]
    assert found["errors"] == ""


def new_page(browser: Any) -> Page:
    # ignore_https_errors=False: a certificate the browser cannot verify stops the page.
    page: Page = browser.new_context(ignore_https_errors=False).new_page()
    page.set_default_timeout(DEADLINE * 1000)
    return page


def not_blank(png: bytes) -> bool:
    """Whether a screenshot shows a picture (colour bars), not one flat colour."""
    picture = Image.open(io.BytesIO(png)).convert("L")
    return ImageStat.Stat(picture).stddev[0] > 20


PLAYING = """(selector) => {
  const video = document.querySelector(selector);
  return video !== null && video.error === null && video.readyState >= 2 && video.currentTime > 0;
}"""


def test_the_web_client_plays_the_camera_live_and_recorded(site: LocalSite, tmp_path: Path) -> None:
    first, _ = recorded_span(site, 3)
    mobile = site.servers["mobile1"]
    password_file = add_user(site, "web-viewer", "operator", ["door", "yard"])
    home = nss_home(tmp_path / "home", site.home.ca_cert)
    with chromium(home, {mobile.host: mobile.address}) as browser:
        page = new_page(browser)
        page.goto(f"https://{mobile.host}:{mobile.ports['https']}/")
        page.fill("#user", "web-viewer")
        page.fill("#password", password_file.read_text().strip())
        page.click("button[type=submit]")

        # The live picture plays through Media Source Extensions, its time going on
        live = "video[data-camera=door]"
        page.wait_for_function(PLAYING, arg=live)
        video = page.locator(live)
        assert video.evaluate("v => v.dataset.codec") == "H264"
        began = video.evaluate("v => v.currentTime")
        eventually(
            lambda: video.evaluate("v => v.currentTime") > began + 1, what="live time going on"
        )
        assert video.evaluate("v => v.error") is None
        assert not_blank(video.screenshot())

        # The H.265 camera plays where the browser says it can, and is explained where not
        page.wait_for_function(
            "(playing) => document.querySelector('video[data-camera=yard]') !== null && eval(playing)("
            "'video[data-camera=yard]') || [...document.querySelectorAll('.words')].some("
            "p => p.textContent.includes('H.265'))",
            arg=PLAYING,
        )
        yard = page.locator("figure", has=page.locator("figcaption", has_text="yard"))
        if yard.locator("video").count():
            mime = yard.locator("video").evaluate("v => v.dataset.mime")
            assert page.evaluate("(mime) => MediaSource.isTypeSupported(mime)", mime)
            assert not_blank(yard.locator("video").screenshot())
        else:
            said = yard.locator(".words").text_content() or ""
            assert "cannot play H.265 video" in said
            mime = said.split("(", 1)[1].split("), which", 1)[0]
            assert mime.startswith('video/mp4; codecs="hvc1.')
            assert not page.evaluate("(mime) => MediaSource.isTypeSupported(mime)", mime)
        print(
            f"H.265 in this Chromium: {'plays' if yard.locator('video').count() else 'not supported'}"
        )

        # A recording from a chosen time plays over HLS (hls.js)
        figure = page.locator("figure", has=page.locator("figcaption", has_text="door"))
        figure.locator("input[type=datetime-local]").evaluate(
            "(input, moment) => { const local = new Date(moment * 1000 - new Date().getTimezoneOffset() * 60000);"
            " input.value = local.toISOString().slice(0, 19); }",
            first + 1,
        )
        figure.locator("button[type=submit]").click()
        recorded = "video[data-playback=door]"
        page.wait_for_function(PLAYING, arg=recorded)
        player = page.locator(recorded)
        eventually(lambda: player.evaluate("v => v.currentTime") > 1, what="recorded time going on")
        assert player.evaluate("v => v.error") is None
        assert not_blank(player.screenshot())
        page.screenshot(path=str(tmp_path / "web-client.png"))


def test_view_writes_the_live_pictures_as_mp4_from_a_keyframe(
    site: LocalSite, tmp_path: Path
) -> None:
    recorded_span(site, 0)
    out = tmp_path / "live.mp4"
    report = json.loads(cli_ok(site, "view", "door", "--frames", "30", "--out", str(out), "--json"))
    assert report["frames"] == 30
    assert report["encrypted"] is True
    found = probe(out)
    assert (found["codec_name"], int(found["nb_read_frames"])) == ("h264", 30)
    assert found["errors"] == ""
    assert found["first_picture"] == "1"  # a new viewer starts at the last keyframe
