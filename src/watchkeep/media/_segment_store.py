"""The segment store, a camera's recordings on disk (the site's database is
:mod:`watchkeep.store`): segment files and their index, appending, flushing, retention and
crash repair.

Everything here is blocking and runs in the recorder's one writer thread, which keeps the
event loop free and needs no locking between writes; only the list of segments being
written is shared with readers (playback), under a small lock.

Durability order: records are appended (through an io_uring, see :mod:`._uring`, or with
``pwritev``) at the segment's known good size; a flush ``fdatasync``s every segment written
since the last one (or ``syncfs``s their file system), and the directories that gained a
file, *then* commits their index rows. A row thus never claims bytes that are not on disk.
A failed write is cut back to the last good size, so a file never holds a torn record while
its recorder runs; a torn record left by a crash is cut by :meth:`repair`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import logging
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import sqlalchemy as sa

from watchkeep.errors import RecordingError, UsageError
from watchkeep.media._errors import RecordingDiskFull
from watchkeep.media._frame import validate_camera_name
from watchkeep.media._index import index_error, segments
from watchkeep.media._segment import (
    SEGMENT_SUFFIX,
    SegmentFormatError,
    SegmentTooShort,
    encode_segment_header,
    record_header,
    scan_segment,
)
from watchkeep.media._uring import AdviceJob, WriteJob, WriteRing

__all__ = ["Record", "RepairReport", "SegmentInfo", "SegmentStore", "StepResult", "Store"]

# A frame to record, (camera, sequence, timestamp, picture, record header), as a plain tuple:
# the garbage collector stops tracking a tuple of strings, numbers and bytes at its first
# pass, so frames waiting to be written never reach the older generations (as Frame
# instances, thousands a second did, and set off a full collection every few seconds,
# 40-70 ms at 350 cameras, with every stream stopped meanwhile). The header is made by the
# recorder as the frame arrives (the CRC is computed there, not in a writer thread, where
# each CRC let the GIL go and then waited for the busy event loop to give it back), or
# empty for the store to make (a writer process has a GIL of its own).
Record = tuple[str, int, float, bytes, bytes]

log = logging.getLogger("watchkeep.media")

_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
# From this many segments to make durable at once, one syncfs() of the recordings' file
# system replaces an fdatasync() per segment. Every system call of the writer thread lets
# the GIL go and must then win it back from a busy event loop: at 400 cameras, 400
# fdatasync() and 400 page-cache releases a second kept the writer waiting for the GIL
# until the recorder dropped frames (bench/analysis.md). syncfs() also makes the new
# directory entries durable, which fdatasync() of the files does not.
_SYNCFS_FROM = 16
# What was made durable is dropped from the page cache once a segment has this much more.
_RELEASE_BYTES = 1 << 20
try:
    _IOV_MAX = max(16, os.sysconf("SC_IOV_MAX"))
except (AttributeError, ValueError, OSError):  # pragma: no cover - not Linux
    _IOV_MAX = 1024
_RETENTION_BATCH = 1000
# The store's io_uring before its first write tried to open one.
_NOT_OPENED = object()


@dataclass(frozen=True)
class SegmentInfo:
    """One segment of a camera's recordings, as the index (or the writer) knows it."""

    camera: str
    path: Path
    start: float
    end: float
    frames: int
    bytes: int


@dataclass
class RepairReport:
    """What opening the recordings found and fixed after an unclean stop."""

    scanned: int = 0
    truncated_bytes: int = 0
    rows_written: int = 0
    rows_removed: int = 0
    files_removed: int = 0  # empty segments (no complete record)
    files_set_aside: int = 0  # unreadable files, renamed *.damaged


@dataclass
class StepResult:
    """The outcome of one writer-thread step."""

    unwritten: list[Record] = field(default_factory=list)
    error: RecordingError | None = None
    frames_written: int = 0
    bytes_written: int = 0
    flushed: bool = False
    removed: int = 0


