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
import errno
import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa

from watchkeep.errors import RecordingError, UsageError
from watchkeep.media._disk import (
    PAGE,
    finish_write,
    fsync_directory,
    io_uring_allowed,
    on_device,
    recording_error,
    syncfs,
    write_all,
)
from watchkeep.media._frame import validate_camera_name
from watchkeep.media._index import delete_rows, index_error, segments, update_rows
from watchkeep.media._segment import (
    SEGMENT_SUFFIX,
    SegmentFormatError,
    SegmentTooShort,
    encode_segment_header,
    record_header,
)
from watchkeep.media._store_protocol import Record, RepairReport, SegmentInfo, StepResult
from watchkeep.media._uring import AdviceJob, WriteJob, WriteRing
from watchkeep.media._video_segment import VIDEO_SUFFIX, scan_any_segment

__all__ = ["SegmentStore"]


log = logging.getLogger("watchkeep.media")

# From this many segments to make durable at once, one syncfs() of the recordings' file
# system replaces an fdatasync() per segment. Every system call of the writer thread lets
# the GIL go and must then win it back from a busy event loop: at 400 cameras, 400
# fdatasync() and 400 page-cache releases a second kept the writer waiting for the GIL
# until the recorder dropped frames (bench/analysis.md). syncfs() also makes the new
# directory entries durable, which fdatasync() of the files does not.
_SYNCFS_FROM = 16
# What was made durable is dropped from the page cache once a segment has this much more.
_RELEASE_BYTES = 1 << 20
_RETENTION_BATCH = 1000
# The store's io_uring before its first write tried to open one.
_NOT_OPENED = object()


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
        "init",
        "last_sequence",
        "last_write",
        "path",
        "rel",
        "released",
        "row_id",
        "size",
        "start",
    )

    def __init__(
        self,
        camera: str,
        rel: str,
        path: Path,
        fd: int,
        size: int,
        first: float,
        init: bytes | None = None,
    ):
        self.camera = camera
        self.init = init  # a fragmented MP4's init segment; None: the watchkeep format
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
        self.last_sequence = -1  # of the last picture written

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
                delete_rows(conn, gone)
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
            raise recording_error(exc, None, str(self.root)) from exc
        return report

    def _list_segment_files(self) -> set[str]:
        found: set[str] = set()
        if not self.root.is_dir():
            return found
        for directory in os.scandir(self.root):
            if not directory.is_dir(follow_symlinks=False):
                continue
            for entry in os.scandir(directory.path):
                if entry.name.endswith((SEGMENT_SUFFIX, VIDEO_SUFFIX)) and entry.is_file(
                    follow_symlinks=False
                ):
                    found.add(f"{directory.name}/{entry.name}")
        return found

    def _repair_file(
        self, conn: sa.Connection, rel: str, row_id: int | None, report: RepairReport
    ) -> None:
        path = self.root / rel
        report.scanned += 1
        try:
            scan = scan_any_segment(str(path))
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
                # An H.264/H.265 picture that is not a keyframe cannot start a file.
                while done < len(batch) and not self._fits(batch[done]):
                    done += 1
                    result.skipped += 1
                if done == len(batch):
                    continue
                try:
                    segment = self._segment_for(batch[done])
                except OSError as exc:
                    result.unwritten += batch[done:]
                    result.error = result.error or recording_error(
                        exc, batch[0][0], str(self.root / batch[0][0])
                    )
                    continue
                end = done + 1
                while (
                    end < len(batch)
                    and not self._must_rotate(segment, batch[end])
                    and _follows(batch[end - 1], batch[end])
                ):
                    end += 1
                wave.append((segment, batch, done, end))
            outcomes = self._write_wave(
                [(segment, batch[done:end]) for segment, batch, done, end in wave]
            )
            todo = []
            for (segment, batch, done, end), outcome in zip(wave, outcomes, strict=True):
                if isinstance(outcome, OSError):
                    result.unwritten += batch[done:]
                    result.error = result.error or recording_error(
                        outcome, segment.camera, str(segment.path)
                    )
                    continue
                result.bytes_written += outcome
                result.frames_written += end - done
                if end < len(batch):
                    todo.append((batch, end))

    def _fits(self, record: Record) -> bool:
        """Whether ``record`` can be written: it starts a segment, or is the H.264/H.265
        picture right after the last one written in its camera's file (after a picture lost
        on the way, those up to the next keyframe could not be decoded)."""
        if record[5] is not None:
            return True
        segment = self._open.get(record[0])
        return (
            segment is not None
            and segment.init is not None
            and record[1] == segment.last_sequence + 1
        )

    def _must_rotate(self, segment: _Segment, record: Record) -> bool:
        start = record[5]
        if start is None:
            return False  # an H.264/H.265 picture stays with its keyframe
        if (start or None) != segment.init:
            return True  # another codec, picture size or parameter sets: another file
        return abs(record[2] - segment.first) >= self._segment_seconds

    def _segment_for(self, record: Record) -> _Segment:
        camera, timestamp = record[0], record[2]
        segment = self._open.get(camera)
        if segment is not None and not self._must_rotate(segment, record):
            return segment
        if segment is not None:
            self._retire(segment)
        segment = self._create(camera, timestamp, record[5] or None)
        with self._lock:
            self._open[camera] = segment
        return segment

    def _retire(self, segment: _Segment) -> None:
        with self._lock:
            if self._open.get(segment.camera) is segment:
                del self._open[segment.camera]
            segment.closing = True
            self._closing.append(segment)

    def _create(self, camera: str, timestamp: float, init: bytes | None) -> _Segment:
        camera = validate_camera_name(camera)
        directory = self.root / camera
        if not directory.is_dir():
            directory.mkdir(parents=True, exist_ok=True)
            self._dirs_to_sync.add(self.root)
        stem = f"{max(0, round(timestamp * 1_000_000)):017d}"
        for attempt in range(1000):
            suffix = SEGMENT_SUFFIX if init is None else VIDEO_SUFFIX
            name = f"{stem}{f'-{attempt}' if attempt else ''}{suffix}"
            try:
                fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
                break
            except FileExistsError:
                continue
        else:  # pragma: no cover - a thousand segments starting in the same microsecond
            raise FileExistsError(errno.EEXIST, "no free segment name", str(directory / stem))
        path = directory / name
        header = encode_segment_header(camera) if init is None else init
        try:
            write_all(fd, [header], 0)
        except OSError:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        self._dirs_to_sync.add(directory)
        return _Segment(camera, f"{camera}/{name}", path, fd, len(header), timestamp, init)

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
            for _camera, sequence, timestamp, jpeg, header, _start in records:
                buffers.append(header or record_header(timestamp, sequence, jpeg))
                buffers.append(jpeg)
            jobs.append((segment.fd, buffers, segment.size))
        done = self._ring_writes(jobs) if len(jobs) > 1 else [0] * len(jobs)
        outcomes: list[int | OSError] = []
        for (segment, records), (fd, buffers, offset), written in zip(
            writes, jobs, done, strict=True
        ):
            try:
                written = finish_write(fd, buffers, offset, written)
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
                segment.last_sequence = records[-1][1]
            outcomes.append(written)
        return outcomes

    def _open_ring(self) -> None:
        """Choose how recordings are written, at the first write, and say so in the log
        (with one camera, or one camera writing at a time, the ring is not needed and its
        writes are plain pwritev calls)."""
        if io_uring_allowed():
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
            end = segment.size - segment.size % PAGE  # the kernel drops whole pages only
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
        if len(dirty) >= _SYNCFS_FROM and syncfs is not None:
            root_fd = self._root_descriptor()
            root_dev = os.fstat(root_fd).st_dev
            try:
                syncfs(root_fd)
            except OSError as exc:
                raise recording_error(exc, None, str(self.root)) from exc
            # A camera directory mounted from another file system is synced on its own.
            dirty = [segment for segment in dirty if segment.dev != root_dev]
            self._dirs_to_sync = {d for d in self._dirs_to_sync if not on_device(d, root_dev)}
        for segment in dirty:
            try:
                os.fdatasync(segment.fd)
            except OSError as exc:
                raise recording_error(exc, segment.camera, str(segment.path)) from exc
        self._release([segment for segment in live if segment.dirty])
        for directory in sorted(self._dirs_to_sync):
            try:
                fsync_directory(directory)
            except OSError as exc:
                raise recording_error(exc, None, str(directory)) from exc
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
                update_rows(conn, updates)
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
                delete_rows(conn, list(victims))
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


def _follows(previous: Record, record: Record) -> bool:
    """Whether ``record`` may follow ``previous`` in a file: a JPEG or a keyframe always; any
    other H.264/H.265 picture only if it is the next one (none lost between)."""
    return record[5] is not None or record[1] == previous[1] + 1
