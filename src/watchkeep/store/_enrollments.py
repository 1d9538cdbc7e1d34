"""The management server's record of enrollment tokens (see watchkeep.pki._enrollment).

A token is consumed by one UPDATE that only a pending, unexpired row matches: of two joins
racing with one token (in two processes, or before and after a restart) exactly one
changes the row, and the database, not memory, remembers it.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa

from watchkeep.store._schema import enrollments
from watchkeep.store._site import _utc

__all__ = ["Enrollment", "EnrollmentStore"]

Status = Literal["pending", "used", "withdrawn"]


def _when(value: dt.datetime) -> dt.datetime:
    when = _utc(value)
    assert when is not None
    return when


@dataclass(frozen=True)
class Enrollment:
    id: str
    name: str
    role: str
    host: str
    ips: tuple[str, ...]
    created_at: dt.datetime
    created_by: str | None
    expires_at: dt.datetime
    status: Status
    used_at: dt.datetime | None
    serial: str | None

    @classmethod
    def from_row(cls, m: Any) -> Enrollment:
        return cls(
            id=m["id"],
            name=m["name"],
            role=m["role"],
            host=m["host"],
            ips=tuple(m["ips"]),
            created_at=_when(m["created_at"]),
            created_by=m["created_by"],
            expires_at=_when(m["expires_at"]),
            status=m["status"],
            used_at=_utc(m["used_at"]),
            serial=m["serial"],
        )

    def state(self, now: dt.datetime) -> str:
        """pending, expired, used or withdrawn."""
        if self.status == "pending" and self.expires_at <= now:
            return "expired"
        return self.status


class EnrollmentStore:
    def __init__(self, db: sa.Engine) -> None:
        self.db = db

    def add(
        self,
        *,
        name: str,
        role: str,
        host: str,
        ips: tuple[str, ...],
        join_key: str,
        now: dt.datetime,
        expires_at: dt.datetime,
        created_by: str | None,
    ) -> Enrollment | None:
        """Record a new pending token for ``name``; None when ``name`` has one pending
        already (checked and added in one transaction)."""
        with self.db.begin() as conn:
            pending = conn.execute(
                sa.select(enrollments.c.id).where(
                    enrollments.c.name == name,
                    enrollments.c.status == "pending",
                    enrollments.c.expires_at > now,
                )
            ).first()
            if pending is not None:
                return None
            row = {
                "id": secrets.token_hex(16),
                "name": name,
                "role": role,
                "host": host,
                "ips": list(ips),
                "join_key": join_key,
                "created_at": now,
                "created_by": created_by,
                "expires_at": expires_at,
                "status": "pending",
                "used_at": None,
                "serial": None,
            }
            conn.execute(sa.insert(enrollments).values(**row))
        return Enrollment.from_row(row)

    def by_join_key(self, join_key: str) -> Enrollment | None:
        with self.db.connect() as conn:
            row = conn.execute(
                sa.select(enrollments).where(enrollments.c.join_key == join_key)
            ).first()
        return Enrollment.from_row(row._mapping) if row else None

    def consume(self, enrollment_id: str, now: dt.datetime) -> bool:
        """Mark the token used if it is still pending and unexpired; whether this call did."""
        with self.db.begin() as conn:
            changed = conn.execute(
                sa.update(enrollments)
                .where(
                    enrollments.c.id == enrollment_id,
                    enrollments.c.status == "pending",
                    enrollments.c.expires_at > now,
                )
                .values(status="used", used_at=now)
            ).rowcount
        return bool(changed)

    def give_back(self, enrollment_id: str) -> None:
        """Undo ``consume`` when nothing could be signed for it (the CA failed)."""
        with self.db.begin() as conn:
            conn.execute(
                sa.update(enrollments)
                .where(enrollments.c.id == enrollment_id, enrollments.c.status == "used")
                .values(status="pending", used_at=None)
            )

    def record_serial(self, enrollment_id: str, serial: str) -> None:
        with self.db.begin() as conn:
            conn.execute(
                sa.update(enrollments)
                .where(enrollments.c.id == enrollment_id)
                .values(serial=serial)
            )

    def withdraw(self, name: str, now: dt.datetime) -> int:
        """Withdraw the pending tokens of ``name``; how many there were."""
        with self.db.begin() as conn:
            return int(
                conn.execute(
                    sa.update(enrollments)
                    .where(
                        enrollments.c.name == name,
                        enrollments.c.status == "pending",
                        enrollments.c.expires_at > now,
                    )
                    .values(status="withdrawn")
                ).rowcount
            )

    def pending(self, now: dt.datetime) -> list[Enrollment]:
        with self.db.connect() as conn:
            rows = conn.execute(
                sa.select(enrollments)
                .where(enrollments.c.status == "pending", enrollments.c.expires_at > now)
                .order_by(enrollments.c.name)
            ).all()
        return [Enrollment.from_row(r._mapping) for r in rows]

    def joined(self, name: str) -> Enrollment | None:
        """The last token ``name`` joined with, if it joined with one."""
        with self.db.connect() as conn:
            row = conn.execute(
                sa.select(enrollments)
                .where(enrollments.c.name == name, enrollments.c.status == "used")
                .order_by(enrollments.c.used_at.desc())
                .limit(1)
            ).first()
        return Enrollment.from_row(row._mapping) if row else None
