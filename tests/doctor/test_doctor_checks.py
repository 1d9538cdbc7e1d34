"""The checks as pure functions: each case is a snapshot (the healthy site with one thing
broken) next to the findings the doctor must report for it, and nothing else.

Golden style, as pkilint's tests: the input and its expected findings side by side. The
last tests make sure every registered check has a case that expects it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from doctor_snapshots import (
    CA,
    CRL,
    HOME_TRUST,
    LEAVES,
    NOW,
    OTHER_CA,
    crl,
    healthy,
    host,
    leaf,
    local,
    odd_leaf,
    probe,
    server_json,
    trust,
    with_listed,
    with_local,
    with_probes,
    with_trust_crls,
    without_local,
    without_probes,
)

from watchkeep._access import Blocked
from watchkeep.doctor import (
    CHECKS,
    Finding,
    KeyFileFacts,
    Severity,
    SiteSnapshot,
    check_by_code,
    run_checks,
)
from watchkeep.doctor._snapshot import IssuedCertificate
from watchkeep.pki import Role, fingerprint
from watchkeep.site import ServerRole

E, W, INFO = Severity.ERROR, Severity.WARNING, Severity.INFO
RS1_CHAIN = Path("/srv/watchkeep/rs1/tls/recording-rs1.site.test.chain.pem")
RS1_KEY = Path("/srv/watchkeep/rs1/tls/recording-rs1.site.test.key")


@dataclass(frozen=True)
class Case:
    """A snapshot and the findings it must give: (code, severity, server, words the
    message must contain)."""

    name: str
    snapshot: Callable[[], SiteSnapshot]
    expected: list[tuple[str, Severity, str, str]]


def rs1_files(
    *chain: x509.Certificate,
    mode: int = 0o600,
    owner: str = "watchkeep",
    matches_certificate: bool = True,
    error: str | None = None,
    unreachable: Blocked | None = None,
    account_exists: bool = True,
) -> Callable[[], SiteSnapshot]:
    """The healthy site with rs1's files changed (its listeners still serve the old ones)."""

    def make() -> SiteSnapshot:
        key = KeyFileFacts(
            RS1_KEY,
            "watchkeep",
            owner=owner,
            mode=mode,
            matches_certificate=matches_certificate,
            error=error,
            unreachable=unreachable,
            account_exists=account_exists,
        )
        return with_local(healthy(), local("rs1", chain=chain or None, key=key))

    return make


def rs1_everywhere(cert: x509.Certificate) -> Callable[[], SiteSnapshot]:
    """rs1's certificate replaced in its files and served on both its listeners."""

    def make() -> SiteSnapshot:
        chain = (cert, CA.certificate)
        snapshot = with_local(healthy(), local("rs1", chain=chain))
        return with_probes(
            snapshot, probe("rs1", "data", chain=chain), probe("rs1", "control", chain=chain)
        )

    return make


def remote(name: str, **entry: Any) -> Callable[[], SiteSnapshot]:
    """A server whose files are on another host: only its status entry (and probes)."""

    def make() -> SiteSnapshot:
        return with_listed(without_local(healthy(), name), server_json(name, **entry))

    return make


def expiring_in(days: float) -> x509.Certificate:
    return leaf(
        ServerRole.RECORDING, [host("rs1")], days=90, issued=NOW - dt.timedelta(days=90 - days)
    )


EXPIRED = leaf(ServerRole.RECORDING, [host("rs1")], days=90, issued=NOW - dt.timedelta(days=100))
NOT_YET = leaf(ServerRole.RECORDING, [host("rs1")], days=90, issued=NOW + dt.timedelta(days=2))
OTHER_HOST = leaf(ServerRole.RECORDING, [host("other")])
SERVER_ONLY_PROFILE = leaf(Role.EVENT, [host("rs1")])
FROM_OTHER_CA = leaf(ServerRole.RECORDING, [host("rs1")], ca=OTHER_CA)
LONG_LIVED = leaf(ServerRole.RECORDING, [host("rs1")], days=400)
REVOKED_CRL = crl([LEAVES["rs1"]], number=2, now=NOW - dt.timedelta(hours=1))


