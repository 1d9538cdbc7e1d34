"""The management web client: a page and its files (``web/``), served on the API listener,
that does everything through the same API as the CLI, with the caller's token.

What guards it in a browser:

* the page's Content-Security-Policy allows scripts and styles from this server only (no
  inline code, no ``eval``), calls to this server and to the site's recording servers,
  pictures from this server and from them, video from ``blob:`` (live video and
  playback come from the recording servers, with a stream token), and no framing;
* the token lives in the page's memory: no cookie is ever set, so a request forged by
  another site carries no credentials; and `refuse_cross_origin` refuses every state
  change whose ``Origin`` (or ``Sec-Fetch-Site``) says it comes from another origin all
  the same.

The headers every answer of every server carries (``nosniff``, ``X-Frame-Options``,
``Strict-Transport-Security`` over TLS) are set by the listeners
(:func:`watchkeep.servers._listener.security_headers`).
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable

from aiohttp import web

from watchkeep.servers._problems import problem
from watchkeep.servers._webshared import add_shared_routes
from watchkeep.servers.management._http import Handler
from watchkeep.servers.management._site import SiteView

__all__ = ["WebClient", "refuse_cross_origin"]

CONTENT_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}
# Methods that change nothing; every other one is a state change.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _web_files() -> Traversable:
    return resources.files("watchkeep.servers.management").joinpath("web")


class WebClient:
    def __init__(self, site: SiteView) -> None:
        self.site = site
        # Only the files shipped with the package, by exact name: nothing a request names
        # can reach outside the directory.
        self.files = {
            f.name: f
            for f in _web_files().iterdir()
            if f.is_file() and any(f.name.endswith(ext) for ext in CONTENT_TYPES)
        }

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/", self.page)
        add_shared_routes(router)  # /web/video.js and hls.js, as the mobile server serves them
        router.add_get("/web/{name}", self.asset)

    def content_security_policy(self) -> str:
        """Scripts, styles and calls: this server only, but for the data listener of each
        recording server, by either scheme (its encryption may be switched while the page
        is open), where video comes from with a stream token: pictures (live MJPEG and
        playback), live H.264/H.265 over its WebSocket, recordings over HLS (hls.js, with
        no worker). Video plays from ``blob:`` URLs (Media Source Extensions)."""
        listeners = [
            f"{s.host}:{s.ports['data']}"
            for s in self.site.servers()
            if s.role.records and "data" in s.ports
        ]
        pictures = sorted(f"{scheme}://{x}" for x in listeners for scheme in ("http", "https"))
        calls = sorted(
            f"{scheme}://{x}" for x in listeners for scheme in ("http", "https", "ws", "wss")
        )
        return "; ".join(
            [
                "default-src 'none'",
                "script-src 'self'",
                "style-src 'self'",
                " ".join(["connect-src 'self'", *calls]),
                " ".join(["img-src 'self' blob:", *pictures]),
                "media-src blob:",
                "base-uri 'none'",
                "form-action 'self'",
                "frame-ancestors 'none'",
            ]
        )

    async def page(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=self.files["index.html"].read_bytes(),
            content_type="text/html",
            charset="utf-8",
            headers={
                "Content-Security-Policy": self.content_security_policy(),
                "Cache-Control": "no-store",
                "Referrer-Policy": "no-referrer",
            },
        )

    async def asset(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        found = self.files.get(name)
        if found is None or name == "index.html":
            return problem(404, "not found", f"the web client has no file {name!r}")
        suffix = name[name.rfind(".") :]
        return web.Response(
            body=found.read_bytes(),
            content_type=CONTENT_TYPES[suffix],
            charset="utf-8" if suffix != ".svg" else None,
            headers={"Cache-Control": "no-cache"},
        )


@web.middleware
async def refuse_cross_origin(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A state change sent by a page of another origin is refused before any handler
    sees it (a browser always names the origin of a cross-origin POST, PUT, PATCH or
    DELETE; the CLI and the site's servers send no Origin and are not concerned)."""
    if request.method not in SAFE_METHODS:
        origin = request.headers.get("Origin")
        own = f"{request.scheme}://{request.host}"
        fetched_from = request.headers.get("Sec-Fetch-Site", "same-origin")
        if (origin is not None and origin != own) or fetched_from not in ("same-origin", "none"):
            return problem(
                403,
                "cross-origin request refused",
                f"a {request.method} to {request.path} from {origin or fetched_from} is refused: "
                f"changes are accepted from {own} only",
                code="http.origin",
                fix=f"use the management client at {own}/ or the CLI",
            )
    return await handler(request)
