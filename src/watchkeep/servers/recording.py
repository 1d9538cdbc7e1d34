"""The recording server (and failover recording server): registers with the management
server, heartbeats, takes its configuration, and serves data streams and the control link."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from watchkeep.errors import WatchkeepError
from watchkeep.servers._config import ServerConfig
from watchkeep.servers._cors import CrossOrigin
from watchkeep.servers._linked import LinkedServer
from watchkeep.servers._listener import Listener
from watchkeep.servers._problems import problem
from watchkeep.servers._streams import CameraService
from watchkeep.servers._tokens import config_digest
from watchkeep.tls import ClientAuth, ReloadableServerContext, ServerIdentity

__all__ = ["RecordingServer"]

log = logging.getLogger("watchkeep.recording")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class RecordingServer(LinkedServer):
    public_paths = frozenset({"/metrics"})

    def __init__(self, config: ServerConfig) -> None:
        super().__init__(config)
        # Users reach the data listener with stream tokens the management server made for
        # this server and the cameras they may view.
        self.data_app = web.Application(middlewares=[self.token_middleware("stream")])
        # The management client's page plays recordings from here (HLS, with hls.js).
        assert config.management is not None
        CrossOrigin(config.management).install(self.data_app)
        self.data_app.router.add_get("/api/v1/status", self.status)
        self.data_app.router.add_get("/metrics", self.metrics)
        recording = config.recording
        self.media = CameraService(
            config.name,
            config.data_dir,
            segment_seconds=recording.segment_seconds,
            max_age=recording.max_age,
            max_bytes=recording.max_bytes,
            writer=recording.writer,
        )
        self.media.add_routes(self.data_app)
        self.control_app = web.Application(middlewares=[self.token_middleware("control")])
        self.control_app.router.add_post("/control/v1/config", self.receive_config)
        self.control_app.router.add_get("/control/v1/status", self.status)
        self.data_runner = config.listener_limits.runner(self.data_app)
        self.control_runner = config.listener_limits.runner(self.control_app)
        self.data: Listener | None = None
        self.control: Listener | None = None
        self._control_tls: ReloadableServerContext | None = None
        # Listeners kept closed because their encryption is on and TLS cannot be had yet,
        # with the reason last logged.
        self._closed_for_tls: dict[str, str | None] = {}

    def check_control_peer(self, request: web.Request) -> web.Response | None:
        """On an encrypted control link only the management server's certificate is let in
        (any certificate of the site CA verifies; its names must be the management server's)."""
        transport = request.transport
        if transport is None or transport.get_extra_info("ssl_object") is None:
            return None
        cert = transport.get_extra_info("peercert") or {}
        names = [v.lower() for k, v in cert.get("subjectAltName", ()) if k == "DNS"]
        if not {host for host, _, _ in self.link.addresses()} & set(names):
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

    async def status(self, request: web.Request) -> web.Response:
        # A user sees the cameras its token opens; the management server (control link)
        # sees them all.
        allowed = request["claims"].get("cameras", "*")
        return web.json_response(self.status_json(None if allowed == "*" else allowed))

    def heartbeat_body(self) -> dict[str, Any]:
        # The management server shows in the site status which cameras fail, and why.
        return {**super().heartbeat_body(), "camera_problems": self.media.problems()}

    def status_json(self, cameras: list[str] | None = None) -> dict[str, Any]:
        """What this server does now: every camera, or those named in ``cameras``."""
        stats = self.media.stats()
        return {
            "name": self.config.name,
            "role": self.config.role.value,
            "encryption": self.encryption,
            "ms_encryption": self.ms_encryption,
            "data_tls": self.encrypted_now(),
            "control_tls": bool(self.control and self.control.running and self.control.tls),
            "cameras": stats if cameras is None else [c for c in stats if c["name"] in cameras],
            "recorder": self.media.recorder_stats(),
            "covering": self.covering,
            # The digest of the configuration it runs: the management server's answer to a
            # heartbeat carries the same one once the configuration has reached this server.
            "config_digest": self.config_digest,
        }

    async def receive_config(self, request: web.Request) -> web.Response:
        if request["claims"].get("sub") not in self.management_names():
            return problem(
                403,
                "not the management server",
                "control calls come from the management server only",
            )
        try:
            config = await request.json()
        except (ValueError, RecursionError):  # RecursionError: JSON nested thousands deep
            return problem(400, "malformed JSON", "the configuration is not JSON")
        if not isinstance(config, dict):
            return problem(400, "bad configuration", "expected a JSON object")
        if request["claims"].get("body") != config_digest(config):
            # A token seen on a plaintext control link, sent again with another body.
            log.warning(
                "%s: a configuration push from %s refused: its token was made for another "
                "configuration",
                self.config.name,
                request.remote or "unknown",
            )
            return problem(
                403,
                "not the configuration pushed",
                "the control token was made for another configuration than this one",
                code="auth.token",
                server=self.config.name,
                fix="the management server pushes again on the next site change; turn the "
                "management server's encryption on where the network is not trusted",
            )
        transport = request.transport
        verified = transport is not None and transport.get_extra_info("peercert") is not None
        await self.apply_config(config, authenticated=verified)
        return web.json_response(self.status_json())

    def encrypted_now(self) -> bool:
        return bool(self.data and self.data.running and self.data.tls)

    async def set_cameras(self, cams: list[dict[str, Any]]) -> None:
        if [c["name"] for c in cams] != [c["name"] for c in self.camera_config]:
            log.info(
                "%s: cameras now %s", self.config.name, ", ".join(c["name"] for c in cams) or "none"
            )
        self.camera_config = cams
        await self.media.set_cameras(cams)

    async def reconcile_listeners(self) -> None:
        """Open, switch or close the listeners as the encryption settings say.

        A listener whose encryption is on never serves plaintext: without a usable
        certificate it stays closed (and says why) until one is in place. Before the server
        knows its settings at all (never configured by the management server) it opens none,
        so a new server of an encrypted site does not answer in plaintext meanwhile."""
        assert self.data is not None
        assert self.control is not None
        if not self.configured:
            return
        try:
            await self._reconcile(self.data, self.encryption, self.server_ssl_context)
            await self._reconcile(self.control, self.ms_encryption, self._control_ssl)
        except (WatchkeepError, OSError, ssl.SSLError) as exc:
            # Files caught mid-renewal, say: the listener keeps its setting and the next
            # heartbeat tries again.
            log.error("%s: cannot switch a listener's encryption yet: %s", self.config.name, exc)

    async def _reconcile(
        self, listener: Listener, tls: bool, context: Callable[[], ssl.SSLContext | None]
    ) -> None:
        if tls and self.tls is None:
            if listener.running:
                await listener.stop()
            if self._closed_for_tls.get(listener.name) != self._unprepared:
                self._closed_for_tls[listener.name] = self._unprepared
                log.error(
                    "%s: %s listener closed: its encryption is on but no certificate can be "
                    "used (%s); it opens, encrypted, once one is in place",
                    self.config.name,
                    listener.name,
                    self._unprepared or "no [tls] certificate configured",
                )
            return
        self._closed_for_tls.pop(listener.name, None)
        if not listener.running:
            await listener.start(context() if tls else None)
        elif listener.tls != tls:
            await listener.restart(context() if tls else None)

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

    def reload_other_contexts(self) -> None:
        if self._control_tls is not None:
            self._control_tls.reload_if_changed()

    # -- life cycle ----------------------------------------------------------------------

    async def start(self) -> None:
        self.check_certificate_at_start()
        await self.media.start()
        # Cameras configured before a restart record again at once, before the management
        # server is reachable: recording never waits for the management link.
        await self.media.set_cameras(self.camera_config)
        await self.data_runner.setup()
        await self.control_runner.setup()
        self.data = Listener(
            self.config.name,
            "data",
            self.data_runner,
            self.config.address,
            self.config.ports["data"],
            limits=self.config.listener_limits,
        )
        self.control = Listener(
            self.config.name,
            "control",
            self.control_runner,
            self.config.address,
            self.config.ports["control"],
            limits=self.config.listener_limits,
        )
        # As it was last configured (kept on disk); a server never configured opens its
        # listeners with its first configuration.
        await self.reconcile_listeners()
        self.spawn(self.heartbeat_loop())

    async def shutdown(self) -> None:
        for listener in (self.data, self.control):
            if listener is not None:
                await listener.stop()
        await self.media.close()
        await self.data_runner.cleanup()
        await self.control_runner.cleanup()
