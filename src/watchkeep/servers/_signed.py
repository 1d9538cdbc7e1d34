"""Heartbeats signed with the server's own certificate key, for a plaintext management link.

A server that joined with a token has no shared registration key: on an encrypted link it
proves who it is with its certificate (mutual TLS). While the management server speaks
plaintext there is no handshake to do that, and a secret sent along would cross the network
in clear. So the server signs each heartbeat with the private key of its TLS certificate and
sends the certificate beside the signature; nothing secret is ever sent. The management
server accepts the heartbeat when the certificate chains to the site CA, is valid and not
revoked, names the host the server joined as, and the signature covers this request: its
method, path, the time it was made (within ``MAX_SKEW``, and later than the last one
accepted for that server, so a recorded heartbeat cannot be replayed) and the digest of its
JSON body.

    Watchkeep-Certificate: base64(DER of the leaf)
    Watchkeep-Signature: t=UNIX_MILLISECONDS,s=base64url(signature)

The signature is ECDSA with SHA-256 for EC keys and RSASSA-PSS with SHA-256 for RSA keys,
over ``watchkeep-heartbeat-v1\\nMETHOD\\nPATH\\nT\\nSHA256(canonical JSON body)``.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from watchkeep.pki import san_dns_names

__all__ = [
    "CERTIFICATE_HEADER",
    "MAX_SKEW",
    "SIGNATURE_HEADER",
    "SignedRequestRefused",
    "sign_message",
    "sign_request",
    "signature_valid",
    "verify_signed_request",
]

CERTIFICATE_HEADER = "Watchkeep-Certificate"
SIGNATURE_HEADER = "Watchkeep-Signature"
MAX_SKEW = dt.timedelta(minutes=5)
_CONTEXT = b"watchkeep-heartbeat-v1"


class SignedRequestRefused(Exception):
    """Why a signed request is not accepted (the message goes into the refusal)."""


def canonical_body(body: Any) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _message(method: str, path: str, millis: int, body: Any) -> bytes:
    digest = hashlib.sha256(canonical_body(body)).hexdigest()
    return b"\n".join(
        [_CONTEXT, method.encode(), path.encode(), str(millis).encode(), digest.encode()]
    )


def sign_request(
    key: Any, certificate: x509.Certificate, method: str, path: str, body: Any, now: dt.datetime
) -> dict[str, str]:
    """The headers that sign this request with ``key``, the key of ``certificate``."""
    millis = int(now.timestamp() * 1000)
    signature = sign_message(key, _message(method, path, millis, body))
    der = certificate.public_bytes(serialization.Encoding.DER)
    return {
        CERTIFICATE_HEADER: base64.b64encode(der).decode(),
        SIGNATURE_HEADER: f"t={millis},s={base64.urlsafe_b64encode(signature).decode()}",
    }


def _pss() -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)


def sign_message(key: Any, message: bytes) -> bytes:
    """``message`` signed with a server's key: ECDSA with SHA-256, or RSASSA-PSS with
    SHA-256 (salt 32) for RSA."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(message, ec.ECDSA(hashes.SHA256()))
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(message, _pss(), hashes.SHA256())
    raise TypeError(f"cannot sign with a {type(key).__name__}")


def signature_valid(public_key: Any, signature: bytes, message: bytes) -> bool:
    """Whether ``signature`` is ``sign_message``'s of ``message`` by ``public_key``'s key."""
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        elif isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, message, _pss(), hashes.SHA256())
        else:
            return False
    except (InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def verify_signed_request(
    headers: Mapping[str, str],
    method: str,
    path: str,
    body: Any,
    *,
    host: str,
    cas: list[x509.Certificate],
    crls: list[x509.CertificateRevocationList],
    now: dt.datetime,
    not_before_millis: int,
) -> int:
    """Check a signed request from the server that joined as ``host``; the time it was
    signed (milliseconds), or SignedRequestRefused saying why not."""
    try:
        der = base64.b64decode(headers[CERTIFICATE_HEADER], validate=True)
        fields = dict(part.split("=", 1) for part in headers[SIGNATURE_HEADER].split(","))
        millis = int(fields["t"])
        signature = base64.urlsafe_b64decode(fields["s"])
        leaf = x509.load_der_x509_certificate(der)
    except (KeyError, ValueError, binascii.Error) as exc:
        raise SignedRequestRefused(
            f"no valid {CERTIFICATE_HEADER} and {SIGNATURE_HEADER} headers ({type(exc).__name__})"
        ) from None
    signed_at = dt.datetime.fromtimestamp(millis / 1000, dt.UTC)
    if abs(signed_at - now) > MAX_SKEW:
        raise SignedRequestRefused(
            f"it was signed at {signed_at:%Y-%m-%dT%H:%M:%SZ}, more than "
            f"{int(MAX_SKEW.total_seconds())} s from this server's clock"
        )
    if millis <= not_before_millis:
        raise SignedRequestRefused("it repeats an earlier heartbeat (replayed)")
    try:
        verifier = (
            PolicyBuilder().store(Store(cas)).time(now.replace(tzinfo=None)).build_client_verifier()
        )
        verifier.verify(leaf, [])
    except (VerificationError, ValueError) as exc:
        raise SignedRequestRefused(
            f"its certificate does not verify with the site CA: {exc}"
        ) from None
    for crl in crls:
        if crl.issuer == leaf.issuer and crl.get_revoked_certificate_by_serial_number(
            leaf.serial_number
        ):
            raise SignedRequestRefused(
                f"its certificate (serial {leaf.serial_number:x}) is revoked"
            )
    names = san_dns_names(leaf)
    if host not in names:
        raise SignedRequestRefused(
            f"its certificate names {', '.join(names) or 'no host'}, not {host}"
        )
    if not signature_valid(leaf.public_key(), signature, _message(method, path, millis, body)):
        raise SignedRequestRefused("its signature does not verify")
    return millis