class Store(Protocol):
    """What the recorder asks of its store: :class:`SegmentStore` in the writer thread, or
    :class:`~watchkeep.media._writer.WriterProcess`, the same store in a child process.

    :meth:`repair`, :meth:`step` and :meth:`close` block and are called from the writer
    thread only; :meth:`tracked`, :meth:`recording` and :attr:`total_bytes` answer from any
    thread (playback and retention ask them from the event loop).
    """

    def repair(self) -> RepairReport: ...

    def step(
        self,
        records: list[Record],
        *,
        flush: bool,
        max_age: float | None,
        max_bytes: int | None,
    ) -> StepResult: ...

    def close(self) -> None: ...

    def tracked(self, camera: str) -> list[SegmentInfo]: ...

    def recording(self, camera: str) -> bool: ...

    @property
    def total_bytes(self) -> int: ...


class _Segment:
    """A segment being written (or rotated out and waiting for its last flush)."""

    __slots__ = (
        "camera",
        "closing",
        "dev",
        "dirty",
        "end",
        "fd",
        "first",
        "frames",
        "indexed_size",
        "last_write",
        "path",
        "rel",
        "released",
        "row_id",
        "size",
        "start",
    )

    def __init__(self, camera: str, rel: str, path: Path, fd: int, size: int, first: float):
        self.camera = camera
        self.rel = rel
        self.path = path
        self.fd = fd
        self.dev = os.fstat(fd).st_dev  # the file system it is on
        self.size = size  # bytes of complete records (and header) written
        self.first = first  # timestamp of the first frame: rotation is measured from it
        self.frames = 0
        self.start = first
        self.end = first
        self.row_id: int | None = None
        self.indexed_size = 0  # what the index row says (0: no row yet)
        self.released = 0  # bytes synced and dropped from the page cache
        self.dirty = True
        self.closing = False
        self.last_write = time.monotonic()

    def info(self) -> SegmentInfo:
        return SegmentInfo(self.camera, self.path, self.start, self.end, self.frames, self.size)


