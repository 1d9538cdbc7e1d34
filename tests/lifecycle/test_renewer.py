"""A server's own renewal, without processes: what the CA signs for a presented certificate
(exactly its names, never for an expired, revoked or foreign one), how a request proves who
asks, and how a server backs off while the CA cannot be reached, on a test clock."""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from watchkeep._home import Home
from watchkeep.errors import ConnectionFailed, RenewalRefused
from watchkeep.pki import KeyType, Role, SitePKI
from watchkeep.pki._keys import load_private_key
from watchkeep.pki._profiles import generate_key
from watchkeep.pki._renewal import renew_from_csr
from watchkeep.servers._renewal import (
    MAX_SIGNERS_ASKED,
    MIN_BACKOFF,
    SelfRenewal,
    renewal_request,
    verify_renewal_request,
)
from watchkeep.tls import ServerIdentity, TrustMaterial
from watchkeep.trust import DirectoryTrustStore

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
REJOIN = "watchkeep enroll create ...; watchkeep join TOKEN"


def make_home(tmp_path: Path, name: str = "ca") -> SitePKI:
    pki = SitePKI(Home(tmp_path / name))
    pki.init_ca(f"Renewal Test CA {name}", key_type=KeyType.ECDSA_P256)
    return pki


def issued(pki: SitePKI, out: Path, *, days_ago: int = 0) -> tuple[x509.Certificate, Any]:
    record = pki.issue(
        Role.RECORDING,
        ["rs1.site.test"],
        ips=["127.0.0.9"],
        key_type=KeyType.ECDSA_P256,
        out=out,
        now=NOW - dt.timedelta(days=days_ago),
    )
    assert record.key_path is not None
    cert = x509.load_pem_x509_certificate(Path(record.cert_path).read_bytes())
    return cert, load_private_key(Path(record.key_path))


def csr_for(names: list[str], key: Any) -> x509.CertificateSigningRequest:
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
        .sign(key, hashes.SHA256())
    )


def aged_rs1(tmp_path: Path, pki: SitePKI) -> tuple[x509.Certificate, Path, Path, Path]:
    """rs1's certificate issued 70 days ago (due for renewal), its chain and key files, and
    a trust store holding the CA."""
    out = tmp_path / "rs1"
    cert, _ = issued(pki, out, days_ago=70)
    trust = tmp_path / "trust"
    DirectoryTrustStore(trust).install(pki.ca_certificate())
    chain, key_file = out / "recording-rs1.site.test.chain.pem", out / "recording-rs1.site.test.key"
    return cert, chain, key_file, trust


def rs1_renewal(
    tmp_path: Path,
    chain: Path,
    key_file: Path,
    trust: Path,
    sign: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]],
    audience: Callable[[], str] = lambda: "ms",
) -> SelfRenewal:
    return SelfRenewal(
        server="rs1",
        role="recording",
        host="rs1.site.test",
        identity=ServerIdentity("rs1", "rs1.site.test", chain, key_file),
        trust=lambda: TrustMaterial.load(trust),
        sign=sign,
        on_renewed=lambda: None,
        state_file=tmp_path / "renewal.json",
        audience=audience,
    )


def test_the_ca_signs_exactly_the_names_of_the_presented_certificate(tmp_path: Path) -> None:
    pki = make_home(tmp_path)
    cert, key = issued(pki, tmp_path / "rs1")
    new_key = generate_key(KeyType.ECDSA_P256)
    body = renewal_request(cert, key, new_key, audience="ms.site.test", now=NOW)
    presented, csr = verify_renewal_request(body, audience="ms.site.test", now=NOW, peer=None)
    record = renew_from_csr(pki, presented, csr, rejoin=REJOIN, now=NOW)
    assert record.hosts == ("rs1.site.test",)
    assert record.ips == ("127.0.0.9",)
    assert record.role == "recording"
    assert record.key_path is None  # the key stayed on the server
    assert pki.find(format(cert.serial_number, "x")).status == "superseded"
    # openssl, an outside judge, verifies the new certificate for the host
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(pki.home.ca_cert), "-purpose", "sslserver",
         "-verify_hostname", "rs1.site.test", record.cert_path],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr
    # A CSR for another name, or for the key in use, is refused.
    with pytest.raises(
        RenewalRefused, match=r"names the certificate does not hold: ms\.site\.test"
    ):
        renew_from_csr(pki, cert, csr_for(["rs1.site.test", "ms.site.test"], new_key),
                       rejoin=REJOIN, now=NOW)  # fmt: skip
    with pytest.raises(RenewalRefused, match="re-uses the key"):
        renew_from_csr(pki, cert, csr_for(["rs1.site.test"], key), rejoin=REJOIN, now=NOW)


