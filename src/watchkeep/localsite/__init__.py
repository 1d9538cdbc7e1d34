"""A whole site on one machine: `watchkeep demo`, the benchmarks and the tests run on it.

``LocalSite`` lays out a site under one home (``_layout``: where each server's files are),
writes each server's config from data (``_config``), and runs each server as its own
process (``_supervise``: starting, stopping, waiting until ready, listening, online).
``LocalPostgres`` runs a PostgreSQL server of its own for a site's database.
Every failure is a watchkeep error: ``SiteNotReady``, ``ServerExited``,
``SiteCommandFailed`` (watchkeep.errors).
"""

from watchkeep.localsite._config import dumps_toml
from watchkeep.localsite._layout import LocalServer
from watchkeep.localsite._postgres import LocalPostgres
from watchkeep.localsite._site import LocalSite, free_loopback_network, servers_by_name
from watchkeep.localsite._supervise import DEADLINE, wait_until

__all__ = [
    "DEADLINE",
    "LocalPostgres",
    "LocalServer",
    "LocalSite",
    "dumps_toml",
    "free_loopback_network",
    "servers_by_name",
    "wait_until",
]
