"""Encryption switched on and off per server, within the specification's rules
(site.encryption_blockers: a refusal lists every server in the way, each with its fix)."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

from aiohttp import web

from watchkeep.servers._base import utcnow
from watchkeep.servers._bodies import json_object
from watchkeep.servers._config import ServerConfig
from watchkeep.servers._problems import problem
from watchkeep.servers.management._sessions import Sessions
from watchkeep.servers.management._site import MS_ENCRYPTION_SETTING, SiteView
from watchkeep.site import ServerRole, encryption_blockers

__all__ = ["Encryption"]

log = logging.getLogger("watchkeep.management")


class Encryption:
    def __init__(
        self,
        config: ServerConfig,
        site: SiteView,
        sessions: Sessions,
        *,
        site_ca_fingerprint: Callable[[], str | None],
        switch_own_listener: Callable[[dt.datetime], None],
        spawn_push: Callable[[], None],
    ) -> None:
        self.config = config
        self.site = site
        self.sessions = sessions
        self._site_ca_fingerprint = site_ca_fingerprint
        self._switch_own_listener = switch_own_listener
        self._spawn_push = spawn_push

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/api/v1/servers/{name}/encryption", self.set_encryption)

    async def set_encryption(self, request: web.Request) -> web.Response:
        self.sessions.claims(request, role="administrator")
        body = await json_object(request)
        enabled = body.get("enabled")
        if not isinstance(enabled, bool):
            return problem(400, "bad request", "enabled must be true or false")
        name = request.match_info["name"]
        all_servers = self.site.servers()
        target = next((s for s in all_servers if s.name == name), None)
        if target is None:
            return problem(
                404, "unknown server", f"no server named {name!r}", fix="watchkeep site status"
            )
        blockers = encryption_blockers(
            target, enabled, all_servers, ca_fingerprint=self._site_ca_fingerprint()
        )
        if blockers:
            listing = "; ".join(
                f"[{b.code}] {b.server}: {b.message} (fix: {b.fix})" for b in blockers
            )
            return problem(
                409,
                "encryption change refused",
                f"{'enabling' if enabled else 'disabling'} encryption on {name} is refused: "
                f"{len(blockers)} problem(s): {listing}",
                code=blockers[0].code,
                server=name,
                fix="resolve each problem listed, then run the command again"
                if len(blockers) > 1
                else blockers[0].fix,
                blockers=[b.as_json() for b in blockers],
            )
        if target.role is ServerRole.MANAGEMENT:
            self.site.store.set_setting(MS_ENCRYPTION_SETTING, enabled)
            self._switch_own_listener(utcnow())
        else:
            self.site.store.set_server_encryption(name, enabled)
            self._spawn_push()
        log.info("%s: encryption %s on %s", self.config.name, "on" if enabled else "off", name)
        return web.json_response({"server": name, "encryption": enabled})