@pytest.mark.parametrize("case", ["expired", "revoked", "foreign"])
def test_a_certificate_that_cannot_vouch_must_rejoin(tmp_path: Path, case: str) -> None:
    pki = make_home(tmp_path)
    issuer = make_home(tmp_path, "other") if case == "foreign" else pki
    cert, _key = issued(issuer, tmp_path / "rs1", days_ago=100 if case == "expired" else 0)
    if case == "revoked":
        pki.revoke(format(cert.serial_number, "x"))
    csr = csr_for(["rs1.site.test"], generate_key(KeyType.ECDSA_P256))
    with pytest.raises(RenewalRefused) as refused:
        renew_from_csr(pki, cert, csr, rejoin=REJOIN, now=NOW)
    assert refused.value.rejoin
    assert REJOIN in str(refused.value)


def test_a_request_is_proven_by_the_key_of_the_certificate(tmp_path: Path) -> None:
    pki = make_home(tmp_path)
    cert, key = issued(pki, tmp_path / "rs1")
    body = renewal_request(cert, key, generate_key(KeyType.ECDSA_P256), audience="ms", now=NOW)
    verify_renewal_request(body, audience="ms", now=NOW, peer=None)
    # for another management server, late, with another key's signature, or another peer
    with pytest.raises(RenewalRefused, match="not signed by the key"):
        verify_renewal_request(body, audience="ms2", now=NOW, peer=None)
    with pytest.raises(RenewalRefused, match="minutes off"):
        verify_renewal_request(body, audience="ms", now=NOW + dt.timedelta(minutes=6), peer=None)
    forged = renewal_request(
        cert, generate_key(KeyType.ECDSA_P256), generate_key(KeyType.ECDSA_P256),
        audience="ms", now=NOW,
    )  # fmt: skip
    with pytest.raises(RenewalRefused, match="not signed by the key"):
        verify_renewal_request(forged, audience="ms", now=NOW, peer=None)
    other, _ = issued(make_home(tmp_path, "b"), tmp_path / "b")
    with pytest.raises(RenewalRefused, match="not the one presented"):
        verify_renewal_request(body, audience="ms", now=NOW, peer=other)