def revoked_rs1_everywhere() -> SiteSnapshot:
    """rs1's certificate revoked, the new CRL in the CA's files and every trust store."""
    return with_trust_crls(replace(healthy(), crls=(REVOKED_CRL,)), [REVOKED_CRL])


def fo1_without_certificate(ms_encryption: bool) -> SiteSnapshot:
    snapshot = with_local(healthy(), local("fo1", no_certificate=True))
    snapshot = with_listed(snapshot, server_json("fo1", no_certificate=True, encryption=False))
    snapshot = with_listed(snapshot, server_json("ms", encryption=ms_encryption))
    snapshot = without_probes(snapshot, "fo1")
    return snapshot if ms_encryption else without_probes(snapshot, "ms")


def short_lived_ca_snapshot() -> SiteSnapshot:
    from watchkeep.pki import CertificateAuthority, KeyType

    short = CertificateAuthority.create("Short CA", key_type=KeyType.ECDSA_P256, days=20, now=NOW)
    return SiteSnapshot(now=NOW, site_cas=(short.certificate,))


def issued(name: str, *, days: float, same_as: x509.Certificate | None = None) -> IssuedCertificate:
    """An active certificate of the CA's inventory (by default one no server serves)."""
    return IssuedCertificate(
        name=name,
        role=name.split("-", 1)[0],
        hosts=(name.split("-", 1)[1],),
        serial="1f2e3d",
        sha256_fingerprint=fingerprint(same_as) if same_as is not None else "ab" * 32,
        not_after=NOW + dt.timedelta(days=days),
    )


def inventory(*certificates: IssuedCertificate) -> SiteSnapshot:
    """The healthy site seen from the CA's home, whose inventory holds ``certificates``."""
    return replace(healthy(), issued=certificates)


def rs1_in_inventory_too() -> SiteSnapshot:
    """rs1 serves a certificate expiring in 10 days, which the inventory holds as well."""
    cert = expiring_in(10)
    return replace(
        rs1_everywhere(cert)(),
        issued=(issued("recording-rs1.site.test", days=10, same_as=cert),),
    )


