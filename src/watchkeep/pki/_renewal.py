"""Renewal signed for a server that proved it holds a certificate of this site.

A server renews its own certificate: it makes a new key on its machine, sends a CSR, and
authenticates with the certificate it has (how it proves that is the management server's
business: mutual TLS, or a signature with its key). Here the CA decides what to sign:

* the presented certificate must come from a CA the site still trusts (the current one or
  one kept during a rotation), be valid now, be in the inventory and not be revoked; an
  expired or revoked certificate vouches for nothing, and its server must join again;
* the new certificate names exactly what the presented one names (its host names, its IP
  addresses, its role), never what the CSR asks beyond that, for the same lifetime, and is
  signed by the current CA (so that renewals move a site to a new CA during a rotation);
* the CSR's key is a new one: renewing never re-certifies the key in use.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm

from watchkeep._clock import utcnow_to_second
from watchkeep.errors import PKIError, RenewalRefused
from watchkeep.pki._authority import san_dns_names, san_ip_addresses
from watchkeep.pki._profiles import Role, key_type_of
from watchkeep.pki._service import SitePKI, certificate_name
from watchkeep.store import CertificateRecord

__all__ = ["renew_from_csr", "trusted_issuer"]


def trusted_issuer(pki: SitePKI, cert: x509.Certificate) -> x509.Certificate | None:
    """The CA of the site's trust bundle that signed ``cert``, or None."""
    from watchkeep.pki._rotation import trust_bundle

    for ca in trust_bundle(pki):
        if ca.subject != cert.issuer:
            continue
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return ca
    return None


def renew_from_csr(
    pki: SitePKI,
    presented: x509.Certificate,
    csr: x509.CertificateSigningRequest,
    *,
    rejoin: str,
    now: dt.datetime | None = None,
) -> CertificateRecord:
    """Sign ``csr`` for the names of ``presented``; ``rejoin`` is the fix to name when the
    presented certificate can no longer vouch for its server."""
    now = now or utcnow_to_second()
    serial = format(presented.serial_number, "x")
    subject = f"certificate {serial}"
    if trusted_issuer(pki, presented) is None:
        raise RenewalRefused(
            subject, "it was not issued by a CA this site trusts", fix=rejoin, rejoin=True
        )
    if now > presented.not_valid_after_utc:
        raise RenewalRefused(
            subject,
            f"it expired on {presented.not_valid_after_utc:%Y-%m-%d %H:%M} UTC",
            fix=rejoin,
            rejoin=True,
        )
    if now < presented.not_valid_before_utc:
        raise RenewalRefused(
            subject, "it is not valid yet", fix="check this machine's clock", rejoin=False
        )
    record = pki.inventory.find(serial)
    if record is None:
        raise RenewalRefused(subject, "the CA never issued it", fix=rejoin, rejoin=True)
    if record.status == "revoked":
        raise RenewalRefused(subject, "it is revoked", fix=rejoin, rejoin=True)
    _check_csr(csr, presented, subject)
    hosts, ips = san_dns_names(presented), san_ip_addresses(presented)
    role = Role.parse(record.role)
    lifetime = presented.not_valid_after_utc - presented.not_valid_before_utc
    days = max(1, round(lifetime.total_seconds() / 86400))
    request = pki._leaf_request(role, hosts, ips, days)
    name = certificate_name(role, request.hosts[0])
    ca = pki.authority()  # the current CA: a renewal moves the server to it
    with pki._exclusive():
        # The certificate that asks, and the one in use under its name (the same, unless a
        # renewal was signed but never arrived): looked up by name, not by scanning the
        # inventory, so that a site of thousands of servers renews as fast as one of ten.
        supersede = {serial}
        current = pki.inventory.find(name)
        if current is not None and current.status == "active":
            supersede.add(current.serial)
        cert = ca.sign_server_certificate(
            csr.public_key(), request, now=now, published=pki.published()
        )
        return pki._store(
            name,
            role,
            cert,
            key_pem=None,
            directory=pki.home.certs_dir,
            cert_path=pki.home.certs_dir / f"{name}.pem",
            owner=None,
            owner_ids=None,
            supersede=sorted(supersede - {format(cert.serial_number, "x")}),
            now=now,
            archive_previous=record if Path(record.cert_path).exists() else None,
        )


def _check_csr(
    csr: x509.CertificateSigningRequest, presented: x509.Certificate, subject: str
) -> None:
    try:
        valid = csr.is_signature_valid
        key = csr.public_key()
        key_type_of(key)  # weak or unknown keys are refused before anything is signed
        asked_hosts = set(san_dns_names(csr))
        asked_ips = set(san_ip_addresses(csr))
    except (ValueError, UnsupportedAlgorithm, PKIError) as exc:
        raise RenewalRefused(
            subject, f"the CSR is unusable: {exc}", fix="make a new key and CSR"
        ) from exc
    if not valid:
        raise RenewalRefused(subject, "the CSR's signature does not verify", fix="make a new CSR")
    if fingerprint_of_key(key) == fingerprint_of_key(presented.public_key()):
        raise RenewalRefused(
            subject,
            "the CSR re-uses the key of the certificate in use",
            fix="make a new key for every renewal",
        )
    extra = sorted(
        (asked_hosts - set(san_dns_names(presented)))
        | (asked_ips - set(san_ip_addresses(presented)))
    )
    if extra:
        raise RenewalRefused(
            subject,
            f"the CSR asks for names the certificate does not hold: {', '.join(extra)}",
            fix="a renewal keeps the names; for other names an administrator enrolls the server "
            "anew (watchkeep enroll create)",
        )


def fingerprint_of_key(key: object) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