def test_a_server_backs_off_while_the_ca_is_unreachable_then_renews(tmp_path: Path) -> None:
    pki = make_home(tmp_path)
    cert, chain, key_file, trust = aged_rs1(tmp_path, pki)
    files = {p: p.read_bytes() for p in (chain, key_file)}
    reachable = False

    async def sign(body: dict[str, Any]) -> dict[str, Any]:
        if not reachable:
            raise ConnectionFailed("ms", "connection refused")
        presented, csr = verify_renewal_request(body, audience="ms", now=clock, peer=None)
        record = renew_from_csr(pki, presented, csr, rejoin=REJOIN, now=clock)
        pem = Path(record.chain_path).read_bytes()
        return {"chain": pem.decode()}

    renewal = rs1_renewal(tmp_path, chain, key_file, trust, sign)
    clock = NOW
    assert asyncio.run(renewal.tick(clock)) is False
    assert renewal.state.failures == 1
    assert renewal.state.retry_at == clock + dt.timedelta(seconds=MIN_BACKOFF)
    assert all(p.read_bytes() == data for p, data in files.items())  # nothing touched
    clock += dt.timedelta(seconds=MIN_BACKOFF - 1)
    assert asyncio.run(renewal.tick(clock)) is False
    assert renewal.state.failures == 1  # not before its back-off
    clock += dt.timedelta(seconds=1)
    asyncio.run(renewal.tick(clock))
    assert renewal.state.retry_at == clock + dt.timedelta(seconds=2 * MIN_BACKOFF)  # doubled
    reachable = True
    clock += dt.timedelta(seconds=2 * MIN_BACKOFF)
    assert asyncio.run(renewal.tick(clock)) is True
    assert renewal.state.failures == 0
    new = x509.load_pem_x509_certificates(chain.read_bytes())[0]
    assert new.serial_number != cert.serial_number
    assert key_file.stat().st_mode & 0o777 == 0o600
    new_key = load_private_key(key_file)
    assert new_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == new.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_an_expired_certificate_is_renewed_in_one_command(tmp_path: Path) -> None:
    # What the CA exported for a machine watchkeep does not run (it holds the key) is
    # renewed by the administrator, expired or not.
    pki = make_home(tmp_path)
    old = pki.issue(
        Role.EVENT,
        ["off.site.test"],
        key_type=KeyType.ECDSA_P256,
        now=NOW - dt.timedelta(days=200),
    )
    assert old.not_after < NOW
    result = subprocess.run(
        [sys.executable, "-m", "watchkeep", "--home", str(pki.home.root), "cert", "renew",
         old.name, "--json"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    fresh = SitePKI(pki.home).find(old.name)
    assert fresh.serial != old.serial
    assert fresh.not_after > NOW + dt.timedelta(days=89)


@pytest.mark.parametrize("case", ["expired", "revoked"])
def test_a_server_whose_certificate_cannot_vouch_says_how_to_rejoin(
    tmp_path: Path, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    pki = make_home(tmp_path)
    out = tmp_path / "rs1"
    cert, _ = issued(pki, out, days_ago=100 if case == "expired" else 70)
    trust = tmp_path / "trust"
    DirectoryTrustStore(trust).install(pki.ca_certificate())
    if case == "revoked":
        pki.revoke(format(cert.serial_number, "x"))
    DirectoryTrustStore(trust).install_crl(pki.home.crl.read_bytes())
    asked: list[dict[str, Any]] = []

    async def sign(body: dict[str, Any]) -> dict[str, Any]:
        asked.append(body)
        raise AssertionError("a certificate that cannot vouch must not ask")

    renewal = SelfRenewal(
        server="rs1",
        role="recording",
        host="rs1.site.test",
        identity=ServerIdentity(
            "rs1",
            "rs1.site.test",
            out / "recording-rs1.site.test.chain.pem",
            out / "recording-rs1.site.test.key",
        ),
        trust=lambda: TrustMaterial.load(trust),
        sign=sign,
        on_renewed=lambda: None,
        state_file=tmp_path / "renewal.json",
        audience=lambda: "ms",
    )
    for minutes in (0, 90, 180):  # it says so once, and does not keep asking
        asyncio.run(renewal.tick(NOW + dt.timedelta(minutes=minutes)))
    assert asked == []
    lines = [r.getMessage() for r in caplog.records if "cannot renew" in r.getMessage()]
    assert len(lines) == 1
    assert "watchkeep enroll create --name rs1 --role recording --host rs1.site.test" in lines[0]
    assert "watchkeep join TOKEN" in lines[0]
    assert renewal.state.rejoin is not None
    assert "renewal_ready_status" in renewal.metrics()
    assert 'watchkeep_certificate_renewal_ready_status{server="rs1",role="recording"} 0' in (
        renewal.metrics()
    )


def test_a_renewal_refused_for_want_of_a_ca_is_asked_of_the_next_management_server(
    tmp_path: Path,
) -> None:
    # Given a site of two management servers of which only ms1 holds the CA, and rs1
    # speaking to ms2
    pki = make_home(tmp_path)
    cert, chain, key_file, trust = aged_rs1(tmp_path, pki)
    asked: list[str] = []
    at = ["ms2"]

    async def sign(body: dict[str, Any]) -> dict[str, Any]:
        asked.append(at[0])
        if at[0] == "ms2":
            at[0] = "ms1"  # what the link does on a CA-less answer: turn to the next
            raise RenewalRefused("rs1", "ms2 holds no CA", fix="", elsewhere=True)
        # ms1 verifies that the request was signed for it, not for ms2
        presented, csr = verify_renewal_request(body, audience="ms1", now=NOW, peer=None)
        record = renew_from_csr(pki, presented, csr, rejoin=REJOIN, now=NOW)
        return {"chain": Path(record.chain_path).read_bytes().decode()}

    renewal = rs1_renewal(tmp_path, chain, key_file, trust, sign, audience=lambda: at[0])
    # When the renewal comes due, Then it is signed at once by ms1, with no failure counted
    assert asyncio.run(renewal.tick(NOW)) is True
    assert asked == ["ms2", "ms1"]
    assert renewal.state.failures == 0
    assert (
        x509.load_pem_x509_certificates(chain.read_bytes())[0].serial_number != cert.serial_number
    )


def test_a_renewal_nobody_can_sign_is_a_failure_not_a_loop(tmp_path: Path) -> None:
    pki = make_home(tmp_path)
    _, chain, key_file, trust = aged_rs1(tmp_path, pki)
    asked = 0

    async def sign(body: dict[str, Any]) -> dict[str, Any]:
        nonlocal asked
        asked += 1
        raise RenewalRefused("rs1", "holds no CA", fix="", elsewhere=True)

    renewal = rs1_renewal(tmp_path, chain, key_file, trust, sign)
    assert asyncio.run(renewal.tick(NOW)) is False
    assert asked == MAX_SIGNERS_ASKED
    assert renewal.state.failures == 1
    assert "holds no CA" in str(renewal.state.last_error)