CASES = [
    Case("a healthy site", healthy, []),
    # -- cert.hostname -----------------------------------------------------------------
    Case(
        "rs1's files hold a certificate for another host",
        rs1_files(OTHER_HOST, CA.certificate),
        [("cert.hostname", E, "rs1", "names other.site.test, not the server's host rs1.site.test")],
    ),
    Case(
        "a remote server serves a certificate for another host",
        lambda: with_probes(
            remote("rs1", certificate=OTHER_HOST)(),
            probe("rs1", "data", chain=(OTHER_HOST, CA.certificate)),
            probe("rs1", "control", chain=(OTHER_HOST, CA.certificate)),
        ),
        [("cert.hostname", E, "rs1", "served on the data listener (127.0.0.3:7563) and")],
    ),
    Case(
        "a remote server with encryption off reports a certificate for another host",
        lambda: without_probes(remote("rs1", certificate=OTHER_HOST)(), "rs1"),
        [("cert.hostname", E, "rs1", "the certificate it reports names other.site.test")],
    ),
    Case(
        "the subject CN is not one of the DNS names",
        rs1_files(
            odd_leaf(
                [host("rs1")],
                common_name="rs1",
                usages=(ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
            ),
            CA.certificate,
        ),
        [("cert.hostname", E, "rs1", "subject CN rs1, which is not one of its DNS names")],
    ),
    # -- cert.server_auth --------------------------------------------------------------
    Case(
        "a recording server with an event server's certificate (no clientAuth)",
        rs1_files(SERVER_ONLY_PROFILE, CA.certificate),
        [("cert.server_auth", E, "rs1", "client authentication (clientAuth)")],
    ),
    Case(
        "a certificate issued for client authentication only",
        lambda: with_local(
            healthy(),
            local(
                "mob",
                chain=(
                    odd_leaf([host("mob")], usages=(ExtendedKeyUsageOID.CLIENT_AUTH,)),
                    CA.certificate,
                ),
            ),
        ),
        [("cert.server_auth", E, "mob", "not issued for server authentication (serverAuth)")],
    ),
    Case(
        "a CA certificate installed as a server certificate",
        lambda: with_local(
            healthy(),
            local("mob", chain=(odd_leaf([host("mob")], is_ca=True), CA.certificate)),
        ),
        [("cert.server_auth", E, "mob", "is a CA certificate")],
    ),
    # -- cert.chain --------------------------------------------------------------------
    Case(
        "rs1's chain file holds only its certificate",
        rs1_files(LEAVES["rs1"]),
        [("cert.chain", E, "rs1", f"{RS1_CHAIN} holds the server certificate without the site CA")],
    ),
    Case(
        "rs1 serves only its certificate",
        lambda: with_probes(healthy(), probe("rs1", "data", chain=(LEAVES["rs1"],))),
        [("cert.chain", E, "rs1", "the data listener (127.0.0.3:7563) serves an incomplete chain")],
    ),
    Case(
        "rs1's certificate is issued by another CA",
        rs1_files(FROM_OTHER_CA, OTHER_CA.certificate),
        [("cert.chain", E, "rs1", "is not issued by the site CA")],
    ),
    Case(
        "rs1's key does not belong to its certificate",
        rs1_files(matches_certificate=False),
        [("cert.chain", E, "rs1", f"the key {RS1_KEY} does not belong to the certificate")],
    ),
    Case(
        "rs1's chain file is damaged",
        lambda: with_local(healthy(), replace(local("rs1"), chain=(), chain_error="no PEM")),
        [("cert.chain", E, "rs1", "is not a certificate chain: no PEM")],
    ),
    Case(
        "rs1's encryption is on but its listener answers in plaintext",
        lambda: with_probes(
            healthy(),
            replace(
                probe("rs1", "data", chain=()),
                plaintext=True,
                error="wrong version number",
                version=None,
                cipher=None,
            ),
        ),
        [("cert.chain", E, "rs1", "answers TLS clients in plaintext")],
    ),
    # -- cert.validity -----------------------------------------------------------------
    Case(
        "rs1's files hold an expired certificate",
        rs1_files(EXPIRED, CA.certificate),
        [("cert.validity", E, "rs1", "expired on 2030-05-22")],
    ),
    Case(
        "rs1's files hold a certificate not valid yet",
        rs1_files(NOT_YET, CA.certificate),
        [("cert.validity", E, "rs1", "is not valid until")],
    ),
    Case(
        "a remote server with encryption off reports an expired certificate",
        lambda: without_probes(remote("rs1", certificate=EXPIRED)(), "rs1"),
        [("cert.validity", E, "rs1", "the certificate it reports expired")],
    ),
    # -- cert.expiry_warning -----------------------------------------------------------
    Case(
        "rs1's certificate expires in 10 days",
        rs1_everywhere(expiring_in(10)),
        [("cert.expiry_warning", W, "rs1", "in 10.0 days (the 14-day warning)")],
    ),
    Case(
        "rs1's certificate expires in 25 days",
        rs1_everywhere(expiring_in(25)),
        [("cert.expiry_warning", W, "rs1", "(the 30-day warning)")],
    ),
    Case(
        "rs1's certificate expires in 10 days, thresholds 7 and 3",
        lambda: replace(rs1_everywhere(expiring_in(10))(), warn_days=(7, 3)),
        [],
    ),
    Case(
        "rs1's certificate expires in 2 days, thresholds 7 and 3",
        lambda: replace(rs1_everywhere(expiring_in(2))(), warn_days=(7, 3)),
        [("cert.expiry_warning", W, "rs1", "(the 3-day warning)")],
    ),
    Case(
        "a remote server reports a certificate expiring in 5 days",
        lambda: without_probes(remote("rs1", certificate=expiring_in(5))(), "rs1"),
        [("cert.expiry_warning", W, "rs1", "the certificate it reports expires")],
    ),
    Case(
        "an exported event certificate in the CA's inventory expires in 5 days",
        lambda: inventory(issued("event-ev1.site.test", days=5)),
        [("cert.expiry_warning", W, "event-ev1.site.test", "in 5.0 days (the 7-day warning)")],
    ),
    Case(
        "a certificate the CA issued for a client expired",
        lambda: inventory(issued("event-client1.site.test", days=-2)),
        [("cert.validity", E, "event-client1.site.test", "that the CA issued expired")],
    ),
    Case(
        "an inventory certificate that rs1 serves is reported once, as rs1's",
        rs1_in_inventory_too,
        [("cert.expiry_warning", W, "rs1", "in 10.0 days (the 14-day warning)")],
    ),
    Case(
        "the site CA expires in 20 days",
        short_lived_ca_snapshot,
        [
            # The CA alone is all this snapshot holds: no server was checked.
            ("site.reachable", E, "this home", "nothing was checked"),
            ("cert.expiry_warning", W, "site CA", "the site CA certificate CN=Short CA expires"),
        ],
    ),
    # -- cert.lifetime -----------------------------------------------------------------
    Case(
        "rs1's certificate lives 400 days",
        rs1_everywhere(LONG_LIVED),
        [("cert.lifetime", W, "rs1", "lives 400 days; at most 366")],
    ),
    # -- cert.revoked ------------------------------------------------------------------
    Case(
        "rs1's certificate is revoked but still installed and served",
        revoked_rs1_everywhere,
        [("cert.revoked", E, "rs1", f"serial {LEAVES['rs1'].serial_number:x}) was revoked")],
    ),
    Case(
        "a revocation that one trust store has not received",
        lambda: with_local(
            revoked_rs1_everywhere(),
            local("mob", trust_store=trust("mob", Path("/srv/watchkeep/mob/trust"), crls=[CRL])),
        ),
        [
            ("cert.revoked", E, "mob", "is out of date: it does not list serial(s)"),
            ("cert.revoked", E, "rs1", "was revoked"),
        ],
    ),
    Case(
        "a trust store without any CRL while certificates are revoked",
        lambda: with_local(
            revoked_rs1_everywhere(),
            local("mob", trust_store=trust("mob", Path("/srv/watchkeep/mob/trust"), crls=[])),
        ),
        [
            ("cert.revoked", E, "mob", "has no CRL of the site CA"),
            ("cert.revoked", E, "rs1", "was revoked"),
        ],
    ),
    Case(
        "a trust store whose CRL is past its next update",
        lambda: with_trust_crls(healthy(), [crl(now=NOW - dt.timedelta(days=8))]),
        [
            ("cert.revoked", E, "fo1", "expired on 2030-05-31"),
            # A failover server that refuses every certificate cannot take over.
            ("site.failover_prepared", E, "fo1", "fo1 refuses every certificate"),
            *[
                ("cert.revoked", E, name, "expired on 2030-05-31")
                for name in ["mob", "ms", "rs1", "this home"]
            ],
        ],
    ),
    Case(
        "a CRL signed by another CA does not revoke anything",
        lambda: with_trust_crls(healthy(), [CRL, crl([LEAVES["rs1"]], number=5, ca=OTHER_CA)]),
        [],
    ),
    # -- trust.installed ---------------------------------------------------------------
    Case(
        "rs1's trust store lacks the site CA",
        lambda: with_local(
            healthy(),
            local(
                "rs1",
                trust_store=trust(
                    "rs1", Path("/srv/watchkeep/rs1/trust"), cas=[OTHER_CA.certificate]
                ),
            ),
        ),
        [("trust.installed", E, "rs1", "does not hold the site CA CN=Doctor Test CA")],
    ),
    Case(
        "this home's trust store lacks the site CA",
        lambda: replace(healthy(), home_trust=replace(HOME_TRUST, cas=())),
        [("trust.installed", E, "this home", "of this home does not hold the site CA")],
    ),
    Case(
        "a server config without a trust store",
        lambda: with_local(healthy(), local("mob", no_trust_store=True)),
        [("trust.installed", E, "mob", "sets no [tls] trust_store")],
    ),
    Case(
        "an unreadable trust store",
        lambda: with_local(
            healthy(),
            local(
                "mob",
                trust_store=replace(
                    trust("mob", Path("/srv/watchkeep/mob/trust"), cas=[]),
                    error="the directory does not exist",
                ),
            ),
        ),
        [("trust.installed", E, "mob", "cannot be read: the directory does not exist")],
    ),
    Case(
        "no CA here, and no trust store holds the one the management server names",
        lambda: replace(
            healthy(),
            site_cas=(),
            site_ca_file=None,
            home_trust=replace(HOME_TRUST, cas=(OTHER_CA.certificate,)),
        ),
        [("trust.installed", E, "this home", f"site CA (sha256 {CA.fingerprint})")],
    ),
    # -- key.service_account -----------------------------------------------------------
    Case(
        "rs1's key has mode 0644",
        rs1_files(mode=0o644),
        [("key.service_account", E, "rs1", "has mode 0644: group and others")],
    ),
    Case(
        "rs1's key belongs to another account",
        rs1_files(owner="root"),
        [
            (
                "key.service_account",
                E,
                "rs1",
                "is owned by root, not by the service account watchkeep",
            )
        ],
    ),
    Case(
        "rs1's key cannot be read by its own account",
        rs1_files(mode=0o200),
        [("key.service_account", E, "rs1", "cannot read it")],
    ),
    Case(
        "rs1's key is the account's but sits in a directory the account cannot enter",
        rs1_files(
            unreachable=Blocked(RS1_KEY.parent, False, "the directory does not let it through")
        ),
        [("key.service_account", E, "rs1", "watchkeep cannot open the private key")],
    ),
    Case(
        "rs1's service account does not exist",
        rs1_files(account_exists=False),
        [("key.service_account", E, "rs1", "watchkeep that runs rs1 does not exist")],
    ),
    Case(
        "rs1's key is missing",
        rs1_files(error="No such file or directory"),
        [("key.service_account", E, "rs1", "cannot be used: No such file or directory")],
    ),
    Case(
        "a remote server reports a readable key",
        remote(
            "rs1",
            problems=[("key.service_account", "the private key has mode 0644", "chmod 600 KEY")],
        ),
        [
            (
                "key.service_account",
                E,
                "rs1",
                "rs1 reports about its own files: the private key has mode 0644",
            )
        ],
    ),
    Case(
        "a local server's stale report is not relayed: its files are read afresh",
        lambda: with_listed(
            healthy(), server_json("rs1", problems=[("key.service_account", "old news", "")])
        ),
        [],
    ),
    # -- site.ms_requires_all_rs -------------------------------------------------------
    Case(
        "the management server is encrypted, rs1 is not",
        lambda: without_probes(with_listed(healthy(), server_json("rs1", encryption=False)), "rs1"),
        [("site.ms_requires_all_rs", E, "rs1", "its encryption is off")],
    ),
    Case(
        "a recording server without a certificate on an encrypted site (refused, unlisted)",
        lambda: with_local(
            healthy(),
            local(
                "rs2",
                no_certificate=True,
                trust_store=trust("rs2", Path("/srv/watchkeep/rs2/trust")),
            ),
        ),
        [("site.ms_requires_all_rs", E, "rs2", "names no certificate")],
    ),
    # -- site.failover_prepared --------------------------------------------------------
    Case(
        "rs1 is encrypted, fo1 has no certificate (management server plaintext)",
        lambda: fo1_without_certificate(ms_encryption=False),
        [
            ("site.failover_prepared", E, "fo1", "has no certificate of its own"),
            ("site.ms_plaintext_login", E, "ms", "password across the network"),
        ],
    ),
    Case(
        "rs1 is encrypted, fo1 has no certificate (management server encrypted)",
        lambda: fo1_without_certificate(ms_encryption=True),
        [
            ("site.failover_prepared", E, "fo1", "has no certificate of its own"),
            ("site.ms_requires_all_rs", E, "fo1", "its encryption is off"),
        ],
    ),
    Case(
        "fo1's certificate has expired",
        lambda: with_local(
            healthy(),
            local(
                "fo1",
                chain=(
                    leaf(ServerRole.FAILOVER, [host("fo1")], issued=NOW - dt.timedelta(days=100)),
                    CA.certificate,
                ),
            ),
        ),
        [
            ("cert.validity", E, "fo1", "expired"),
            (
                "site.failover_prepared",
                E,
                "fo1",
                "not prepared to take over for the encrypted recording server(s) rs1",
            ),
        ],
    ),
    Case(
        "fo1 does not trust the site CA",
        lambda: with_local(
            healthy(),
            local("fo1", trust_store=trust("fo1", Path("/srv/watchkeep/fo1/trust"), cas=[])),
        ),
        [
            ("site.failover_prepared", E, "fo1", "does not hold the site CA"),
            ("trust.installed", E, "fo1", "does not hold the site CA"),
        ],
    ),
    Case(
        "no recording server is encrypted: an unprepared failover server is no finding",
        lambda: with_listed(
            fo1_without_certificate(ms_encryption=False),
            server_json("rs1", encryption=False),
        ),
        [("site.ms_plaintext_login", E, "ms", "password across the network")],
    ),
    # -- site.ms_plaintext_login -------------------------------------------------------
    Case(
        "the management server's encryption is off",
        lambda: without_probes(with_listed(healthy(), server_json("ms", encryption=False)), "ms"),
        [
            (
                "site.ms_plaintext_login",
                E,
                "ms",
                "sends its user's password across the network in clear",
            )
        ],
    ),
    # -- tls.policy --------------------------------------------------------------------
    Case(
        "the mobile server accepts TLS 1.0 and a weak TLS 1.2 suite",
        lambda: with_probes(
            healthy(),
            probe(
                "mob",
                "https",
                weak_accepted=(
                    "TLSv1.0 (ECDHE-ECDSA-AES128-SHA)",
                    "TLSv1.2 with a weak suite (AES128-SHA)",
                ),
            ),
        ),
        [
            (
                "tls.policy",
                E,
                "mob",
                "accepts TLSv1.0 (ECDHE-ECDSA-AES128-SHA), TLSv1.2 with a weak suite",
            )
        ],
    ),
    Case(
        "a certificate with an RSA key of 1024 bits",
        lambda: with_local(
            healthy(),
            local(
                "mob",
                chain=(
                    odd_leaf(
                        [host("mob")],
                        key=rsa.generate_private_key(65537, 1024),  # noqa: S505 (the weak key is the case)
                    ),
                    CA.certificate,
                ),
            ),
        ),
        [("tls.policy", E, "mob", "an RSA key of 1024 bits")],
    ),
    Case(
        "a certificate with a P-521 key",
        lambda: with_local(
            healthy(),
            local(
                "mob",
                chain=(
                    odd_leaf([host("mob")], key=ec.generate_private_key(ec.SECP521R1())),
                    CA.certificate,
                ),
            ),
        ),
        [("tls.policy", E, "mob", "an EC key on secp521r1")],
    ),
    # -- site.reachable ----------------------------------------------------------------
    Case(
        "the management server does not answer",
        lambda: replace(
            healthy(),
            status=None,
            probes=(),
            management_error="cannot connect to ms: connection refused",
            management_fix="start it",
        ),
        [
            (
                "site.reachable",
                E,
                "ms",
                "does not answer this home, so the live site was not checked: cannot connect",
            )
        ],
    ),
    Case(
        "an online server's listener refuses connections",
        lambda: with_probes(
            healthy(),
            replace(
                probe("rs1", "data", chain=()),
                error="connection refused (nothing listens there)",
                version=None,
                cipher=None,
            ),
        ),
        [("site.reachable", E, "rs1", "does not complete a TLS handshake: connection refused")],
    ),
    Case(
        "a server config that does not load",
        lambda: replace(
            healthy(),
            config_errors=(
                (Path("/srv/x/server.toml"), "config /srv/x/server.toml: not valid TOML"),
            ),
        ),
        [("site.reachable", E, "/srv/x/server.toml", "does not load: config")],
    ),
    Case(
        "a home with neither a site to ask nor a server config checks nothing",
        lambda: SiteSnapshot(now=NOW),
        [("site.reachable", E, "this home", "nothing was checked: no management server")],
    ),
    # -- site.offline ------------------------------------------------------------------
    Case(
        "fo1 is offline and its listeners are down",
        lambda: with_probes(
            with_listed(healthy(), server_json("fo1", online=False)),
            replace(
                probe("fo1", "data", chain=()),
                error="connection refused",
                version=None,
                cipher=None,
            ),
            replace(
                probe("fo1", "control", chain=()),
                error="connection refused",
                version=None,
                cipher=None,
            ),
        ),
        [("site.offline", INFO, "fo1", "has not heard from fo1 since 2030-06-01T11:59:59Z")],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_findings_of(case: Case) -> None:
    # Given a snapshot of the site broken in exactly one way
    snapshot = case.snapshot()

    # When every check runs over it
    findings = run_checks(snapshot)

    # Then exactly the expected findings come out, each with its words and a fix
    got = [(f.code, f.severity, f.server) for f in findings]
    assert got == [(c, s, srv) for c, s, srv, _ in case.expected], "\n".join(
        f"{f.code} {f.server}: {f.message}" for f in findings
    )
    for finding, (*_, words) in zip(findings, case.expected, strict=True):
        assert words in finding.message, finding.message
        assert finding.fix, finding
        assert finding.requirement == check_by_code(finding.code).requirement


def test_every_check_has_a_case() -> None:
    expected = {code for case in CASES for code, *_ in case.expected}
    assert expected == {c.code for c in CHECKS}


def test_the_checks_are_the_rule_codes_of_the_design() -> None:
    codes = {c.code: c.severity for c in CHECKS}
    design = {
        "cert.hostname",
        "cert.server_auth",
        "cert.chain",
        "cert.validity",
        "cert.expiry_warning",
        "cert.revoked",
        "trust.installed",
        "key.service_account",
        "site.ms_requires_all_rs",
        "site.failover_prepared",
        "tls.policy",
    }
    assert design <= set(codes)
    assert codes["cert.expiry_warning"] is W
    assert codes["site.offline"] is INFO
    assert all(codes[c] is E for c in design - {"cert.expiry_warning"})
    for c in CHECKS:
        assert c.summary, c.code
        assert c.requirement, c.code
        assert "\n" not in c.requirement
        assert "  " not in c.requirement


def test_fixes_can_be_pasted() -> None:
    # Given rs1 with a key other accounts can read, and a certificate for another host
    snapshot = with_local(
        healthy(),
        local(
            "rs1",
            chain=(OTHER_HOST, CA.certificate),
            key=KeyFileFacts(
                RS1_KEY, "watchkeep", owner="watchkeep", mode=0o640, matches_certificate=True
            ),
        ),
    )
    snapshot = replace(snapshot, cli="watchkeep --home /srv/ca")

    # When the checks run
    fixes = {f.code: f.fix for f in run_checks(snapshot)}

    # Then each fix is a command for exactly these files
    assert fixes["key.service_account"] == f"chmod 600 {RS1_KEY}"
    assert fixes["cert.hostname"] == (
        "watchkeep --home /srv/ca cert issue --role recording --host rs1.site.test "
        f"--out {RS1_CHAIN.parent} --replace"
    )


def test_an_incomplete_chain_is_fixed_by_appending_the_site_ca() -> None:
    findings = run_checks(rs1_files(LEAVES["rs1"])())
    assert [f.fix for f in findings] == [f"cat /home/admin/.watchkeep/ca/ca.pem >> {RS1_CHAIN}"]


def test_findings_are_sorted_errors_first_and_serialise_with_the_contract_fields() -> None:
    snapshot = with_local(
        rs1_everywhere(expiring_in(3))(),
        local("mob", no_trust_store=True),
    )
    findings = run_checks(snapshot)
    assert [(f.severity, f.code) for f in findings] == [
        (E, "trust.installed"),
        (W, "cert.expiry_warning"),
    ]
    document = findings[0].as_json()
    assert {"code", "severity", "server", "message", "fix"} <= set(document)
    assert document["severity"] == "error"


def test_a_finding_is_frozen_data() -> None:
    finding = run_checks(rs1_files(mode=0o644)())[0]
    assert isinstance(finding, Finding)
    with pytest.raises(dataclasses.FrozenInstanceError):
        finding.code = "x"  # type: ignore[misc]


def test_the_same_certificate_in_a_file_and_on_two_listeners_is_one_finding() -> None:
    findings = run_checks(rs1_everywhere(LONG_LIVED)())
    assert len(findings) == 1
    assert str(RS1_CHAIN) in findings[0].message
    assert "served on the data listener" in findings[0].message
    assert "served on the control listener" in findings[0].message


def test_a_server_without_a_certificate_is_not_reported_by_the_certificate_checks() -> None:
    # What a server without any certificate reports about itself ("no certificate is
    # configured") is for the site rules to judge, not a cert.* finding.
    snapshot = with_listed(
        without_local(healthy(), "mob"),
        server_json(
            "mob",
            encryption=False,
            no_certificate=True,
            problems=[("cert.chain", "no certificate is configured", "")],
        ),
    )
    assert run_checks(without_probes(snapshot, "mob")) == []
