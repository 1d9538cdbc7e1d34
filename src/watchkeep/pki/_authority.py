"""The site certificate authority: its certificate and key, and the certificates it signs.

Everything here works on objects in memory; files and the inventory are handled by
:mod:`watchkeep.pki._service`.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID

from watchkeep._names import validate_host_name
from watchkeep.errors import CertificateRuleViolation, UsageError
from watchkeep.pki._keys import same_public_key
from watchkeep.pki._profiles import KeyType, PrivateKey, Profile, generate_key

__all__ = [
    "CLOCK_SKEW",
    "CertificateAuthority",
    "LeafRequest",
    "PublishedLocations",
    "RevokedEntry",
    "fingerprint",
    "parse_publish_url",
    "san_dns_names",
    "san_ip_addresses",
]

# Certificates start an hour in the past so that a peer whose clock is a little behind
# does not see a brand-new certificate as "not yet valid" (Let's Encrypt does the same).
CLOCK_SKEW = dt.timedelta(hours=1)
CA_DEFAULT_DAYS = 3652
CRL_LIFETIME = dt.timedelta(days=7)


def san_dns_names(cert: x509.Certificate | x509.CertificateSigningRequest) -> tuple[str, ...]:
    """The DNS names of a certificate's (or CSR's) subject alternative names, as written;
    none without the extension."""
    san = _san(cert)
    return tuple(san.get_values_for_type(x509.DNSName)) if san is not None else ()


def san_ip_addresses(cert: x509.Certificate | x509.CertificateSigningRequest) -> tuple[str, ...]:
    """The IP addresses of a certificate's (or CSR's) subject alternative names; none
    without the extension."""
    san = _san(cert)
    return tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress)) if san else ()


def _san(
    cert: x509.Certificate | x509.CertificateSigningRequest,
) -> x509.SubjectAlternativeName | None:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 fingerprint, lower-case hex without separators."""
    return cert.fingerprint(hashes.SHA256()).hex()


def _signature_hash(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384:
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA384()
    return hashes.SHA256()


@dataclass(frozen=True)
class PublishedLocations:
    """Where a CA's certificate and CRL can be fetched over plain HTTP, as written into the
    certificates it signs (CRL distribution point and AIA caIssuers, RFC 5280 4.2.1.13 and
    4.2.2.1). Both are signed documents, so they need no TLS (step-ca and Vault do the same).

    Each CA has its own names, from the start of its SHA-256 fingerprint: during a rotation
    the old CA's and the new CA's are published side by side, and a certificate keeps
    pointing at the CA that signed it."""

    base_url: str  # http://HOST[:PORT][/PATH], no trailing slash

    @staticmethod
    def name_of(ca: x509.Certificate) -> str:
        return fingerprint(ca)[:16]

    def crl_url(self, ca: x509.Certificate) -> str:
        return f"{self.base_url}/crl/{self.name_of(ca)}.crl"

    def ca_url(self, ca: x509.Certificate) -> str:
        return f"{self.base_url}/ca/{self.name_of(ca)}.crt"


@dataclass(frozen=True)
class LeafRequest:
    """What a server certificate is for: set once, checked when signed."""

    profile: Profile
    hosts: tuple[str, ...]
    ips: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]
    days: int

    def __post_init__(self) -> None:
        if not self.hosts:
            raise UsageError(
                "a server certificate needs at least one host name [cert.hostname]",
                fix="pass --host NAME (the name clients use to reach the server)",
            )
        if self.days < 1:
            raise UsageError(f"--days must be at least 1, not {self.days}", fix="pass --days 90")


@dataclass(frozen=True)
class RevokedEntry:
    serial: int
    revoked_at: dt.datetime
    reason: x509.ReasonFlags


