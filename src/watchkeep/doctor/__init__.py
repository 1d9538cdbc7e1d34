"""`watchkeep doctor`: one check per rule code, findings as data, live probes.

The checks are pure functions over a :class:`SiteSnapshot`; collecting one (reading this
host's server files, asking the management server, connecting to every TLS listener) is
the only part that touches files and sockets.
"""

from watchkeep.doctor._collect import collect_snapshot, tls_targets
from watchkeep.doctor._model import Check, Finding, Issue, Severity
from watchkeep.doctor._probe import PROBE_TIMEOUT, ProbeTarget, probe_endpoint, probe_endpoints
from watchkeep.doctor._registry import CHECKS, check_by_code, run_checks
from watchkeep.doctor._snapshot import (
    DEFAULT_WARN_DAYS,
    HOME_PARTY,
    KeyFileFacts,
    ListedServer,
    LocalServerFacts,
    ProbeResult,
    SiteSnapshot,
    TrustStoreFacts,
)

__all__ = [
    "CHECKS",
    "DEFAULT_WARN_DAYS",
    "HOME_PARTY",
    "PROBE_TIMEOUT",
    "Check",
    "Finding",
    "Issue",
    "KeyFileFacts",
    "ListedServer",
    "LocalServerFacts",
    "ProbeResult",
    "ProbeTarget",
    "Severity",
    "SiteSnapshot",
    "TrustStoreFacts",
    "check_by_code",
    "collect_snapshot",
    "probe_endpoint",
    "probe_endpoints",
    "run_checks",
    "tls_targets",
]
