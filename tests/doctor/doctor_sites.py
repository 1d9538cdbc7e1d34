"""Helpers for the end-to-end doctor tests: real sites (watchkeep.testing.LocalSite, one
process per server on its own 127.x address), broken in one way at a time.

The doctor runs in-process (``run_doctor``: the same collection and checks as the command)
or as the command itself (``doctor_cli``). Nothing sleeps for a fixed time before asserting:
``watchkeep.testing.eventually`` polls until a generous deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from tool_support import openssl_s_server
from watchkeep.doctor import (
    Finding,
    ProbeResult,
    ProbeTarget,
    Severity,
    collect_snapshot,
    probe_endpoint,
    run_checks,
)
from watchkeep.pki import Role, fingerprint
from watchkeep.site import ServerRole
from watchkeep.testing import LocalServer, LocalSite, eventually
from watchkeep.trust import DirectoryTrustStore

# Between two tries of a wait here: a run of the doctor connects to every server.
POLL = 0.2
# Silence after which the management server lists a server offline: longer than LocalSite's
# default, so that a machine busy with other tests does not make servers flap.
FAILOVER_AFTER = 6.0


# -- a site ---------------------------------------------------------------------------------


def lay_out(root: Path, servers: Iterable[tuple[str, ServerRole]]) -> LocalSite:
    """A site on disk: the CA home at ``root``, and the servers as ``add_servers`` lays
    them out."""
    site = LocalSite(root, failover_after=FAILOVER_AFTER)
    site.init_ca()
    add_servers(site, servers)
    return site


def add_servers(site: LocalSite, servers: Iterable[tuple[str, ServerRole]]) -> None:
    """A certificate, key, trust store and config per server; the CA stays off the
    management server."""
    for name, role in servers:
        server = site.add_server(name, role)
        if role is ServerRole.MANAGEMENT:
            keep_ca_off(server)


def keep_ca_off(server: LocalServer) -> None:
    """The management server without the CA (an offline CA, as many sites keep it): it
    then neither renews certificates nor hands out CRLs, so nothing repairs what a test
    breaks on purpose before the doctor has looked."""
    lines = server.config.read_text().splitlines()
    kept = [ln for ln in lines if not ln.startswith(("ca_home =", "renew_check_interval ="))]
    server.config.write_text("\n".join(kept) + "\n")


def encrypt(site: LocalSite, *names: str) -> None:
    """Turn encryption on through the command line, in the order given; return when each
    server speaks TLS."""
    for name in names:

        def enabled(name: str = name) -> bool:
            # Refused while a server it depends on looks offline (a busy machine can miss a
            # heartbeat or two): the administrator would try again, and so does this.
            ran = site.cli("encryption", "enable", "--server", name)
            assert ran.returncode == 0, f"encryption enable --server {name}: {ran.stderr}"
            return True

        eventually(enabled, interval=POLL, what=f"encryption enabled on {name}")
    site.wait_encrypted(*names)


# -- the doctor -----------------------------------------------------------------------------


def run_doctor(site: LocalSite, *, warn_days: tuple[int, ...] = (30, 14, 7)) -> list[Finding]:
    """The doctor's findings, collected and checked in-process as the command does."""
    snapshot = asyncio.run(collect_snapshot(site.home, warn_days=warn_days))
    return run_checks(snapshot)


def doctor_cli(site: LocalSite, *args: str) -> tuple[int, Any]:
    """`watchkeep --home ROOT doctor --json ARGS` as a process: exit status and findings."""
    ran = site.cli("doctor", "--json", *args)
    assert ran.returncode in (0, 1), ran.stderr
    return ran.returncode, json.loads(ran.stdout)


def codes(findings: Iterable[Finding]) -> set[str]:
    """The codes of the findings that matter for the exit status or a warning."""
    return {f.code for f in findings if f.severity is not Severity.INFO}


def describe(findings: Iterable[Finding]) -> str:
    return "\n".join(f"{f.severity} {f.code} {f.server}: {f.message}" for f in findings)


def wait_for_codes(
    site: LocalSite, expected: set[str], *, warn_days: tuple[int, ...] = (30, 14, 7)
) -> list[Finding]:
    """Run the doctor until exactly ``expected`` (errors and warnings) are found; those
    findings. A server reloads changed files within seconds, and heartbeats follow."""

    def found() -> tuple[list[Finding]]:
        findings = run_doctor(site, warn_days=warn_days)
        assert codes(findings) == expected, describe(findings)
        return (findings,)

    try:
        return eventually(found, interval=POLL, what=f"findings {sorted(expected)}")[0]
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{site.log_tails()}") from None


# -- breaking and mending a server's files --------------------------------------------------


def reload(server: LocalServer) -> None:
    """Ask a server to load its certificate files again now (SIGHUP), as an admin would."""
    assert server.process is not None
    server.process.send_signal(signal.SIGHUP)


def install_foreign_certificate(
    site: LocalSite, server: LocalServer, role: Role, host: str
) -> None:
    """Issue a certificate (role, host) from the site CA and install it as ``server``'s own."""
    spare = site.root / "spare"
    site.pki.issue(role, [host], key_type=site.key_type, out=spare, replace=True)
    name = f"{role.value}-{host}"
    # The key first: the server reloads when its certificate changes.
    shutil.copyfile(spare / f"{name}.key", server.key)
    server.key.chmod(0o600)
    shutil.copyfile(spare / f"{name}.chain.pem", server.chain)


def write_leaf_only(server: LocalServer) -> None:
    leaf = server.chain.read_bytes().split(b"-----END CERTIFICATE-----")[0]
    server.chain.write_bytes(leaf + b"-----END CERTIFICATE-----\n")


def ca_pem(site: LocalSite) -> bytes:
    return site.pki.ca_certificate().public_bytes(serialization.Encoding.PEM)


def refresh_crls(site: LocalSite) -> None:
    """Copy the CA's current CRL into every trust store (as `trust install` does)."""
    site.refresh_crl(site.home.trust_dir)
    for server in site.servers.values():
        if server.trust_dir.is_dir():
            site.refresh_crl(server.trust_dir)


def untrust_site_ca(server: LocalServer, site: LocalSite) -> None:
    DirectoryTrustStore(server.trust_dir).remove(fingerprint(site.pki.ca_certificate()))


def drop_certificate_from_config(server: LocalServer) -> None:
    """The server's config without [tls] certificate and key (its trust store stays)."""
    lines = server.config.read_text().splitlines()
    kept = [ln for ln in lines if not ln.startswith(("certificate =", "key ="))]
    server.config.write_text("\n".join(kept) + "\n")


def probe(server: LocalServer, listener: str) -> ProbeResult:
    target = ProbeTarget(server.name, listener, server.host, server.address, server.ports[listener])
    return asyncio.run(probe_endpoint(target))


# -- a weak TLS endpoint --------------------------------------------------------------------


@contextlib.contextmanager
def weak_tls_server(site: LocalSite, server: LocalServer, listener: str) -> Iterator[None]:
    """`openssl s_server` in place of ``server``'s listener, with the server's own
    certificate and complete chain, accepting TLS 1.0 to 1.3 and every suite."""
    ca_file = site.root / "ca-only.pem"
    ca_file.write_bytes(ca_pem(site))
    with openssl_s_server(
        server.address,
        server.ports[listener],
        server.chain,
        server.key,
        "-cert_chain",
        str(ca_file),
        "-cipher",
        "ALL:@SECLEVEL=0",
    ):
        yield