class CertificateAuthority:
    """A root CA: signs server certificates and CRLs."""

    def __init__(self, certificate: x509.Certificate, key: PrivateKey) -> None:
        if not same_public_key(certificate.public_key(), key.public_key()):
            raise CertificateRuleViolation(
                "cert.chain",
                "certificate authority",
                "the CA key does not match the CA certificate",
            )
        self.certificate = certificate
        self.key = key

    @classmethod
    def create(
        cls,
        name: str,
        *,
        key_type: KeyType = KeyType.RSA_3072,
        days: int = CA_DEFAULT_DAYS,
        now: dt.datetime,
    ) -> CertificateAuthority:
        if not name.strip():
            raise UsageError("the CA name is empty", fix="pass --name 'My Site CA'")
        if days < 1:
            raise UsageError(f"--days must be at least 1, not {days}", fix="pass --days 3652")
        key = generate_key(key_type)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name.strip())])
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
            )
            .sign(key, _signature_hash(key))
        )
        return cls(cert, key)

    @property
    def name(self) -> str:
        attrs = self.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return str(attrs[0].value) if attrs else self.certificate.subject.rfc4514_string()

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.certificate)

    def sign_server_certificate(
        self,
        public_key: object,
        request: LeafRequest,
        *,
        now: dt.datetime,
        published: PublishedLocations | None = None,
    ) -> x509.Certificate:
        """Sign a server certificate for ``public_key`` as ``request`` describes; with
        ``published``, it says where its CRL and this CA's certificate are fetched."""
        if not isinstance(public_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
            raise UsageError(
                f"unsupported public key {type(public_key).__name__}",
                fix="use an RSA (2048 or 3072 bits) or ECDSA P-256 key",
            )
        not_after = now + dt.timedelta(days=request.days)
        if not_after > self.certificate.not_valid_after_utc:
            raise CertificateRuleViolation(
                "cert.validity",
                request.hosts[0],
                f"{request.days} days would outlive the CA, which expires "
                f"{self.certificate.not_valid_after_utc:%Y-%m-%d}",
                fix="ask for fewer --days, or rotate the CA first: watchkeep ca rotate",
            )
        ca_ski = self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        san: list[x509.GeneralName] = [x509.DNSName(h) for h in request.hosts]
        san += [x509.IPAddress(ip) for ip in request.ips]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, request.hosts[0])]))
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    # Our TLS policy offers only ECDHE key exchange, so no key ever encrypts
                    # a premaster secret: EC keys must not carry keyEncipherment, and the CA/B
                    # rules discourage it beside digitalSignature on RSA keys (pkilint warns).
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(list(request.profile.extended_key_usages)), critical=False
            )
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski.value),
                critical=False,
            )
        )
        if published is not None:
            crl_url = x509.UniformResourceIdentifier(published.crl_url(self.certificate))
            ca_url = x509.UniformResourceIdentifier(published.ca_url(self.certificate))
            builder = builder.add_extension(
                x509.CRLDistributionPoints([x509.DistributionPoint([crl_url], None, None, None)]),
                critical=False,
            ).add_extension(
                x509.AuthorityInformationAccess(
                    [x509.AccessDescription(AuthorityInformationAccessOID.CA_ISSUERS, ca_url)]
                ),
                critical=False,
            )
        return builder.sign(self.key, _signature_hash(self.key))

    def sign_crl(
        self, revoked: Sequence[RevokedEntry], *, now: dt.datetime, number: int
    ) -> x509.CertificateRevocationList:
        ca_ski = self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.certificate.subject)
            .last_update(now - dt.timedelta(minutes=5))
            .next_update(now + CRL_LIFETIME)
            .add_extension(x509.CRLNumber(number), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski.value),
                critical=False,
            )
        )
        for entry in revoked:
            revoked_cert = (
                x509.RevokedCertificateBuilder()
                .serial_number(entry.serial)
                .revocation_date(entry.revoked_at)
            )
            if entry.reason is not x509.ReasonFlags.unspecified:
                revoked_cert = revoked_cert.add_extension(
                    x509.CRLReason(entry.reason), critical=False
                )
            builder = builder.add_revoked_certificate(revoked_cert.build())
        return builder.sign(self.key, _signature_hash(self.key))

    def private_key_pem(self, passphrase: bytes | None) -> bytes:
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(passphrase)
            if passphrase
            else serialization.NoEncryption()
        )
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )


def parse_publish_url(text: str) -> str:
    """A publication base URL: plain http (a client checking revocation must not need TLS,
    whose certificate it would have to check first), a host, no query; without a trailing
    slash."""
    fix = "pass the management server's publish listener, e.g. http://ms.site.example:9080"
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError as exc:
        raise UsageError(f"publish URL {text!r} is not a URL: {exc}", fix=fix) from None
    if parts.scheme != "http":
        raise UsageError(
            f"publish URL {text!r} is not plain http://: CRLs and CA certificates are signed, "
            "and a client checking revocation cannot depend on TLS",
            fix=fix,
        )
    if not parts.hostname or parts.username or parts.password or parts.query or parts.fragment:
        raise UsageError(
            f"publish URL {text!r} needs a host and no user, query or fragment", fix=fix
        )
    try:
        host = str(ipaddress.ip_address(parts.hostname))
        host = f"[{host}]" if ":" in host else host
    except ValueError:
        host = validate_host_name(parts.hostname)
    netloc = host if port is None else f"{host}:{port}"
    return f"http://{netloc}{parts.path.rstrip('/')}"
