"""The certificate inventory: every certificate the site CA has issued."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from watchkeep.store._schema import certificates

__all__ = ["CertificateRecord", "Inventory"]


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    # SQLite hands back naive datetimes; every time in watchkeep is UTC.
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class CertificateRecord:
    serial: str
    name: str
    role: str
    hosts: tuple[str, ...]
    ips: tuple[str, ...]
    key_type: str
    not_before: dt.datetime
    not_after: dt.datetime
    sha256_fingerprint: str
    issuer_fingerprint: str
    status: str
    issued_at: dt.datetime
    cert_path: str
    chain_path: str
    key_path: str | None
    owner: str | None = None
    superseded_by: str | None = None
    revoked_at: dt.datetime | None = None
    revocation_reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_row(cls, row: sa.Row[Any]) -> CertificateRecord:
        m = row._mapping
        return cls(
            serial=m["serial"],
            name=m["name"],
            role=m["role"],
            hosts=tuple(m["hosts"]),
            ips=tuple(m["ips"]),
            key_type=m["key_type"],
            not_before=_utc(m["not_before"]),  # type: ignore[arg-type]
            not_after=_utc(m["not_after"]),  # type: ignore[arg-type]
            sha256_fingerprint=m["sha256_fingerprint"],
            issuer_fingerprint=m["issuer_fingerprint"],
            status=m["status"],
            issued_at=_utc(m["issued_at"]),  # type: ignore[arg-type]
            cert_path=m["cert_path"],
            chain_path=m["chain_path"],
            key_path=m["key_path"],
            owner=m["owner"],
            superseded_by=m["superseded_by"],
            revoked_at=_utc(m["revoked_at"]),
            revocation_reason=m["revocation_reason"],
        )

    def as_row(self) -> dict[str, Any]:
        return {
            "serial": self.serial,
            "name": self.name,
            "role": self.role,
            "hosts": list(self.hosts),
            "ips": list(self.ips),
            "key_type": self.key_type,
            "not_before": self.not_before,
            "not_after": self.not_after,
            "sha256_fingerprint": self.sha256_fingerprint,
            "issuer_fingerprint": self.issuer_fingerprint,
            "status": self.status,
            "issued_at": self.issued_at,
            "cert_path": self.cert_path,
            "chain_path": self.chain_path,
            "key_path": self.key_path,
            "owner": self.owner,
            "superseded_by": self.superseded_by,
            "revoked_at": self.revoked_at,
            "revocation_reason": self.revocation_reason,
        }

    def days_left(self, now: dt.datetime) -> float:
        return (self.not_after - now).total_seconds() / 86400


class Inventory:
    """Reads and writes certificate rows; each method is one transaction."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def all(self, *, statuses: Sequence[str] | None = None) -> list[CertificateRecord]:
        query = sa.select(certificates).order_by(certificates.c.name, certificates.c.issued_at)
        if statuses is not None:
            query = query.where(certificates.c.status.in_(list(statuses)))
        with self.engine.connect() as conn:
            return [CertificateRecord.from_row(r) for r in conn.execute(query)]

    def active(self) -> list[CertificateRecord]:
        return self.all(statuses=["active"])

    def by_serial(self, serial: str) -> CertificateRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(certificates).where(certificates.c.serial == serial.lower())
            ).first()
        return CertificateRecord.from_row(row) if row else None

    def find(self, name_or_serial: str) -> CertificateRecord | None:
        """The active certificate called ``name``, else the newest of that name, else by serial."""
        with self.engine.connect() as conn:
            rows = list(
                conn.execute(
                    sa.select(certificates)
                    .where(certificates.c.name == name_or_serial)
                    .order_by(certificates.c.issued_at.desc())
                )
            )
        if rows:
            records = [CertificateRecord.from_row(r) for r in rows]
            return next((r for r in records if r.status == "active"), records[0])
        return self.by_serial(name_or_serial.replace(":", ""))

    def add(self, record: CertificateRecord, *, supersede: Sequence[str] = ()) -> None:
        """Insert ``record`` and mark ``supersede`` serials superseded by it, atomically."""
        with self.engine.begin() as conn:
            conn.execute(sa.insert(certificates).values(**record.as_row()))
            if supersede:
                conn.execute(
                    sa.update(certificates)
                    .where(certificates.c.serial.in_(list(supersede)))
                    .where(certificates.c.status == "active")
                    .values(status="superseded", superseded_by=record.serial)
                )

    def revoke(self, serial: str, *, when: dt.datetime, reason: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(certificates)
                .where(certificates.c.serial == serial)
                .values(status="revoked", revoked_at=when, revocation_reason=reason)
            )

    def revoked(self) -> Iterator[CertificateRecord]:
        yield from self.all(statuses=["revoked"])