class SegmentStore:
    """The blocking half of the recorder. Not thread-safe: one writer thread calls it."""

    def __init__(self, root: Path, engine: sa.Engine, index_path: str, segment_seconds: float):
        self.root = root
        self._engine = engine
        self._index_path = index_path
        self._segment_seconds = segment_seconds
        self._lock = threading.Lock()  # guards _open and _closing against readers
        self._open: dict[str, _Segment] = {}
        self._closing: list[_Segment] = []
        self._dirs_to_sync: set[Path] = set()
        self._indexed_bytes = 0
        self._root_fd: int | None = None  # for syncfs(), opened at the first that needs it
        self._ring: WriteRing | object | None = _NOT_OPENED  # opened at the first write

    # Reading the state (any thread).

    def tracked(self, camera: str) -> list[SegmentInfo]:
        """The segments of ``camera`` being written now, with their complete size."""
        with self._lock:
            live = [s for s in self._closing if s.camera == camera]
            current = self._open.get(camera)
            if current is not None:
                live.append(current)
            return [s.info() for s in live if s.frames]

    def snapshot(self) -> tuple[dict[str, list[SegmentInfo]], int]:
        """Every camera's segments being written (as :meth:`tracked`), and :attr:`total_bytes`."""
        with self._lock:
            live = [*self._closing, *self._open.values()]
        tracked: dict[str, list[SegmentInfo]] = {}
        for segment in live:
            tracked.setdefault(segment.camera, [])
            if segment.frames:
                tracked[segment.camera].append(segment.info())
        return tracked, self.total_bytes

    def recording(self, camera: str) -> bool:
        with self._lock:
            return camera in self._open or any(s.camera == camera for s in self._closing)

    @property
    def total_bytes(self) -> int:
        """Bytes of all segments: indexed ones plus what was written since."""
        with self._lock:
            live = [*self._open.values(), *self._closing]
        return self._indexed_bytes + sum(s.size - s.indexed_size for s in live)

    # Opening.

    def repair(self) -> RepairReport:
        """Make the index agree with the files after whatever stop came before.

        Files with no row and rows still marked open (the segments being written when the
        last recorder stopped) are read in full; a torn or damaged tail is cut off, an
        empty or unreadable file removed, and the row rewritten from what the file holds.
        Rows whose file is gone are deleted.
        """
        report = RepairReport()
        try:
            with self._engine.begin() as conn:
                indexed = {
                    row.path: row
                    for row in conn.execute(
                        sa.select(segments.c.id, segments.c.path, segments.c.open)
                    )
                }
                on_disk = self._list_segment_files()
                gone = [row.id for path, row in indexed.items() if path not in on_disk]
                for chunk in _chunks(gone, 500):
                    conn.execute(segments.delete().where(segments.c.id.in_(chunk)))
                report.rows_removed = len(gone)
                for rel in sorted(on_disk):
                    row = indexed.get(rel)
                    if row is None or row.open:
                        self._repair_file(conn, rel, None if row is None else row.id, report)
                total = conn.execute(sa.select(sa.func.coalesce(sa.func.sum(segments.c.bytes), 0)))
                self._indexed_bytes = int(total.scalar_one())
        except sa.exc.SQLAlchemyError as exc:
            raise index_error(exc, self._index_path) from exc
        except OSError as exc:
            raise _os_error(exc, None, str(self.root)) from exc
        return report

    def _list_segment_files(self) -> set[str]:
        found: set[str] = set()
        if not self.root.is_dir():
            return found
        for directory in os.scandir(self.root):
            if not directory.is_dir(follow_symlinks=False):
                continue
            for entry in os.scandir(directory.path):
                if entry.name.endswith(SEGMENT_SUFFIX) and entry.is_file(follow_symlinks=False):
                    found.add(f"{directory.name}/{entry.name}")
        return found

    def _repair_file(
        self, conn: sa.Connection, rel: str, row_id: int | None, report: RepairReport
    ) -> None:
        path = self.root / rel
        report.scanned += 1
        try:
            scan = scan_segment(str(path))
            validate_camera_name(scan.camera)
        except SegmentTooShort:
            scan = None  # created a moment before a crash: it holds nothing
        except (SegmentFormatError, UsageError) as exc:
            # Not ours, or damaged at the start: keep the bytes for a person to look at.
            aside = path.with_name(path.name + ".damaged")
            log.warning(
                "recordings: %s is not a readable segment (%s): moved to %s", path, exc, aside
            )
            path.rename(aside)
            report.files_set_aside += 1
            if row_id is not None:
                conn.execute(segments.delete().where(segments.c.id == row_id))
                report.rows_removed += 1
            return
        if scan is None or scan.frames == 0 or scan.start is None or scan.end is None:
            path.unlink(missing_ok=True)
            report.files_removed += 1
            if row_id is not None:
                conn.execute(segments.delete().where(segments.c.id == row_id))
                report.rows_removed += 1
            return
        if scan.valid_size < scan.file_size:
            log.warning(
                "recordings: cutting %d damaged bytes off the end of %s",
                scan.file_size - scan.valid_size,
                path,
            )
            with open(path, "r+b") as file:
                file.truncate(scan.valid_size)
                os.fsync(file.fileno())
            report.truncated_bytes += scan.file_size - scan.valid_size
        values = {
            "camera": scan.camera,
            "path": rel,
            "start": scan.start,
            "end": scan.end,
            "frames": scan.frames,
            "bytes": scan.valid_size,
            "open": False,
        }
        if row_id is None:
            conn.execute(segments.insert().values(values))
        else:
            conn.execute(segments.update().where(segments.c.id == row_id).values(values))
        report.rows_written += 1

    # Writing (the writer thread).

    def step(
        self,
        records: list[Record],
        *,
        flush: bool,
        max_age: float | None,
        max_bytes: int | None,
    ) -> StepResult:
        """Append ``records``; then, if asked, flush and apply retention."""
        result = StepResult()
        if records:
            self._append(records, result)
        if flush:
            try:
                self._flush()
                result.flushed = True
            except RecordingError as exc:
                result.error = result.error or exc
            if result.flushed and (max_age is not None or max_bytes is not None):
                try:
                    result.removed = self._enforce_retention(max_age, max_bytes)
                except RecordingError as exc:
                    result.error = result.error or exc
        return result

    def _append(self, records: list[Record], result: StepResult) -> None:
        by_camera: dict[str, list[Record]] = {}
        for record in records:
            by_camera.setdefault(record[0], []).append(record)
        # Each camera's records go out in one write per segment. The writes of all cameras
        # go together, in waves: the first holds every camera; a camera whose segment
        # rotates inside the batch has the rest of its records in the next wave, once the
        # first part is written (its records stay in order, as one failure stops them).
        todo = [(batch, 0) for batch in by_camera.values()]
        while todo:
            wave: list[tuple[_Segment, list[Record], int, int]] = []
            for batch, done in todo:
                try:
                    segment = self._segment_for(batch[done])
                except OSError as exc:
                    result.unwritten += batch[done:]
                    result.error = result.error or _os_error(
                        exc, batch[0][0], str(self.root / batch[0][0])
                    )
                    continue
                end = done + 1
                while end < len(batch) and not self._must_rotate(segment, batch[end][2]):
                    end += 1
                wave.append((segment, batch, done, end))
            outcomes = self._write_wave(
                [(segment, batch[done:end]) for segment, batch, done, end in wave]
            )
            todo = []
            for (segment, batch, done, end), outcome in zip(wave, outcomes, strict=True):
                if isinstance(outcome, OSError):
                    result.unwritten += batch[done:]
                    result.error = result.error or _os_error(
                        outcome, segment.camera, str(segment.path)
                    )
                    continue
                result.bytes_written += outcome
                result.frames_written += end - done
                if end < len(batch):
                    todo.append((batch, end))

    def _must_rotate(self, segment: _Segment, timestamp: float) -> bool:
        return abs(timestamp - segment.first) >= self._segment_seconds

    def _segment_for(self, record: Record) -> _Segment:
        camera, timestamp = record[0], record[2]
        segment = self._open.get(camera)
        if segment is not None and not self._must_rotate(segment, timestamp):
            return segment
        if segment is not None:
            self._retire(segment)
        segment = self._create(camera, timestamp)
        with self._lock:
            self._open[camera] = segment
        return segment

    def _retire(self, segment: _Segment) -> None:
        with self._lock:
            if self._open.get(segment.camera) is segment:
                del self._open[segment.camera]
            segment.closing = True
            self._closing.append(segment)

    def _create(self, camera: str, timestamp: float) -> _Segment:
        camera = validate_camera_name(camera)
        directory = self.root / camera
        if not directory.is_dir():
            directory.mkdir(parents=True, exist_ok=True)
            self._dirs_to_sync.add(self.root)
        stem = f"{max(0, round(timestamp * 1_000_000)):017d}"
        for attempt in range(1000):
            name = f"{stem}{f'-{attempt}' if attempt else ''}{SEGMENT_SUFFIX}"
            try:
                fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
                break
            except FileExistsError:
                continue
        else:  # pragma: no cover - a thousand segments starting in the same microsecond
            raise FileExistsError(errno.EEXIST, "no free segment name", str(directory / stem))
        path = directory / name
        header = encode_segment_header(camera)
        try:
            _write_all(fd, [header], 0)
        except OSError:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        self._dirs_to_sync.add(directory)
        return _Segment(camera, f"{camera}/{name}", path, fd, len(header), timestamp)

    def _write_wave(self, writes: list[tuple[_Segment, list[Record]]]) -> list[int | OSError]:
        """Append each segment's records; per segment, the bytes written or the error.

        With an io_uring (see :mod:`watchkeep.media._uring`) every write of the wave goes
        in one system call; what the ring could not take, or took only in part, is
        finished with ``pwritev``. A failed write is cut back to the segment's last good
        size, so the file never holds a torn record while the recorder runs.
        """
        if self._ring is _NOT_OPENED:
            self._open_ring()
        jobs = []
        for segment, records in writes:
            buffers: list[bytes] = []
            for _camera, sequence, timestamp, jpeg, header in records:
                buffers.append(header or record_header(timestamp, sequence, jpeg))
                buffers.append(jpeg)
            jobs.append((segment.fd, buffers, segment.size))
        done = self._ring_writes(jobs) if len(jobs) > 1 else [0] * len(jobs)
        outcomes: list[int | OSError] = []
        for (segment, records), (fd, buffers, offset), written in zip(
            writes, jobs, done, strict=True
        ):
            try:
                written = _finish_write(fd, buffers, offset, written)
            except OSError as exc:
                # Cut back to the last complete record (this frees space too, so it works
                # on a full disk).
                try:
                    os.ftruncate(segment.fd, segment.size)
                except OSError as cut:
                    log.warning(
                        "recordings: cannot cut %s back after a failed write: %s", segment.path, cut
                    )
                outcomes.append(exc)
                continue
            with self._lock:
                segment.size += written
                segment.frames += len(records)
                segment.start = min(segment.start, min(r[2] for r in records))
                segment.end = max(segment.end, max(r[2] for r in records))
                segment.dirty = True
                segment.last_write = time.monotonic()
            outcomes.append(written)
        return outcomes

    def _open_ring(self) -> None:
        """Choose how recordings are written, at the first write, and say so in the log
        (with one camera, or one camera writing at a time, the ring is not needed and its
        writes are plain pwritev calls)."""
        if _io_uring_allowed():
            self._ring = WriteRing.open()
            how = "io_uring" if self._ring else "pwritev (this system gives no io_uring)"
        else:
            self._ring, how = None, "pwritev (WATCHKEEP_IO_URING=0)"
        log.info("recordings: writing through %s", how)

    def _ring_writes(self, jobs: Sequence[WriteJob]) -> list[int]:
        """The ring's outcome per job (bytes written, or -errno); zeros without a ring."""
        ring = self._ring
        if not isinstance(ring, WriteRing):
            return [0] * len(jobs)
        try:
            return [0 if r == -errno.EOPNOTSUPP else r for r in ring.writev_many(jobs)]
        except OSError as exc:
            # Which writes went out is unknown: all are written again with pwritev, at the
            # same offsets (what the ring wrote is written over with the same bytes).
            log.warning("recordings: io_uring failed (%s); writing with pwritev from now on", exc)
            self._ring = None
            return [0] * len(jobs)

    def _release(self, synced: list[_Segment]) -> None:
        """Drop what was just synced from the page cache.

        Recorded video is written once and seldom read soon: kept cached, it grows the page
        cache by the cameras' whole bit rate (gigabytes a minute), pushing out what is
        worth caching, and every write lands in a page never used before, which costs far
        more than the copy (on virtual machines, a fault in the host too). Released pages
        are reused by the next writes. Playback reads them back from disk. Advice only: a
        failure loses nothing.
        """
        advice: list[AdviceJob] = []
        for segment in synced:
            end = segment.size - segment.size % _PAGE  # the kernel drops whole pages only
            # A few calls a second per camera would cost more in GIL hand-overs than they
            # save; the ring makes them all in one call.
            if end > segment.released and (
                segment.closing or end - segment.released >= _RELEASE_BYTES
            ):
                length = end - segment.released
                advice.append((segment.fd, segment.released, length, os.POSIX_FADV_DONTNEED))
                segment.released = end
        done = [-errno.EOPNOTSUPP] * len(advice)
        ring = self._ring
        if len(advice) > 1 and isinstance(ring, WriteRing):
            try:
                done = ring.fadvise_many(advice)
            except OSError as exc:
                log.warning("recordings: io_uring failed (%s); using system calls from now on", exc)
                self._ring = None
        for job, result in zip(advice, done, strict=True):
            # A kernel before 5.6 knows no fadvise in the ring (EINVAL): the system call.
            if result in (-errno.EOPNOTSUPP, -errno.EINVAL):
                with contextlib.suppress(OSError):
                    os.posix_fadvise(*job)

    def _flush(self) -> None:
        """fdatasync what was written, then commit the index rows that describe it."""
        now = time.monotonic()
        for segment in list(self._open.values()):
            # A camera that stopped sending: close its segment rather than hold it open.
            if now - segment.last_write >= self._segment_seconds:
                self._retire(segment)
        live = [*self._open.values(), *self._closing]
        dirty = [segment for segment in live if segment.dirty]
        if len(dirty) >= _SYNCFS_FROM and _syncfs is not None:
            root_fd = self._root_descriptor()
            root_dev = os.fstat(root_fd).st_dev
            try:
                _syncfs(root_fd)
            except OSError as exc:
                raise _os_error(exc, None, str(self.root)) from exc
            # A camera directory mounted from another file system is synced on its own.
            dirty = [segment for segment in dirty if segment.dev != root_dev]
            self._dirs_to_sync = {d for d in self._dirs_to_sync if not _on(d, root_dev)}
        for segment in dirty:
            try:
                os.fdatasync(segment.fd)
            except OSError as exc:
                raise _os_error(exc, segment.camera, str(segment.path)) from exc
        self._release([segment for segment in live if segment.dirty])
        for directory in sorted(self._dirs_to_sync):
            try:
                _fsync_directory(directory)
            except OSError as exc:
                raise _os_error(exc, None, str(directory)) from exc
        self._dirs_to_sync.clear()
        new_ids: dict[_Segment, int] = {}
        updates: list[dict[str, object]] = []
        try:
            with self._engine.begin() as conn:
                for segment in live:
                    if not segment.frames:
                        continue
                    if segment.row_id is not None and not segment.dirty and not segment.closing:
                        continue
                    values = {
                        "start": segment.start,
                        "end": segment.end,
                        "frames": segment.frames,
                        "bytes": segment.size,
                        "open": not segment.closing,
                    }
                    if segment.row_id is None:
                        inserted = conn.execute(
                            segments.insert().values(
                                camera=segment.camera, path=segment.rel, **values
                            )
                        )
                        key = inserted.inserted_primary_key
                        assert key is not None
                        new_ids[segment] = int(key[0])
                    else:
                        updates.append({"row": segment.row_id, **values})
                _update_rows(conn, updates)
        except sa.exc.SQLAlchemyError as exc:
            raise index_error(exc, self._index_path) from exc
        for segment in live:
            segment.row_id = new_ids.get(segment, segment.row_id)
            self._indexed_bytes += segment.size - segment.indexed_size if segment.frames else 0
            segment.indexed_size = segment.size if segment.frames else 0
            segment.dirty = False
        with self._lock:
            closing, self._closing = self._closing, []
        for segment in closing:
            os.close(segment.fd)
            if not segment.frames:
                segment.path.unlink(missing_ok=True)

    def _root_descriptor(self) -> int:
        if self._root_fd is None:
            self._root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        return self._root_fd

    def close(self) -> None:
        """Flush everything, close every segment and mark their rows closed.

        The files are closed even when the last flush fails (the error is raised): what it
        could not record, the repair of the next open reconciles.
        """
        with self._lock:
            for segment in self._open.values():
                segment.closing = True
                self._closing.append(segment)
            self._open.clear()
        try:
            self._flush()
        finally:
            with self._lock:
                closing, self._closing = self._closing, []
            for segment in closing:
                try:
                    os.close(segment.fd)
                except OSError as exc:  # pragma: no cover - a bad descriptor is a bug
                    log.warning("recordings: closing %s: %s", segment.path, exc)
            if self._root_fd is not None:
                os.close(self._root_fd)
                self._root_fd = None
            ring, self._ring = self._ring, _NOT_OPENED
            if isinstance(ring, WriteRing):
                ring.close()

    def _enforce_retention(self, max_age: float | None, max_bytes: int | None) -> int:
        """Delete the oldest closed segments beyond ``max_age`` seconds or ``max_bytes``.

        The rows go first, in one committed transaction, then the files: a reader never
        finds a row whose file is gone, and a crash in between leaves only files without
        rows, which the next repair indexes again (and retention deletes again).
        """
        live = {s.rel for s in self._open.values()}
        victims: dict[int, tuple[str, int]] = {}
        try:
            with self._engine.connect() as conn:
                if max_age is not None:
                    cutoff = time.time() - max_age
                    query = (
                        sa.select(segments.c.id, segments.c.path, segments.c.bytes)
                        .where(segments.c.end < cutoff)
                        .order_by(segments.c.end)
                        .limit(_RETENTION_BATCH)
                    )
                    for row in conn.execute(query):
                        if row.path not in live:
                            victims[row.id] = (row.path, row.bytes)
                if max_bytes is not None:
                    excess = self.total_bytes - sum(b for _, b in victims.values()) - max_bytes
                    if excess > 0:
                        query = sa.select(
                            segments.c.id, segments.c.path, segments.c.bytes
                        ).order_by(segments.c.end, segments.c.id)
                        for row in conn.execute(query):
                            if excess <= 0:
                                break
                            if row.path in live or row.id in victims:
                                continue
                            victims[row.id] = (row.path, row.bytes)
                            excess -= row.bytes
            if not victims:
                return 0
            with self._engine.begin() as conn:
                for chunk in _chunks(list(victims), 500):
                    conn.execute(segments.delete().where(segments.c.id.in_(chunk)))
        except sa.exc.SQLAlchemyError as exc:
            raise index_error(exc, self._index_path) from exc
        for rel, size in victims.values():
            self._indexed_bytes -= size
            try:
                (self.root / rel).unlink(missing_ok=True)
            except OSError as exc:
                # The row is gone: the next repair re-indexes the file and it goes again.
                log.warning("recordings: cannot delete %s: %s", self.root / rel, exc)
        log.info("recordings: retention removed %d segments", len(victims))
        return len(victims)


