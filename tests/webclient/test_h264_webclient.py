"""H.264/H.265 cameras in the management client: live through Media Source Extensions
over the recording server's WebSocket, recordings over HLS (hls.js) with the stream token
as a bearer header, straight from the recording server (CORS for the management origin
only), under the page's strict Content-Security-Policy.

Given a site of its own, encrypted (ms, rs1), and GStreamer's RTSP server as an H.264 and
an H.265 camera, viewed in real Chromium that trusts the site CA.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageStat
from webclient_support import (
    WebSite,
    admin_page,
    https_request,
    local_time,
    off_the_loop,
    open_view,
    shoot_and_check,
)

from browser_support import chromium, nss_home
from rtsp_support import gst_rtsp_camera, h264_bars, h265_bars
from watchkeep.media import read_video_file
from watchkeep.site import ServerRole
from watchkeep.testing import LocalSite, eventually

pytestmark = pytest.mark.slow

PLAYING = """(selector) => {
  const video = document.querySelector(selector);
  return video !== null && video.error === null && video.readyState >= 2 && video.currentTime > 0;
}"""


@pytest.fixture(scope="module")
def web(site_factory: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebSite]:
    site: LocalSite = site_factory("webh264")
    site.add_server("ms", ServerRole.MANAGEMENT)
    site.add_server("rs1", ServerRole.RECORDING)
    site.start_all()
    site.encrypt("rs1", "ms")
    output = Path(os.environ.get("WATCHKEEP_TEST_OUTPUT") or tmp_path_factory.mktemp("shots"))
    output.mkdir(parents=True, exist_ok=True)
    camera = f"{site.network}.200"
    hosts = {s.host: s.address for s in site.servers.values()}
    mounts = {"/h264": h264_bars(), "/h265": h265_bars()}
    with (
        gst_rtsp_camera(camera, mounts) as port,
        chromium(nss_home(tmp_path_factory.mktemp("browser"), site.home.ca_cert), hosts) as browser,
    ):
        for name, mount in (("door", "h264"), ("yard", "h265")):
            ran = site.cli(
                "camera", "add", name, "--recording-server", "rs1",
                "--rtsp-url", f"rtsp://{camera}:{port}/{mount}",
            )  # fmt: skip
            assert ran.returncode == 0, ran.stderr
        yield WebSite(site, browser, output, f"rtsp://{camera}:{port}/h264", attacker="")


def recorded_from(site: LocalSite, seconds: float) -> float:
    """When (UTC seconds) rs1's recording of door begins, once ``seconds`` are flushed."""
    directory = site.servers["rs1"].directory / "data" / "recordings" / "door"

    def long_enough() -> float:
        files = sorted(directory.glob("*.mp4"))
        assert files, "nothing recorded yet"
        fragments = read_video_file(str(files[0])).fragments
        assert fragments, "no picture recorded yet"
        first, last = fragments[0].presentation_time, fragments[-1].presentation_time
        assert (last - first) / 90_000 >= seconds, "too little recorded"
        return first / 90_000

    return eventually(long_enough, what=f"{seconds} s of door recorded")


def not_blank(png: bytes) -> bool:
    """Whether a screenshot shows a picture (colour bars), not one flat colour."""
    return ImageStat.Stat(Image.open(io.BytesIO(png)).convert("L")).stddev[0] > 20


def test_the_policy_allows_the_recording_servers_video_and_nothing_more(web: WebSite) -> None:
    # When the page is fetched over TLS
    status, headers, _ = https_request(web, "ms", "api", "GET", "/", {})
    assert status == 200
    policy = dict(part.split(" ", 1) for part in headers["Content-Security-Policy"].split("; "))
    rs1 = web.site.servers["rs1"]
    data = f"{rs1.host}:{rs1.ports['data']}"
    # Then calls may go to rs1's data listener (WebSocket, HLS), video plays from blob:
    # URLs (Media Source Extensions), and no worker may start
    for scheme in ("https", "wss"):
        assert f"{scheme}://{data}" in policy["connect-src"].split(), policy
    assert policy["media-src"] == "blob:"
    assert "worker-src" not in policy
    assert policy["script-src"] == "'self'"
    # And one copy of video.js and of hls.js is what both web clients load
    for path in ("/web/video.js", "/vendor/hls.light.min.js"):
        status, headers, body = https_request(web, "ms", "api", "GET", path, {})
        assert (status, headers["Content-Type"]) == (200, "text/javascript; charset=utf-8")
        assert body


