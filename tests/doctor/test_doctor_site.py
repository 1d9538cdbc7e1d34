"""`watchkeep doctor` against a live encrypted site, broken in exactly one way per test.

Given a site of real processes (management, recording, failover and mobile servers, each
on its own loopback address) encrypted through the command line, recording servers first;
when one thing is broken the way an administrator could break it, then the doctor reports
exactly that rule code (informational findings aside: a server refused by its peers goes
offline) and the exit status follows the severity. Each test mends what it broke, and the
next one starts only once the doctor finds the site healthy again.
"""

from __future__ import annotations

import datetime as dt
import shlex
import shutil
from collections.abc import Callable

import pytest
from doctor_sites import (
    POLL,
    codes,
    describe,
    doctor_cli,
    drop_certificate_from_config,
    encrypt,
    install_foreign_certificate,
    probe,
    refresh_crls,
    reload,
    run_doctor,
    untrust_site_ca,
    wait_for_codes,
    weak_tls_server,
    write_leaf_only,
)

from watchkeep._clock import utcnow_to_second
from watchkeep.doctor import Severity
from watchkeep.pki import Role, certificate_name
from watchkeep.site import ServerRole
from watchkeep.testing import LocalSite, eventually

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def encrypted_site(make_site: Callable[..., LocalSite]) -> LocalSite:
    site = make_site(
        "encrypted",
        ("ms", ServerRole.MANAGEMENT),
        ("rs1", ServerRole.RECORDING),
        ("fo1", ServerRole.FAILOVER),
        ("mob", ServerRole.MOBILE),
    )
    encrypt(site, "rs1", "fo1", "mob", "ms")
    return site


@pytest.fixture
def site(encrypted_site: LocalSite) -> LocalSite:
    """The encrypted site, healthy in the doctor's eyes when the test starts."""
    wait_for_codes(encrypted_site, set())
    return encrypted_site


def mend_rs1(site: LocalSite) -> None:
    """Give rs1 a fresh certificate of its own and wait until it is back with its peers."""
    rs1 = site.servers["rs1"]
    site.issue(rs1)
    rs1.key.chmod(0o600)
    reload(rs1)
    site.wait_online("rs1")


def apply_fix(site: LocalSite, fix: str) -> None:
    """Run a fix the doctor gave (a watchkeep command) against the site's home."""
    words = shlex.split(fix)
    assert words[0] == "watchkeep", fix
    ran = site.cli(*words[1:])
    assert ran.returncode == 0, f"{fix}: {ran.stderr}"


def test_a_healthy_encrypted_site_has_no_findings(site: LocalSite) -> None:
    # When the doctor runs as a command
    status, findings = doctor_cli(site)

    # Then it finds nothing and exits 0
    assert (status, findings) == (0, [])
    human = site.cli("doctor")
    assert human.returncode == 0, human.stdout + human.stderr
    assert "4 server(s) listed by the management server" in human.stdout
    assert "6 TLS listener(s)" in human.stdout
    assert "0 finding(s)" in human.stdout


def test_the_probes_see_what_clients_see(site: LocalSite) -> None:
    # When the doctor connects to each TLS listener of the site
    for name, listener in [
        ("ms", "api"),
        ("rs1", "data"),
        ("rs1", "control"),
        ("fo1", "data"),
        ("mob", "https"),
    ]:
        result = probe(site.servers[name], listener)

        # Then it is served the complete chain over TLS 1.3, and every forbidden
        # handshake (TLS 1.0, TLS 1.1, a weak TLS 1.2 suite) is refused
        assert result.error is None, result
        assert len(result.chain) == 2, result
        assert result.chain[1] == site.pki.ca_certificate()
        assert result.version == "TLSv1.3"
        assert result.weak_accepted == ()


