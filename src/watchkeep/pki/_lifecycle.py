"""When to warn about and when to renew a certificate (pure; time is a parameter).

cert.expiry_warning: warn when fewer than 30, 14 and 7 days are left (configurable); each
threshold is announced once, when it is crossed. Renewal happens at 2/3 of the lifetime
(cert-manager's, certbot's and step's convention), moved by a small per-certificate jitter
so that a site's certificates, all issued on one day, do not all renew in one minute.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Sequence

__all__ = [
    "DEFAULT_RENEW_AT",
    "DEFAULT_WARN_DAYS",
    "crossed_thresholds",
    "parse_warn_days",
    "renewal_time",
    "warning_level",
]

DEFAULT_WARN_DAYS: tuple[int, ...] = (30, 14, 7)
DEFAULT_RENEW_AT = 2 / 3


def parse_warn_days(values: Iterable[int | str]) -> tuple[int, ...]:
    days = sorted({int(v) for v in values}, reverse=True)
    if not days or days[-1] < 1:
        raise ValueError("warning thresholds are whole days of at least 1, e.g. 30,14,7")
    return tuple(days)


def warning_level(
    not_after: dt.datetime, now: dt.datetime, thresholds: Sequence[int] = DEFAULT_WARN_DAYS
) -> int | None:
    """The smallest threshold (in days) the certificate is inside, or None; 0 = expired."""
    left = not_after - now
    if left <= dt.timedelta(0):
        return 0
    inside = [t for t in thresholds if left <= dt.timedelta(days=t)]
    return min(inside) if inside else None


def crossed_thresholds(
    not_after: dt.datetime,
    now: dt.datetime,
    already: Iterable[int],
    thresholds: Sequence[int] = DEFAULT_WARN_DAYS,
) -> list[int]:
    """Thresholds crossed by ``now`` that were not announced yet (0 stands for expiry)."""
    said = set(already)
    left = not_after - now
    crossed = [t for t in thresholds if left <= dt.timedelta(days=t) and t not in said]
    if left <= dt.timedelta(0) and 0 not in said:
        crossed.append(0)
    return sorted(crossed, reverse=True)


def renewal_time(
    not_before: dt.datetime,
    not_after: dt.datetime,
    *,
    serial: str,
    renew_at: float = DEFAULT_RENEW_AT,
    jitter: float = 0.05,
) -> dt.datetime:
    """When a certificate should be renewed: at ``renew_at`` of its lifetime, moved by up
    to ``jitter`` of the lifetime either way, the same every time for the same serial."""
    if not 0 < renew_at < 1:
        raise ValueError("renew_at is a fraction of the lifetime between 0 and 1")
    lifetime = not_after - not_before
    digest = hashlib.sha256(serial.encode()).digest()
    spread = (int.from_bytes(digest[:4], "big") / 0xFFFFFFFF) * 2 - 1  # in [-1, 1]
    fraction = min(0.95, max(0.05, renew_at + jitter * spread))
    return not_before + lifetime * fraction
