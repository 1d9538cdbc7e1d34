"""The site as the management server sees it: itself first, then the site's other
management servers, then every server registered in its database (online while heard from within ``failover_after``), and the cameras."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from watchkeep.servers._base import utcnow
from watchkeep.servers._config import ServerConfig
from watchkeep.site import Camera, Server
from watchkeep.store import SiteStore

__all__ = ["MS_ENCRYPTION_SETTING", "SiteView"]

MS_ENCRYPTION_SETTING = "ms_encryption"


class SiteView:
    def __init__(
        self,
        config: ServerConfig,
        store: SiteStore,
        me: Callable[[], Server],
        other_managers: Callable[[], list[Server]] = list,
    ) -> None:
        self.config = config
        self.store = store
        self._me = me
        self._other_managers = other_managers

    @property
    def encryption(self) -> bool:
        """Whether the management server's own encryption is on (site.ms_requires_all_rs)."""
        return bool(self.store.setting(MS_ENCRYPTION_SETTING, False))

    def me(self) -> Server:
        return self._me()

    def servers(self, *, readiness: bool = True) -> list[Server]:
        """The management server, the site's other management servers (on a shared
        database), then every other server by name (``readiness``: with what each last
        said of its certificate)."""
        stored = self.store.servers(
            now=utcnow(),
            offline_after=dt.timedelta(seconds=self.config.failover_after),
            readiness=readiness,
        )
        me = self._me()
        return [me, *self._other_managers()] + [s for s in stored if s.name != me.name]

    def managers(self) -> list[Server]:
        """The site's management servers, this one first."""
        return [self._me(), *self._other_managers()]

    def management_names(self) -> list[str]:
        """The names of every management server of the site, this one first."""
        return [self.config.name] + [s.name for s in self._other_managers()]

    def server(self, name: str) -> Server | None:
        return next((s for s in self.servers() if s.name == name), None)

    def server_with_host(self, host: str) -> Server | None:
        """The server whose host is ``host`` (a management server first), if any: one row,
        not the site."""
        for server in self.managers():
            if server.host == host:
                return server
        return self.store.server_with_host(
            host, now=utcnow(), offline_after=dt.timedelta(seconds=self.config.failover_after)
        )

    def cameras(self) -> list[Camera]:
        return self.store.cameras()
