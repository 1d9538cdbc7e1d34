"""H.264 and H.265 cameras against GStreamer's RTSP server (x264 and x265 encoders, its RTP
payloaders: an implementation independent of watchkeep's), over rtsp:// and rtsps://,
recorded as fragmented MP4 and judged by FFmpeg: every picture recorded decodes, at the
camera's size, in order, and the files open as they are."""

from __future__ import annotations

import ssl
from pathlib import Path

from camera_support import make_ca_and_server_cert
from h26x_support import decode, record

from rtsp_support import gst_rtsp_camera, h264_bars, h265_bars, wait_until_port_free
from watchkeep.media import Recorder, RtspCamera

CAMERAS = "127.0.62.1"
RESTART = "127.0.62.2"
PLAIN = "127.0.62.3"
COUNT = 50  # two seconds at 25 pictures a second, two keyframes


async def test_h264_h265_and_b_frames_are_recorded_picture_for_picture(tmp_path: Path) -> None:
    ca, cert, key = make_ca_and_server_cert(tmp_path, CAMERAS)
    trust = ssl.create_default_context(cafile=str(ca))
    secure = {"/h264": h264_bars(), "/h265": h265_bars(width=352, height=288)}
    plain = {"/h264b": h264_bars(width=640, height=360, bframes=2)}
    root = tmp_path / "recordings"
    with (
        gst_rtsp_camera(CAMERAS, secure, user="u", password="p", tls=(cert, key)) as port,
        gst_rtsp_camera(PLAIN, plain) as plain_port,
    ):
        base = f"rtsps://u:p@{CAMERAS}:{port}"
        cameras = [
            RtspCamera("door", f"{base}/h264", trust),
            RtspCamera("yard", f"{base}/h265", trust),
            RtspCamera("hall", f"rtsp://{PLAIN}:{plain_port}/h264b"),
        ]
        async with Recorder(root, tmp_path / "index.db") as recorder:
            sent = await record(recorder, cameras, COUNT)
            segments = {name: await recorder.segments(name) for name in sent}
            assert recorder.stats.frames_dropped == 0

        untrusting = RtspCamera("door", f"{base}/h264", backoff_initial=0.05)
        async with Recorder(tmp_path / "other", tmp_path / "other.db") as recorder:
            assert (await record(recorder, [untrusting], 1, within=1.5))["door"] == []
        assert "certificate verification failed" in (untrusting.stats.last_error or "")

    expected = {
        "door": ("h264", (320, 240)),
        "yard": ("hevc", (352, 288)),
        "hall": ("h264", (640, 360)),
    }
    for name, (codec, size) in expected.items():
        frames = sent[name]
        assert len(frames) == COUNT, (name, [c.stats for c in cameras])
        assert frames[0].keyframe
        assert [f.sequence for f in frames] == list(
            range(frames[0].sequence, frames[0].sequence + COUNT)
        )
        (segment,) = segments[name]
        assert segment.path.suffix == ".mp4"
        assert segment.frames == COUNT
        decoded = decode(segment.path)
        assert decoded.errors == "", (name, decoded.errors)
        assert decoded.codec == codec
        assert decoded.sizes == {size}
        assert len(decoded.kinds) == COUNT, name
        # In order, 1/25 s apart, on the wall-clock time the recorder indexed.
        assert decoded.times == sorted(decoded.times)
        steps = {round(b - a, 3) for a, b in zip(decoded.times, decoded.times[1:], strict=False)}
        assert steps == {0.04}, (name, steps)
        assert abs(decoded.times[0] - segment.start) < 0.001
        stamps = sorted(f.timestamp for f in frames)
        assert all(abs(a - b) < 1e-5 for a, b in zip(decoded.times, stamps, strict=True))
    assert "B" in decode(segments["hall"][0].path).kinds  # B-frames kept, and decoded in order


async def test_a_camera_restarting_with_a_new_resolution_goes_on_in_a_new_file(
    tmp_path: Path,
) -> None:
    root = tmp_path / "recordings"
    async with Recorder(root, tmp_path / "index.db") as recorder:
        with gst_rtsp_camera(RESTART, {"/cam": h264_bars(320, 240)}) as port:
            camera = RtspCamera("gate", f"rtsp://{RESTART}:{port}/cam", backoff_initial=0.1)
            first = await record(recorder, [camera], 30)
        wait_until_port_free(RESTART, port)
        with gst_rtsp_camera(RESTART, {"/cam": h264_bars(480, 272)}, port=port):
            camera = RtspCamera("gate", f"rtsp://{RESTART}:{port}/cam", backoff_initial=0.1)
            second = await record(recorder, [camera], 30)
        segments = await recorder.segments("gate")
    assert len(first["gate"]) == len(second["gate"]) == 30
    assert [s.frames for s in segments] == [30, 30]
    assert [decode(s.path).sizes for s in segments] == [{(320, 240)}, {(480, 272)}]
    assert all(decode(s.path).errors == "" for s in segments)
