"""Enrollment tokens: what an administrator hands to a new server's machine, and all that
crosses between the two (the model is step-ca's one-time token with the CA fingerprint).

A token says where the management server is (host name, addresses, port, whether it speaks
TLS), the SHA-256 fingerprint of the site CA, what the server is to be (name, role, host
name, IP addresses), when the token expires, and a secret of 256 bits. It is text:
``wkjoin1.`` and the base64url of a compact JSON object. It is not signed: the management
server keeps the binding (name, role, host, addresses) and the public half of an Ed25519
key that the secret makes (:func:`join_key`), and compares what a token says with what it
issued, so an edited token is refused there. The fingerprint lets `watchkeep join` check
the CA before it sends anything.

The secret itself never leaves the new server's machine: a join (:func:`join_request`)
carries the public key, to find the token, and a signature with the secret's key over the
management server's host name, the server's name and the CSR. A join seen in transit (a
management server in plaintext) therefore gives nothing that joins another key: replayed,
it has the same CSR signed, whose private key stays where it was made; with another CSR,
its proof fails. What the management server stores cannot join either: it holds no secret
and no private key.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import ipaddress
import json
import re
import secrets
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from watchkeep._clock import utcnow_to_second
from watchkeep._names import validate_host_name
from watchkeep.errors import PKIError, UsageError
from watchkeep.pki._profiles import Role, key_type_of
from watchkeep.pki._service import DEFAULT_SERVER_DAYS, SitePKI, certificate_name
from watchkeep.site import ServerRole
from watchkeep.store import CertificateRecord

__all__ = [
    "DEFAULT_TTL",
    "JOINABLE_ROLES",
    "JOIN_KEY",
    "MAX_TTL",
    "EnrollmentToken",
    "csr_names_refusal",
    "join_key",
    "join_proof_refusal",
    "join_request",
    "sign_joining_server",
    "validate_server_name",
]

PREFIX = "wkjoin1."
DEFAULT_TTL = dt.timedelta(hours=1)
MAX_TTL = dt.timedelta(days=7)
SECRET_BYTES = 32  # 256 bits
MAX_TOKEN = 4096
# The roles of servers that join a site: the management server is where they join.
JOINABLE_ROLES = (ServerRole.RECORDING, ServerRole.FAILOVER, ServerRole.MOBILE)

_SERVER_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


def validate_server_name(text: str) -> str:
    """A server's name: also the name of its directory, so letters, digits, - and _."""
    if not _SERVER_NAME.fullmatch(text):
        raise UsageError(
            f"invalid server name {text!r}: it is 1-63 lower-case letters, digits, - or _",
            fix="name the server e.g. rs9",
        )
    return text


_JOIN_KEY_CONTEXT = b"watchkeep join key v1\n"
_JOIN_PROOF_CONTEXT = b"watchkeep join v1\n"
_RAW = (serialization.Encoding.Raw, serialization.PublicFormat.Raw)
JOIN_KEY = re.compile(r"[0-9a-f]{64}")


def _secret_key(secret: str) -> Ed25519PrivateKey:
    """The Ed25519 key a token's secret makes (its seed: a hash of the secret)."""
    seed = hashlib.sha256(_JOIN_KEY_CONTEXT + secret.encode()).digest()
    return Ed25519PrivateKey.from_private_bytes(seed)


def join_key(secret: str) -> str:
    """What the management server keeps of a token's secret: the public half of the key
    the secret makes, in hex. It finds the token at a join and checks the join's proof;
    it makes no proof."""
    return _secret_key(secret).public_key().public_bytes(*_RAW).hex()


def _proof_message(ms_host: str, name: str, csr: x509.CertificateSigningRequest) -> bytes:
    der = csr.public_bytes(serialization.Encoding.DER)
    return _JOIN_PROOF_CONTEXT + f"{ms_host}\n{name}\n".encode() + hashlib.sha256(der).digest()


def join_request(token: EnrollmentToken, csr: x509.CertificateSigningRequest) -> dict[str, object]:
    """The body of ``POST /api/v1/join``: what the token binds, its public key, the CSR,
    and the proof (the secret's signature over the token's management server, the
    server's name and the CSR). The secret is not in it."""
    proof = _secret_key(token.secret).sign(_proof_message(token.ms_host, token.name, csr))
    return {
        "name": token.name,
        "role": token.role.value,
        "host": token.host,
        "ips": list(token.ips),
        "join_key": join_key(token.secret),
        "csr": csr.public_bytes(serialization.Encoding.PEM).decode(),
        "proof": base64.b64encode(proof).decode(),
    }


def join_proof_refusal(
    key: str, proof: object, ms_host: str, name: str, csr: x509.CertificateSigningRequest
) -> str | None:
    """Why a join's proof is not the token's signature over this management server's host
    name, the server's ``name`` and this CSR; None when it is."""
    try:
        signature = base64.b64decode(str(proof), validate=True)
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(key)).verify(
            signature, _proof_message(ms_host, name, csr)
        )
    except (binascii.Error, ValueError, InvalidSignature):
        return (
            f"the join's proof is not the token's signature over {ms_host}, {name} and this "
            "CSR (a join altered on its way, or a seen one sent again with another key)"
        )
    return None


