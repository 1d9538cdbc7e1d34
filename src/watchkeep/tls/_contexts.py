"""SSLContext factories: server (optionally asking for client certificates) and client.

Every party verifies against a directory trust store (watchkeep.trust) that holds the site
CA certificates and their CRLs; clients check host names against SAN entries only.
"""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID

from watchkeep._clock import follow_test_clock, utcnow
from watchkeep.errors import CertificateRuleViolation, MalformedPEM
from watchkeep.pki import (
    check_key_file_access,
    load_private_key,
    same_public_key,
    san_dns_names,
)
from watchkeep.tls._policy import TlsPolicy, apply_policy

__all__ = [
    "ClientAuth",
    "ServerIdentity",
    "TrustMaterial",
    "check_server_identity",
    "client_context",
    "server_context",
]


class ClientAuth:
    NONE = "none"
    OPTIONAL = "optional"
    REQUIRED = "required"


@dataclass(frozen=True)
class ServerIdentity:
    """The certificate a server presents, and who it must be."""

    server: str  # the server's name in the site, for messages
    host: str
    chain: Path  # leaf first, then the CA
    key: Path
    service_account: str | None = None
    needs_client_auth: bool = False  # MS and RS also dial out with this certificate


@dataclass(frozen=True)
class TrustMaterial:
    """The CA certificates and CRLs of a directory trust store, read once."""

    directory: Path
    ca_files: tuple[Path, ...]
    crl_files: tuple[Path, ...]

    @classmethod
    def load(cls, directory: Path) -> TrustMaterial:
        if not directory.is_dir():
            return cls(directory, (), ())
        cas = tuple(sorted(directory.glob("watchkeep-*.pem")))
        crls = tuple(sorted(p for p in directory.iterdir() if p.suffix.startswith(".r")))
        return cls(directory, cas, crls)

    def stamp(self) -> tuple[tuple[str, float], ...]:
        """What changes when the store changes: names and modification times."""
        files = (*self.ca_files, *self.crl_files)
        return tuple((p.name, p.stat().st_mtime) for p in files if p.exists())

    def certificates(self) -> list[x509.Certificate]:
        found: list[x509.Certificate] = []
        for path in self.ca_files:
            found += x509.load_pem_x509_certificates(path.read_bytes())
        return found

    def crls(self) -> list[x509.CertificateRevocationList]:
        return [x509.load_pem_x509_crl(p.read_bytes()) for p in self.crl_files]

    def install_into(self, context: ssl.SSLContext) -> None:
        for path in self.ca_files:
            context.load_verify_locations(cafile=str(path))
        for path in self.crl_files:
            # CRLs go through cafile=: the cadata route rejects them.
            context.load_verify_locations(cafile=str(path))
        if self.crl_files:
            context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF

    def revoked(self, cert: x509.Certificate) -> x509.RevokedCertificate | None:
        for crl in self.crls():
            if crl.issuer == cert.issuer:
                entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
                if entry is not None:
                    return entry
        return None


def server_context(
    identity: ServerIdentity,
    policy: TlsPolicy,
    *,
    client_auth: str = ClientAuth.NONE,
    trust: TrustMaterial | None = None,
) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    apply_policy(context, policy)
    try:
        context.load_cert_chain(str(identity.chain), str(identity.key))
    except ssl.SSLError as exc:
        raise CertificateRuleViolation(
            "cert.chain",
            identity.server,
            f"{identity.chain} and {identity.key} do not load together ({exc.reason or exc})",
            fix=f"re-issue: watchkeep cert issue --role ROLE --host {identity.host} --replace ...",
        ) from exc
    if client_auth != ClientAuth.NONE:
        if trust is None or not trust.ca_files:
            raise CertificateRuleViolation(
                "trust.installed",
                identity.server,
                "client certificates must be verified but the trust store holds no CA",
                fix="watchkeep trust install --store DIR",
            )
        trust.install_into(context)
        context.verify_mode = (
            ssl.CERT_REQUIRED if client_auth == ClientAuth.REQUIRED else ssl.CERT_OPTIONAL
        )
        context.verify_flags |= ssl.VERIFY_X509_STRICT
    return follow_test_clock(context)


