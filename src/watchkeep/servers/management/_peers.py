"""Several management servers for one site, on one PostgreSQL database.

Every management server of the site is equal for what it answers: each serves the API,
takes heartbeats and log-ins and writes what it accepts to the shared database before it
answers, so a change one accepted is never only in its memory. They sign tokens with one
key, kept in the database (``Sessions``), and each announces itself there every second
(``management_servers``), so that every one of them hands recording servers a site map
and log-in tokens that name them all.

What must be decided once is decided by the one that leads: failover plans and
certificate renewals. It leads while it holds PostgreSQL's session advisory lock; when
its process dies or loses the database, PostgreSQL ends the session and releases the lock,
and another takes it within a second. No consensus of watchkeep's own: the database's
lock is the only arbiter. On SQLite (one machine, one management server) it always leads.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable

import sqlalchemy as sa

from watchkeep.errors import StoreError
from watchkeep.servers._base import utcnow
from watchkeep.servers._config import ServerConfig
from watchkeep.site import Server
from watchkeep.store import SiteStore

__all__ = ["LEADER_LOCK", "Peers"]

log = logging.getLogger("watchkeep.management")

LEADER_LOCK = 0x77_6B_4C_44  # the advisory lock of the management server that leads
ANNOUNCE_INTERVAL = 1.0


class Peers:
    def __init__(self, config: ServerConfig, store: SiteStore, me: Callable[[], Server]) -> None:
        self.config = config
        self.store = store
        self._me = me
        self._lock: sa.Connection | None = None

    @property
    def leads(self) -> bool:
        return self._lock is not None

    def announce(self) -> None:
        self.store.announce_management(self._me(), now=utcnow())

    def others(self) -> list[Server]:
        """The site's other management servers (online when heard from lately)."""
        me = self.config.name
        return [
            s
            for s in self.store.management_servers(
                now=utcnow(), offline_after=dt.timedelta(seconds=self.config.failover_after)
            )
            if s.name != me
        ]

    def _keep_or_take_lead(self) -> None:
        if self._lock is not None:
            try:
                self._lock.exec_driver_sql("SELECT 1")
                self._lock.commit()
                return
            except sa.exc.SQLAlchemyError as exc:
                log.warning(
                    "%s: lost the database connection that held the lead (%s); another "
                    "management server may lead now",
                    self.config.name,
                    type(exc).__name__,
                )
                self._let_go()
        self._lock = self.store.leadership(LEADER_LOCK)
        if self._lock is not None:
            log.info("%s: leads the site's failover and renewals", self.config.name)

    def _let_go(self) -> None:
        if self._lock is not None:
            with contextlib.suppress(sa.exc.SQLAlchemyError):
                self._lock.invalidate()  # the session ends: PostgreSQL releases the lock
                self._lock.close()
            self._lock = None

    def start(self) -> None:
        self.announce()
        self._keep_or_take_lead()

    async def run(self, stopping: asyncio.Event) -> None:
        try:
            while not stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), ANNOUNCE_INTERVAL)
                try:
                    self.announce()
                    self._keep_or_take_lead()
                except (StoreError, sa.exc.SQLAlchemyError) as exc:
                    log.warning("%s: cannot reach the site database: %s", self.config.name, exc)
                    self._let_go()
        finally:
            self._let_go()
