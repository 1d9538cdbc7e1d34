"""The one place where ssl/OS errors of a connection become watchkeep errors.

A user never sees a bare OpenSSL reason: each failure names the peer, the cause in words
(with the certificate's dates or names when that is the cause), the rule code and a fix.
When verification fails the peer's certificate is fetched once more without verifying,
only to describe it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass

from cryptography import x509

from watchkeep.errors import (
    CertificateExpired,
    CertificateNotYetValid,
    CertificateRevoked,
    ConnectionFailed,
    HostnameMismatch,
    PeerRefused,
    PeerTimedOut,
    PlaintextToTlsPort,
    TlsToPlaintextPort,
    UntrustedIssuer,
)
from watchkeep.pki import san_dns_names, san_ip_addresses

__all__ = ["Endpoint", "explain_connection_failure", "fetch_peer_certificate", "speaks_tls"]

# OpenSSL X509_V_ERR_* codes as they reach ssl.SSLCertVerificationError.verify_code.
_NOT_YET_VALID = 9
_EXPIRED = 10
_SELF_SIGNED = 18
_SELF_SIGNED_IN_CHAIN = 19
_NO_LOCAL_ISSUER = 20
_UNABLE_TO_VERIFY_LEAF = 21
_NO_ISSUER_CERT = 2
_REVOKED = 23
_UNABLE_TO_GET_CRL = 3
_INVALID_PURPOSE = 26
_HOSTNAME_MISMATCH = 62
_IP_MISMATCH = 64


@dataclass(frozen=True)
class Endpoint:
    """A listener of a watchkeep server as a client sees it."""

    server: str
    host: str
    address: str
    port: int
    tls: bool

    def __str__(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{self.server} ({scheme}://{self.host}:{self.port}, address {self.address})"


@contextlib.asynccontextmanager
async def _unverified_handshake(
    endpoint: Endpoint, timeout: float
) -> AsyncIterator[asyncio.StreamWriter]:
    """A TLS connection that verifies nothing: only to describe a peer, never to trust it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    _reader, writer = await asyncio.wait_for(
        asyncio.open_connection(
            endpoint.address, endpoint.port, ssl=context, server_hostname=endpoint.host
        ),
        timeout,
    )
    try:
        yield writer
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def fetch_peer_certificate(
    endpoint: Endpoint, timeout: float = 3.0
) -> x509.Certificate | None:
    """The certificate the endpoint presents, without verifying it (for messages only)."""
    try:
        async with _unverified_handshake(endpoint, timeout) as writer:
            sslobj = writer.get_extra_info("ssl_object")
            der = sslobj.getpeercert(binary_form=True) if sslobj else None
            return x509.load_der_x509_certificate(der) if der else None
    except (OSError, ssl.SSLError, TimeoutError, ValueError):
        return None


async def speaks_tls(endpoint: Endpoint, timeout: float = 3.0) -> bool | None:
    """True if the port completes a TLS handshake, False if it answers in plaintext,
    None if it cannot be told."""
    try:
        async with _unverified_handshake(endpoint, timeout):
            return True
    except ssl.SSLError as exc:
        # A TLS server that refuses us (no client certificate, say) still speaks TLS.
        return not ("WRONG_VERSION_NUMBER" in str(exc) or "wrong version number" in str(exc))
    except (OSError, TimeoutError):
        return None


def _names(cert: x509.Certificate | None) -> list[str]:
    if cert is None:
        return []
    return [*san_dns_names(cert), *san_ip_addresses(cert)]


