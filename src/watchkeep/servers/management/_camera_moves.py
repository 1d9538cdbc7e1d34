"""A camera moved to another recording server (administrators only): its source stays as
stored (so its password need not be typed again), the failover plan is made anew and the
recording servers get their new camera lists."""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web

from watchkeep.servers._bodies import json_object
from watchkeep.servers._problems import problem
from watchkeep.servers.management._failover import Failover
from watchkeep.servers.management._sessions import Sessions
from watchkeep.servers.management._site import SiteView
from watchkeep.site import ServerRole

__all__ = ["CameraMoves"]

log = logging.getLogger("watchkeep.management")


class CameraMoves:
    def __init__(
        self,
        site: SiteView,
        sessions: Sessions,
        failover: Failover,
        *,
        spawn_push: Callable[[], None],
    ) -> None:
        self.site = site
        self.sessions = sessions
        self.failover = failover
        self._spawn_push = spawn_push

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_patch("/api/v1/cameras/{name}", self.move)

    async def move(self, request: web.Request) -> web.Response:
        """``{"recording_server": NAME}``: record the camera there from now on."""
        claims = self.sessions.claims(request, role="administrator")
        name = request.match_info["name"]
        body = await json_object(request)
        target = body.get("recording_server")
        camera = next((c for c in self.site.cameras() if c.name == name), None)
        if camera is None:
            return problem(404, "unknown camera", f"no camera {name!r}")
        server = self.site.server(target) if isinstance(target, str) else None
        if server is None or server.role is not ServerRole.RECORDING:
            return problem(
                404,
                "unknown recording server",
                f"{target!r} is not a registered recording server",
                fix="watchkeep site status lists the recording servers",
            )
        self.site.store.put_camera(name, server.name, camera.source)
        self.failover.rebalance()
        self._spawn_push()
        log.info("camera %s assigned to %s by %r", name, server.name, claims.get("sub"))
        return web.json_response({"name": name, "recording_server": server.name})