def _malformed(reason: str) -> UsageError:
    return UsageError(
        f"the enrollment token is malformed ({reason})",
        fix="copy the whole token `watchkeep enroll create` printed, or ask for a new one",
    )


@dataclass(frozen=True)
class EnrollmentToken:
    ms_host: str
    ms_addresses: tuple[str, ...]
    ms_port: int
    ms_tls: bool
    ca_fingerprint: str
    name: str
    role: ServerRole
    host: str
    ips: tuple[str, ...]
    expires_at: dt.datetime
    secret: str

    @staticmethod
    def new_secret() -> str:
        return secrets.token_urlsafe(SECRET_BYTES)

    def encode(self) -> str:
        claims = {
            "ms": {
                "host": self.ms_host,
                "addresses": list(self.ms_addresses),
                "port": self.ms_port,
                "tls": self.ms_tls,
            },
            "ca": self.ca_fingerprint,
            "name": self.name,
            "role": self.role.value,
            "host": self.host,
            "ips": list(self.ips),
            "exp": int(self.expires_at.timestamp()),
            "secret": self.secret,
        }
        raw = json.dumps(claims, separators=(",", ":")).encode()
        return PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> EnrollmentToken:
        text = text.strip()
        if len(text) > MAX_TOKEN or not text.startswith(PREFIX):
            raise _malformed(f"it does not start with {PREFIX}")
        body = text[len(PREFIX) :]
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            claims = json.loads(raw)
            ms = claims["ms"]
            token = cls(
                ms_host=validate_host_name(str(ms["host"])),
                ms_addresses=tuple(str(ipaddress.ip_address(a)) for a in ms["addresses"]),
                ms_port=int(ms["port"]),
                ms_tls=bool(ms["tls"]),
                ca_fingerprint=str(claims["ca"]).lower(),
                name=validate_server_name(str(claims["name"])),
                role=ServerRole(str(claims["role"])),
                host=validate_host_name(str(claims["host"])),
                ips=tuple(str(ipaddress.ip_address(a)) for a in claims["ips"]),
                expires_at=dt.datetime.fromtimestamp(int(claims["exp"]), dt.UTC),
                secret=str(claims["secret"]),
            )
        except KeyError as exc:
            raise _malformed(f"it has no {exc.args[0]!r}") from None
        except (binascii.Error, UnicodeDecodeError, json.JSONDecodeError):
            raise _malformed("it is not base64url-encoded JSON: cut or mistyped?") from None
        except (ValueError, TypeError) as exc:
            raise _malformed(f"a value in it is wrong: {exc}") from None
        except UsageError as exc:
            raise _malformed(exc.describe()) from None
        if not token.ms_addresses or not 0 < token.ms_port < 65536:
            raise _malformed("it names no management server address and port")
        if len(token.secret) < 22:  # 128 bits of base64url
            raise _malformed("its secret is too short")
        return token


def csr_names_refusal(
    csr: x509.CertificateSigningRequest, host: str, ips: tuple[str, ...]
) -> str | None:
    """Why a joining server's CSR may not be signed for the names its token binds (``host``
    and ``ips``, exactly), or None when it asks for exactly those."""
    from watchkeep.pki._service import _names_from_csr

    try:
        asked_hosts, asked_ips = _names_from_csr(csr)
    except PKIError as exc:
        return exc.describe()
    hosts = [validate_host_name(h) for h in asked_hosts]
    addresses = {str(ipaddress.ip_address(a)) for a in asked_ips}
    if set(hosts) != {host} or addresses != set(ips):
        asked = ", ".join([*dict.fromkeys(hosts), *sorted(addresses)]) or "no names"
        bound = ", ".join([host, *ips])
        return f"the CSR asks for {asked}; the token binds exactly {bound}"
    return None


def sign_joining_server(
    pki: SitePKI,
    csr: x509.CertificateSigningRequest,
    role: Role,
    host: str,
    ips: tuple[str, ...],
    *,
    days: int = DEFAULT_SERVER_DAYS,
    now: dt.datetime | None = None,
) -> tuple[CertificateRecord, x509.Certificate]:
    """Sign the CSR of a server that joins with a token for ``host`` and ``ips``; its key
    stays on its machine. The certificate is recorded in the inventory (a copy in the CA's
    home, as `cert sign-csr` keeps one), superseding an earlier one for the same host: the
    token is the administrator's word that this machine is now that server."""
    now = now or utcnow_to_second()
    key_type_of(csr.public_key())  # weak keys are refused before anything is signed
    request = pki._leaf_request(role, [host], ips, days)
    name = certificate_name(role, request.hosts[0])
    ca = pki.authority()
    with pki._exclusive():
        previous = pki._refuse_duplicates(role, request.hosts, name, replace=True)
        cert = ca.sign_server_certificate(
            csr.public_key(), request, now=now, published=pki.published()
        )
        record = pki._store(
            name,
            role,
            cert,
            key_pem=None,
            directory=pki.home.certs_dir,
            owner=None,
            owner_ids=None,
            supersede=[p.serial for p in previous],
            now=now,
        )
    return record, cert
