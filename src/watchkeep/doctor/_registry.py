"""The registry of checks, in the order of the rule table of docs/rules.md, and running them."""

from __future__ import annotations

from watchkeep.doctor._checks_cert import (
    cert_chain,
    cert_expiry_warning,
    cert_hostname,
    cert_lifetime,
    cert_revoked,
    cert_server_auth,
    cert_validity,
)
from watchkeep.doctor._checks_site import (
    site_failover_prepared,
    site_ms_plaintext_login,
    site_ms_requires_all_rs,
    site_offline,
    site_reachable,
)
from watchkeep.doctor._checks_tls import tls_policy
from watchkeep.doctor._checks_trust import key_service_account, trust_installed
from watchkeep.doctor._model import Check, Finding
from watchkeep.doctor._snapshot import SiteSnapshot

__all__ = ["CHECKS", "check_by_code", "run_checks"]

CHECKS: tuple[Check, ...] = (
    cert_hostname,
    cert_server_auth,
    cert_chain,
    cert_validity,
    cert_expiry_warning,
    cert_lifetime,
    cert_revoked,
    trust_installed,
    key_service_account,
    site_ms_requires_all_rs,
    site_failover_prepared,
    site_ms_plaintext_login,
    tls_policy,
    site_reachable,
    site_offline,
)


def check_by_code(code: str) -> Check:
    for candidate in CHECKS:
        if candidate.code == code:
            return candidate
    raise KeyError(code)


def run_checks(snapshot: SiteSnapshot, checks: tuple[Check, ...] = CHECKS) -> list[Finding]:
    """Every finding of every check, errors first, then by server and code."""
    found: list[Finding] = []
    for chk in checks:
        found += chk.findings(snapshot)
    return sorted(found, key=lambda f: (f.severity.rank, f.server, f.code))