def _write_all(fd: int, buffers: list[bytes] | list[bytes | memoryview], offset: int) -> int:
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


def _finish_write(fd: int, buffers: list[bytes], offset: int, written: int) -> int:
    """Write what the ring did not (``written`` bytes of ``buffers`` went, or -errno)."""
    if written < 0:
        raise OSError(-written, os.strerror(-written))
    if written < sum(len(b) for b in buffers):  # not taken by the ring, or a short write
        written += _write_all(fd, _skip(buffers, written), offset + written)
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


def _io_uring_allowed() -> bool:
    """False when WATCHKEEP_IO_URING=0 asks for plain pwritev (as libuv's UV_USE_IO_URING)."""
    return os.environ.get("WATCHKEEP_IO_URING", "1").strip() not in ("0", "no", "false", "off")


_PAGE = os.sysconf("SC_PAGE_SIZE")


# Rows of the index updated by one statement (six parameters each, far below SQLite's
# limit of 32,766 since 3.32).
_ROWS_PER_UPDATE = 500
_COLUMNS = ("start", "end", "frames", "bytes", "open")
_UPDATE_FROM = sqlite3.sqlite_version_info >= (3, 33)


def _update_rows(conn: sa.Connection, rows: list[dict[str, object]]) -> None:
    """Update the index rows (``row``: the id; the other keys: the columns) of a flush.

    SQLite releases the GIL for every statement it steps, and the writer thread then waits
    for the event loop to give it back: one UPDATE per segment (450 at 450 cameras, every
    second) took the flush up to 0.85 s. One ``UPDATE ... FROM (VALUES ...)`` per 500 rows
    is one step (SQLite 3.33 and later; before, the rows go one by one).
    """
    if not _UPDATE_FROM:
        statement = (
            segments.update()
            .where(segments.c.id == sa.bindparam("row"))
            .values({column: sa.bindparam(column) for column in _COLUMNS})
        )
        for row in rows:
            conn.execute(statement, row)
        return
    for start in range(0, len(rows), _ROWS_PER_UPDATE):
        chunk = rows[start : start + _ROWS_PER_UPDATE]
        parameters: list[object] = []
        for row in chunk:
            parameters += (row["row"], row["start"], row["end"], row["frames"], row["bytes"])
            parameters.append(1 if row["open"] else 0)
        conn.exec_driver_sql(_update_sql(len(chunk)), tuple(parameters))


