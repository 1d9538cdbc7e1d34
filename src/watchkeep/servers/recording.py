"""The recording server (and failover recording server): registers with the management
server, heartbeats, takes its configuration, and serves data streams and the control link."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from watchkeep.client import ApiError, call_json, open_session
from watchkeep.errors import ConnectionFailed, PlaintextToTlsPort, TlsToPlaintextPort
from watchkeep.servers._base import ServerProcess
from watchkeep.servers._config import ServerConfig
from watchkeep.servers._listener import Listener
from watchkeep.servers._problems import problem
from watchkeep.servers._tokens import InvalidToken, TokenVerifier
from watchkeep.tls import ClientAuth, Endpoint, ReloadableServerContext, ServerIdentity

__all__ = ["RecordingServer"]

log = logging.getLogger("watchkeep.recording")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class RecordingServer(ServerProcess):
    def __init__(self, config: ServerConfig) -> None:
        super().__init__(config)
        assert config.management is not None
        self.link = config.management
        state = self.load_state()
        self.ms_encryption: bool = bool(state.get("ms_encryption", False))
        self.encryption: bool = bool(state.get("encryption", False))
        self.camera_config: list[dict[str, Any]] = list(state.get("cameras", []))
        self.covering: str | None = state.get("covering")
        self.site: dict[str, Any] = dict(state.get("site", {}))
        key = state.get("token_public_key")
        self.verifier: TokenVerifier | None = TokenVerifier.from_b64(key) if key else None
        self.registered = asyncio.Event()
        self.last_refusal: str | None = None

        self.data_app = web.Application(middlewares=[self._auth("user")])
        self.data_app.router.add_get("/api/v1/status", self.status)
        self.control_app = web.Application(middlewares=[self._auth("control")])
        self.control_app.router.add_post("/control/v1/config", self.receive_config)
        self.control_app.router.add_get("/control/v1/status", self.status)
        self.data_runner = web.AppRunner(self.data_app, access_log=None)
        self.control_runner = web.AppRunner(self.control_app, access_log=None)
        self.data: Listener | None = None
        self.control: Listener | None = None
        self._control_tls: ReloadableServerContext | None = None

    # -- tokens --------------------------------------------------------------------------

    def _auth(self, scope: str) -> Any:
        @web.middleware
        async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            header = request.headers.get("Authorization", "")
            token = header[7:] if header.startswith("Bearer ") else request.query.get("token", "")
            if self.verifier is None:
                return problem(
                    503,
                    "not registered",
                    f"{self.config.name} has not registered with the management server yet",
                    server=self.config.name,
                )
            try:
                request["claims"] = self.verifier.verify(token, scope=scope)
            except InvalidToken as exc:
                return problem(401, "invalid token", exc.message, code="auth.token", fix=exc.fix)
            if scope == "control":
                refused = self._check_management_peer(request)
                if refused is not None:
                    return refused
            return await handler(request)

        return middleware

    def _check_management_peer(self, request: web.Request) -> web.Response | None:
        """On an encrypted control link only the management server's certificate is let in
        (any certificate of the site CA verifies; its names must be the management server's)."""
        transport = request.transport
        if transport is None or transport.get_extra_info("ssl_object") is None:
            return None
        cert = transport.get_extra_info("peercert") or {}
        names = [v.lower() for k, v in cert.get("subjectAltName", ()) if k == "DNS"]
        if self.link.host not in names:
            return problem(
                403,
                "not the management server",
                f"the control link of {self.config.name} accepts only {self.link.host}; the "
                f"peer's certificate names {', '.join(names) or 'nothing'}",
                code="cert.hostname",
                server=self.config.name,
            )
        return None

    # -- handlers ------------------------------------------------------------------------

    async def status(self, _request: web.Request) -> web.Response:
        return web.json_response(self.status_json())

    def status_json(self) -> dict[str, Any]:
        return {
            "name": self.config.name,
            "role": self.config.role.value,
            "encryption": self.encryption,
            "ms_encryption": self.ms_encryption,
            "data_tls": bool(self.data and self.data.tls),
            "control_tls": bool(self.control and self.control.tls),
            "cameras": [c["name"] for c in self.camera_config],
            "covering": self.covering,
        }

    async def receive_config(self, request: web.Request) -> web.Response:
        if request["claims"].get("sub") != self.link_name():
            return problem(
                403,
                "not the management server",
                "control calls come from the management server only",
            )
        try:
            config = await request.json()
        except ValueError:
            return problem(400, "malformed JSON", "the configuration is not JSON")
        if not isinstance(config, dict):
            return problem(400, "bad configuration", "expected a JSON object")
        await self.apply_config(config)
        return web.json_response(self.status_json())

    def link_name(self) -> str:
        # The management server's name as it signs control tokens; learnt from the site map.
        for name, info in self.site.items():
            if info.get("role") == "management":
                return str(name)
        return ""

    # -- configuration from the management server ----------------------------------------

    async def apply_config(self, config: dict[str, Any]) -> None:
        key = config.get("token_public_key")
        if isinstance(key, str):
            self.verifier = TokenVerifier.from_b64(key)
        self.ms_encryption = bool(config.get("ms_encryption", self.ms_encryption))
        self.encryption = bool(config.get("encryption", self.encryption))
        self.covering = config.get("covering")
        if isinstance(config.get("site"), dict):
            self.site = dict(config["site"])
        cams = config.get("cameras")
        if isinstance(cams, list):
            await self.set_cameras([c for c in cams if isinstance(c, dict) and "name" in c])
        self.save_state(
            {
                "ms_encryption": self.ms_encryption,
                "encryption": self.encryption,
                "cameras": self.camera_config,
                "covering": self.covering,
                "site": self.site,
                "token_public_key": key if isinstance(key, str) else None,
            }
        )
        await self.reconcile_listeners()

    async def set_cameras(self, cams: list[dict[str, Any]]) -> None:
        if [c["name"] for c in cams] != [c["name"] for c in self.camera_config]:
            log.info(
                "%s: cameras now %s", self.config.name, ", ".join(c["name"] for c in cams) or "none"
            )
        self.camera_config = cams

    async def reconcile_listeners(self) -> None:
        assert self.data is not None
        assert self.control is not None
        can_tls = self.tls is not None
        want_data = self.encryption and can_tls
        if want_data != self.data.tls:
            await self.data.restart(self.server_ssl_context() if want_data else None)
        want_control = self.ms_encryption and can_tls
        if want_control != self.control.tls:
            await self.control.restart(self._control_ssl() if want_control else None)

    def _control_ssl(self) -> Any:
        assert self.tls is not None
        # The control listener shares the reloadable context machinery: the front context
        # asks for client certificates, so a separate reloadable context is kept for it.
        if self._control_tls is None:
            identity = self.config.identity
            assert isinstance(identity, ServerIdentity)
            self._control_tls = ReloadableServerContext(
                identity,
                self.config.policy,
                client_auth=ClientAuth.REQUIRED,
                trust_dir=self.config.trust_store,
            )
        return self._control_tls.front

    def reload_now(self) -> None:
        super().reload_now()
        if self._control_tls is not None:
            self._control_tls.reload()

    # -- heartbeats ----------------------------------------------------------------------

    def heartbeat_body(self) -> dict[str, Any]:
        from watchkeep.servers._base import utcnow

        return {
            "role": self.config.role.value,
            "host": self.config.host,
            "address": self.config.address,
            "ports": self.config.ports,
            "readiness": self.readiness.as_json(utcnow()),
            "encrypted_now": bool(self.data and self.data.tls),
            "registration_key": self.link.registration_key or "",
        }

    async def heartbeat_once(self, session: Any) -> None:
        tls = self.ms_encryption
        endpoint = Endpoint(
            "management server", self.link.host, self.link.address, self.link.port, tls
        )
        context = self.client_ssl_context(present_certificate=self.tls is not None) if tls else None
        try:
            config = await call_json(
                session,
                endpoint,
                "POST",
                f"/api/v1/servers/{self.config.name}/heartbeat",
                ssl_context=context,
                body=self.heartbeat_body(),
                trust_dir=str(self.config.trust_store) if self.config.trust_store else None,
            )
        except PlaintextToTlsPort:
            # The management server turned encryption on: follow it (never the other way
            # round without being told over the encrypted link).
            log.info(
                "%s: the management server now speaks TLS; switching the link", self.config.name
            )
            self.ms_encryption = True
            return
        except TlsToPlaintextPort as exc:
            self._refused(
                str(exc) + " (staying encrypted: a plaintext management link is refused "
                "unless the management server announced it over TLS)"
            )
            return
        except (ConnectionFailed, ApiError) as exc:
            self._refused(str(exc))
            return
        if self.last_refusal is not None:
            log.info("%s: registered with the management server again", self.config.name)
        self.last_refusal = None
        if isinstance(config, dict):
            await self.apply_config(config)
        self.registered.set()

    def _refused(self, message: str) -> None:
        if message != self.last_refusal:
            log.error("%s: %s", self.config.name, message)
        self.last_refusal = message

    async def _heartbeat_loop(self) -> None:
        async with open_session({self.link.host: self.link.address}, timeout=5) as session:
            while not self.stopping.is_set():
                await self.heartbeat_once(session)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), self.config.heartbeat_interval)

    # -- life cycle ----------------------------------------------------------------------

    async def start(self) -> None:
        self.check_certificate_at_start()
        await self.data_runner.setup()
        await self.control_runner.setup()
        self.data = Listener(
            self.config.name,
            "data",
            self.data_runner,
            self.config.address,
            self.config.ports["data"],
        )
        self.control = Listener(
            self.config.name,
            "control",
            self.control_runner,
            self.config.address,
            self.config.ports["control"],
        )
        can_tls = self.tls is not None
        await self.data.start(self.server_ssl_context() if self.encryption and can_tls else None)
        await self.control.start(self._control_ssl() if self.ms_encryption and can_tls else None)
        self.spawn(self._heartbeat_loop())

    async def shutdown(self) -> None:
        for listener in (self.data, self.control):
            if listener is not None:
                await listener.stop()
        await self.data_runner.cleanup()
        await self.control_runner.cleanup()
