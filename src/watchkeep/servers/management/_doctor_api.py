"""The doctor's findings over the API (administrators only), made on demand by the doctor
itself (:mod:`watchkeep.doctor`): the site status this server holds, every TLS listener
of the site probed from here, and the files of the CA home and of the server configs laid
out in it, as `watchkeep --home CA_HOME doctor --json` run on this machine would check
them; and the management server's own config and files."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from typing import Any

from aiohttp import web

from watchkeep._home import Home
from watchkeep.doctor import collect_snapshot, run_checks
from watchkeep.servers._config import ServerConfig
from watchkeep.servers.management._sessions import Sessions

__all__ = ["Doctor"]


class Doctor:
    def __init__(
        self,
        config: ServerConfig,
        sessions: Sessions,
        *,
        site_status: Callable[[], dict[str, Any]],
    ) -> None:
        self.config = config
        self.sessions = sessions
        self._site_status = site_status  # as an administrator sees it

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/api/v1/doctor", self.findings)

    async def findings(self, request: web.Request) -> web.Response:
        """`doctor --json`: a list of findings, each with code, severity, server, message,
        fix and the requirement it enforces (errors first)."""
        self.sessions.claims(request, role="administrator")
        # Without a CA home, an empty one: only the site and this server's files are checked.
        home = Home(self.config.ca_home or self.config.data_dir / "doctor")
        # The fixes name the CA home, as `watchkeep --home CA_HOME doctor` prints them.
        cli = (
            f"watchkeep --home {shlex.quote(str(self.config.ca_home))}"
            if self.config.ca_home is not None
            else "watchkeep"
        )
        snapshot = await collect_snapshot(
            home,
            server_configs=[self.config.path],
            warn_days=self.config.warn_days,
            cli=cli,
            own_status=(self.config.name, self._site_status(), self.config.trust_store),
        )
        return web.json_response([f.as_json() for f in run_checks(snapshot)])
