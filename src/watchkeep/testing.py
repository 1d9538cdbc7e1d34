"""Helpers for tests of watchkeep: waiting on a condition, reading a site's status.

Tests run their sites on ``watchkeep.localsite.LocalSite`` (re-exported here). Nothing
waits a fixed time: ``eventually`` polls a condition until a generous deadline, so that a
slow machine makes a test slower, never wrong. A wait that gives up fails with
AssertionError saying what it saw last, as a test's own ``assert`` would.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from typing import Any, TypeVar

from watchkeep.errors import SiteNotReady
from watchkeep.localsite import (
    DEADLINE,
    LocalServer,
    LocalSite,
    free_loopback_network,
    servers_by_name,
    wait_until,
)

__all__ = [
    "DEADLINE",
    "LocalServer",
    "LocalSite",
    "cameras_by_name",
    "can_mount",
    "eventually",
    "free_loopback_network",
    "servers_by_name",
]

T = TypeVar("T")


def eventually(
    check: Callable[[], T | None],
    *,
    timeout: float = DEADLINE,
    interval: float = 0.1,
    what: str = "",
    retry_on: tuple[type[Exception], ...] = (AssertionError,),
) -> T:
    """Call ``check`` until it returns a true value without raising AssertionError (or
    another of ``retry_on``); that value. A wait that gives up is an AssertionError."""
    described = what or repr(check)
    try:
        return wait_until(
            check, what=described, logs="-", timeout=timeout, interval=interval, retry_on=retry_on
        )
    except SiteNotReady as exc:
        # The last value or assertion says what the site looked like when the wait gave up.
        raise AssertionError(f"not within {timeout:.0f} s: {described}; last: {exc.last}") from None


def cameras_by_name(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The cameras of a site status (``LocalSite.status``), keyed by name."""
    return {c["name"]: c for c in status["cameras"]}


def can_mount() -> bool:
    """Whether this process may mount file systems (root, with mount(8)): the tests that
    need a small or separate file system mount a tmpfs."""
    return os.geteuid() == 0 and shutil.which("mount") is not None
