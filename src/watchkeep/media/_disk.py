"""Bytes made durable on a local disk: whole writes at an offset whatever the kernel takes
at once, syncfs(2) and directory fsyncs, and the recordings' I/O errors told as watchkeep's.
Used by the segment store (its writer thread or process)."""

from __future__ import annotations

import ctypes
import errno
import os
import sys
from collections.abc import Callable
from pathlib import Path

from watchkeep.errors import RecordingError
from watchkeep.media._errors import RecordingDiskFull

__all__ = [
    "PAGE",
    "finish_write",
    "fsync_directory",
    "io_uring_allowed",
    "on_device",
    "recording_error",
    "syncfs",
    "write_all",
]

_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
try:
    _IOV_MAX = max(16, os.sysconf("SC_IOV_MAX"))
except (AttributeError, ValueError, OSError):  # pragma: no cover - not Linux
    _IOV_MAX = 1024

PAGE = os.sysconf("SC_PAGE_SIZE")


def write_all(fd: int, buffers: list[bytes] | list[bytes | memoryview], offset: int) -> int:
    """Write every buffer at ``offset`` with as few ``pwritev`` calls as possible."""
    total = 0
    queue: list[bytes | memoryview] = list(buffers)
    while queue:
        chunk = queue[:_IOV_MAX]
        expected = sum(len(b) for b in chunk)
        written = os.pwritev(fd, chunk, offset + total)
        total += written
        if written == expected:
            del queue[: len(chunk)]
            continue
        if written == 0:
            raise OSError(errno.EIO, "the disk accepted no bytes", None)
        # A short write (only a full disk does that to regular files): drop what went out.
        while written:
            head = queue[0]
            if len(head) <= written:
                written -= len(head)
                queue.pop(0)
            else:
                queue[0] = memoryview(head)[written:]
                written = 0
    return total


def finish_write(fd: int, buffers: list[bytes], offset: int, written: int) -> int:
    """Write what the ring did not (``written`` bytes of ``buffers`` went, or -errno)."""
    if written < 0:
        raise OSError(-written, os.strerror(-written))
    if written < sum(len(b) for b in buffers):  # not taken by the ring, or a short write
        written += write_all(fd, _skip(buffers, written), offset + written)
    return written


def _skip(buffers: list[bytes], count: int) -> list[bytes | memoryview]:
    """``buffers`` without their first ``count`` bytes."""
    rest: list[bytes | memoryview] = []
    for buffer in buffers:
        if count >= len(buffer):
            count -= len(buffer)
        elif count:
            rest.append(memoryview(buffer)[count:])
            count = 0
        else:
            rest.append(buffer)
    return rest


def io_uring_allowed() -> bool:
    """False when WATCHKEEP_IO_URING=0 asks for plain pwritev (as libuv's UV_USE_IO_URING)."""
    return os.environ.get("WATCHKEEP_IO_URING", "1").strip() not in ("0", "no", "false", "off")


def _load_syncfs() -> Callable[[int], None] | None:
    """Linux's syncfs(2), which the os module lacks (None elsewhere)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int

    def syncfs(fd: int) -> None:
        # A CDLL call lets the GIL go for its duration, as os.fdatasync() does.
        if function(fd) != 0:
            number = ctypes.get_errno()
            raise OSError(number, os.strerror(number))

    return syncfs


syncfs = _load_syncfs()


def on_device(directory: Path, device: int) -> bool:
    """Whether ``directory`` is on the file system ``device`` (no if it cannot be told)."""
    try:
        return directory.stat().st_dev == device
    except OSError:
        return False  # its own fsync says what is wrong with it


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def recording_error(exc: OSError, camera: str | None, path: str) -> RecordingError:
    if exc.errno in _DISK_FULL:
        return RecordingDiskFull(camera, path)
    return RecordingError(
        camera,
        f"cannot write the recordings: {exc.strerror or exc}",
        path=path,
        fix="check that the recordings directory exists, is writable and its disk is healthy",
    )
