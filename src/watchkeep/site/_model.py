"""The site model: servers, their roles and readiness, cameras (pure data)."""

from __future__ import annotations

import datetime as dt
import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DEFAULT_PORTS",
    "Camera",
    "CertificateStatus",
    "Readiness",
    "RuleBreach",
    "Server",
    "ServerRole",
]


class ServerRole(enum.StrEnum):
    """What a server of the site is. Its certificate is issued with the certificate role of
    the same name (:class:`watchkeep.pki.Role`, whose profile says what the certificate
    holds); ``event`` is a certificate role only, for event servers and integrations that
    watchkeep does not run."""

    MANAGEMENT = "management"
    RECORDING = "recording"
    FAILOVER = "failover"  # a recording server on standby: it runs the recording program
    MOBILE = "mobile"

    @property
    def records(self) -> bool:
        return self in (ServerRole.RECORDING, ServerRole.FAILOVER)

    @property
    def program(self) -> str:
        """The program that runs a server of this role (``watchkeep server run PROGRAM``)."""
        return ServerRole.RECORDING.value if self.records else self.value


# Listener name -> default port. A listener called "http" is always plaintext; every other
# one is TLS when its server's encryption is on.
DEFAULT_PORTS: dict[ServerRole, dict[str, int]] = {
    ServerRole.MANAGEMENT: {"api": 9000},
    ServerRole.RECORDING: {"data": 7563, "control": 9001},
    ServerRole.FAILOVER: {"data": 7563, "control": 9001},
    ServerRole.MOBILE: {"http": 8081, "https": 8082},
}


_UTC_SECOND = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")


def _parse_time(value: object) -> dt.datetime:
    # strptime's exact format, checked by the pattern; parsed by fromisoformat, a tenth of
    # the cost (every heartbeat's readiness carries two of these).
    text = str(value)
    if not _UTC_SECOND.fullmatch(text):
        raise ValueError(f"time data {text!r} does not match format '%Y-%m-%dT%H:%M:%SZ'")
    return dt.datetime.fromisoformat(text)


@dataclass(frozen=True)
class RuleBreach:
    """A rule broken: its code (docs/rules.md), what is wrong, the fix, the server concerned.

    The one shape of a broken rule: the management server's refusals, a server's checks of
    its own files (its :class:`Readiness`), :class:`watchkeep.errors.CertificateRuleViolation`
    and the problems the doctor relays. ``server`` is empty where the server is the one
    reporting about itself.
    """

    code: str
    message: str
    fix: str = ""
    server: str = ""

    def __str__(self) -> str:
        server = f" {self.server}:" if self.server else ""
        return f"[{self.code}]{server} {self.message}; fix: {self.fix}"

    def as_json(self) -> dict[str, str]:
        data = {"code": self.code}
        if self.server:
            data["server"] = self.server
        return {**data, "message": self.message, "fix": self.fix}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RuleBreach:
        return cls(
            code=str(data["code"]),
            message=str(data["message"]),
            fix=str(data.get("fix", "")),
            server=str(data.get("server", "")),
        )


@dataclass(frozen=True)
class CertificateStatus:
    """What a server reports about the certificate it would serve."""

    sha256_fingerprint: str
    serial: str
    not_after: dt.datetime
    hosts: tuple[str, ...]
    not_before: dt.datetime | None = None

    def days_left(self, now: dt.datetime) -> float:
        return (self.not_after - now).total_seconds() / 86400

    def as_json(self, now: dt.datetime) -> dict[str, Any]:
        return {
            "sha256_fingerprint": self.sha256_fingerprint,
            "serial": self.serial,
            "not_after": self.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "days_left": round(self.days_left(now), 2),
            "hosts": list(self.hosts),
            "not_before": self.not_before.strftime("%Y-%m-%dT%H:%M:%SZ")
            if self.not_before
            else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CertificateStatus:
        return cls(
            sha256_fingerprint=str(data["sha256_fingerprint"]),
            serial=str(data["serial"]),
            not_after=_parse_time(data["not_after"]),
            hosts=tuple(str(h) for h in data.get("hosts", [])),
            not_before=_parse_time(data["not_before"]) if data.get("not_before") else None,
        )


@dataclass(frozen=True)
class Readiness:
    """Whether a server could turn encryption on now, as it checked its own files.

    ``problems`` are the rules the server found broken in its own checks of its
    certificate, key and trust store (their ``server`` is left empty: it is this one).
    """

    certificate: CertificateStatus | None
    trusted_ca_fingerprints: tuple[str, ...]
    problems: tuple[RuleBreach, ...] = ()

    @property
    def ready(self) -> bool:
        return self.certificate is not None and not self.problems

    def as_json(self, now: dt.datetime) -> dict[str, Any]:
        return {
            "certificate": self.certificate.as_json(now) if self.certificate else None,
            "trusted_ca_fingerprints": list(self.trusted_ca_fingerprints),
            "problems": [p.as_json() for p in self.problems],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Readiness:
        cert = data.get("certificate")
        return cls(
            certificate=CertificateStatus.from_json(cert) if cert else None,
            trusted_ca_fingerprints=tuple(str(f) for f in data.get("trusted_ca_fingerprints", [])),
            problems=tuple(RuleBreach.from_json(p) for p in data.get("problems", [])),
        )


@dataclass(frozen=True)
class Server:
    name: str
    role: ServerRole
    host: str
    address: str
    ports: dict[str, int]
    encryption: bool = False
    online: bool = False
    last_seen: dt.datetime | None = None
    readiness: Readiness | None = None
    # Whether the server's listeners actually speak TLS now (it reports this).
    encrypted_now: bool = False
    covering: str | None = None  # a failover server: the recording server it stands in for
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Camera:
    name: str
    recording_server: str  # the server it is assigned to
    source: dict[str, Any]
    current_server: str | None = None  # where it records now (a failover server while covering)

    @property
    def served_by(self) -> str:
        return self.current_server or self.recording_server