def client_context(
    trust: TrustMaterial,
    policy: TlsPolicy = TlsPolicy.INTERMEDIATE,
    *,
    identity: ServerIdentity | None = None,
) -> ssl.SSLContext:
    """A context that verifies servers against ``trust``, presenting ``identity`` if given."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    apply_policy(context, policy)
    context.check_hostname = True
    context.hostname_checks_common_name = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    trust.install_into(context)
    if identity is not None:
        context.load_cert_chain(str(identity.chain), str(identity.key))
    return follow_test_clock(context)


def _load_chain(path: Path) -> list[x509.Certificate]:
    try:
        chain = x509.load_pem_x509_certificates(path.read_bytes())
    except OSError as exc:
        raise MalformedPEM(str(path), "certificate chain", exc.strerror or str(exc)) from exc
    except ValueError as exc:
        raise MalformedPEM(str(path), "certificate chain", str(exc).split("\n")[0]) from exc
    return chain


def check_server_identity(
    identity: ServerIdentity,
    trust: TrustMaterial,
    *,
    now: dt.datetime | None = None,
) -> x509.Certificate:
    """Refuse a certificate a server must not start with; return the leaf when it is fine.

    Checks key.service_account, cert.validity, cert.hostname, cert.server_auth, cert.chain
    and cert.revoked, in that order, each with a message that names the file and the fix.
    """
    now = now or utcnow()
    # The serial, not the server's name: the inventory names certificates ROLE-HOST.
    reissue = f"watchkeep cert renew {{serial}}  (or cert issue --role ROLE --host {identity.host} --replace)"
    check_key_file_access(identity.key, identity.service_account)
    chain = _load_chain(identity.chain)
    if not chain:
        raise MalformedPEM(str(identity.chain), "certificate chain", "it holds no certificate")
    leaf = chain[0]
    key = load_private_key(identity.key)
    if not same_public_key(key.public_key(), leaf.public_key()):
        raise CertificateRuleViolation(
            "cert.chain",
            identity.server,
            f"the key {identity.key} does not belong to the certificate in {identity.chain}",
            fix=reissue.format(serial=f"{leaf.serial_number:x}"),
        )
    subject = f"{identity.server} ({identity.chain})"
    if now > leaf.not_valid_after_utc:
        raise CertificateRuleViolation(
            "cert.validity",
            subject,
            f"the certificate expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; "
            "every peer would refuse this server",
            fix=reissue.format(serial=f"{leaf.serial_number:x}"),
        )
    if now < leaf.not_valid_before_utc:
        raise CertificateRuleViolation(
            "cert.validity",
            subject,
            f"the certificate is not valid until {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC "
            "(is this machine's clock right?)",
            fix="check the clock (timedatectl), or re-issue the certificate",
        )
    names = [n.lower() for n in san_dns_names(leaf)]
    if identity.host not in names:
        raise CertificateRuleViolation(
            "cert.hostname",
            subject,
            f"the certificate names {', '.join(names) or 'no host'}, not this server's host "
            f"{identity.host}",
            fix=f"watchkeep cert issue --role ROLE --host {identity.host} --out {identity.chain.parent}",
        )
    _check_server_auth(leaf, identity, subject)
    trusted = trust.certificates()
    if not trusted:
        raise CertificateRuleViolation(
            "trust.installed",
            identity.server,
            f"the trust store {trust.directory} holds no CA certificate",
            fix=f"watchkeep trust install --store {trust.directory}",
        )
    try:
        verifier = (
            verification.PolicyBuilder()
            .store(verification.Store(trusted))
            .time(now)
            .build_server_verifier(x509.DNSName(identity.host))
        )
        verifier.verify(leaf, chain[1:])
    except verification.VerificationError as exc:
        raise CertificateRuleViolation(
            "cert.chain",
            subject,
            f"the certificate does not chain to a CA in {trust.directory}: {exc}",
            fix=f"install the issuing CA: watchkeep trust install --store {trust.directory}",
        ) from exc
    if trust.revoked(leaf) is not None:
        raise CertificateRuleViolation(
            "cert.revoked",
            subject,
            f"the certificate (serial {leaf.serial_number:x}) is revoked",
            fix=f"watchkeep cert issue --role ROLE --host {identity.host} --replace ...",
        )
    return leaf


def _check_server_auth(leaf: x509.Certificate, identity: ServerIdentity, subject: str) -> None:
    try:
        ekus: Sequence[x509.ObjectIdentifier] = list(
            leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        )
    except x509.ExtensionNotFound:
        ekus = []
    missing = []
    if ExtendedKeyUsageOID.SERVER_AUTH not in ekus:
        missing.append("serverAuth")
    if identity.needs_client_auth and ExtendedKeyUsageOID.CLIENT_AUTH not in ekus:
        missing.append("clientAuth")
    if missing:
        raise CertificateRuleViolation(
            "cert.server_auth",
            subject,
            f"the certificate is not issued for {' and '.join(missing)}",
            fix="issue it with the server's role: watchkeep cert issue --role ROLE "
            f"--host {identity.host} --replace",
        )