def test_a_certificate_for_another_host(site: LocalSite) -> None:
    rs1 = site.servers["rs1"]
    # Given rs1's files hold a certificate issued for another host
    install_foreign_certificate(site, rs1, Role.RECORDING, "other.site.test")
    try:
        # Then the doctor reports cert.hostname for rs1, and exits 1
        findings = wait_for_codes(site, {"cert.hostname"})
        assert [f.server for f in findings if f.code == "cert.hostname"] == ["rs1"]
        assert "names other.site.test, not the server's host rs1.site.test" in describe(findings)
        assert doctor_cli(site)[0] == 1

        # And its fix, pasted, gives rs1 a certificate of its own where its config expects it
        apply_fix(site, findings[0].fix)
        reload(rs1)
        wait_for_codes(site, set())
    finally:
        mend_rs1(site)


def test_a_certificate_not_issued_for_client_authentication(site: LocalSite) -> None:
    rs1 = site.servers["rs1"]
    # Given rs1's files hold an event server's certificate (serverAuth only) for its host
    install_foreign_certificate(site, rs1, Role.EVENT, rs1.host)
    try:
        findings = wait_for_codes(site, {"cert.server_auth"})
        assert "client authentication (clientAuth)" in describe(findings)
    finally:
        mend_rs1(site)


def test_a_chain_served_incomplete(site: LocalSite) -> None:
    rs1 = site.servers["rs1"]
    complete = rs1.chain.read_bytes()
    # Given rs1's chain file holds only its certificate, and rs1 reloads it
    write_leaf_only(rs1)
    reload(rs1)
    try:
        # Then the doctor reports cert.chain, for the file and for what rs1 serves
        eventually(
            lambda: len(probe(rs1, "data").chain) == 1,
            interval=POLL,
            what="rs1 serves its leaf only",
        )
        findings = wait_for_codes(site, {"cert.chain"})
        text = describe(findings)
        assert f"{rs1.chain} holds the server certificate without the site CA" in text
        assert "the data listener" in text
        assert "serves an incomplete chain" in text
        fixes = {f.fix for f in findings}
        assert f"cat {site.home.ca_cert} >> {rs1.chain}" in fixes
    finally:
        rs1.chain.write_bytes(complete)
        reload(rs1)
        eventually(
            lambda: len(probe(rs1, "data").chain) == 2, interval=POLL, what="rs1 serves its chain"
        )


def test_an_expired_certificate(site: LocalSite) -> None:
    rs1 = site.servers["rs1"]
    # Given rs1's files hold a certificate that expired ten days ago (issued in the past)
    site.issue(rs1, now=utcnow_to_second() - dt.timedelta(days=100), days=90)
    try:
        findings = wait_for_codes(site, {"cert.validity"})
        assert "expired on" in describe(findings)

        # And its fix, pasted, renews it (an expired certificate can be renewed)
        assert [f.fix for f in findings] == [f"watchkeep cert renew recording-{rs1.host}"]
        apply_fix(site, findings[0].fix)
        reload(rs1)
        wait_for_codes(site, set())
    finally:
        mend_rs1(site)


def test_a_certificate_inside_the_expiry_thresholds(site: LocalSite) -> None:
    rs1 = site.servers["rs1"]
    # Given rs1 now serves a certificate with ten days left
    site.issue(rs1, now=utcnow_to_second() - dt.timedelta(days=80), days=90)
    reload(rs1)
    try:
        # Then the doctor warns (the 14-day threshold), and exits 0: a warning is no error
        findings = wait_for_codes(site, {"cert.expiry_warning"})
        # (once the server has tried to renew, its failed attempts are a second warning)
        severities = {f.severity for f in findings if f.code == "cert.expiry_warning"}
        assert severities == {Severity.WARNING}
        assert "(the 14-day warning)" in describe(findings)
        status, document = doctor_cli(site)
        assert status == 0
        assert {f["code"] for f in document} == {"cert.expiry_warning"}

        # And with thresholds of 7 and 3 days there is nothing to say about its expiry yet
        # (only, maybe, that rs1 tried to renew it: this site keeps its CA offline)
        status, document = doctor_cli(site, "--warn-days", "7,3")
        assert status == 0
        assert [f for f in document if "renewing its certificate failed" not in f["message"]] == []
    finally:
        mend_rs1(site)


