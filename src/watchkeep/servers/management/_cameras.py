"""Cameras: administrators add and remove them; users list the ones they may view, get a
stream token for one (where it records now, and a token good there only), or its latest
picture fetched by the management server from its recording server."""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from watchkeep.client import open_session
from watchkeep.media import source_problem
from watchkeep.servers._bodies import json_object
from watchkeep.servers._config import ServerConfig
from watchkeep.servers._problems import problem
from watchkeep.servers._tokens import may_view
from watchkeep.servers.management._failover import Failover
from watchkeep.servers.management._http import Refused
from watchkeep.servers.management._sessions import Sessions
from watchkeep.servers.management._site import SiteView
from watchkeep.site import Camera, Server, ServerRole
from watchkeep.tls import Endpoint, explain_connection_failure

__all__ = ["Cameras"]

log = logging.getLogger("watchkeep.management")

# Seconds the token lives that this server makes for its own call to a recording server.
SNAPSHOT_TOKEN_TTL = 30.0


class Cameras:
    def __init__(
        self,
        config: ServerConfig,
        site: SiteView,
        sessions: Sessions,
        failover: Failover,
        *,
        spawn_push: Callable[[], None],
        client_context: Callable[[], ssl.SSLContext],
    ) -> None:
        self.config = config
        self.site = site
        self.sessions = sessions
        self.failover = failover
        self._spawn_push = spawn_push
        self._client_context = client_context  # verifying, presenting no certificate

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/api/v1/cameras", self.list_cameras)
        router.add_post("/api/v1/cameras", self.add_camera)
        router.add_delete("/api/v1/cameras/{name}", self.delete_camera)
        router.add_get("/api/v1/cameras/{name}/snapshot.jpg", self.snapshot)
        router.add_post("/api/v1/cameras/{name}/stream-token", self.stream_token)

    async def list_cameras(self, request: web.Request) -> web.Response:
        claims = self.sessions.claims(request)
        return web.json_response(
            [
                {
                    "name": c.name,
                    "recording_server": c.served_by,
                    "assigned_server": c.recording_server,
                }
                for c in self.site.cameras()
                if may_view(claims, c.name)
            ]
        )

    async def add_camera(self, request: web.Request) -> web.Response:
        self.sessions.claims(request, role="administrator")
        body = await json_object(request)
        name, rs, source = body.get("name"), body.get("recording_server"), body.get("source")
        if not isinstance(name, str):
            return problem(400, "bad camera", "name must be a string")
        refused = source_problem(name, source)
        if refused is not None or not isinstance(source, dict):
            why, fix = refused or ("a camera's source is an object", "give its kind")
            return problem(400, "bad camera", why, fix=fix)
        known = {s.name: s for s in self.site.servers()}
        if not isinstance(rs, str) or rs not in known or known[rs].role is not ServerRole.RECORDING:
            return problem(
                404,
                "unknown recording server",
                f"{rs!r} is not a registered recording server",
                fix="watchkeep site status lists the recording servers",
            )
        self.site.store.put_camera(name, rs, source)
        self.failover.rebalance()
        self._spawn_push()
        return web.json_response({"name": name, "recording_server": rs}, status=201)

    async def delete_camera(self, request: web.Request) -> web.Response:
        self.sessions.claims(request, role="administrator")
        name = request.match_info["name"]
        if not self.site.store.delete_camera(name):
            return problem(404, "unknown camera", f"no camera {name!r}")
        self._spawn_push()
        return web.json_response({"deleted": name})

    def _camera_for(self, claims: dict[str, Any], name: str) -> tuple[Camera, Server]:
        """The camera ``name`` if the caller may view it, and the server that records it."""
        camera = next((c for c in self.site.cameras() if c.name == name), None)
        if camera is None or not may_view(claims, name):
            raise Refused(problem(404, "unknown camera", f"no camera {name!r} you may view"))
        server = self.site.server(camera.served_by)
        if server is None:
            raise Refused(
                problem(502, "no recording server", f"camera {name} has no recording server")
            )
        return camera, server

    async def stream_token(self, request: web.Request) -> web.Response:
        """Where a camera records now, and a token to watch it there (live or playback).
        It lives no longer than the caller's own token, nor than token_ttl."""
        claims = self.sessions.claims(request)
        camera, server = self._camera_for(claims, request.match_info["name"])
        ttl = min(self.config.token_ttl, float(claims["exp"]) - time.time())
        return web.json_response(
            {
                "camera": camera.name,
                "recording_server": server.name,
                "host": server.host,
                "address": server.address,
                "port": server.ports["data"],
                "encryption": server.encryption,
                "token": self.sessions.stream_token(claims, server, camera.name, ttl),
                "expires_in": int(ttl),
            }
        )

    async def snapshot(self, request: web.Request) -> web.Response:
        """A camera's latest picture, fetched from its recording server like any client
        would: over TLS verified against this server's trust store when that server's
        encryption is on (the specification's "management server ... images"), with a
        stream token of the caller's for that camera at that server."""
        claims = self.sessions.claims(request)
        camera, server = self._camera_for(claims, request.match_info["name"])
        name = camera.name
        endpoint = Endpoint(
            server.name, server.host, server.address, server.ports["data"], server.encryption
        )
        context = self._client_context() if server.encryption else None
        token = self.sessions.stream_token(claims, server, name, SNAPSHOT_TOKEN_TTL)
        async with open_session({server.host: server.address}, timeout=5) as session:
            url = f"{'https' if endpoint.tls else 'http'}://{server.host}:{endpoint.port}"
            try:
                async with session.get(
                    f"{url}/api/v1/cameras/{name}/snapshot.jpg",
                    headers={"Authorization": f"Bearer {token}"},
                    ssl=context if context is not None else False,
                ) as upstream:
                    body = await upstream.read()
                    if upstream.status != 200:
                        return web.Response(
                            status=upstream.status, body=body, content_type=upstream.content_type
                        )
                    return web.Response(body=body, content_type="image/jpeg")
            except (OSError, TimeoutError, aiohttp.ClientError) as exc:
                error = await explain_connection_failure(
                    exc, endpoint, trust_dir=str(self.config.trust_store)
                )
                return problem(
                    502,
                    "recording server refused",
                    error.describe(),
                    server=server.name,
                    fix=error.fix,
                )