def test_the_recording_server_lets_only_the_management_origin_read_recordings(
    web: WebSite,
) -> None:
    ms = web.ms
    path = "/api/v1/cameras/door/playback.m3u8?from=0&to=1"
    asked = {
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization,range",
    }
    # When the management client's origin asks before it sends a token
    origin = f"https://{ms.host}:{ms.ports['api']}"
    status, headers, _ = https_request(
        web, "rs1", "data", "OPTIONS", path, {"Origin": origin, **asked}
    )
    # Then rs1 lets it send the token and a range
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == origin
    assert headers["Access-Control-Allow-Headers"] == "Authorization, Range"
    assert "Access-Control-Allow-Credentials" not in headers
    # And another origin is told nothing (the preflight needs a token like any request)
    other = "https://attacker.test"
    status, headers, _ = https_request(
        web, "rs1", "data", "OPTIONS", path, {"Origin": other, **asked}
    )
    assert status == 401
    assert "Access-Control-Allow-Origin" not in headers
    status, headers, _ = https_request(web, "rs1", "data", "GET", path, {"Origin": other})
    assert status == 401
    assert "Access-Control-Allow-Origin" not in headers


def test_h264_plays_live_and_recorded_in_the_management_client(web: WebSite) -> None:
    first = off_the_loop(recorded_from, web.site, 4)
    web.console.clear()
    page = admin_page(web, "https")
    open_view(page, "cameras")

    # The H.264 camera plays live in the grid through Media Source Extensions
    live = "#camera-grid video[data-camera=door]"
    page.wait_for_function(PLAYING, arg=live)
    video = page.locator(live)
    assert video.evaluate("v => v.dataset.codec") == "H264"
    began = video.evaluate("v => v.currentTime")
    eventually(lambda: video.evaluate("v => v.currentTime") > began + 1, what="live time going on")
    assert video.evaluate("v => v.error") is None
    assert not_blank(video.screenshot())

    # The H.265 camera plays where the browser says it can, and is explained where not
    yard = page.locator("#camera-grid li[data-camera=yard]")
    page.wait_for_function(
        "() => { const v = document.querySelector('#camera-grid video[data-camera=yard]');"
        " return v !== null && v.readyState >= 2 && v.currentTime > 0 ||"
        " [...document.querySelectorAll('li[data-camera=yard] .words')].some("
        "p => p.textContent.includes('cannot play H.265 video')); }"
    )
    if yard.locator("video").count():
        mime = yard.locator("video").evaluate("v => v.dataset.mime")
        assert page.evaluate("(mime) => MediaSource.isTypeSupported(mime)", mime)
    else:
        said = yard.locator(".words").text_content() or ""
        mime = said.split("(", 1)[1].split("), which", 1)[0]
        assert mime.startswith('video/mp4; codecs="hvc1.')
        assert not page.evaluate("(mime) => MediaSource.isTypeSupported(mime)", mime)
    shoot_and_check(web, page, "h264-01-camera-grid")

    # The camera alone plays live, and a chosen stretch of its recording over HLS
    page.click("#camera-grid li[data-camera=door] figcaption a")
    page.wait_for_function(PLAYING, arg="#live video[data-camera=door]")
    for field, moment in (("#playback-from", first + 1), ("#playback-to", first + 4)):
        page.locator(field).evaluate(
            "(input, value) => { input.value = value; }", local_time(moment)
        )
    page.click("#playback-form button[type=submit]")
    recorded = "#playback-video video[data-playback=door]"
    page.wait_for_function(PLAYING, arg=recorded)
    player = page.locator(recorded)
    eventually(lambda: player.evaluate("v => v.currentTime") > 1, what="recorded time going on")
    assert player.evaluate("v => v.error") is None
    assert not_blank(player.screenshot())
    shoot_and_check(web, page, "h264-02-camera-playback")
    assert web.console == []
    page.close()
