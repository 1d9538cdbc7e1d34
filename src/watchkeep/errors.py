"""The one exception root of watchkeep and the tree below it.

Every error a user can meet is a :class:`WatchkeepError`. Each carries the data
that identifies what went wrong (server, host name, serial, path) and builds its
one-line message from that data in ``__str__``: what happened, to what, and the
command that fixes it.

    WatchkeepError
    ├── UsageError                      bad input on the command line or in a file (exit 2)
    │   ├── InvalidHostName
    │   ├── InvalidDuration
    │   └── InvalidChoice               unknown role, key type, reason...
    ├── HomeError                       the watchkeep home directory or config
    ├── PKIError
    │   ├── CANotInitialised
    │   ├── CAAlreadyExists
    │   ├── WrongPassphrase
    │   ├── MalformedPEM                a CSR, certificate or key that does not parse
    │   ├── CertificateNotFound
    │   ├── DuplicateCertificate
    │   ├── CertificateRuleViolation    a certificate breaks a rule code (cert.*, key.*)
    │   ├── OutputNotWritable
    │   └── RenewalRefused              a server's own renewal cannot be signed (rejoin, CSR...)
    ├── TrustError                      trust stores
    ├── StoreError                      the database
    ├── SiteRuleViolation               a site.* / trust.* rule refuses an operation
    ├── InvalidToken                    an access token is malformed, forged, expired, misused
    ├── ApiError                        a watchkeep server refused a request (RFC 9457 problem)
    ├── RecordingError                  recording or playback of a camera (media)
    │   ├── RecordingDiskFull           (watchkeep.media) ENOSPC; recording resumes with space
    │   ├── UnknownCamera               (watchkeep.media) playback of a camera never recorded
    │   └── InvalidPlaybackRange        (watchkeep.media) also a UsageError: end before start...
    ├── LocalSiteError                  a site run on this machine (watchkeep.localsite: demo, bench)
    │   ├── SiteNotReady                a server did not start, listen or come online in time
    │   ├── ServerExited                a server's process ended while it was awaited
    │   └── SiteCommandFailed           a command run for the site (log-in, encryption) failed
    └── ConnectionFailed                a link between watchkeep parts failed (tls boundary)
        ├── CertificateExpired
        ├── CertificateNotYetValid
        ├── HostnameMismatch
        ├── UntrustedIssuer
        ├── CertificateRevoked
        ├── PlaintextToTlsPort
        ├── TlsToPlaintextPort
        ├── PeerRefused
        └── PeerTimedOut

A broken rule itself (code, server, message, fix) is data, :class:`watchkeep.site.RuleBreach`:
:class:`CertificateRuleViolation` carries one, as do a server's readiness checks and the
management server's refusals.

Third-party exceptions (``ssl.SSLError``, ``OSError``, ``cryptography`` errors)
are translated at the boundary that raised them, always ``raise ... from exc``.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from watchkeep.site._model import RuleBreach

if TYPE_CHECKING:
    from watchkeep.tls import Endpoint

__all__ = [
    "ApiError",
    "CAAlreadyExists",
    "CANotInitialised",
    "CertificateExpired",
    "CertificateNotFound",
    "CertificateNotYetValid",
    "CertificateRevoked",
    "CertificateRuleViolation",
    "ConnectionFailed",
    "DuplicateCertificate",
    "HomeError",
    "HostnameMismatch",
    "InvalidChoice",
    "InvalidDuration",
    "InvalidHostName",
    "InvalidToken",
    "LocalSiteError",
    "MalformedPEM",
    "OutputNotWritable",
    "PKIError",
    "PeerRefused",
    "PeerTimedOut",
    "PlaintextToTlsPort",
    "RecordingError",
    "RenewalRefused",
    "ServerExited",
    "SiteCommandFailed",
    "SiteNotReady",
    "SiteRuleViolation",
    "StoreError",
    "TlsToPlaintextPort",
    "TrustError",
    "UntrustedIssuer",
    "UsageError",
    "WatchkeepError",
    "WrongPassphrase",
]


class WatchkeepError(Exception):
    """Root of every error watchkeep raises on purpose.

    Subclasses either pass a complete message or override ``__str__``. ``fix``
    is the command (or action) that repairs the problem, when there is one.
    """

    exit_code = 1

    def __init__(self, message: str = "", *, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def describe(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"

    def __str__(self) -> str:
        text = self.describe()
        if self.fix:
            text = f"{text}; fix: {self.fix}"
        return text


class UsageError(WatchkeepError):
    """Input that can never work, whatever the state of the site."""

    exit_code = 2


class InvalidHostName(UsageError):
    def __init__(self, host: str, reason: str) -> None:
        super().__init__(fix="use a DNS name of letters, digits and hyphens, e.g. rs1.site.example")
        self.host = host
        self.reason = reason

    def describe(self) -> str:
        return f"invalid host name {self.host!r}: {self.reason}"


class InvalidDuration(UsageError):
    def __init__(self, text: str, reason: str) -> None:
        super().__init__(fix="write a duration as a number and a unit: 90d, 12h, 30m, 45s")
        self.text = text
        self.reason = reason

    def describe(self) -> str:
        return f"invalid duration {self.text!r}: {self.reason}"


class InvalidChoice(UsageError):
    def __init__(self, what: str, value: str, choices: Sequence[str]) -> None:
        super().__init__(fix=f"choose one of: {', '.join(choices)}")
        self.what = what
        self.value = value
        self.choices = tuple(choices)

    def describe(self) -> str:
        return f"unknown {self.what} {self.value!r}"


class HomeError(WatchkeepError):
    """The watchkeep home directory or a configuration file is unusable."""


class PKIError(WatchkeepError):
    """Certificate authority, certificates and keys."""


class RenewalRefused(PKIError):
    """A server asked to renew its certificate with one that cannot vouch for it (expired,
    revoked, not of this site) or with a request the CA will not sign; ``rejoin`` when only
    a new enrollment brings the server back; ``elsewhere`` when the management server asked
    holds no CA and another of the site's may be asked at once."""

    def __init__(
        self,
        subject: str,
        reason: str,
        *,
        fix: str,
        rejoin: bool = False,
        elsewhere: bool = False,
    ) -> None:
        super().__init__(fix=fix)
        self.subject = subject
        self.reason = reason
        self.rejoin = rejoin
        self.elsewhere = elsewhere

    def describe(self) -> str:
        return f"{self.subject}: renewal refused: {self.reason}"


