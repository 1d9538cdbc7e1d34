"""Cross-origin reads of a recording server's data listener by the management client.

The management client's page (its origin: the management server's API listener) plays
H.264/H.265 recordings straight from the recording server with hls.js: requests carrying
``Authorization: Bearer`` (a stream token) and ``Range``, which a browser lets the page make
and read only if this server says so (CORS). It says so to the management server's origins
only, by either scheme; no cookie is ever involved (no ``Allow-Credentials``): the stream
token in the header is what opens the video, as for any other client.
"""

from __future__ import annotations

from aiohttp import web

from watchkeep.servers._config import ManagementLink
from watchkeep.servers._linked import Handler

__all__ = ["CrossOrigin"]

PREFLIGHT_MAX_AGE = 600


class CrossOrigin:
    def __init__(self, link: ManagementLink) -> None:
        default = {"http": 80, "https": 443}
        self.origins = frozenset(
            f"{scheme}://{link.host}" + ("" if link.port == default[scheme] else f":{link.port}")
            for scheme in default
        )

    def install(self, app: web.Application) -> None:
        """Answer preflights before the token is asked for (a browser sends none with
        them), and mark every answer to an allowed origin as readable by it."""
        app.middlewares.insert(0, self.preflight)
        app.on_response_prepare.append(self.allow)

    @web.middleware
    async def preflight(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if (
            request.method != "OPTIONS"
            or origin not in self.origins
            or "Access-Control-Request-Method" not in request.headers
        ):
            return await handler(request)
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Allow-Methods": "GET",
                "Access-Control-Allow-Headers": "Authorization, Range",
                "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE),
                "Vary": "Origin",
            },
        )

    async def allow(self, request: web.Request, response: web.StreamResponse) -> None:
        origin = request.headers.get("Origin")
        if origin in self.origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = "Content-Range, Content-Length"
            response.headers["Vary"] = "Origin"
