"""The site model: servers, their roles and readiness, cameras (pure data)."""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DEFAULT_PORTS",
    "Camera",
    "CertificateStatus",
    "Readiness",
    "Server",
    "ServerRole",
]


class ServerRole(enum.StrEnum):
    MANAGEMENT = "management"
    RECORDING = "recording"
    FAILOVER = "failover"
    MOBILE = "mobile"

    @property
    def records(self) -> bool:
        return self in (ServerRole.RECORDING, ServerRole.FAILOVER)


# Listener name -> default port. A listener called "http" is always plaintext; every other
# one is TLS when its server's encryption is on.
DEFAULT_PORTS: dict[ServerRole, dict[str, int]] = {
    ServerRole.MANAGEMENT: {"api": 9000},
    ServerRole.RECORDING: {"data": 7563, "control": 9001},
    ServerRole.FAILOVER: {"data": 7563, "control": 9001},
    ServerRole.MOBILE: {"http": 8081, "https": 8082},
}


def _parse_time(value: object) -> dt.datetime:
    return dt.datetime.strptime(str(value), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


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

    ``problems`` are (rule code, message, fix) triples from the server's own checks of its
    certificate, key and trust store.
    """

    certificate: CertificateStatus | None
    trusted_ca_fingerprints: tuple[str, ...]
    problems: tuple[tuple[str, str, str], ...] = ()

    @property
    def ready(self) -> bool:
        return self.certificate is not None and not self.problems

    def as_json(self, now: dt.datetime) -> dict[str, Any]:
        return {
            "certificate": self.certificate.as_json(now) if self.certificate else None,
            "trusted_ca_fingerprints": list(self.trusted_ca_fingerprints),
            "problems": [{"code": c, "message": m, "fix": f} for c, m, f in self.problems],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Readiness:
        cert = data.get("certificate")
        return cls(
            certificate=CertificateStatus.from_json(cert) if cert else None,
            trusted_ca_fingerprints=tuple(str(f) for f in data.get("trusted_ca_fingerprints", [])),
            problems=tuple(
                (str(p["code"]), str(p["message"]), str(p.get("fix", "")))
                for p in data.get("problems", [])
            ),
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
