"""Connecting to a TLS listener as its clients would, and as they must not be let in.

Each listener gets one ordinary handshake (to fetch the chain it serves, unverified: the
checks verify it) and the handshakes the TLS policy forbids: TLS 1.0, TLS 1.1, and TLS 1.2
offering only suites outside Mozilla's "intermediate" list (no ECDHE or no AEAD). Each
handshake is bounded by a timeout, and all of them run concurrently.

A forbidden handshake counts as accepted when the server answers it with a ServerHello,
even if the handshake fails later: a listener that requires a client certificate (the
recording servers' control link) rejects the doctor after agreeing to the protocol.
"""

from __future__ import annotations

import _ssl
import asyncio
import contextlib
import ssl
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from watchkeep.doctor._snapshot import ProbeResult

__all__ = ["PROBE_TIMEOUT", "ProbeTarget", "probe_endpoint", "probe_endpoints"]

PROBE_TIMEOUT = 5.0
_HANDSHAKE = 22
_SERVER_HELLO = 2


@dataclass(frozen=True)
class ProbeTarget:
    server: str
    listener: str
    host: str
    address: str
    port: int


@dataclass(frozen=True)
class _Handshake:
    completed: bool
    server_hello: str | None = None  # the version the server answered with, if it did
    version: str | None = None
    cipher: str | None = None
    chain: tuple[bytes, ...] = ()
    error: str | None = None
    plaintext: bool = False


def _unverifying_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _legacy_context(version: ssl.TLSVersion) -> ssl.SSLContext:
    context = _unverifying_context()
    with warnings.catch_warnings():
        # Python deprecates TLS 1.0/1.1; asking for them on purpose is the point here.
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = version
        context.maximum_version = version
    context.set_ciphers("@SECLEVEL=0:ALL")
    return context


def _weak_suites_context() -> ssl.SSLContext:
    # Imported here: the tls package pulls in the PKI and its database layer, which
    # `watchkeep doctor --list-checks` does not need.
    from watchkeep.tls._policy import INTERMEDIATE_CIPHERS

    # Every TLS 1.2 suite OpenSSL knows minus the intermediate ones, at security level 0
    # so that none is left out because this host's OpenSSL would refuse it by default.
    weak = ":".join(f"!{suite}" for suite in INTERMEDIATE_CIPHERS.split(":"))
    context = _unverifying_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(f"ALL:COMPLEMENTOFALL:{weak}:@SECLEVEL=0")
    return context


_FORBIDDEN: tuple[tuple[str, Callable[[], ssl.SSLContext]], ...] = (
    ("TLSv1.0", lambda: _legacy_context(ssl.TLSVersion.TLSv1)),
    ("TLSv1.1", lambda: _legacy_context(ssl.TLSVersion.TLSv1_1)),
    ("TLSv1.2 with a weak suite", _weak_suites_context),
)


def _peer_chain(sslobj: Any) -> tuple[bytes, ...]:
    """The chain the peer sent, leaf first, as DER (public API from Python 3.13, the same
    method on the private object before)."""
    method = getattr(sslobj, "get_unverified_chain", None)
    if method is None:
        method = sslobj._sslobj.get_unverified_chain
    chain = method() or []
    return tuple(c if isinstance(c, bytes) else c.public_bytes(_ssl.ENCODING_DER) for c in chain)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc).lower().replace("_", " ")
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (nothing listens there)"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    return str(exc) or type(exc).__name__


async def _handshake(target: ProbeTarget, context: ssl.SSLContext, timeout: float) -> _Handshake:
    hello: list[str] = []

    def on_message(
        _conn: object,
        direction: str,
        version: object,
        content_type: object,
        msg_type: object,
        _data: bytes,
    ) -> None:
        if direction == "read" and content_type == _HANDSHAKE and msg_type == _SERVER_HELLO:
            hello.append(getattr(version, "name", str(version)))

    # The message callback (private, but in every Python since 3.8) is the only way to see
    # a ServerHello arrive when the handshake fails afterwards.
    context._msg_callback = on_message  # type: ignore[attr-defined]
    writer = None
    try:
        _reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                target.address,
                target.port,
                ssl=context,
                server_hostname=target.host,
                ssl_handshake_timeout=timeout,
            ),
            timeout,
        )
        sslobj = writer.get_extra_info("ssl_object")
        cipher = sslobj.cipher() if sslobj is not None else None
        return _Handshake(
            completed=True,
            server_hello=hello[0] if hello else None,
            version=sslobj.version() if sslobj is not None else None,
            cipher=cipher[0] if cipher else None,
            chain=_peer_chain(sslobj) if sslobj is not None else (),
        )
    except (OSError, TimeoutError, EOFError) as exc:
        text = str(exc)
        plaintext = "WRONG_VERSION_NUMBER" in text or "wrong version number" in text
        return _Handshake(
            completed=False,
            server_hello=hello[0] if hello else None,
            error=_reason(exc),
            plaintext=plaintext,
        )
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


_VERSION_NAMES = {"TLSv1": "TLSv1.0", "TLSv1_1": "TLSv1.1", "TLSv1_2": "TLSv1.2"}


async def probe_endpoint(target: ProbeTarget, *, timeout: float = PROBE_TIMEOUT) -> ProbeResult:
    """Fetch what ``target`` serves and try the handshakes the policy forbids."""
    normal, *forbidden = await asyncio.gather(
        _handshake(target, _unverifying_context(), timeout),
        *(_handshake(target, make(), timeout) for _label, make in _FORBIDDEN),
    )
    where = (target.server, target.listener, target.host, target.address, target.port)
    if not normal.completed:
        return ProbeResult(*where, plaintext=normal.plaintext, error=normal.error)
    accepted = []
    for (label, _make), result in zip(_FORBIDDEN, forbidden, strict=True):
        if result.completed or result.server_hello is not None:
            detail = result.cipher or _VERSION_NAMES.get(result.server_hello or "")
            accepted.append(f"{label} ({detail})" if detail else label)
    chain = []
    for der in normal.chain:
        with contextlib.suppress(ValueError):
            chain.append(x509.load_der_x509_certificate(der))
    return ProbeResult(
        *where,
        chain=tuple(chain),
        version=normal.version,
        cipher=normal.cipher,
        weak_accepted=tuple(accepted),
    )


async def probe_endpoints(
    targets: Sequence[ProbeTarget], *, timeout: float = PROBE_TIMEOUT
) -> list[ProbeResult]:
    return list(await asyncio.gather(*(probe_endpoint(t, timeout=timeout) for t in targets)))
