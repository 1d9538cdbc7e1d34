"""The mobile server: a web client for browsers and an API for mobile apps, relaying the
recording servers' streams. Encryption is per mobile server: with it on, the HTTPS
listener serves and the HTTP listener only redirects to it.

The mobile server is itself a client of the recording servers (and of the management
server for log-ins): it verifies their certificates against its own trust store, and a
recording server that fails verification is refused with the reason.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from importlib import resources
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
from aiohttp import web

from watchkeep.client import ApiError, call_json, open_session
from watchkeep.errors import ConnectionFailed, PlaintextToTlsPort
from watchkeep.servers._config import ServerConfig
from watchkeep.servers._forwarded import client_headers
from watchkeep.servers._linked import LinkedServer
from watchkeep.servers._listener import Listener
from watchkeep.servers._problems import camera_not_allowed, problem
from watchkeep.servers._tokens import may_view
from watchkeep.servers._webshared import SHARED_PATHS, add_shared_routes
from watchkeep.tls import Endpoint, explain_connection_failure

__all__ = ["MobileServer"]

log = logging.getLogger("watchkeep.mobile")
MAX_CACHED_STREAM_TOKENS = 10_000


class MobileServer(LinkedServer):
    public_paths = SHARED_PATHS | {"/", "/index.html", "/api/v1/login", "/healthz", "/metrics"}

    def __init__(self, config: ServerConfig) -> None:
        super().__init__(config)
        self.app = web.Application(middlewares=[self.token_middleware("user")])
        r = self.app.router
        r.add_get("/", self.index)
        r.add_get("/index.html", self.index)
        r.add_get("/healthz", self.health)
        add_shared_routes(r)
        r.add_get("/metrics", self.metrics)
        r.add_post("/api/v1/login", self.login)
        r.add_post("/api/v1/logout", self.logout)
        r.add_get("/api/v1/cameras", self.cameras)
        r.add_get("/api/v1/cameras/{name}/live.mjpeg", self.relay)
        r.add_get("/api/v1/cameras/{name}/snapshot.jpg", self.relay)
        r.add_get("/api/v1/cameras/{name}/live.ws", self.relay_ws)
        r.add_get("/api/v1/cameras/{name}/playback.m3u8", self.relay)
        r.add_get("/api/v1/cameras/{name}/recordings/{file}", self.relay)
        self.runner = config.listener_limits.runner(self.app)
        self.redirect_app = web.Application()
        self.redirect_app.router.add_route("*", "/{tail:.*}", self.redirect)
        self.redirect_runner = config.listener_limits.runner(self.redirect_app)
        self.http: Listener | None = None
        self.https: Listener | None = None
        self.session: aiohttp.ClientSession | None = None
        self._hosts: dict[str, str] = {}
        # (user token's jti, camera) -> (where it records, stream token, until when to use it)
        self._stream_tokens: dict[tuple[str, str], tuple[Endpoint, str, float]] = {}

    # -- encryption ----------------------------------------------------------------------

    def encrypted_now(self) -> bool:
        return bool(self.https and self.https.running)

    async def reconcile_listeners(self) -> None:
        """With encryption on, HTTPS serves and plain HTTP only points browsers at it
        (even while no certificate can be used yet: the web client and its log-in are never
        served in plaintext then); with it off, plain HTTP serves."""
        assert self.http is not None
        assert self.https is not None
        want = self.encryption and self.tls is not None
        if want and not self.https.running:
            await self.https.start(self.server_ssl_context())
        elif not want and self.https.running:
            await self.https.stop()
        runner = self.redirect_runner if self.encryption else self.runner
        if not self.http.running or self.http.runner is not runner:
            self.http.runner = runner
            await self.http.restart(None)

    async def redirect(self, request: web.Request) -> web.Response:
        location = f"https://{self.config.host}:{self.config.ports['https']}{request.path_qs}"
        raise web.HTTPMovedPermanently(location)

    # -- pages and API -------------------------------------------------------------------

    async def index(self, _request: web.Request) -> web.Response:
        page = resources.files("watchkeep.servers").joinpath("webclient.html").read_text()
        return web.Response(
            text=page,
            content_type="text/html",
            headers={
                "Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; "
                "media-src 'self' blob:; style-src 'unsafe-inline'; "
                "script-src 'self' 'unsafe-inline'",
                "Cache-Control": "no-store",
            },
        )

    async def health(self, _request: web.Request) -> web.Response:
        return web.json_response({"server": self.config.name, "encryption": self.encrypted_now()})

    async def _call_management(self, method: str, path: str, **kwargs: Any) -> Any:
        """``call_json`` to the site's management server, the one the heartbeats go to;
        one that does not answer is passed over for the site's next (every one of them
        honours the others' tokens), each tried once."""
        assert self.session is not None
        count = len(self.link.addresses())
        first = self._ms
        for attempt in range(count):
            index = (first + attempt) % count
            endpoint = self._management_endpoint(self.ms_encryption, index)
            context = self.client_ssl_context(present_certificate=False) if endpoint.tls else None
            try:
                return await call_json(
                    self.session, endpoint, method, path, ssl_context=context, **kwargs
                )
            except ConnectionFailed as exc:
                if attempt + 1 == count or not self._next_management(str(exc), index):
                    raise
        raise AssertionError("unreachable: the last attempt raises")

    async def login(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except (ValueError, RecursionError):  # RecursionError: JSON nested thousands deep
            return problem(400, "malformed JSON", "the login is not JSON")
        if not isinstance(body, dict):
            return problem(400, "bad login", "the login is a JSON object: user and password")
        # The token the management server returns is for it and for this server alone.
        body = {**body, "audience": self.config.name}
        try:
            reply = await self._call_management(
                "POST",
                "/api/v1/login",
                body=body,
                # The management server limits failed log-ins per client address: it must
                # see this client's, not this server's (see _forwarded.py).
                headers=client_headers(request.remote, self.link.registration_key, time.time()),
            )
        except ApiError as exc:
            retry = exc.document.get("retry_after")
            if not (exc.status == 429 and isinstance(retry, int)):
                return problem(exc.status, "login failed", exc.describe(), code=exc.code or None)
            # The management server's back-off, passed on as it said it.
            refused = problem(
                429, "login failed", exc.describe(), code=exc.code or None, retry_after=retry
            )
            refused.headers["Retry-After"] = str(retry)
            return refused
        except ConnectionFailed as exc:
            return problem(502, "management server unreachable", exc.describe(), fix=exc.fix)
        return web.json_response({"token": reply["token"], "role": reply["role"]})

    async def logout(self, request: web.Request) -> web.Response:
        """End the caller's session at the management server (its token, checked here
        already, goes with the call and is refused from then on)."""
        try:
            await self._call_management(
                "POST",
                "/api/v1/logout",
                token=request["token"],
            )
        except ApiError as exc:
            return problem(exc.status, "logout failed", exc.describe(), code=exc.code or None)
        except ConnectionFailed as exc:
            return problem(502, "management server unreachable", exc.describe(), fix=exc.fix)
        return web.Response(status=204)

    async def cameras(self, request: web.Request) -> web.Response:
        return web.json_response(
            [
                {"name": c["name"], "recording_server": c.get("recording_server")}
                for c in self.site_cameras
                if may_view(request["claims"], str(c.get("name") or ""))
            ]
        )

    async def _stream_access(self, request: web.Request, camera: str) -> tuple[Endpoint, str]:
        """Where ``camera`` records now, and a stream token for it there, asked of the
        management server with the user's own token (recording servers accept no user
        token); kept while it is good, so that snapshots refreshed every second do not ask
        each time."""
        claims = request["claims"]
        key = (str(claims.get("jti")), camera)
        now = time.monotonic()
        cached = self._stream_tokens.get(key)
        if cached is not None and cached[2] > now:
            return cached[0], cached[1]
        reply = await self._call_management(
            "POST",
            f"/api/v1/cameras/{quote(camera, safe='')}/stream-token",
            token=request["token"],
        )
        self._hosts[str(reply["host"])] = str(reply["address"])
        found = Endpoint(
            str(reply["recording_server"]),
            str(reply["host"]),
            str(reply["address"]),
            int(reply["port"]),
            bool(reply["encryption"]),
        )
        if len(self._stream_tokens) >= MAX_CACHED_STREAM_TOKENS:
            self._stream_tokens = {k: v for k, v in self._stream_tokens.items() if v[2] > now}
            if len(self._stream_tokens) >= MAX_CACHED_STREAM_TOKENS:
                self._stream_tokens.clear()
        # Used for at most half its life: a stream that opens with it has time to start.
        life = max(0.0, float(reply.get("expires_in", 0)) / 2)
        self._stream_tokens[key] = (found, str(reply["token"]), now + min(life, 60.0))
        return found, str(reply["token"])

    async def _access_or_problem(
        self, request: web.Request, name: str
    ) -> tuple[Endpoint, str] | web.Response:
        """:meth:`_stream_access` for a camera the user may view, or the problem to answer."""
        if not may_view(request["claims"], name):
            return camera_not_allowed(name)
        try:
            return await self._stream_access(request, name)
        except ApiError as exc:
            return problem(exc.status, "camera refused", exc.describe(), code=exc.code or None)
        except ConnectionFailed as exc:
            return problem(502, "management server unreachable", exc.describe(), fix=exc.fix)

    async def relay(self, request: web.Request) -> web.StreamResponse:
        """Fetch the stream from the camera's recording server, verifying its certificate,
        and pass the bytes on as they come."""
        name = request.match_info["name"]
        access = await self._access_or_problem(request, name)
        if isinstance(access, web.Response):
            return access
        endpoint, token = access
        assert self.session is not None
        while True:
            scheme = "https" if endpoint.tls else "http"
            # The query (a playback's range) and a byte range (HLS segments) go on as asked;
            # the user's own token, if it came in the query, stays here.
            query = urlencode([(k, v) for k, v in request.query.items() if k != "token"])
            url = f"{scheme}://{endpoint.host}:{endpoint.port}{request.path}"
            url += f"?{query}" if query else ""
            context = self.client_ssl_context(present_certificate=False) if endpoint.tls else False
            headers = {"Authorization": f"Bearer {token}"}
            if "Range" in request.headers:
                headers["Range"] = request.headers["Range"]
            try:
                upstream = await self.session.get(url, headers=headers, ssl=context)
                break
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                error = await explain_connection_failure(
                    exc, endpoint, trust_dir=str(self.config.trust_store)
                )
            if isinstance(error, PlaintextToTlsPort) and not endpoint.tls:
                # The site map (learnt at the last heartbeat) is older than the recording
                # server's encryption: go up to verified TLS, never down.
                endpoint = dataclasses.replace(endpoint, tls=True)
                continue
            log.error("%s: camera %s: %s", self.config.name, name, error)
            return problem(
                502,
                "recording server refused",
                error.describe(),
                server=endpoint.server,
                fix=error.fix,
            )
        async with upstream:
            if upstream.status not in (200, 206):
                return web.Response(
                    status=upstream.status,
                    body=await upstream.read(),
                    content_type=upstream.content_type,
                )
            passed = {
                name: upstream.headers[name]
                for name in ("Content-Range", "Content-Length", "Accept-Ranges")
                if name in upstream.headers
            }
            response = web.StreamResponse(
                status=upstream.status,
                headers={
                    "Content-Type": upstream.headers.get(
                        "Content-Type", "application/octet-stream"
                    ),
                    "Cache-Control": "no-store",
                    **passed,
                },
            )
            await response.prepare(request)
            try:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
            except (ConnectionError, aiohttp.ClientError, asyncio.CancelledError):
                pass
        return response

    async def relay_ws(self, request: web.Request) -> web.StreamResponse:
        """Relay a camera's live WebSocket from its recording server (verified as for
        :meth:`relay`): every message passed on as it comes, nothing parsed or kept."""
        name = request.match_info["name"]
        access = await self._access_or_problem(request, name)
        if isinstance(access, web.Response):
            return access
        endpoint, token = access
        assert self.session is not None
        scheme = "wss" if endpoint.tls else "ws"
        url = f"{scheme}://{endpoint.host}:{endpoint.port}{request.path}"
        context = self.client_ssl_context(present_certificate=False) if endpoint.tls else False
        try:
            upstream = await self.session.ws_connect(
                url,
                headers={"Authorization": f"Bearer {token}"},
                ssl=context,
                heartbeat=20,
                max_msg_size=64 * 1024 * 1024,
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            error = await explain_connection_failure(
                exc, endpoint, trust_dir=str(self.config.trust_store)
            )
            log.error("%s: camera %s: %s", self.config.name, name, error)
            return problem(
                502,
                "recording server refused",
                error.describe(),
                server=endpoint.server,
                fix=error.fix,
            )
        viewer = web.WebSocketResponse(heartbeat=20, max_msg_size=1 << 16)
        await viewer.prepare(request)

        async def from_viewer() -> None:
            async for message in viewer:
                if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.ERROR):
                    break
            await upstream.close()

        reader = asyncio.create_task(from_viewer())
        try:
            async for message in upstream:
                if message.type == aiohttp.WSMsgType.BINARY:
                    await viewer.send_bytes(message.data)
                elif message.type == aiohttp.WSMsgType.TEXT:
                    await viewer.send_str(message.data)
                else:
                    break
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            reader.cancel()
            await upstream.close()
            await viewer.close()
        return viewer

    # -- life cycle ----------------------------------------------------------------------

    async def start(self) -> None:
        self.check_certificate_at_start()
        self._hosts.update({host: address for host, address, _ in self.link.addresses()})
        self._learn_hosts()
        self.session = open_session(self._hosts, timeout=10)
        await self.runner.setup()
        await self.redirect_runner.setup()
        self.http = Listener(
            self.config.name,
            "http",
            self.runner,
            self.config.address,
            self.config.ports["http"],
            limits=self.config.listener_limits,
        )
        self.https = Listener(
            self.config.name,
            "https",
            self.runner,
            self.config.address,
            self.config.ports["https"],
            limits=self.config.listener_limits,
        )
        # As it was last configured (kept on disk).
        await self.reconcile_listeners()
        self.spawn(self.heartbeat_loop())

    async def apply_config(self, config: dict[str, Any], *, authenticated: bool = False) -> None:
        await super().apply_config(config, authenticated=authenticated)
        self._learn_hosts()

    def _learn_hosts(self) -> None:
        # The session's resolver reads this dict: the site map is the mobile server's DNS.
        for server in self.site.values():
            if "host" in server:
                self._hosts[str(server["host"])] = str(server["address"])

    async def shutdown(self) -> None:
        for listener in (self.http, self.https):
            if listener is not None:
                await listener.stop()
        if self.session is not None:
            await self.session.close()
        await self.runner.cleanup()
        await self.redirect_runner.cleanup()
