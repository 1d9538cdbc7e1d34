"""Which failures a long-running client waits out, and how long it waits between tries.

A client that runs for hours (`watchkeep demo`'s status table, a script polling the site)
must not end, and take the site with it, because one call met a server that reset the
connection (at its connection limit, restarting), did not answer in time, or answered
5xx or 429: those are transient, and the call is tried again after 0.5 s, then 1 s, 2 s,
and so on up to 8 s apart, until one succeeds. A refusal (any other 4xx) or a certificate
problem is not transient: it does not go away by waiting, and is raised at once. Only calls
that change nothing are tried again this way: a change tried twice could be made twice.
"""

from __future__ import annotations

from dataclasses import dataclass

from watchkeep.errors import (
    ApiError,
    CertificateExpired,
    CertificateNotYetValid,
    CertificateRevoked,
    ConnectionFailed,
    HostnameMismatch,
    UntrustedIssuer,
)

__all__ = ["Backoff", "transient"]

FIRST_DELAY = 0.5
MAX_DELAY = 8.0
_LASTING = (
    CertificateExpired,
    CertificateNotYetValid,
    CertificateRevoked,
    HostnameMismatch,
    UntrustedIssuer,
)


def transient(exc: BaseException) -> bool:
    """Whether waiting may cure the failure ``exc`` of a call to a watchkeep server."""
    if isinstance(exc, ApiError):
        return exc.status >= 500 or exc.status == 429
    return isinstance(exc, ConnectionFailed) and not isinstance(exc, _LASTING)


@dataclass
class Backoff:
    """Waits that double after each failure, up to ``ceiling``, and start over after a
    success."""

    first: float = FIRST_DELAY
    ceiling: float = MAX_DELAY
    failures: int = 0

    def failed(self) -> float:
        """Count a failure; how long to wait before the next try."""
        self.failures += 1
        return min(self.first * 2.0 ** (self.failures - 1), self.ceiling)

    def succeeded(self) -> None:
        self.failures = 0
