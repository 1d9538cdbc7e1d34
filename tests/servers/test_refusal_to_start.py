"""A server refuses to start with a certificate no peer would accept, or with a private key
others can read: the process exits non-zero with one line naming the file, the problem
and the fix.

Given a site whose recording servers each have one thing wrong with their certificate or
key (the management server is never started: the refusal comes before any network).
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Callable

import pytest
from site_support import wait_exit

from watchkeep.pki import Role, certificate_name
from watchkeep.site import ServerRole
from watchkeep.testing import LocalServer, LocalSite

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def spoil_expired(site: LocalSite, server: LocalServer) -> None:
    site.issue(server, now=NOW - dt.timedelta(days=100), days=1)


def spoil_not_yet_valid(site: LocalSite, server: LocalServer) -> None:
    site.issue(server, now=NOW + dt.timedelta(days=3))


def spoil_other_host(site: LocalSite, server: LocalServer) -> None:
    # A perfectly good certificate, for another host, in the files the config names
    elsewhere = server.directory / "elsewhere"
    record = site.pki.issue(
        Role.RECORDING, ["elsewhere.site.test"], key_type=site.key_type, out=elsewhere
    )
    server.tls_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(record.chain_path, server.chain)
    shutil.copyfile(str(record.key_path), server.key)
    server.key.chmod(0o600)


def spoil_key_mode(site: LocalSite, server: LocalServer) -> None:
    site.issue(server)
    server.key.chmod(0o644)


def spoil_revoked(site: LocalSite, server: LocalServer) -> None:
    site.issue(server)
    site.pki.revoke(certificate_name(Role.RECORDING, server.host), reason="key-compromise")
    site.refresh_crl(server.trust_dir)


# name -> (how its files are spoilt, words the refusal must hold besides file and fix)
CASES: dict[str, tuple[Callable[[LocalSite, LocalServer], None], tuple[str, ...]]] = {
    "rs-expired": (spoil_expired, ("cert.validity", "expired")),
    "rs-future": (spoil_not_yet_valid, ("cert.validity", "not valid until")),
    "rs-otherhost": (spoil_other_host, ("cert.hostname", "elsewhere.site.test")),
    "rs-keymode": (spoil_key_mode, ("key.service_account",)),
    "rs-revoked": (spoil_revoked, ("cert.revoked", "revoked")),
}


@pytest.fixture(scope="module")
def refused(site_factory: Callable[..., LocalSite]) -> LocalSite:
    """Every spoilt server started at once and left to refuse."""
    site = site_factory("refusals")
    site.add_server("ms", ServerRole.MANAGEMENT)
    for name, (spoil, _words) in CASES.items():
        server = site.add_server(name, ServerRole.RECORDING, certificate=False)
        spoil(site, server)
    for name in CASES:
        site.start(name, wait=False)
    return site


@pytest.mark.parametrize("name", list(CASES))
def test_a_server_refuses_to_start_and_says_why_on_one_line(refused: LocalSite, name: str) -> None:
    server = refused.servers[name]
    _spoil, words = CASES[name]

    # Then the process ends with a non-zero status
    assert wait_exit(refused, name) != 0

    # and its log holds one line naming the file, the problem and the fix
    lines = [line for line in refused.log_text(name).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    line = lines[0]
    named = {str(server.chain), str(server.key)}
    assert any(path in line for path in named), line
    for word in words:
        assert word in line, line
    assert "; fix: " in line, line


def test_the_fix_given_for_an_expired_certificate_works(refused: LocalSite) -> None:
    # Given the refusal of the server whose certificate expired
    assert wait_exit(refused, "rs-expired") != 0
    line = refused.log_text("rs-expired").strip()
    fix = line.split("; fix: ", 1)[1]
    assert fix.startswith("watchkeep cert renew "), fix

    # When the administrator runs the command it names
    argv = fix.removeprefix("watchkeep ").split("  (")[0].split()
    ran = refused.cli(*argv)
    assert ran.returncode == 0, ran.stderr

    # Then the server starts
    try:
        refused.start_together("rs-expired")
    finally:
        refused.stop("rs-expired")


def test_a_missing_certificate_is_not_a_refusal_to_start(refused: LocalSite) -> None:
    # The twin: a server whose certificate is simply not there yet starts (and says why
    # its encryption cannot be turned on yet)
    refused.add_server("rs-bare", ServerRole.RECORDING, certificate=False)
    try:
        refused.start_together("rs-bare")
        assert "no certificate is installed" in refused.log_text("rs-bare")
    finally:
        refused.stop("rs-bare")
