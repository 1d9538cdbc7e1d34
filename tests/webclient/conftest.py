"""Fixtures for the management web client's tests: one site shared by the module, a
browser that trusts its CA, and the console of every page judged after each test.
Helpers are in webclient_support.py."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from webclient_support import (
    ATTACKER_HOST,
    CAMERA_PASSWORD,
    CAMERA_USER,
    SPARE_HOST,
    WARN_DAYS,
    ExpectedRefusals,
    WebSite,
)

from browser_support import chromium, nss_home
from rtsp_support import colour_bars, gst_rtsp_camera
from watchkeep.pki import Role
from watchkeep.site import ServerRole
from watchkeep.testing import LocalSite


@pytest.fixture(scope="module")
def web(site_factory: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebSite]:
    """One plaintext site (ms, rs1), a spare certificate to revoke, an RTSP camera with a
    password on the site's network, and a browser that trusts the site CA."""
    site: LocalSite = site_factory("web")
    ms = site.add_server("ms", ServerRole.MANAGEMENT)
    # A site that wants to hear of an expiry 100 days ahead: its 90-day certificates are
    # all inside that warning, and the page's banner says so from the start.
    ms.extra["server"] = {"expiry_warn_days": [WARN_DAYS]}
    site.write_config(ms)
    site.add_server("rs1", ServerRole.RECORDING)
    site.start_all()
    site.pki.issue(
        Role.RECORDING,
        [SPARE_HOST],
        key_type=site.key_type,
        out=site.root / "spare",
    )
    output = Path(os.environ.get("WATCHKEEP_TEST_OUTPUT") or tmp_path_factory.mktemp("shots"))
    output.mkdir(parents=True, exist_ok=True)
    camera_address = f"{site.network}.200"
    attacker = f"{site.network}.201"
    hosts = {s.host: s.address for s in site.servers.values()} | {ATTACKER_HOST: attacker}
    with (
        gst_rtsp_camera(
            camera_address,
            {"/door": colour_bars(320, 240, 10)},
            user=CAMERA_USER,
            password=CAMERA_PASSWORD,
        ) as port,
        chromium(nss_home(tmp_path_factory.mktemp("browser"), site.home.ca_cert), hosts) as browser,
    ):
        yield WebSite(site, browser, output, f"rtsp://{camera_address}:{port}/door", attacker)


@pytest.fixture
def console(web: WebSite) -> Iterator[ExpectedRefusals]:
    """The test fails if any page logged a console error (but for the answers it expects
    to be refused) or threw while it ran."""
    web.console.clear()
    expected = ExpectedRefusals()
    yield expected
    assert [m for m in web.console if not expected.allowed(m)] == [], web.console
