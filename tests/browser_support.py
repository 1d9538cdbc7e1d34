"""Real Chromium for the tests (Debian's /usr/bin/chromium, driven by Playwright), reaching
a site by its host names and trusting its CA the way a user's browser would.

How Chromium comes to trust the site CA: on Linux it takes user-added trust anchors from
the NSS database in ``$HOME/.pki/nssdb``. Each browser here runs with a HOME of its own
whose database holds the site CA (added with NSS's certutil, from libnss3-tools) or
nothing. So the browser verifies a server exactly as a user's would: chain to an
installed CA, host name in the SAN, validity. The alternative, an SPKI allow-list
(--ignore-certificate-errors-spki-list), would only silence errors for one key and could
not show that a browser without the CA refuses the server.

The site's host names are in no DNS: ``--host-resolver-rules`` maps each to its loopback
address, and every other name to nowhere.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Browser, sync_playwright

CHROMIUM = "/usr/bin/chromium"


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
def chromium(home: Path, hosts: Mapping[str, str]) -> Iterator[Browser]:
    """Headless Chromium with HOME ``home``, resolving each of ``hosts`` (name ->
    address)."""
    rules = ", ".join(f"MAP {name} {address}" for name, address in hosts.items())
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
                f"--host-resolver-rules={rules}",
            ],
        )
        try:
            yield browser
        finally:
            browser.close()
