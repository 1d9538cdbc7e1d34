"""The mobile server's web client in a real browser: headless Chromium (Debian's, driven by
Playwright) logs in over HTTPS and shows live video.

How the browser comes to trust the site CA (its own NSS database) and reaches the site by
its host names: tests/browser_support.py.

Given the shared encrypted site (`streams_site`): mobile1 serves the web client on HTTPS
and redirects its plain HTTP port there.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Error, Page
from stream_support import DEADLINE, add_user, request

from browser_support import chromium as browser_for
from browser_support import nss_home
from watchkeep.testing import LocalServer, LocalSite, eventually

TIMEOUT_MS = DEADLINE * 1000


@contextmanager
def chromium(home: Path, mobile: LocalServer) -> Iterator[Browser]:
    with browser_for(home, {mobile.host: mobile.address}) as browser:
        yield browser


def _page(browser: Browser) -> Page:
    # ignore_https_errors=False: a certificate the browser cannot verify stops the page.
    page = browser.new_context(ignore_https_errors=False).new_page()
    page.set_default_timeout(TIMEOUT_MS)
    return page


def test_a_browser_without_the_site_ca_refuses_the_mobile_server(
    streams_site: LocalSite, tmp_path: Path
) -> None:
    mobile = streams_site.servers["mobile1"]
    # Given a browser that trusts no watchkeep CA
    with chromium(nss_home(tmp_path, None), mobile) as browser:
        page = _page(browser)
        # When it opens the web client over HTTPS
        with pytest.raises(Error) as refused:
            page.goto(f"https://{mobile.host}:{mobile.ports['https']}/")
    # Then it refuses the certificate as issued by an unknown authority
    assert "ERR_CERT_AUTHORITY_INVALID" in str(refused.value), refused.value


def _camera_image(page: Page, camera: str) -> str:
    return f"img[data-camera={camera}]"


def test_the_web_client_logs_in_and_shows_live_video(
    streams_site: LocalSite, tmp_path: Path
) -> None:
    mobile = streams_site.servers["mobile1"]
    password = streams_site.password_file.read_text().strip()
    screenshot = tmp_path / "webclient.png"
    # Given a browser that trusts the site CA
    with chromium(nss_home(tmp_path / "home", streams_site.home.ca_cert), mobile) as browser:
        page = _page(browser)

        # When it opens the mobile server's plain HTTP address
        page.goto(f"http://{mobile.host}:{mobile.ports['http']}/")

        # Then it lands on the web client over verified HTTPS
        assert page.url == f"https://{mobile.host}:{mobile.ports['https']}/"
        assert page.text_content("#lock") == "encrypted (TLS)"

        # When the user logs in with a wrong password, it is told so
        page.fill("#user", "admin")
        page.fill("#password", password + "x")
        page.click("button[type=submit]")
        page.wait_for_function("() => document.getElementById('error').textContent.length > 0")
        assert "wrong password" in (page.text_content("#error") or "")

        # When the administrator logs in
        page.fill("#password", password)
        page.click("button[type=submit]")

        # Then the login form goes away and each camera shows live video: the picture of
        # cam1 has its real width, and changes from one moment to the next
        image = page.locator(_camera_image(page, "cam1"))
        page.wait_for_function(
            "(selector) => { const i = document.querySelector(selector);"
            " return i !== null && i.naturalWidth > 0; }",
            arg=_camera_image(page, "cam1"),
        )
        assert image.evaluate("i => [i.naturalWidth, i.naturalHeight]") == [320, 180]
        assert page.locator("#login").is_hidden()
        captions = page.locator("figcaption").all_text_contents()
        assert captions == ["cam1 (rs1)", "cam2 (rs1)"], captions
        first = image.screenshot()
        eventually(lambda: image.screenshot() != first, what="cam1's picture changes")
        page.screenshot(path=str(screenshot))
    print(f"web client screenshot: {screenshot}")


def test_logging_out_of_the_web_client_stops_the_video_and_revokes_its_token(
    streams_site: LocalSite, tmp_path: Path
) -> None:
    mobile = streams_site.servers["mobile1"]
    password_file = add_user(streams_site, "web-leaver", "operator", ["cam1"])
    with chromium(nss_home(tmp_path / "home", streams_site.home.ca_cert), mobile) as browser:
        page = _page(browser)
        page.goto(f"https://{mobile.host}:{mobile.ports['https']}/")
        # Given an operator logged in and watching cam1
        assert page.locator("#logout").is_hidden()
        page.fill("#user", "web-leaver")
        page.fill("#password", password_file.read_text().strip())
        page.click("button[type=submit]")
        page.wait_for_function(
            "(selector) => { const i = document.querySelector(selector);"
            " return i !== null && i.naturalWidth > 0; }",
            arg=_camera_image(page, "cam1"),
        )
        # (the page's script is a module: its token is no global; the live picture's URL has it)
        token = page.evaluate(
            "(s) => new URL(document.querySelector(s).src).searchParams.get('token')",
            _camera_image(page, "cam1"),
        )

        # When the operator logs out
        page.click("#logout")

        # Then the video is gone and the log-in form is back
        page.wait_for_function("() => !document.getElementById('login').hidden")
        assert page.locator("img").count() == 0
        assert page.locator("#logout").is_hidden()

    # And the token the page held is refused from now on
    def refused() -> bool:
        with request(mobile, "https", "/api/v1/cameras", ca=streams_site.home.ca_cert,
                     token=token) as response:  # fmt: skip
            assert response.status == 401, response.status
            assert "revoked" in json.loads(response.read())["detail"]
        return True

    eventually(refused, what="the web client's token refused after its log-out")
