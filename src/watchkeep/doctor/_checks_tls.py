"""The TLS policy as the listeners apply it: handshakes that must fail, and key strength."""

from __future__ import annotations

from collections.abc import Iterator

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from watchkeep.doctor._helpers import reissue_fix
from watchkeep.doctor._model import Issue, Severity, check
from watchkeep.doctor._snapshot import SiteSnapshot

__all__ = ["tls_policy"]

_GOOD_CURVES = (ec.SECP256R1, ec.SECP384R1)


@check(
    "tls.policy",
    Severity.ERROR,
    summary="""TLS 1.2+ (Mozilla "intermediate"), or 1.3 only ("modern") by choice; no
    compression, no insecure renegotiation.""",
    requirement="""In HTTPS, the communication protocol is encrypted using Transport Layer
    Security (TLS), or its predecessor, Secure Sockets Layer (SSL) [watchkeep accepts TLS 1.2
    with ECDHE and AEAD suites, and TLS 1.3, only: Mozilla Server Side TLS
    "intermediate"].""",
)
def tls_policy(snapshot: SiteSnapshot) -> Iterator[Issue]:
    for probe in snapshot.probes:
        if probe.weak_accepted:
            yield Issue(
                probe.server,
                f"{probe.where} accepts {', '.join(probe.weak_accepted)}: only TLS 1.2 with "
                "ECDHE key exchange and AEAD suites, or TLS 1.3, may be",
                f"serve {probe.address}:{probe.port} with a watchkeep server (tls_policy = "
                '"intermediate" or "modern" in its config), or limit the program that '
                "listens there to TLS 1.2+ with ECDHE-AEAD suites",
            )
    for seen in snapshot.seen_certificates():
        key = seen.leaf.public_key()
        weak = None
        if isinstance(key, rsa.RSAPublicKey) and key.key_size < 2048:
            weak = f"an RSA key of {key.key_size} bits (at least 2048 are required)"
        elif isinstance(key, ec.EllipticCurvePublicKey) and not isinstance(key.curve, _GOOD_CURVES):
            weak = f"an EC key on {key.curve.name} (P-256 or P-384 are required)"
        elif not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
            weak = f"a {type(key).__name__} key (RSA or ECDSA are required)"
        if weak is not None:
            yield Issue(
                seen.server,
                f"the certificate in {seen.where} has {weak}",
                reissue_fix(
                    snapshot,
                    seen.server,
                    seen.role,
                    seen.host,
                    seen.local,
                    options=" --key-type ecdsa-p256",
                ),
            )
