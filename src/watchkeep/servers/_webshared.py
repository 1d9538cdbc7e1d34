"""The browser files both web clients load (the mobile server's page and the management
client): ``/web/video.js``, live and recorded video of H.264/H.265 cameras (``web/``), and
``/vendor/hls.light.min.js``, hls.js as vendored (``vendor/README.md``). One copy of each,
served by each server at the same path."""

from __future__ import annotations

from importlib import resources

from aiohttp import web

__all__ = ["SHARED_PATHS", "add_shared_routes", "shared_file"]

_FILES = {
    "/web/video.js": ("web", "video.js"),
    "/vendor/hls.light.min.js": ("vendor", "hls.light.min.js"),
}
SHARED_PATHS = frozenset(_FILES)


def shared_file(path: str) -> bytes:
    """The content of the shared file served at ``path``."""
    directory, name = _FILES[path]
    return resources.files("watchkeep.servers").joinpath(directory, name).read_bytes()


async def _serve(request: web.Request) -> web.Response:
    return web.Response(
        body=shared_file(request.path),
        content_type="text/javascript",
        charset="utf-8",
        headers={"Cache-Control": "no-cache"},
    )


def add_shared_routes(router: web.UrlDispatcher) -> None:
    for path in _FILES:
        router.add_get(path, _serve)
