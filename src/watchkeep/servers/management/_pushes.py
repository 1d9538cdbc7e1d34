"""What each server is told: its configuration, in the answers to its heartbeats and pushed
to every online recording server on the control link when the site changes; and the
site's trust bundle in it."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from watchkeep._clock import utcnow
from watchkeep.client import ApiError, call_json, open_session
from watchkeep.errors import ConnectionFailed, WatchkeepError
from watchkeep.pki import SitePKI
from watchkeep.servers._config import ServerConfig
from watchkeep.servers._renewal import install_trust_payload, trust_payload
from watchkeep.servers.management._sessions import Sessions
from watchkeep.servers.management._site import SiteView
from watchkeep.site import Server, ServerRole
from watchkeep.tls import Endpoint

__all__ = ["ConfigPushes", "SiteSnapshot"]

log = logging.getLogger("watchkeep.management")

TRUST_REFRESH = 60.0
TRUST_CHECK = 1.0  # seconds between looks at the CA's files


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
        self._trust_checked = 0.0
        self._trust_hour = ""
        self._snapshot: SiteSnapshot | None = None
        # Which configuration is newer, for the servers told it: this process (a restart or
        # another management server is another) and the number of the snapshot it is from.
        self._instance = secrets.token_hex(6)
        self._snapshots_built = 0
        self._answers: dict[str, tuple[object, Answer]] = {}  # server -> its last answer
        # What the last push found each server and every server had been told.
        self._told_own: dict[str, str] = {}
        self._told_security = ""

    def snapshot(self, max_age: float = 0.0) -> SiteSnapshot:
        """What every server is told, built again only when the site changed (a new site
        version in the database, see SiteStore) or the CA's trust bundle did: a heartbeat
        reads one row for it, not every server and camera of the site. One younger than
        ``max_age`` seconds is taken as it is (heartbeats: their servers hear of a change
        a moment later, and a thousand of them a second read the version twice)."""
        now = time.monotonic()
        changes = self.site.store.changes
        if (
            self._snapshot is not None
            and now - self._snapshot.built < max_age
            and self._snapshot.changes == changes  # none made here meanwhile
        ):
            return self._snapshot
        version = self.site.store.site_version()  # first: what is read after is as new
        trust = self.trust_payload()
        key = (version, id(trust))
        if self._snapshot is not None and self._snapshot.key == key:
            self._snapshot = replace(self._snapshot, built=now, changes=changes)
            return self._snapshot
        everyone = self.site.servers(readiness=False)
        all_cameras = self.site.cameras()
        # Each server is told what its role needs: a mobile server relays video, so it
        # learns where cameras are, never where they come from (their URLs hold passwords).
        cameras_of: dict[str, list[dict[str, Any]]] = {}
        for camera in all_cameras:
            cameras_of.setdefault(camera.served_by, []).append(
                {"name": camera.name, "source": camera.source}
            )
        security = {
            "ms_encryption": self.site.encryption,
            "token_public_key": self.sessions.public_key_b64(),
            "token_revocations": self.sessions.revocations().as_json(),
            "trust": trust,
        }
        site_map = {
            s.name: {
                "role": s.role.value,
                "host": s.host,
                "address": s.address,
                "ports": s.ports,
                "encryption": s.encryption,
            }
            for s in everyone
        }
        common = {
            **security,
            "site_cameras": [
                {"name": c.name, "recording_server": c.served_by} for c in all_cameras
            ],
            "site": site_map,
        }
        # A recording (or failover) server needs the management servers of the site map,
        # never the other recording servers nor their cameras: what it is told does not
        # grow with the site, and a camera added elsewhere changes nothing it is told.
        recorders = {
            **security,
            "site": {
                name: info
                for name, info in site_map.items()
                if info["role"] == ServerRole.MANAGEMENT.value
            },
        }
        common_json = json.dumps(common, sort_keys=True, separators=(",", ":"))
        recorders_json = json.dumps(recorders, sort_keys=True, separators=(",", ":"))
        self._snapshots_built += 1
        self._snapshot = SiteSnapshot(
            key, now, changes, {s.name: s for s in everyone}, common, common_json,
            hashlib.sha256(common_json.encode()).hexdigest(), recorders_json,
            hashlib.sha256(recorders_json.encode()).hexdigest(), _digest(security), cameras_of,
            serial=self._snapshots_built,
        )  # fmt: skip
        return self._snapshot

    def config_for(self, server: Server) -> dict[str, Any]:
        """Everything ``server`` is told, with the digest of it."""
        config: dict[str, Any] = json.loads(self.config_answer(server).text)
        return config

    def config_answer(self, server: Server, max_age: float = 0.0) -> Answer:
        """The digest of what ``server`` is told, and all of it as JSON text: the part
        every server is told is encoded once per snapshot, not once per answer."""
        snapshot = self.snapshot(max_age)
        server = snapshot.servers.get(server.name, server)
        # The same for as long as the snapshot and what it says of the server: a heartbeat
        # a second from each server re-encodes nothing.
        key = (snapshot.key, server.role, server.encryption, server.covering)
        cached = self._answers.get(server.name)
        if cached is not None and cached[0] == key:
            return cached[1]
        own = snapshot.own(server)
        own_json = json.dumps(own, sort_keys=True, separators=(",", ":"))
        common_json, common_digest = snapshot.common_for(server)
        # A server that sends this digest back has all of it (see Registration.heartbeat).
        digest = hashlib.sha256(
            (common_digest + hashlib.sha256(own_json.encode()).hexdigest()).encode()
        ).hexdigest()
        answer = Answer(digest, hashlib.sha256(own_json.encode()).hexdigest(),
                        snapshot.security_digest, common_json, own_json,
                        json.dumps([self._instance, snapshot.serial]))  # fmt: skip
        if len(self._answers) >= 100_000:
            self._answers.clear()
        self._answers[server.name] = (key, answer)
        return answer

    def trust_payload(self) -> dict[str, Any]:
        """The site's CAs (both, during a rotation), retired CAs and fresh CRLs; empty when
        this management server holds no CA. Re-read when the CA files change, and at least
        once a minute so that CRLs are re-signed long before they expire."""
        if self.pki is None:
            return {}
        now = time.monotonic()
        # A heartbeat a second per server: look once a second, and whenever the site's
        # clock entered another hour (a test clock moves by days at once: CRLs signed
        # before the move have expired after it, and a server that fetched them would
        # fail its renewal).
        hour = utcnow().strftime("%Y%m%d%H")
        if (
            self._trust_cache is not None
            and now - self._trust_checked < TRUST_CHECK
            and hour == self._trust_hour
        ):
            return self._trust_cache[1]
        self._trust_checked = now
        self._trust_hour = hour
        pki = self.pki()
        ca_dir = pki.home.ca_dir
        try:
            key = (
                int(time.monotonic() // TRUST_REFRESH),
                hour,  # and each hour of the site's clock
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
        """One push to every online recording server whose own part of the configuration
        changed (its cameras, encryption, covering), or to every one when what all must
        hear at once changed (revoked tokens, the token key, encryption, trust); False
        when there is nobody to tell (a recording server is told nothing of the others:
        one camera added to a site of a thousand recording servers is pushed to one)."""
        snapshot = self.snapshot()
        everyone = self.site.servers()  # who is online now
        security_changed = snapshot.security_digest != self._told_security
        targets = [
            s
            for s in everyone
            if s.role.records
            and s.online
            and (security_changed or _digest(snapshot.own(s)) != self._told_own.get(s.name))
        ]
        self._told_security = snapshot.security_digest
        self._told_own = {s.name: _digest(snapshot.own(s)) for s in everyone}
        if not targets:
            return False
        tls = bool(snapshot.common["ms_encryption"])
        context = self._client_context() if tls else None
        hosts = {s.host: s.address for s in targets}
        async with open_session(hosts, timeout=3) as session:
            for server in targets:
                endpoint = Endpoint(
                    server.name, server.host, server.address, server.ports["control"], tls
                )
                config = self.config_for(server)
                try:
                    await call_json(
                        session,
                        endpoint,
                        "POST",
                        "/control/v1/config",
                        ssl_context=context,
                        body=config,
                        token=self.sessions.control_token(server.name, config),
                    )
                except (ConnectionFailed, ApiError) as exc:
                    log.warning(
                        "%s: config push to %s failed: %s", self.config.name, server.name, exc
                    )
        return True


class Answer(NamedTuple):
    """A server's configuration as a heartbeat's answer carries it."""

    digest: str  # of all of it
    own_digest: str  # of what only this server is told
    security_digest: str  # of what every server must hear at once
    common_json: str  # what every server is told (shared by every answer), JSON
    own_json: str  # what only this server is told, JSON
    # [this process, snapshot number], JSON: a server takes no configuration older than one
    # it took (a push that timed out here may reach it after a newer heartbeat's answer).
    order: str = "null"

    @property
    def text(self) -> str:
        """All of it, JSON (made when sent: the site's part is large on a large site)."""
        common, own = self.common_json, self.own_json
        return (
            f'{common[:-1]},{own[1:-1]},"config_digest":"{self.digest}",'
            f'"config_order":{self.order}}}'
        )


def _digest(value: Any) -> str:
    return hashlib.sha256(
        json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


@dataclass(frozen=True)
class SiteSnapshot:
    """What the servers of the site are told, as of one site version."""

    key: tuple[str, int]
    built: float  # time.monotonic() when it was built or last found current
    changes: int  # SiteStore.changes then
    servers: dict[str, Server]  # by name, as of the version (their online state is not)
    common: dict[str, Any]  # what every server is told (a mobile server: all of it)
    common_json: str  # the same, encoded
    common_digest: str
    recorders_json: str  # what a recording server is told of it (the management servers)
    recorders_digest: str
    security_digest: str  # of what every server must hear at once
    cameras_of: dict[str, list[dict[str, Any]]]  # server -> the cameras it records
    serial: int = 0  # snapshots built by this process, this one included

    def common_for(self, server: Server) -> tuple[str, str]:
        """The part ``server`` is told with every server of its kind: JSON, and digest."""
        if server.role.records:
            return self.recorders_json, self.recorders_digest
        return self.common_json, self.common_digest

    def own(self, server: Server) -> dict[str, Any]:
        """What only ``server`` is told."""
        return {
            "encryption": server.encryption,
            "covering": server.covering,
            "cameras": self.cameras_of.get(server.name, []) if server.role.records else [],
        }