@functools.lru_cache(maxsize=8)
def _update_sql(rows: int) -> str:
    # Only placeholders and this module's own table name go into the text.
    values = ", ".join(["(?, ?, ?, ?, ?, ?)"] * rows)
    table = segments.name
    return (
        f'WITH v(id, start, "end", frames, bytes, open) AS (VALUES {values}) '  # noqa: S608
        f'UPDATE {table} SET start = v.start, "end" = v."end", frames = v.frames, '
        f"bytes = v.bytes, open = v.open FROM v WHERE {table}.id = v.id"
    )


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


_syncfs = _load_syncfs()


def _on(directory: Path, device: int) -> bool:
    """Whether ``directory`` is on the file system ``device`` (no if it cannot be told)."""
    try:
        return directory.stat().st_dev == device
    except OSError:
        return False  # its own fsync says what is wrong with it


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _os_error(exc: OSError, camera: str | None, path: str) -> RecordingError:
    if exc.errno in _DISK_FULL:
        return RecordingDiskFull(camera, path)
    return RecordingError(
        camera,
        f"cannot write the recordings: {exc.strerror or exc}",
        path=path,
        fix="check that the recordings directory exists, is writable and its disk is healthy",
    )


def _chunks(items: list[int], size: int) -> Iterable[list[int]]:
    for index in range(0, len(items), size):
        yield items[index : index + size]