class CANotInitialised(PKIError):
    def __init__(self, home: str) -> None:
        super().__init__(fix=f"watchkeep --home {home} ca init --name 'My Site CA'")
        self.home = home

    def describe(self) -> str:
        return f"no certificate authority in {self.home}"


class CAAlreadyExists(PKIError):
    def __init__(self, path: str) -> None:
        super().__init__(
            fix="keep it (every certificate of the site depends on it), or use another --home"
        )
        self.path = path

    def describe(self) -> str:
        return f"a certificate authority already exists at {self.path}; refusing to overwrite it"


class WrongPassphrase(PKIError):
    def __init__(self, path: str) -> None:
        # Every command that signs takes the passphrase as --ca-passphrase-file (or from the
        # environment); --passphrase-file belongs to `ca init`, which never decrypts.
        super().__init__(
            fix="pass the CA's passphrase with --ca-passphrase-file FILE "
            "(or set WATCHKEEP_CA_PASSPHRASE_FILE)"
        )
        self.path = path

    def describe(self) -> str:
        return f"cannot decrypt the CA key {self.path}: wrong or missing passphrase"


class MalformedPEM(PKIError):
    exit_code = 2

    def __init__(self, path: str, what: str, reason: str) -> None:
        super().__init__(fix=f"pass a PEM-encoded {what} (-----BEGIN ...-----)")
        self.path = path
        self.what = what
        self.reason = reason

    def describe(self) -> str:
        return f"{self.path} is not a valid {self.what}: {self.reason}"


class CertificateNotFound(PKIError):
    def __init__(self, name: str, home: str) -> None:
        super().__init__(fix=f"watchkeep --home {home} cert list")
        self.name = name

    def describe(self) -> str:
        return f"no certificate named {self.name!r} in the inventory"


class DuplicateCertificate(PKIError):
    def __init__(self, name: str, host: str, role: str, serial: str) -> None:
        super().__init__(
            fix=f"renew it with `watchkeep cert renew {name}` or pass --replace to issue anew"
        )
        self.name = name
        self.host = host
        self.role = role
        self.serial = serial

    def describe(self) -> str:
        return (
            f"an active {self.role} certificate for {self.host} already exists "
            f"({self.name}, serial {self.serial})"
        )


class CertificateRuleViolation(PKIError):
    """A certificate or key breaks one of the rule codes of docs/rules.md: ``breach``."""

    def __init__(self, code: str, subject: str, reason: str, *, fix: str | None = None) -> None:
        super().__init__(fix=fix)
        self.breach = RuleBreach(code=code, message=reason, fix=fix or "", server=subject)

    @property
    def code(self) -> str:
        return self.breach.code

    @property
    def subject(self) -> str:
        return self.breach.server

    @property
    def reason(self) -> str:
        return self.breach.message

    def describe(self) -> str:
        return f"[{self.code}] {self.subject}: {self.reason}"


class OutputNotWritable(PKIError):
    def __init__(self, path: str, reason: str) -> None:
        super().__init__(fix="choose a writable directory with --out DIR")
        self.path = path
        self.reason = reason

    def describe(self) -> str:
        return f"cannot write to {self.path}: {self.reason}"


class TrustError(WatchkeepError):
    """A trust store is missing, unwritable or inconsistent."""


class StoreError(WatchkeepError):
    """The database could not be opened or written."""


class SiteRuleViolation(WatchkeepError):
    """An operation is refused because a site rule (site.*, trust.*) would break."""

    def __init__(self, code: str, server: str, reason: str, *, fix: str | None = None) -> None:
        super().__init__(fix=fix)
        self.code = code
        self.server = server
        self.reason = reason

    def describe(self) -> str:
        return f"[{self.code}] {self.server}: {self.reason}"


