"""Certificates from `watchkeep ca init` / `cert issue`, judged by independent oracles.

Given a site CA, when watchkeep issues server certificates (in-process and as a process),
then `openssl verify`, pkilint and `cryptography.x509.verification` all accept them for
their names and purposes, and refuse them for any other name, purpose, time or trust.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.verification import (
    PolicyBuilder,
    ServerVerifier,
    Store,
    VerificationError,
)
from pki_support import (
    openssl_verify,
    run_cli,
    run_process,
    unique_host,
    utcnow,
)

from tool_support import pkilint
from watchkeep._home import Home
from watchkeep.pki import load_certificate
from watchkeep.store import CertificateRecord

ROLES = ["management", "recording", "failover", "mobile", "event"]
# Every role a watchkeep server runs as also dials the management server (mTLS)
DUAL_PURPOSE_ROLES = {"management", "recording", "failover", "mobile"}

# What the CA/Browser Forum server-certificate rules say about a leaf of our private CA.
# Each finding is expected because the CA is private, not a defect: anything else fails.
CABF_PRIVATE_PKI_FINDINGS = {
    # Site host names (*.site.example, rs1.local...) are not in public DNS: a private CA
    # exists precisely to name such hosts.
    "cabf.internal_domain_name",
    # IP SANs name loopback or site-internal addresses (cert.hostname: IP where addressed by IP).
    "cabf.internal_ip_address",
    # A private CA asserts no CA/B Forum policy OID (it is not audited against them).
    "cabf.serverauth.subscriber.certificate_policies_extension_absent",
    # The specification wants the host name as subject CN as well as in the SAN (cert.hostname).
    "cabf.serverauth.dv.common_name_attribute_present",
    # RFC 5280 says SHOULD; without it `lint_pkix_cert` warns (certificate_skid_end_entity_missing).
    "cabf.serverauth.subscriber.subject_key_identifier_extension_present",
}
# What a leaf lacks when its CA has no publish URL (`ca publish-url`): no CRL distribution
# point and no AIA caIssuers URL. Never allowed above: a CA that publishes names both.
REVOCATION_INFORMATION_ABSENT = {
    "cabf.serverauth.subscriber.revocation_information_absent",
    "msft.end_entity.revocation_information_absent",
    "cabf.serverauth.subscriber.authority_info_access_extension_absent",
}


def unexpected_cabf_findings(cert: Path | str) -> list[str]:
    lint = pkilint("lint_cabf_serverauth_cert", cert, "-d")
    assert lint.status == len(lint.codes), lint.report  # exit status counts the findings
    return sorted(set(lint.codes) - CABF_PRIVATE_PKI_FINDINGS)


def issue_with_cli(home: Home, how: str, *args: str) -> dict[str, object]:
    argv = ["cert", "issue", *args, "--json"]
    if how == "in-process":
        ran = run_cli(home.root, *argv)
    else:
        ran = run_process(home.root, *argv, script=how == "console-script")
    assert ran.code == 0, ran.err
    result: dict[str, object] = ran.json()
    return result


@pytest.mark.parametrize(
    ("how", "key_type", "role"),
    [
        ("in-process", "rsa-2048", "management"),
        ("in-process", "ecdsa-p256", "mobile"),
        ("python -m watchkeep", "ecdsa-p256", "recording"),
        ("console-script", "rsa-2048", "event"),
    ],
)
def test_openssl_verify_accepts_the_names_and_purpose_of_an_issued_certificate(
    site: Home, how: str, key_type: str, role: str
) -> None:
    # Given a certificate issued for two host names and an IP address
    host, alias = unique_host("srv"), unique_host("alias")
    issued = issue_with_cli(
        site, how, "--role", role, "--host", host, "--host", alias,
        "--ip", "127.0.0.2", "--key-type", key_type,
    )  # fmt: skip
    strict = ["-CAfile", site.ca_cert, "-purpose", "sslserver", "-x509_strict"]

    # Then openssl accepts it for each of its names, as a TLS server certificate
    for name in (host, alias):
        verdict = openssl_verify(issued["cert_path"], *strict, "-verify_hostname", name)
        assert verdict.ok, verdict.output
    assert openssl_verify(issued["cert_path"], *strict, "-verify_ip", "127.0.0.2").ok

    # And refuses it for a name or an address it does not carry
    wrong = openssl_verify(issued["cert_path"], *strict, "-verify_hostname", unique_host())
    assert wrong.has_error(62), wrong.output
    wrong_ip = openssl_verify(issued["cert_path"], *strict, "-verify_ip", "127.0.0.3")
    assert wrong_ip.has_error(64), wrong_ip.output

    # And the chain file verifies the same way once split into leaf and CA
    chain = load_pem_bundle(Path(str(issued["chain_path"])))
    assert [c.subject for c in chain] == [
        load_certificate(Path(str(issued["cert_path"]))).subject,
        load_certificate(site.ca_cert).subject,
    ]


def load_pem_bundle(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


@pytest.mark.parametrize("role", ROLES)
def test_openssl_client_purpose_follows_the_role(
    site: Home, issue: Callable[..., CertificateRecord], role: str
) -> None:
    record = issue(site, role, unique_host(role))
    verdict = openssl_verify(record.cert_path, "-CAfile", site.ca_cert, "-purpose", "sslclient")
    if role in DUAL_PURPOSE_ROLES:
        assert verdict.ok, verdict.output
    else:
        assert verdict.has_error(26), verdict.output  # unsupported certificate purpose


def test_openssl_verify_attime_refuses_outside_the_validity_period(
    site: Home, issue: Callable[..., CertificateRecord]
) -> None:
    now = utcnow()
    record = issue(site, "recording", unique_host(), days=90)
    args = ["-CAfile", site.ca_cert, "-purpose", "sslserver", "-x509_strict"]

    def at(when: dt.datetime) -> list[str | Path]:
        return [*args, "-attime", str(int(when.timestamp()))]

    assert openssl_verify(record.cert_path, *at(now + dt.timedelta(days=89))).ok
    expired = openssl_verify(record.cert_path, *at(now + dt.timedelta(days=91)))
    assert expired.has_error(10), expired.output

    # A certificate dated in the future is refused until its time comes
    future = issue(site, "recording", unique_host(), now=now + dt.timedelta(days=10))
    early = openssl_verify(future.cert_path, *at(now))
    assert early.has_error(9), early.output
    assert openssl_verify(future.cert_path, *at(now + dt.timedelta(days=11))).ok


def test_openssl_capath_trusts_what_trust_install_put_in_a_store(
    site: Home, other_site: Home, issue: Callable[..., CertificateRecord], tmp_path: Path
) -> None:
    record = issue(site, "management", "ms.capath.example")
    store = tmp_path / "store"
    args = ["-purpose", "sslserver", "-verify_hostname", "ms.capath.example"]

    # Before: an empty store trusts nothing
    store.mkdir()
    assert openssl_verify(record.cert_path, "-CApath", store, *args).has_error(20)

    # When the site CA is installed in the store
    ran = run_cli(site.root, "trust", "install", "--store", store, "--json")
    assert ran.code == 0, ran.err

    # Then openssl finds it by subject hash alone
    assert openssl_verify(record.cert_path, "-CApath", store, *args).ok
    # And another CA's store does not vouch for it
    other = tmp_path / "other-store"
    assert run_cli(other_site.root, "trust", "install", "--store", other).code == 0
    assert openssl_verify(record.cert_path, "-CApath", other, *args).has_error(20)


def test_openssl_crl_check_refuses_a_revoked_certificate(
    home: Home, issue: Callable[..., CertificateRecord], tmp_path: Path
) -> None:
    kept = issue(home, "recording", "rs1.crl.example")
    revoked = issue(home, "recording", "rs2.crl.example")
    crl = tmp_path / "crl.pem"

    ran = run_cli(home.root, "cert", "revoke", revoked.name, "--reason", "key-compromise")
    assert ran.code == 0, ran.err
    ran = run_cli(home.root, "ca", "crl", "--out", crl, "--json")
    assert ran.code == 0, ran.err
    assert ran.json()["revoked"] == [revoked.serial]

    args = ["-CAfile", home.ca_cert, "-crl_check", "-CRLfile", crl, "-purpose", "sslserver"]
    assert openssl_verify(kept.cert_path, *args).ok
    verdict = openssl_verify(revoked.cert_path, *args)
    assert verdict.has_error(23), verdict.output  # certificate revoked

    # The CRL that `trust install` copies beside the CA works through -CApath as well
    store = tmp_path / "store"
    assert run_cli(home.root, "trust", "install", "--store", store).code == 0
    by_dir = ["-CApath", store, "-crl_check", "-purpose", "sslserver"]
    assert openssl_verify(kept.cert_path, *by_dir).ok
    assert openssl_verify(revoked.cert_path, *by_dir).has_error(23)


# -- pkilint ------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["default RSA-3072 CA", "ECDSA CA"])
def test_pkilint_pkix_finds_nothing_in_the_ca(rsa_site: Home, site: Home, which: str) -> None:
    ca = rsa_site if which.startswith("default") else site
    lint = pkilint("lint_pkix_cert", ca.ca_cert)
    assert (lint.status, lint.codes) == (0, ()), lint.report


@pytest.mark.parametrize("key_type", ["rsa-2048", "ecdsa-p256"])
def test_pkilint_finds_nothing_unexpected_in_a_leaf(rsa_site: Home, key_type: str) -> None:
    ran = run_cli(
        rsa_site.root, "cert", "issue", "--role", "management", "--host", unique_host("ms"),
        "--ip", "10.0.0.5", "--key-type", key_type, "--json",
    )  # fmt: skip
    assert ran.code == 0, ran.err
    cert = ran.json()["cert_path"]

    pkix = pkilint("lint_pkix_cert", cert)
    assert (pkix.status, pkix.codes) == (0, ()), pkix.report
    assert unexpected_cabf_findings(cert) == []


def test_pkilint_finds_the_revocation_information_missing_from_a_leaf_of_an_unpublished_ca(
    site: Home, issue: Callable[..., CertificateRecord]
) -> None:
    # The `site` CA has no publish URL: its leaves name no CRL and no CA URL, and the
    # CA/B lint says so (the leaves of the publishing CA above are clean of it).
    record = issue(site, "recording", unique_host())
    assert set(unexpected_cabf_findings(record.cert_path)) == REVOCATION_INFORMATION_ABSENT


def test_the_cabf_allow_list_still_catches_what_it_does_not_name(
    site: Home, issue: Callable[..., CertificateRecord]
) -> None:
    # A certificate longer-lived than any CA/B rule allows must not slip through the
    # allow-list: it proves the check above can fail.
    record = issue(site, "mobile", unique_host(), days=500)
    assert unexpected_cabf_findings(record.cert_path) != []


# -- cryptography.x509.verification -------------------------------------------------------


def server_verifier(
    ca: Home, subject: x509.DNSName | x509.IPAddress, when: dt.datetime
) -> ServerVerifier:
    return (
        PolicyBuilder()
        .store(Store([load_certificate(ca.ca_cert)]))
        .time(when)
        .build_server_verifier(subject)
    )


@pytest.mark.parametrize("role", ROLES)
def test_cryptography_verifies_every_role_for_its_names_only(
    site: Home, other_site: Home, issue: Callable[..., CertificateRecord], role: str
) -> None:
    host = unique_host(role)
    record = issue(site, role, host, ips=["192.0.2.7"])
    leaf = load_certificate(Path(record.cert_path))
    now = utcnow()

    chain = server_verifier(site, x509.DNSName(host), now).verify(leaf, [])
    assert chain[-1] == load_certificate(site.ca_cert)
    ip = x509.IPAddress(ipaddress.ip_address("192.0.2.7"))
    server_verifier(site, ip, now).verify(leaf, [])

    refusals = [
        server_verifier(site, x509.DNSName(unique_host()), now),  # wrong name
        server_verifier(site, x509.IPAddress(ipaddress.ip_address("192.0.2.8")), now),
        server_verifier(other_site, x509.DNSName(host), now),  # other CA
        server_verifier(site, x509.DNSName(host), now + dt.timedelta(days=91)),  # expired
    ]
    for verifier in refusals:
        with pytest.raises(VerificationError):
            verifier.verify(leaf, [])


@pytest.mark.parametrize("role", ROLES)
def test_cryptography_client_verifier_accepts_only_the_roles_that_dial_out(
    site: Home, issue: Callable[..., CertificateRecord], role: str
) -> None:
    record = issue(site, role, unique_host(role))
    verifier = (
        PolicyBuilder()
        .store(Store([load_certificate(site.ca_cert)]))
        .time(utcnow())
        .build_client_verifier()
    )
    leaf = load_certificate(Path(record.cert_path))
    if role in DUAL_PURPOSE_ROLES:
        verified = verifier.verify(leaf, [])
        assert [n.value for n in verified.subjects or []] == [record.hosts[0]]
    else:
        with pytest.raises(VerificationError):
            verifier.verify(leaf, [])
