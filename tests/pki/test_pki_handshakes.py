"""Real TLS handshakes over loopback with certificates from the site CA.

Given a server on 127.0.0.x presenting a certificate, when a client that trusts the site CA
(check_hostname on, SAN only) connects, then the handshake succeeds with a good certificate
and fails, with OpenSSL's reason, for each way a certificate can be wrong. Every refusal has
a twin that succeeds, so a test fails if the refusal disappears or the setup is broken.
"""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from pki_support import LoopbackTLSServer, client_context, pem, tls_fetch, unique_host, utcnow

from watchkeep._home import Home
from watchkeep.pki import KeyType, LeafRequest, Profile, Role, SitePKI, generate_key
from watchkeep.store import CertificateRecord

GREETING = LoopbackTLSServer.GREETING

Issue = Callable[..., CertificateRecord]
Serve = Callable[..., LoopbackTLSServer]


def refusal(
    server: LoopbackTLSServer, host: str, context: ssl.SSLContext
) -> ssl.SSLCertVerificationError:
    with pytest.raises(ssl.SSLCertVerificationError) as caught:
        tls_fetch(server, host, context)
    return caught.value


@pytest.mark.parametrize("key_type", [KeyType.ECDSA_P256, KeyType.RSA_2048])
def test_handshake_succeeds_with_an_issued_certificate(
    site: Home, issue: Issue, tls_server: Serve, key_type: KeyType
) -> None:
    host = unique_host("rs")
    record = issue(site, "recording", host, ips=["127.0.0.2"], key_type=key_type)
    server = tls_server(record.chain_path, record.key_path, "127.0.0.2")
    context = client_context(site.ca_cert)

    assert tls_fetch(server, host, context) == GREETING
    assert tls_fetch(server, "127.0.0.2", context) == GREETING  # the IP SAN


def test_handshake_fails_for_a_name_the_certificate_does_not_carry(
    site: Home, issue: Issue, tls_server: Serve
) -> None:
    host = unique_host("ms")
    record = issue(site, "management", host)
    server = tls_server(record.chain_path, record.key_path, "127.0.0.3")
    context = client_context(site.ca_cert)

    assert tls_fetch(server, host, context) == GREETING
    error = refusal(server, unique_host("elsewhere"), context)
    assert error.verify_code == 62, error  # hostname mismatch
    # Addressed by IP, a certificate without that IP SAN is refused too
    assert refusal(server, "127.0.0.3", context).verify_code == 64


def test_handshake_fails_for_a_certificate_from_another_ca(
    site: Home, other_site: Home, issue: Issue, tls_server: Serve
) -> None:
    host = unique_host("rs")
    record = issue(other_site, "recording", host)
    server = tls_server(record.chain_path, record.key_path, "127.0.0.5")

    assert tls_fetch(server, host, client_context(other_site.ca_cert)) == GREETING
    error = refusal(server, host, client_context(site.ca_cert))
    # The server sends its full chain, so OpenSSL meets the other CA's self-signed root
    assert error.verify_code == 19, error  # self-signed certificate in certificate chain


def test_handshake_fails_for_an_expired_certificate(
    site: Home, issue: Issue, tls_server: Serve
) -> None:
    host = unique_host("old")
    record = issue(site, "recording", host, days=30, now=utcnow() - dt.timedelta(days=60))
    server = tls_server(record.chain_path, record.key_path, "127.0.0.6")

    error = refusal(server, host, client_context(site.ca_cert))
    assert error.verify_code == 10, error  # certificate has expired
    # The same certificate is accepted by a client that does not check time: only time is wrong
    lenient = client_context(site.ca_cert)
    lenient.verify_flags |= _NO_CHECK_TIME
    assert tls_fetch(server, host, lenient) == GREETING


def test_handshake_fails_for_a_certificate_not_yet_valid(
    site: Home, issue: Issue, tls_server: Serve
) -> None:
    host = unique_host("future")
    record = issue(site, "recording", host, now=utcnow() + dt.timedelta(days=10))
    server = tls_server(record.chain_path, record.key_path, "127.0.0.7")

    error = refusal(server, host, client_context(site.ca_cert))
    assert error.verify_code == 9, error  # certificate is not yet valid
    lenient = client_context(site.ca_cert)
    lenient.verify_flags |= _NO_CHECK_TIME
    assert tls_fetch(server, host, lenient) == GREETING


def test_handshake_fails_for_a_revoked_certificate_when_the_crl_is_loaded(
    home: Home, issue: Issue, tls_server: Serve, tmp_path: Path
) -> None:
    kept_host, revoked_host = "rs1.revoke.example", "rs2.revoke.example"
    kept = issue(home, "recording", kept_host)
    revoked = issue(home, "recording", revoked_host)
    pki = SitePKI(home)
    pki.revoke(revoked.name, reason="key-compromise")
    crl = pki.write_crl(out=tmp_path / "crl.pem")
    kept_server = tls_server(kept.chain_path, kept.key_path, "127.0.0.8")
    revoked_server = tls_server(revoked.chain_path, revoked.key_path, "127.0.0.9")
    with_crl = client_context(home.ca_cert, crl=crl)

    assert tls_fetch(kept_server, kept_host, with_crl) == GREETING
    error = refusal(revoked_server, revoked_host, with_crl)
    assert error.verify_code == 23, error  # certificate revoked
    # Without the CRL the revoked certificate would pass: the CRL is what refuses it
    assert tls_fetch(revoked_server, revoked_host, client_context(home.ca_cert)) == GREETING


def test_handshake_fails_for_a_client_only_certificate(site: Home, tls_server: Serve) -> None:
    host = unique_host("client-only")
    ca = SitePKI(site).authority()
    client_only = Profile(Role.RECORDING, (ExtendedKeyUsageOID.CLIENT_AUTH,))
    both = Profile(
        Role.RECORDING, (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)
    )
    servers = {}
    for label, profile, address in (
        ("client", client_only, "127.0.0.10"),
        ("both", both, "127.0.0.11"),
    ):
        key = generate_key(KeyType.ECDSA_P256)
        cert = ca.sign_server_certificate(
            key.public_key(), LeafRequest(profile, (host,), (), 30), now=utcnow()
        )
        servers[label] = tls_server(*_write_pair(site.root / label / host, cert, key), address)
    context = client_context(site.ca_cert)

    assert tls_fetch(servers["both"], host, context) == GREETING
    error = refusal(servers["client"], host, context)
    assert error.verify_code == 26, error  # unsupported certificate purpose


# -- helpers ------------------------------------------------------------------------------

# X509_V_FLAG_NO_CHECK_TIME: lets a twin test show that only the validity period is wrong.
_NO_CHECK_TIME = ssl.VerifyFlags(0x200000)


def _write_pair(
    directory: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(pem(cert))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path
