"""What each server is told: its configuration, in the answers to its heartbeats and pushed
to every online recording server on the control link when the site changes; and the
site's trust bundle in it."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any

from watchkeep._clock import utcnow
from watchkeep.client import ApiError, call_json, open_session
from watchkeep.errors import ConnectionFailed, WatchkeepError
from watchkeep.pki import SitePKI
from watchkeep.servers._config import ServerConfig
from watchkeep.servers._renewal import install_trust_payload, trust_payload
from watchkeep.servers.management._sessions import Sessions
from watchkeep.servers.management._site import SiteView
from watchkeep.site import Camera, Server
from watchkeep.tls import Endpoint

__all__ = ["ConfigPushes"]

log = logging.getLogger("watchkeep.management")

TRUST_REFRESH = 60.0


class ConfigPushes:
    def __init__(
        self,
        config: ServerConfig,
        site: SiteView,
        sessions: Sessions,
        pki: Callable[[], SitePKI] | None,
        client_context: Callable[[], ssl.SSLContext],
    ) -> None:
        self.config = config
        self.site = site
        self.sessions = sessions
        self.pki = pki  # the CA home, when this management server holds the CA
        self._client_context = client_context  # with this server's certificate
        self._lock = asyncio.Lock()
        self._asked = self._done = 0  # push() calls, and those served
        self.pushes = 0  # configuration pushes made (to every online recording server)
        self._trust_cache: tuple[object, dict[str, Any]] | None = None

    def config_for(
        self, server: Server, all_cameras: list[Camera], all_servers: list[Server]
    ) -> dict[str, Any]:
        """Everything ``server`` is told, with the digest of it."""
        # Each server is told what its role needs: a mobile server relays video, so it
        # learns where cameras are, never where they come from (their URLs hold passwords).
        mine = [c for c in all_cameras if c.served_by == server.name and server.role.records]
        config = {
            "ms_encryption": self.site.encryption,
            "encryption": server.encryption,
            "token_public_key": self.sessions.public_key_b64(),
            "token_revocations": self.sessions.revocations().as_json(),
            "cameras": [{"name": c.name, "source": c.source} for c in mine],
            "site_cameras": [
                {"name": c.name, "recording_server": c.served_by} for c in all_cameras
            ],
            "covering": server.covering,
            "trust": self.trust_payload(),
            "site": {
                s.name: {
                    "role": s.role.value,
                    "host": s.host,
                    "address": s.address,
                    "ports": s.ports,
                    "encryption": s.encryption,
                }
                for s in all_servers
            },
        }
        # A server that sends this digest back has all of it (see Registration.heartbeat).
        canonical = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
        config["config_digest"] = hashlib.sha256(canonical).hexdigest()
        return config

    def trust_payload(self) -> dict[str, Any]:
        """The site's CAs (both, during a rotation), retired CAs and fresh CRLs; empty when
        this management server holds no CA. Re-read when the CA files change, and at least
        once a minute so that CRLs are re-signed long before they expire."""
        if self.pki is None:
            return {}
        pki = self.pki()
        ca_dir = pki.home.ca_dir
        try:
            key = (
                int(time.monotonic() // TRUST_REFRESH),
                # and each hour of the site's clock (a test clock moves by days at once)
                utcnow().strftime("%Y%m%d%H"),
                tuple(
                    sorted((str(p), p.stat().st_mtime_ns) for p in ca_dir.rglob("*") if p.is_file())
                ),
            )
        except OSError:
            key = None
        if self._trust_cache is not None and self._trust_cache[0] == key:
            return self._trust_cache[1]
        try:
            payload = trust_payload(pki)
        except (WatchkeepError, OSError, ValueError) as exc:
            log.warning("%s: cannot read the CA's trust bundle: %s", self.config.name, exc)
            return self._trust_cache[1] if self._trust_cache else {}
        self._trust_cache = (key, payload)
        if self.config.trust_store is not None:
            # The management server verifies recording servers too: it trusts what it hands out.
            install_trust_payload(self.config.trust_store, payload, log_as=self.config.name)
        return payload

    def metrics(self) -> str:
        return (
            "# HELP watchkeep_config_pushes_total Configuration pushes made (each to every online "
            "recording server).\n"
            "# TYPE watchkeep_config_pushes_total counter\n"
            f"watchkeep_config_pushes_total {self.pushes}\n"
            "# HELP watchkeep_config_pushes_pending Configuration pushes asked for and not made "
            "yet.\n"
            "# TYPE watchkeep_config_pushes_pending gauge\n"
            f"watchkeep_config_pushes_pending {self._asked - self._done}\n"
        )

    async def push(self) -> None:
        """Tell every online recording server its configuration now, over the control link.

        Heartbeat answers carry the same configuration, so a push that fails is repaired
        within one heartbeat. Calls made while a push runs are served together by the next
        one (it reads the site after all of them): adding 500 cameras one by one makes a
        few pushes, not 500 pushes of up to 500 cameras each."""
        await self.serve(self.ask())

    def ask(self) -> int:
        """Ask for a push (counted as pending at once); serve(the number) makes it."""
        self._asked += 1
        return self._asked

    async def serve(self, asked: int) -> None:
        async with self._lock:
            if self._done >= asked:
                return  # a push that began after this call has been made
            covering = self._asked
            if await self._push_now():
                self.pushes += 1
            self._done = covering

    async def _push_now(self) -> bool:
        """One push to every online recording server; False when there is none."""
        all_cameras = self.site.cameras()
        everyone = self.site.servers()
        targets = [s for s in everyone if s.role.records and s.online]
        if not targets:
            return False
        tls = self.site.encryption
        context = self._client_context() if tls else None
        hosts = {s.host: s.address for s in targets}
        async with open_session(hosts, timeout=3) as session:
            for server in targets:
                endpoint = Endpoint(
                    server.name, server.host, server.address, server.ports["control"], tls
                )
                try:
                    await call_json(
                        session,
                        endpoint,
                        "POST",
                        "/control/v1/config",
                        ssl_context=context,
                        body=self.config_for(server, all_cameras, everyone),
                        token=self.sessions.control_token(server.name),
                    )
                except (ConnectionFailed, ApiError) as exc:
                    log.warning(
                        "%s: config push to %s failed: %s", self.config.name, server.name, exc
                    )
        return True