def _find(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        nested = getattr(current, "certificate_error", None) or getattr(current, "os_error", None)
        # aiohttp's wrappers are themselves SSLCertVerificationError/OSError subclasses
        # without the details (verify_code, strerror): prefer the error they wrap.
        if isinstance(current, kind) and not isinstance(nested, kind):
            return current
        seen.add(id(current))
        current = (
            nested
            if isinstance(nested, BaseException)
            else (current.__cause__ or current.__context__)
        )
    return None


def _dropped(error: ssl.SSLError) -> bool:
    """Whether a TLS error only says that the connection went away (a reset or a close in
    the middle of the handshake), not that the peer refused something."""
    return isinstance(
        error,
        ssl.SSLEOFError | ssl.SSLSyscallError | ssl.SSLWantReadError | ssl.SSLZeroReturnError,
    ) or ("did not complete" in str(error) or "EOF occurred" in str(error))


# How a peer reached once more ended the connection before it answered a request.
_ENDS_IN_HANDSHAKE = "in the handshake"
_ENDS_AFTER_HANDSHAKE = "after the handshake"


async def _how_it_ends(
    endpoint: Endpoint, context: ssl.SSLContext, timeout: float = 3.0
) -> str | None:
    """Reach the peer with ``context`` once more: _ENDS_AFTER_HANDSHAKE when it drops the
    connection after the TLS handshake, before answering a request (how a refused client
    certificate shows under TLS 1.3, where the server checks it after the client's side of
    the handshake is done, and asyncio servers send no alert); _ENDS_IN_HANDSHAKE when it
    resets or closes the connection before the handshake is done (what a listener at its
    connection limit does, before it has seen any certificate); None when it answers or
    cannot be told."""
    writer = None
    try:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    endpoint.address, endpoint.port, ssl=context, server_hostname=endpoint.host
                ),
                timeout,
            )
        except ssl.SSLError as exc:
            # An alert is the peer's verdict on this party; anything else, that it went.
            return _ENDS_IN_HANDSHAKE if _dropped(exc) else _ENDS_AFTER_HANDSHAKE
        except ConnectionError:
            return _ENDS_IN_HANDSHAKE
        writer.write(f"HEAD / HTTP/1.1\r\nHost: {endpoint.host}\r\n\r\n".encode())
        if await asyncio.wait_for(reader.read(1), timeout) == b"":
            return _ENDS_AFTER_HANDSHAKE
        return None
    except (ssl.SSLError, ConnectionResetError):
        return _ENDS_AFTER_HANDSHAKE
    except (OSError, TimeoutError):
        return None
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def explain_connection_failure(
    exc: BaseException,
    endpoint: Endpoint,
    *,
    trust_dir: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> ConnectionFailed:
    """Translate a failed connection to ``endpoint`` into the watchkeep error that explains it.

    ``ssl_context`` is the one the failed connection used, to tell by trying once more
    whether the peer refuses this party's client certificate.
    """
    peer = str(endpoint)
    trust_hint = (
        f"watchkeep trust install --store {trust_dir}" if trust_dir else "watchkeep trust install"
    )
    verify = _find(exc, ssl.SSLCertVerificationError)
    if isinstance(verify, ssl.SSLCertVerificationError):
        code = verify.verify_code
        cert = await fetch_peer_certificate(endpoint)
        renew = (
            f"renew its certificate: watchkeep cert renew --all --within 1d (host {endpoint.host})"
        )
        if code == _EXPIRED:
            return CertificateExpired(peer, cert.not_valid_after_utc if cert else None, fix=renew)
        if code == _NOT_YET_VALID:
            return CertificateNotYetValid(
                peer,
                cert.not_valid_before_utc if cert else None,
                fix="check both machines' clocks (timedatectl)",
            )
        if code in (_HOSTNAME_MISMATCH, _IP_MISMATCH):
            return HostnameMismatch(
                peer,
                endpoint.host,
                _names(cert),
                fix=f"issue the server a certificate for {endpoint.host}: "
                f"watchkeep cert issue --role ROLE --host {endpoint.host} --replace ...",
            )
        if code == _REVOKED:
            return CertificateRevoked(
                peer,
                "its certificate is revoked [cert.revoked]",
                fix=f"issue a new one: watchkeep cert issue --role ROLE --host {endpoint.host} --replace ...",
            )
        if code == _UNABLE_TO_GET_CRL:
            return UntrustedIssuer(
                peer,
                "the trust store has no CRL for the server's CA [cert.revoked]",
                fix=trust_hint,
            )
        if code in (
            _SELF_SIGNED,
            _SELF_SIGNED_IN_CHAIN,
            _NO_LOCAL_ISSUER,
            _UNABLE_TO_VERIFY_LEAF,
            _NO_ISSUER_CERT,
        ):
            issuer = cert.issuer.rfc4514_string() if cert else "an unknown CA"
            return UntrustedIssuer(
                peer,
                f"its certificate is issued by {issuer}, which this party does not trust "
                "[trust.installed]",
                fix=trust_hint,
            )
        if code == _INVALID_PURPOSE:
            return UntrustedIssuer(
                peer,
                "its certificate is not issued for server authentication [cert.server_auth]",
                fix=f"watchkeep cert issue --role ROLE --host {endpoint.host} --replace",
            )
        return UntrustedIssuer(peer, f"its certificate does not verify: {verify.verify_message}")
    ssl_error = _find(exc, ssl.SSLError)
    dropped = isinstance(ssl_error, ssl.SSLError) and _dropped(ssl_error)
    if isinstance(ssl_error, ssl.SSLError) and not dropped:
        text = str(ssl_error)
        if "WRONG_VERSION_NUMBER" in text or "wrong version number" in text:
            return TlsToPlaintextPort(
                peer,
                "the port answers in plaintext but TLS was expected (its encryption is off)",
                fix=f"watchkeep encryption enable --server {endpoint.server}",
            )
        if (
            "CERTIFICATE_REQUIRED" in text
            or "certificate required" in text
            or "BAD_CERTIFICATE" in text
            or "bad certificate" in text
            or "UNKNOWN_CA" in text
            or "unknown ca" in text
        ):
            return UntrustedIssuer(
                peer,
                "it refused this party's client certificate (mutual TLS) "
                f"[{ssl_error.reason or 'handshake alert'}]",
                fix="give this server a certificate from the site CA for its own host name",
            )
        return ConnectionFailed(peer, f"TLS handshake failed: {ssl_error.reason or text}")
    if isinstance(exc, TimeoutError) or _find(exc, TimeoutError) is not None:
        return PeerTimedOut(
            peer, "no answer in time", fix="check that the server runs and the address is right"
        )
    refused = _find(exc, ConnectionRefusedError)
    if refused is not None:
        return PeerRefused(
            peer,
            "connection refused (nothing listens there)",
            fix="start the server, or check its address and port: watchkeep site status",
        )
    if not endpoint.tls and await speaks_tls(endpoint):
        return PlaintextToTlsPort(
            peer,
            "the port speaks TLS (its encryption is on) but plaintext was sent",
            fix="connect with https; `watchkeep site status` shows each server's encryption",
        )
    ends = (
        await _how_it_ends(endpoint, ssl_context)
        if endpoint.tls and ssl_context is not None
        else None
    )
    if ends == _ENDS_AFTER_HANDSHAKE:
        return UntrustedIssuer(
            peer,
            "it closes the connection right after the TLS handshake, before answering: it "
            "refuses this party's client certificate (expired, revoked, or not issued by a CA "
            "it trusts) [mutual TLS]",
            fix="check this party's own certificate (watchkeep cert list --expiring-within 1d) "
            "and renew or re-issue it",
        )
    if ends == _ENDS_IN_HANDSHAKE or dropped or _find(exc, ConnectionResetError) is not None:
        return ConnectionFailed(
            peer,
            "it resets connections before answering"
            + (" (before the TLS handshake is done)" if ends == _ENDS_IN_HANDSHAKE else "")
            + ": it is most likely at its connection limit, or was restarting",
            fix=f"see the log of {endpoint.server}: a listener at its limit says so, and "
            "which setting to raise (max_connections, max_connections_per_address)",
        )
    os_error = _find(exc, OSError)
    reason = (
        (os_error.strerror if isinstance(os_error, OSError) else None)
        or str(exc)
        or type(exc).__name__
    )
    return ConnectionFailed(peer, reason)