class InvalidToken(WatchkeepError):
    """A token is missing, malformed, forged, expired, for another server or another purpose."""


class ApiError(WatchkeepError):
    """A server answered with an RFC 9457 problem document."""

    def __init__(self, status: int, document: Mapping[str, Any], endpoint: Endpoint) -> None:
        super().__init__(fix=str(document.get("fix") or "") or None)
        self.status = status
        self.document = dict(document)
        self.code = str(document.get("code") or "")
        self.endpoint = endpoint

    def describe(self) -> str:
        code = f"[{self.code}] " if self.code else ""
        server = self.document.get("server") or self.endpoint.server
        detail = self.document.get("detail") or self.document.get("title") or f"HTTP {self.status}"
        return f"{self.endpoint.server} refused: {code}{server}: {detail}"


class RecordingError(WatchkeepError):
    """Recording or playing back a camera failed: the disk, a segment file or the index."""

    def __init__(
        self, camera: str | None, reason: str, *, path: str | None = None, fix: str | None = None
    ) -> None:
        super().__init__(fix=fix)
        self.camera = camera
        self.reason = reason
        self.path = path

    def describe(self) -> str:
        subject = f"camera {self.camera}" if self.camera else "recordings"
        where = f" ({self.path})" if self.path else ""
        return f"{subject}: {self.reason}{where}"


def _one_line(text: str, limit: int = 300) -> str:
    """``text`` as one line of at most ``limit`` characters, for a message."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


class LocalSiteError(WatchkeepError):
    """A site run on this machine (`watchkeep demo`, the benchmarks) failed."""


class SiteNotReady(LocalSiteError):
    """A wait for a local site's servers gave up; ``last`` is what it saw last."""

    def __init__(self, what: str, timeout: float, logs: str, *, last: str | None = None) -> None:
        super().__init__(fix=f"read the servers' logs ({logs}) for what held them up")
        self.what = what
        self.timeout = timeout
        self.logs = logs
        self.last = last

    def describe(self) -> str:
        seen = f" (last seen: {_one_line(self.last)})" if self.last else ""
        return f"local site not ready within {self.timeout:.0f} s: {self.what}{seen}"


class ServerExited(LocalSiteError):
    """A local site's server process ended while it was being waited for."""

    def __init__(self, server: str, status: int, log: str, *, last_line: str | None) -> None:
        super().__init__(fix=f"read its log {log}, repair what it names and start it again")
        self.server = server
        self.status = status
        self.log = log
        self.last_line = last_line

    def describe(self) -> str:
        said = f"; it said last: {_one_line(self.last_line)}" if self.last_line else ""
        return f"server {self.server} exited with status {self.status}{said}"


class SiteCommandFailed(LocalSiteError):
    """A command run for a local site failed. ``reason`` is its own message: a watchkeep
    command's error line names its fix already."""

    def __init__(self, command: str, reason: str, *, fix: str | None = None) -> None:
        super().__init__(fix=fix)
        self.command = command
        self.reason = reason

    def describe(self) -> str:
        return f"{self.command} failed: {_one_line(self.reason)}"


class ConnectionFailed(WatchkeepError):
    """A connection from one watchkeep part to another failed."""

    def __init__(self, peer: str, reason: str, *, fix: str | None = None) -> None:
        super().__init__(fix=fix)
        self.peer = peer
        self.reason = reason

    def describe(self) -> str:
        return f"cannot connect to {self.peer}: {self.reason}"


class CertificateExpired(ConnectionFailed):
    def __init__(
        self, peer: str, not_after: _dt.datetime | None, *, fix: str | None = None
    ) -> None:
        when = f" on {not_after:%Y-%m-%d %H:%M:%S} UTC" if not_after else ""
        super().__init__(peer, f"its certificate expired{when} [cert.validity]", fix=fix)
        self.not_after = not_after


class CertificateNotYetValid(ConnectionFailed):
    def __init__(
        self, peer: str, not_before: _dt.datetime | None, *, fix: str | None = None
    ) -> None:
        when = f" until {not_before:%Y-%m-%d %H:%M:%S} UTC" if not_before else ""
        super().__init__(peer, f"its certificate is not valid yet{when} [cert.validity]", fix=fix)
        self.not_before = not_before


class HostnameMismatch(ConnectionFailed):
    def __init__(
        self, peer: str, host: str, names: Sequence[str], *, fix: str | None = None
    ) -> None:
        held = ", ".join(names) if names else "no names"
        super().__init__(
            peer,
            f"its certificate is not valid for {host} (it names {held}) [cert.hostname]",
            fix=fix,
        )
        self.host = host
        self.names = tuple(names)


class UntrustedIssuer(ConnectionFailed):
    pass


class CertificateRevoked(ConnectionFailed):
    pass


class PlaintextToTlsPort(ConnectionFailed):
    pass


class TlsToPlaintextPort(ConnectionFailed):
    pass


class PeerRefused(ConnectionFailed):
    pass


class PeerTimedOut(ConnectionFailed):
    pass
