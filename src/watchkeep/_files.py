"""Atomic file writes: a reader sees the old file or the new one, never half of either."""

from __future__ import annotations

import contextlib
import os
import pwd
import tempfile
from collections.abc import Sequence
from pathlib import Path

from watchkeep.errors import OutputNotWritable, UsageError

__all__ = [
    "atomic_write",
    "atomic_write_together",
    "fsync_directory",
    "make_directory",
    "resolve_owner",
]


def resolve_owner(user: str | None) -> tuple[int, int] | None:
    """Map --owner USER to (uid, gid); None means the current user."""
    if user is None:
        return None
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise UsageError(
            f"unknown user {user!r} for --owner",
            fix="name the service account that runs the server (it must exist: getent passwd USER)",
        ) from None
    if entry.pw_uid != os.geteuid() and os.geteuid() != 0:
        raise UsageError(
            f"cannot give files to {user!r}: only root can change a file's owner",
            fix="run the command as root, or leave out --owner",
        )
    return entry.pw_uid, entry.pw_gid


def atomic_write(
    path: Path, data: bytes, *, mode: int = 0o644, owner: tuple[int, int] | None = None
) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory.

    The temporary file is created with ``mode`` already set (a key is never readable by
    others, not even for a moment), fsynced, given to ``owner``, then renamed over ``path``.
    """
    atomic_write_together([(path, data, mode)], owner=owner)


def atomic_write_together(
    files: Sequence[tuple[Path, bytes, int]], *, owner: tuple[int, int] | None = None
) -> None:
    """Replace several files (path, data, mode) as nearly together as POSIX allows.

    Every file is first written in full to a temporary file beside it and fsynced; only
    then are they renamed over their targets, in order and back to back. A key and its
    certificate are thus out of step for the microseconds between two renames, not for
    several fsyncs: a command killed while writing leaves the old set or the new one.
    """
    staged: list[tuple[Path, Path]] = []
    try:
        for path, data, mode in files:
            make_directory(path.parent, private=not mode & 0o044)
            staged.append((_stage(path, data, mode, owner), path))
        for n, (tmp, path) in enumerate(staged):
            try:
                os.replace(tmp, path)
            except OSError as exc:
                raise OutputNotWritable(str(path), exc.strerror or str(exc)) from exc
            staged[n] = (path, path)
    except BaseException:
        for tmp, path in staged:
            if tmp != path:
                with contextlib.suppress(OSError):
                    tmp.unlink()
        raise
    for directory in dict.fromkeys(path.parent for _, path in staged):
        fsync_directory(directory)


def fsync_directory(directory: Path) -> None:
    """Make the names in ``directory`` (renames into it) durable, as far as it can be done."""
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def make_directory(directory: Path, *, private: bool, owner: tuple[int, int] | None = None) -> None:
    """Create ``directory`` (and missing parents) when it does not exist.

    The directory that will hold the files is made 0700 when it holds a private key, and
    given to ``owner`` when one is named: a service account must reach the key it owns (a
    root-owned 0700 directory would stop it). Parents made on the way are 0755 and stay
    the creator's.
    """
    if directory.is_dir():
        return
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700 if private else 0o755)
        if owner is not None:
            os.chown(directory, *owner)
    except OSError as exc:
        raise OutputNotWritable(str(directory), exc.strerror or str(exc)) from exc


def _stage(path: Path, data: bytes, mode: int, owner: tuple[int, int] | None) -> Path:
    """Write ``data`` to a fsynced temporary file beside ``path``; return its path."""
    directory = path.parent
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise OutputNotWritable(str(directory), exc.strerror or str(exc)) from exc
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, mode)
        if owner is not None:
            os.fchown(fd, *owner)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise OutputNotWritable(str(path), exc.strerror or str(exc)) from exc
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return tmp
