"""Failover: a viewer of a camera follows it to the failover server when its recording
server dies, and keeps getting verified, encrypted video, Motion JPEG and H.264 alike.

Given a site of its own (this module kills servers): a management server, rs1 recording
cam1 (synthetic, Motion JPEG) and door (H.264, GStreamer's RTSP server), and fo1 standing
by as its failover server, all encrypted through the CLI.
"""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from stream_support import (
    DEADLINE,
    add_camera,
    assert_frame_from,
    build_site,
    cli_ok,
    parse_mjpeg_file,
)

from rtsp_support import gst_rtsp_camera, h264_bars
from watchkeep.client import SiteClient
from watchkeep.client._video import view_camera
from watchkeep.media import DEFAULT_BOUNDARY, MultipartParser
from watchkeep.site import ServerRole
from watchkeep.testing import LocalSite, cameras_by_name, eventually, servers_by_name

pytestmark = pytest.mark.slow

FRAMES_BEFORE = 10
FRAMES_AFTER = 30


CAMERA_ADDRESS = "127.0.63.9"


@pytest.fixture(scope="module")
def h264_camera(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("rtsp") / "gst.log"
    with gst_rtsp_camera(CAMERA_ADDRESS, {"/h264": h264_bars()}, log=log) as port:
        yield f"rtsp://{CAMERA_ADDRESS}:{port}/h264"


@pytest.fixture(scope="module")
def failover_site(site_factory: Callable[[str], LocalSite], h264_camera: str) -> LocalSite:
    site = site_factory("failover")
    build_site(
        site,
        [
            ("ms", ServerRole.MANAGEMENT),
            ("rs1", ServerRole.RECORDING),
            ("fo1", ServerRole.FAILOVER),
        ],
    )
    add_camera(site, "cam1", "rs1")
    cli_ok(site, "camera", "add", "door", "--recording-server", "rs1", "--rtsp-url", h264_camera)
    site.encrypt("rs1", "fo1", "ms")
    return site


@pytest.fixture
def site(failover_site: LocalSite) -> Iterator[LocalSite]:
    """The failover site with rs1 recording cam1; rs1 is running again after the test and
    cam1 back on it."""
    yield failover_site
    if failover_site.servers["rs1"].process is None:
        failover_site.start("rs1")

    def back_on_rs1() -> bool:
        status = failover_site.status()
        assert cameras_by_name(status)["cam1"]["recording_server"] == "rs1"
        assert cameras_by_name(status)["door"]["recording_server"] == "rs1"
        assert servers_by_name(status)["fo1"]["covering"] is None
        return True

    eventually(back_on_rs1, what="cam1 back on rs1")


class _KillAfter(io.BytesIO):
    """An output file for view_camera that kills a server once ``after`` frames are in it,
    and remembers where the frames written after that start."""

    def __init__(self, site: LocalSite, server: str, after: int) -> None:
        super().__init__()
        self.site = site
        self.server = server
        self.after = after
        self.frames = 0
        self.killed_at: int | None = None

    def write(self, data: Any, /) -> int:
        written = super().write(data)
        if bytes(data).startswith(b"--" + DEFAULT_BOUNDARY.encode()):
            self.frames += 1
        elif self.frames == self.after and self.killed_at is None and data == b"\r\n":
            # The frame's last piece is written: kill -9, no goodbye, no last heartbeat.
            self.site.kill(self.server)
            self.killed_at = self.tell()
        return written


def test_a_viewer_follows_its_camera_to_the_failover_server(site: LocalSite) -> None:
    # Given a viewer (the client library's view_camera) watching cam1 on rs1
    out = _KillAfter(site, "rs1", FRAMES_BEFORE)

    async def watch() -> dict[str, Any]:
        async with SiteClient(site.home) as client:
            report = await view_camera(client, "cam1", frames=FRAMES_BEFORE + FRAMES_AFTER, out=out)
            return report.as_json()

    # When rs1 is killed (kill -9) after the tenth frame
    report = asyncio.run(watch())

    # Then the viewer got the rest of its frames from fo1, still over verified TLS
    assert out.killed_at is not None, "rs1 was never killed"
    assert report["servers"] == ["rs1", "fo1"], report
    assert report["frames"] == FRAMES_BEFORE + FRAMES_AFTER, report
    assert report["encrypted"] is True, report
    assert report["reconnects"] >= 1, report
    status = site.status()
    assert cameras_by_name(status)["cam1"]["recording_server"] == "fo1"
    assert servers_by_name(status)["fo1"]["covering"] == "rs1"

    # And every frame after the kill is a whole picture of cam1 (from fo1: rs1 is dead)
    after = MultipartParser(DEFAULT_BOUNDARY).feed(out.getvalue()[out.killed_at :])
    assert len(after) == FRAMES_AFTER
    for part in after:
        assert_frame_from("cam1", int(part.headers["x-sequence"]), part.jpeg)


def test_watchkeep_view_follows_the_camera_to_the_failover_server(
    site: LocalSite, tmp_path: Path
) -> None:
    out = tmp_path / "view.mjpeg"
    # Given `watchkeep view` watching cam1 on rs1
    viewer = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "watchkeep",
            "--home",
            str(site.home.root),
            "view",
            "cam1",
            "--frames",
            str(FRAMES_BEFORE + FRAMES_AFTER),
            "--out",
            str(out),
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        eventually(
            lambda: out.exists() and len(parse_mjpeg_file(out)) >= FRAMES_BEFORE,
            what="the viewer has written frames",
        )
        # When rs1 is killed
        site.kill("rs1")
        stdout, stderr = viewer.communicate(timeout=DEADLINE * 3)
    finally:
        if viewer.poll() is None:
            viewer.kill()
            viewer.communicate()

    # Then it finished its frames with fo1's and says so
    assert viewer.returncode == 0, stderr
    report = json.loads(stdout)
    assert report["servers"] == ["rs1", "fo1"], report
    assert report["encrypted"] is True, report
    assert len(parse_mjpeg_file(out)) == FRAMES_BEFORE + FRAMES_AFTER


def test_an_h264_viewer_follows_its_camera_to_the_failover_server_encrypted(
    site: LocalSite, tmp_path: Path
) -> None:
    # Given `watchkeep view` writing door (H.264) from rs1 into an MP4 file
    eventually(lambda: cameras_by_name(site.status())["door"]["problem"] is None, what="door up")
    out = tmp_path / "door.mp4"
    viewer = subprocess.Popen(
        [sys.executable, "-m", "watchkeep", "--home", str(site.home.root), "view", "door",
         "--frames", "60", "--out", str(out), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        eventually(
            lambda: out.exists() and out.read_bytes().count(b"moof") >= 10,
            what="the viewer has written pictures",
        )
        # When rs1 is killed
        site.kill("rs1")
        stdout, stderr = viewer.communicate(timeout=DEADLINE * 3)
    finally:
        if viewer.poll() is None:
            viewer.kill()
            viewer.communicate()

    # Then the file goes on with fo1's pictures, over verified TLS, and all of it decodes
    assert viewer.returncode == 0, stderr
    report = json.loads(stdout)
    assert report["servers"] == ["rs1", "fo1"], report
    assert report["encrypted"] is True, report
    assert report["frames"] == 60, report
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-show_entries",
         "stream=codec_name,nb_read_frames", "-of", "csv=p=0", str(out)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert probe.stdout.strip() == "h264,60"
    decoding = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(out), "-f", "null", "-"], capture_output=True, text=True
    )
    assert decoding.stderr == ""
    fo1_recordings = site.servers["fo1"].directory / "data" / "recordings" / "door"
    assert list(fo1_recordings.glob("*.mp4")), "fo1 recorded no H.264 file of door"
