"""Helpers for the management web client's tests; fixtures are in conftest.py.

Playwright's sync API holds the test thread's event loop: whatever runs one of its own
(the site's helpers, `asyncio.run`) runs `off_the_loop`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime as dt
import http.client
import http.server
import json
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from playwright.sync_api import Browser, ConsoleMessage, Page

from watchkeep.testing import LocalSite

T = TypeVar("T")
TIMEOUT_MS = 30_000
AXE = Path(__file__).with_name("vendor") / "axe-core" / "axe.min.js"
SPARE_HOST = "spare.site.test"
ATTACKER_HOST = "attacker.test"
WARN_DAYS = 100
CAMERA = "door"
BROKEN_CAMERA = "gate"  # the same camera, with a wrong password
CAMERA_USER = "viewer"
CAMERA_PASSWORD = "s3cret-camera-pw"
OPERATOR = "nightshift"
OPERATOR_PASSWORD = "operator-password-1"


@dataclass
class WebSite:
    site: LocalSite
    browser: Browser
    output: Path
    camera_url: str
    attacker: str
    pages: list[Page] = field(default_factory=list)
    console: list[str] = field(default_factory=list)

    @property
    def ms(self) -> Any:
        return self.site.management

    def url(self, scheme: str) -> str:
        return f"{scheme}://{self.ms.host}:{self.ms.ports['api']}/"

    def new_page(self) -> Page:
        page = self.browser.new_context(ignore_https_errors=False).new_page()
        page.set_default_timeout(TIMEOUT_MS)

        def on_console(message: ConsoleMessage) -> None:
            if message.type == "error":
                self.console.append(f"{page.url}: {message.text}")

        page.on("console", on_console)
        page.on("pageerror", lambda exc: self.console.append(f"{page.url}: uncaught {exc}"))
        self.pages.append(page)
        return page


@dataclass
class ExpectedRefusals:
    """HTTP statuses a test provokes on purpose (a wrong password, a refused change):
    Chromium notes each such answer in the console, and only those may appear there."""

    statuses: set[int] = field(default_factory=set)
    network_errors: set[str] = field(default_factory=set)

    def allowed(self, message: str) -> bool:
        return any(
            f"Failed to load resource: the server responded with a status of {s} (" in message
            # the same refusal of a WebSocket (live video)
            or f"Error during WebSocket handshake: Unexpected response code: {s}" in message
            for s in self.statuses
        ) or any(f"Failed to load resource: net::{e}" in message for e in self.network_errors)


def log_in(page: Page, user: str, password: str) -> None:
    page.fill("#user", user)
    page.fill("#password", password)
    page.click("#login button[type=submit]")
    page.wait_for_selector("#view[data-ready=true]")


def open_view(page: Page, view: str) -> None:
    page.click(f"#nav-{view}")
    page.wait_for_selector(f"#view[data-view={view}][data-ready=true]")


def local_time(moment: float) -> str:
    """``moment`` as a datetime-local input's value, in the browser's (and this) time zone."""
    return dt.datetime.fromtimestamp(moment).strftime("%Y-%m-%dT%H:%M:%S")


def wait_for_picture(page: Page, selector: str, timeout: float = 30_000) -> None:
    """Until the image ``selector`` shows a decoded picture."""
    page.wait_for_function(
        "(s) => { const i = document.querySelector(s); return i !== null && i.naturalWidth > 0; }",
        arg=selector,
        timeout=timeout,
    )


def shoot_and_check(web: WebSite, page: Page, name: str) -> None:
    """Screenshot the page, and run axe-core in it: no serious or critical violation."""
    page.screenshot(path=str(web.output / f"{name}.png"), full_page=True)
    if not page.evaluate("() => typeof window.axe !== 'undefined'"):
        # Evaluated as DevTools does: the page's CSP (script-src 'self') stays in force
        # for everything the page itself loads.
        page.evaluate(AXE.read_text() + "\n;undefined")
    results = page.evaluate(
        "async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
        ".map(v => ({id: v.id, impact: v.impact, nodes: v.nodes.map(n => n.target.join(' '))}))"
    )
    bad = [v for v in results if v["impact"] in ("serious", "critical")]
    assert not bad, f"{name}: {bad}"


@contextlib.contextmanager
def attacker_page(address: str) -> Iterator[str]:
    """A page of another origin, served from ``address`` (attacker.test in the browser)."""

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<!doctype html><title>elsewhere</title><p>elsewhere</p>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer((address, 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{ATTACKER_HOST}:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def https_request(
    web: WebSite,
    server: str,
    listener: str,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request to a TLS listener of the site, verified against the site CA by the
    server's host name (SNI and the certificate, as a browser checks them)."""
    target = web.site.servers[server]
    context = ssl.create_default_context(cafile=str(web.site.home.ca_cert))
    connection = http.client.HTTPSConnection(
        target.address, target.ports[listener], context=context, timeout=10
    )
    connection._server_hostname = target.host  # type: ignore[attr-defined]
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def https_json(
    web: WebSite, method: str, path: str, token: str | None, body: Any = None
) -> tuple[int, Any]:
    """One call to the encrypted management API; the status and the decoded answer."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    encoded = json.dumps(body).encode() if body is not None else None
    status, _, answer = https_request(web, "ms", "api", method, path, headers, encoded)
    return status, json.loads(answer)


def off_the_loop(call: Callable[..., T], *args: Any) -> T:
    """``call(*args)`` in a thread of its own: Playwright's sync API holds this thread's
    event loop, and the site's helpers run one of their own (asyncio.run)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(call, *args).result()


def banner_codes(page: Page) -> list[tuple[str, str]]:
    """The broken rules the banner names: (server, rule code), in order."""
    return [
        (item["server"], item["code"])
        for item in page.locator("#banner li").evaluate_all(
            "ls => ls.map(l => ({server: l.dataset.server, code: l.dataset.code}))"
        )
    ]


def admin_page(web: WebSite, scheme: str) -> Page:
    """A new page, at the management server over ``scheme``, logged in as admin."""
    page = web.new_page()
    page.goto(web.url(scheme))
    log_in(page, "admin", admin_password(web))
    return page


def admin_password(web: WebSite) -> str:
    return web.site.password_file.read_text().strip()


def raw_request(
    web: WebSite, method: str, path: str, headers: dict[str, str], body: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    """A plain HTTP request to the management server (plaintext at this point)."""
    connection = http.client.HTTPConnection(web.ms.address, web.ms.ports["api"], timeout=10)
    try:
        connection.request(
            method,
            path,
            body=body,
            headers={"Host": f"{web.ms.host}:{web.ms.ports['api']}", **headers},
        )
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()