def test_a_certificate_that_lives_too_long(site: LocalSite) -> None:
    rs1 = site.servers["rs1"]
    site.issue(rs1, days=400)
    reload(rs1)
    try:
        findings = wait_for_codes(site, {"cert.lifetime"})
        assert "lives 400 days" in describe(findings)
    finally:
        mend_rs1(site)


def test_a_revoked_certificate_still_installed(site: LocalSite) -> None:
    rs1 = site.servers["rs1"]
    # Given rs1's certificate is revoked and the new CRL is in every trust store
    site.pki.revoke(certificate_name(Role.RECORDING, rs1.host), reason="key-compromise")
    refresh_crls(site)
    try:
        findings = wait_for_codes(site, {"cert.revoked"})
        assert [f.server for f in findings if f.code == "cert.revoked"] == ["rs1"]
        assert "was revoked on" in describe(findings)
    finally:
        mend_rs1(site)


def test_the_site_ca_missing_from_a_trust_store(site: LocalSite) -> None:
    mob = site.servers["mob"]
    # Given the mobile server's trust store no longer holds the site CA
    untrust_site_ca(mob, site)
    try:
        findings = wait_for_codes(site, {"trust.installed"})
        assert [f.server for f in findings if f.code == "trust.installed"] == ["mob"]
        assert f"the trust store {mob.trust_dir} of mob does not hold the site CA" in describe(
            findings
        )
    finally:
        site.trust(mob)
        site.wait_online("mob")


def test_a_private_key_others_can_read(site: LocalSite) -> None:
    rs1 = site.servers["rs1"]
    rs1.key.chmod(0o644)
    try:
        findings = wait_for_codes(site, {"key.service_account"})
        assert [f.fix for f in findings] == [f"chmod 600 {rs1.key}"]
    finally:
        rs1.key.chmod(0o600)


def test_a_recording_server_without_a_certificate_on_an_encrypted_site(site: LocalSite) -> None:
    # Given a new recording server whose config names no certificate, started on a site
    # whose management server is encrypted (which refuses its registration)
    rs2 = site.add_server("rs2", ServerRole.RECORDING, certificate=False)
    drop_certificate_from_config(rs2)
    site.start("rs2")
    try:
        findings = wait_for_codes(site, {"site.ms_requires_all_rs"})
        assert [f.server for f in findings] == ["rs2"]
        assert "names no certificate" in findings[0].message
        assert "rs2" not in {s["name"] for s in site.status()["servers"]}
    finally:
        site.stop("rs2")
        del site.servers["rs2"]
        shutil.rmtree(rs2.directory)


def test_a_listener_that_accepts_old_protocols_and_weak_suites(site: LocalSite) -> None:
    mob = site.servers["mob"]
    # Given the mobile server's HTTPS port is served by a program that accepts anything
    site.stop("mob")
    try:
        with weak_tls_server(site, mob, "https"):
            # Then the doctor reports tls.policy for it, naming what was accepted
            findings = wait_for_codes(site, {"tls.policy"})
            text = describe(findings)
            assert "TLSv1.0" in text
            assert "TLSv1.1" in text
            assert "TLSv1.2 with a weak suite" in text
            assert doctor_cli(site)[0] == 1
    finally:
        site.start("mob")
        site.wait_online("mob")


def test_the_command_exits_1_and_prints_a_table_with_fixes(site: LocalSite) -> None:
    rs1 = site.servers["rs1"]
    rs1.key.chmod(0o640)
    try:
        ran = site.cli("doctor")
        assert ran.returncode == 1
        assert "key.service_account" in ran.stdout
        assert f"chmod 600 {rs1.key}" in ran.stdout
        assert "1 error(s)" in ran.stdout
        findings = run_doctor(site)
        assert codes(findings) == {"key.service_account"}
    finally:
        rs1.key.chmod(0o600)
