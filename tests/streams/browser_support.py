"""Real browsers for the stream tests: headless Chromium (Debian's, through Playwright)
with a HOME of its own whose NSS database trusts the site CA, or nothing (see
test_streams_webclient.py for why NSS and not an SPKI allow-list)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Browser, Page, sync_playwright
from stream_support import DEADLINE

from watchkeep.testing import LocalServer

CHROMIUM = "/usr/bin/chromium"
TIMEOUT_MS = DEADLINE * 1000


def nss_home(root: Path, ca: Path | None) -> Path:
    """A HOME whose NSS database trusts ``ca`` as an issuer of server certificates (C,,),
    or trusts nothing when ``ca`` is None."""
    database = root / ".pki" / "nssdb"
    database.mkdir(parents=True)
    certutil = ["certutil", "-d", f"sql:{database}"]
    subprocess.run([*certutil, "-N", "--empty-password"], check=True, capture_output=True)
    if ca is not None:
        subprocess.run(
            [*certutil, "-A", "-n", "watchkeep site CA", "-t", "C,,", "-i", str(ca)],
            check=True,
            capture_output=True,
        )
    return root


@contextmanager
def chromium(home: Path, mobile: LocalServer) -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            env={**os.environ, "HOME": str(home)},
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                # The site's host names are in no DNS: map the mobile server's to its address.
                f"--host-resolver-rules=MAP {mobile.host} {mobile.address}",
            ],
        )
        try:
            yield browser
        finally:
            browser.close()


def new_page(browser: Browser) -> Page:
    # ignore_https_errors=False: a certificate the browser cannot verify stops the page.
    page = browser.new_context(ignore_https_errors=False).new_page()
    page.set_default_timeout(TIMEOUT_MS)
    return page
