"""An RTSP camera on a site: added with the CLI, pulled and recorded by its recording server,
watched live by the Smart Client; its password kept out of the site status; bad sources
refused where they are typed.

Given a site of its own (this module adds cameras): a management server and rs1, encrypted
through the CLI, and GStreamer's RTSP server as the camera, asking for a Digest password.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from stream_support import add_user, build_site, cli_ok, connection_as, parse_mjpeg_file

from rtsp_support import colour_bars, gst_rtsp_camera
from watchkeep.client import SiteClient
from watchkeep.site import ServerRole
from watchkeep.testing import LocalSite, cameras_by_name, eventually

pytestmark = pytest.mark.slow

CAMERA_ADDRESS = "127.0.62.1"
USER, PASSWORD = "vms", "s3cret-rtsp"


@pytest.fixture(scope="module")
def rtsp_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    log = tmp_path_factory.mktemp("rtsp") / "gst.log"
    with gst_rtsp_camera(
        CAMERA_ADDRESS, {"/stream1": colour_bars()}, user=USER, password=PASSWORD, log=log
    ) as port:
        yield port


@pytest.fixture(scope="module")
def site(site_factory: Callable[[str], LocalSite]) -> LocalSite:
    site = site_factory("rtsp")
    build_site(site, [("ms", ServerRole.MANAGEMENT), ("rs1", ServerRole.RECORDING)])
    site.encrypt("rs1", "ms")
    return site


def test_an_rtsp_camera_is_recorded_and_watched_live(
    site: LocalSite, rtsp_port: int, tmp_path: Path
) -> None:
    # When the administrator adds the camera by its RTSP URL, its password from a file
    password_file = tmp_path / "camera-password"
    password_file.write_text(PASSWORD + "\n")
    url = f"rtsp://{USER}@{CAMERA_ADDRESS}:{rtsp_port}/stream1"
    added = json.loads(
        cli_ok(
            site,
            "camera",
            "add",
            "door",
            "--recording-server",
            "rs1",
            "--rtsp-url",
            url,
            "--password-file",
            str(password_file),
            "--json",
        )
    )
    assert added == {"name": "door", "recording_server": "rs1"}

    # Then the Smart Client sees its pictures live, from rs1, over TLS
    out = tmp_path / "door.mjpeg"
    report = json.loads(cli_ok(site, "view", "door", "--frames", "10", "--out", str(out), "--json"))
    assert report["frames"] == 10, report
    assert report["servers"] == ["rs1"]
    assert report["encrypted"] is True
    parts = parse_mjpeg_file(out)
    assert len(parts) == 10
    for part in parts:
        picture = Image.open(io.BytesIO(part.jpeg))
        picture.load()
        assert picture.size == (320, 240)

    # And the site status names its source without the camera's password
    camera = cameras_by_name(site.status())["door"]
    assert camera["source"]["kind"] == "rtsp"
    assert camera["problem"] is None
    assert PASSWORD not in json.dumps(site.status())
    assert camera["source"]["url"] == (f"rtsp://{USER}:***@{CAMERA_ADDRESS}:{rtsp_port}/stream1")
    assert PASSWORD not in site.log_text("rs1")


def test_an_operator_sees_only_its_cameras_and_not_their_sources(
    site: LocalSite, rtsp_port: int
) -> None:
    url = f"rtsp://{USER}:{PASSWORD}@{CAMERA_ADDRESS}:{rtsp_port}/stream1"
    cli_ok(site, "camera", "add", "porch", "--recording-server", "rs1", "--rtsp-url", url)
    cli_ok(site, "camera", "add", "vault", "--recording-server", "rs1", "--rtsp-url", url)
    guard = connection_as(site, "guard", add_user(site, "guard", "operator", ["porch"]))

    async def status_as_guard() -> dict[str, Any]:
        async with SiteClient(site.home, guard) as client:
            status: dict[str, Any] = await client.call("GET", "/api/v1/site/status")
            return status

    status = asyncio.run(status_as_guard())
    assert [c["name"] for c in status["cameras"]] == ["porch"]
    assert "source" not in status["cameras"][0]
    assert {"vault", "porch"} <= set(cameras_by_name(site.status()))  # the administrator's


def test_the_site_status_says_which_camera_fails_and_why_until_it_is_fixed(
    site: LocalSite, rtsp_port: int
) -> None:
    camera_url = f"{CAMERA_ADDRESS}:{rtsp_port}/stream1"
    # When a camera is added with a wrong password
    cli_ok(site, "camera", "add", "yard", "--recording-server", "rs1", "--rtsp-url",
           f"rtsp://{USER}:wrong@{camera_url}")  # fmt: skip

    # Then the site status says so, as rs1 reported it, in JSON and in the table
    def failing() -> str:
        problem = cameras_by_name(site.status())["yard"]["problem"]
        assert problem, "rs1 has not reported the camera's failure yet"
        return str(problem)

    problem = eventually(failing, what="yard's problem in the site status")
    assert f"refused user '{USER}'" in problem
    assert "fix:" in problem
    table = cli_ok(site, "site", "status")
    (row,) = [line for line in table.splitlines() if line.startswith("yard ")]
    assert "refused user" in row

    # When the password is put right, the problem goes away
    cli_ok(site, "camera", "add", "yard", "--recording-server", "rs1", "--rtsp-url",
           f"rtsp://{USER}:{PASSWORD}@{camera_url}")  # fmt: skip

    def streaming() -> bool:
        assert cameras_by_name(site.status())["yard"]["problem"] is None
        return True

    eventually(streaming, what="yard streaming")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--rtsp-url", "http://cam.example/stream"], "rtsp:// or rtsps://"),
        (["--rtsp-url", "rtsp://cam.example:99999/stream"], "bad port"),
        (["--mjpeg-url", "rtsp://cam.example/stream"], "http:// or https://"),
    ],
)
def test_a_source_that_cannot_work_is_refused_when_it_is_added(
    site: LocalSite, args: list[str], expected: str
) -> None:
    ran = site.cli("camera", "add", "gate", "--recording-server", "rs1", *args)
    assert ran.returncode == 1, ran
    lines = ran.stderr.strip().splitlines()
    assert len(lines) == 1, ran.stderr
    assert expected in lines[0]
    assert "gate" in lines[0]
    assert "fix:" in lines[0]
    assert "gate" not in cameras_by_name(site.status())


def test_a_password_file_needs_a_url_that_names_the_user_alone(
    site: LocalSite, tmp_path: Path
) -> None:
    password_file = tmp_path / "pw"
    password_file.write_text("secret\n")
    for url in ("rtsp://cam.example/s", "rtsp://u:inline@cam.example/s"):
        ran = site.cli("camera", "add", "gate", "--recording-server", "rs1", "--rtsp-url", url,
                       "--password-file", str(password_file))  # fmt: skip
        assert ran.returncode == 2, ran
        (line,) = ran.stderr.strip().splitlines()
        assert "names the user and no password" in line
        assert "fix:" in line
    missing = site.cli("camera", "add", "gate", "--recording-server", "rs1", "--rtsp-url",
                       "rtsp://u@cam.example/s", "--password-file", str(tmp_path / "nope"))  # fmt: skip
    assert missing.returncode == 2, missing
    assert "cannot read the camera password file" in missing.stderr


def test_a_camera_name_that_cannot_name_recordings_is_refused(site: LocalSite) -> None:
    ran = site.cli("camera", "add", "front door", "--recording-server", "rs1")
    assert ran.returncode == 1, ran
    (line,) = ran.stderr.strip().splitlines()
    assert "invalid camera name 'front door'" in line
    assert "fix:" in line
