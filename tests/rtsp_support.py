"""RTSP cameras for the tests: GStreamer's RTSP server (tests/gst_rtsp_server.py) in a
process of its own, on a loopback address of the test's, stopped when the test ends."""

from __future__ import annotations

import contextlib
import select
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

GST_SERVER = Path(__file__).with_name("gst_rtsp_server.py")
# Debian's python3: python3-gi and the GStreamer introspection data are installed for it.
SYSTEM_PYTHON = "/usr/bin/python3"


def colour_bars(width: int = 320, height: int = 240, fps: int = 25, sampling: str = "I420") -> str:
    """A live colour-bar pipeline, JPEG-encoded (``I420``: 4:2:0, ``Y42B``: 4:2:2)."""
    return (
        f"videotestsrc is-live=true ! video/x-raw,format={sampling},width={width},"
        f"height={height},framerate={fps}/1 ! jpegenc ! rtpjpegpay name=pay0 pt=26"
    )


def jpeg_files(pattern: str, width: int, height: int, fps: int = 25) -> str:
    """A pipeline sending the JPEG files ``pattern`` (printf-style, from 0) in a loop,
    untouched, through GStreamer's RTP/JPEG payloader."""
    return (
        f"multifilesrc location={pattern} loop=true caps=image/jpeg,framerate={fps}/1,"
        f"width={width},height={height} ! identity sync=true ! rtpjpegpay name=pay0 pt=26"
    )


def h264_bars(width: int = 320, height: int = 240, fps: int = 25, bframes: int = 0) -> str:
    """A live colour-bar pipeline, H.264-encoded by x264 (a keyframe a second), sent by
    GStreamer's RTP/H.264 payloader (RFC 6184: single NAL units and FU-A)."""
    profile = "main" if bframes else "constrained-baseline"
    return (
        f"videotestsrc is-live=true ! video/x-raw,format=I420,width={width},height={height},"
        f"framerate={fps}/1 ! x264enc key-int-max={fps} bframes={bframes} speed-preset=ultrafast"
        f" ! video/x-h264,profile={profile} ! rtph264pay name=pay0 pt=96"
    )


def h265_bars(width: int = 320, height: int = 240, fps: int = 25) -> str:
    """The same, H.265-encoded by x265, sent by the RTP/H.265 payloader (RFC 7798)."""
    return (
        f"videotestsrc is-live=true ! video/x-raw,format=I420,width={width},height={height},"
        f"framerate={fps}/1 ! x265enc key-int-max={fps} speed-preset=ultrafast "
        "tune=zerolatency ! rtph265pay name=pay0 pt=96"
    )


@contextlib.contextmanager
def gst_rtsp_camera(
    address: str,
    mounts: dict[str, str],
    *,
    port: int = 0,
    user: str | None = None,
    password: str | None = None,
    auth: str = "digest",
    tls: tuple[Path, Path] | None = None,
    log: Path | None = None,
) -> Iterator[int]:
    """Serve ``mounts`` (path -> pipeline) over RTSP at ``address``; yields the port."""
    command = [SYSTEM_PYTHON, str(GST_SERVER), "--address", address, "--port", str(port)]
    for path, pipeline in mounts.items():
        command += ["--mount", path, pipeline]
    if user is not None:
        command += ["--user", user, "--password", password or "", "--auth", auth]
    if tls is not None:
        command += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
    stderr = log.open("ab") if log is not None else subprocess.DEVNULL
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr)
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 20)
        line = process.stdout.readline().decode() if ready else ""
        assert line.startswith("ready "), f"the GStreamer RTSP server did not start: {line!r}"
        yield int(line.split()[1])
    finally:
        process.kill()
        process.wait(10)
        if log is not None and hasattr(stderr, "close"):
            stderr.close()


def wait_until_port_free(address: str, port: int, seconds: float = 5.0) -> None:
    """Give a killed server's port back to the system (for a restart on the same port)."""
    import socket

    deadline = time.monotonic() + seconds
    while True:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((address, port))
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
        time.sleep(0.05)
