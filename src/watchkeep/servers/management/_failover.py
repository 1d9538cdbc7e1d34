"""Failover: while a recording server is offline, a failover server records its cameras
(the plan is site.plan_failover); back online, the cameras go home."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Awaitable, Callable

from watchkeep.servers._base import utcnow
from watchkeep.servers._config import ServerConfig
from watchkeep.servers.management._site import SiteView
from watchkeep.site import plan_failover

__all__ = ["Failover"]

log = logging.getLogger("watchkeep.management")


class Failover:
    def __init__(
        self,
        config: ServerConfig,
        site: SiteView,
        push: Callable[[], Awaitable[None]],
        *,
        leads: Callable[[], bool] = lambda: True,
    ) -> None:
        self.config = config
        self.site = site
        self._push = push
        self._leads = leads
        self._wake = asyncio.Event()

    def soon(self) -> None:
        """Look at the plan now rather than at the next turn (a server came online)."""
        self._wake.set()

    def rebalance(self) -> list[str]:
        """Apply the failover plan; returns the servers whose camera set changed. Only the
        management server that leads the site plans (see _peers): one decision, not two."""
        if not self._leads():
            return []
        all_servers = self.site.servers()
        moves, covering = plan_failover(
            all_servers,
            self.site.cameras(),
            now=utcnow(),
            timeout=dt.timedelta(seconds=self.config.failover_after),
        )
        current = {s.name: s.covering for s in all_servers}
        new_covering = {fo: t for fo, t in covering.items() if current.get(fo) != t}
        for move in moves:
            log.warning("%s: camera %s: %s", self.config.name, move.camera, move.reason)
        self.site.store.apply_failover(new_covering, {m.camera: m.to_server for m in moves})
        return sorted(set(new_covering) | {m.to_server for m in moves})

    async def run(self, stopping: asyncio.Event) -> None:
        watched: tuple[bool, str, frozenset[str]] | None = None
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(1.0, self.config.failover_after / 4))
            self._wake.clear()
            # The plan changes only when a server goes on- or offline, the site changes or
            # this server takes the lead: the names online and the site version are read
            # every time, the whole site only then.
            now = (
                self._leads(),
                self.site.store.site_version(),
                self.site.store.online(
                    now=utcnow(), offline_after=dt.timedelta(seconds=self.config.failover_after)
                ),
            )
            if now == watched:
                continue
            watched = now
            if self.rebalance():
                await self._push()
