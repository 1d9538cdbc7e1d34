"""What the site looks like, as users may see it: its servers (an operator sees only the
ones that record its cameras), cameras and why one sends nothing, the site CA and the
certificate renewals."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

from watchkeep.media import redacted_source
from watchkeep.pki._lifecycle import warning_level
from watchkeep.servers._base import utcnow
from watchkeep.servers._config import ServerConfig
from watchkeep.servers._renewal import RenewalState, SelfRenewal
from watchkeep.servers._tokens import may_view
from watchkeep.servers.management._renewals import Renewals
from watchkeep.servers.management._sessions import Sessions
from watchkeep.servers.management._site import SiteView
from watchkeep.site import Server, visible_servers

__all__ = ["Status"]


def _json(text: str) -> web.Response:
    return web.Response(text=text, content_type="application/json")


def _iso(value: dt.datetime | None) -> str | None:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if value else None


class Status:
    def __init__(
        self,
        config: ServerConfig,
        site: SiteView,
        sessions: Sessions,
        renewals: Renewals,
        own_renewal: Callable[[], SelfRenewal | None],
        *,
        camera_problems: dict[str, dict[str, str]],
        site_ca_fingerprint: Callable[[], str | None],
    ) -> None:
        self.config = config
        self.site = site
        self.sessions = sessions
        self.renewals = renewals
        self._own_renewal = own_renewal
        self._camera_problems = camera_problems  # from heartbeats (Registration)
        self._site_ca_fingerprint = site_ca_fingerprint

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/api/v1/site/status", self.site_status)
        router.add_get("/api/v1/servers", self.list_servers)

    def server_json(self, server: Server, now: dt.datetime) -> dict[str, Any]:
        ready = server.readiness
        cert = ready.certificate if ready else None
        return {
            "name": server.name,
            "role": server.role.value,
            "host": server.host,
            "address": server.address,
            "ports": server.ports,
            "encryption": server.encryption,
            "encrypted_now": server.encrypted_now,
            "online": server.online,
            "last_seen": _iso(server.last_seen),
            "covering": server.covering,
            "certificate": (
                {
                    **cert.as_json(now),
                    "expiry_warning": warning_level(cert.not_after, now, self.config.warn_days),
                }
                if cert
                else None
            ),
            "problems": [p.as_json() for p in (ready.problems if ready else ())],
            "trusted_ca_fingerprints": list(ready.trusted_ca_fingerprints) if ready else [],
            # When it renews its certificate next, and its failed attempts since the last
            # success (each server renews its own: servers._renewal).
            "renewal": renewal.as_json() if (renewal := self._renewal_of(server)) else None,
        }

    def _renewal_of(self, server: Server) -> RenewalState | None:
        if server.name == self.config.name:
            own = self._own_renewal()
            return own.state if own is not None else None
        return self.renewals.reports.get(server.name)

    def _visible(self, claims: dict[str, Any]) -> list[Server]:
        return visible_servers(
            self.site.servers(),
            self.site.cameras(),
            administrator=claims.get("role") == "administrator",
            allowed=claims.get("cameras", "*"),
        )

    async def site_status(self, request: web.Request) -> web.Response:
        # Read and encoded in a thread: on a site of a thousand servers it takes a good part
        # of a second, which the heartbeats of those servers must not wait for.
        claims = self.sessions.claims(request)
        return _json(await asyncio.to_thread(lambda: json.dumps(self.status_json(claims))))

    def status_json(self, claims: dict[str, Any]) -> dict[str, Any]:
        """The site status as the user of ``claims`` may see it (`site status --json`)."""
        # An operator sees the cameras it may view, and not where they come from.
        administrator = claims.get("role") == "administrator"
        now = utcnow()
        return {
            "servers": [self.server_json(s, now) for s in self._visible(claims)],
            "cameras": [
                {
                    "name": c.name,
                    "recording_server": c.served_by,
                    "assigned_server": c.recording_server,
                    **({"source": redacted_source(c.source)} if administrator else {}),
                    # Why the camera sends its recording server no pictures, if it
                    # does not (from that server's last heartbeat).
                    "problem": self._camera_problems.get(c.served_by or "", {}).get(c.name),
                }
                for c in self.site.cameras()
                if may_view(claims, c.name)
            ],
            "site_ca_sha256_fingerprint": self._site_ca_fingerprint(),
        }

    async def list_servers(self, request: web.Request) -> web.Response:
        claims = self.sessions.claims(request)

        def listed() -> str:
            now = utcnow()
            return json.dumps([self.server_json(s, now) for s in self._visible(claims)])

        return _json(await asyncio.to_thread(listed))
