"""`watchkeep doctor` against a live site whose management server is not encrypted.

Given a plaintext site (management, recording and failover servers), the doctor reports
the plaintext logins as an error; then, one step at a time and in this order: this home's
trust store without the site CA (trust.installed, mended at once), a recording
server encrypted while its failover server has no certificate (site.failover_prepared),
that failover server stopped (site.offline, informational), and the management server
stopped (site.reachable). The tests run in file order, each building on the one before.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from doctor_sites import (
    POLL,
    codes,
    describe,
    doctor_cli,
    drop_certificate_from_config,
    encrypt,
    run_doctor,
    wait_for_codes,
)

from watchkeep.doctor import HOME_PARTY, Severity
from watchkeep.pki import fingerprint
from watchkeep.site import ServerRole
from watchkeep.testing import LocalSite, eventually, servers_by_name
from watchkeep.trust import DirectoryTrustStore

pytestmark = pytest.mark.slow

PLAINTEXT = "site.ms_plaintext_login"


@pytest.fixture(scope="module")
def site(make_site: Callable[..., LocalSite]) -> LocalSite:
    return make_site(
        "plain",
        ("ms", ServerRole.MANAGEMENT),
        ("rs1", ServerRole.RECORDING),
        ("fo1", ServerRole.FAILOVER),
    )


def test_a_plaintext_management_server_is_an_error(site: LocalSite) -> None:
    # When the doctor runs against a site where nothing is encrypted
    status, document = doctor_cli(site)

    # Then its one error is that logins cross the network in clear, with the commands
    # that encrypt the site in the right order (recording servers first)
    assert status == 1
    assert [(f["code"], f["severity"], f["server"]) for f in document] == [
        (PLAINTEXT, "error", "ms")
    ]
    fix = document[0]["fix"]
    assert fix.index("--server rs1") < fix.index("--server ms")
    assert fix.index("--server fo1") < fix.index("--server ms")


def test_the_site_ca_missing_from_this_homes_trust_store(site: LocalSite) -> None:
    # Given this home (the command-line client) no longer trusts the site CA: its logins
    # still work, the management server being plaintext
    DirectoryTrustStore(site.home.trust_dir).remove(fingerprint(site.pki.ca_certificate()))
    try:
        findings = wait_for_codes(site, {PLAINTEXT, "trust.installed"})
        missing = [f for f in findings if f.code == "trust.installed"]
        assert [f.server for f in missing] == [HOME_PARTY]
        # The fix puts back this site's CA and its CRL (`trust install` with no CA_PEM)
        assert missing[0].fix == f"watchkeep trust install --store {site.home.trust_dir}"
    finally:
        DirectoryTrustStore(site.home.trust_dir).install(site.pki.ca_certificate())
    assert codes(run_doctor(site)) == {PLAINTEXT}


def test_a_failover_server_without_a_certificate(site: LocalSite) -> None:
    # Given rs1 is encrypted (while fo1 was still prepared, as the site requires)
    encrypt(site, "rs1")
    assert codes(run_doctor(site)) == {PLAINTEXT}

    # When fo1 comes back from a restart without a certificate in its config
    fo1 = site.servers["fo1"]
    site.stop("fo1")
    drop_certificate_from_config(fo1)
    site.start("fo1")
    eventually(
        lambda: (
            servers_by_name(site.status())["fo1"]["online"]
            and servers_by_name(site.status())["fo1"]["certificate"] is None
        ),
        interval=POLL,
        what="fo1 online without a certificate",
    )

    # Then the doctor reports site.failover_prepared for fo1 (beside the plaintext logins)
    findings = wait_for_codes(site, {PLAINTEXT, "site.failover_prepared"})
    prepared = [f for f in findings if f.code == "site.failover_prepared"]
    assert [f.server for f in prepared] == ["fo1"]
    assert "cannot take over for the encrypted recording server(s) rs1" in prepared[0].message


def test_an_offline_server_is_reported_for_information(site: LocalSite) -> None:
    # Given fo1 stops
    site.stop("fo1")

    # Then, once the management server misses it, the doctor says so, as information only
    def offline() -> bool:
        findings = run_doctor(site)
        info = [f for f in findings if f.severity is Severity.INFO]
        assert [(f.code, f.server) for f in info] == [("site.offline", "fo1")], describe(findings)
        return True

    eventually(offline, interval=POLL, what="fo1 reported offline")


def test_an_unreachable_management_server(site: LocalSite) -> None:
    # Given the management server is stopped
    site.stop("ms")

    # Then the doctor reports it cannot reach it, still checks the local files, exits 1
    findings = run_doctor(site)
    assert codes(findings) == {"site.reachable"}, describe(findings)
    unreachable = next(f for f in findings if f.code == "site.reachable")
    assert unreachable.server == "ms"
    assert "connection refused" in unreachable.message
    status, _document = doctor_cli(site)
    assert status == 1

    # And the local checks still run without the management server
    site.servers["rs1"].key.chmod(0o644)
    try:
        assert codes(run_doctor(site)) == {"site.reachable", "key.service_account"}
    finally:
        site.servers["rs1"].key.chmod(0o600)
    site.start("ms")
    site.wait_online("ms", "rs1")
