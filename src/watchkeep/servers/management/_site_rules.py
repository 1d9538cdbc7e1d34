"""The rules the running site breaks now (administrators only), for a banner that stays
until they are mended: :func:`watchkeep.site.site_breaches` over the servers as this
management server sees them."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from watchkeep.servers._base import utcnow
from watchkeep.servers._config import ServerConfig
from watchkeep.servers.management._sessions import Sessions
from watchkeep.servers.management._site import SiteView
from watchkeep.site import site_breaches

__all__ = ["SiteRules"]


class SiteRules:
    def __init__(
        self,
        config: ServerConfig,
        site: SiteView,
        sessions: Sessions,
        *,
        site_ca_fingerprint: Callable[[], str | None],
    ) -> None:
        self.config = config
        self.site = site
        self.sessions = sessions
        self._site_ca_fingerprint = site_ca_fingerprint

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/api/v1/site/breaches", self.breaches)

    async def breaches(self, request: web.Request) -> web.Response:
        """A list of broken rules, each with code, server, message and fix."""
        self.sessions.claims(request, role="administrator")
        found = site_breaches(
            self.site.servers(),
            ca_fingerprint=self._site_ca_fingerprint(),
            now=utcnow(),
            warn_days=self.config.warn_days,
        )
        return web.json_response([b.as_json() for b in found])
