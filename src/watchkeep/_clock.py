"""Now, in UTC: the two readings of the clock watchkeep takes (pure code takes ``now`` as an
argument instead, so that tests can set it)."""

from __future__ import annotations

import datetime as dt

__all__ = ["utcnow", "utcnow_to_second"]


def utcnow() -> dt.datetime:
    """Now, an aware UTC time to the microsecond: heartbeats, tokens, expiry warnings."""
    return dt.datetime.now(dt.UTC)


def utcnow_to_second() -> dt.datetime:
    """Now, cut to the second: the times written into certificates, CRLs and the inventory,
    which X.509 holds to the second, so that a time written and read back compares equal."""
    return utcnow().replace(microsecond=0)
