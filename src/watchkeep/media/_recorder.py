"""The recorder: what cameras send, into segment files and an index; and playback from them."""

from __future__ import annotations

import asyncio
import fcntl
import functools
import logging
import math
import os
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, TypeVar

import sqlalchemy as sa

from watchkeep.errors import RecordingError
from watchkeep.media._errors import InvalidPlaybackRange, UnknownCamera
from watchkeep.media._frame import Frame, validate_camera_name
from watchkeep.media._index import index_error, open_index, segments
from watchkeep.media._segment import SegmentFormatError, SegmentReader, encode_record_header
from watchkeep.media._segment_store import SegmentStore
from watchkeep.media._store_protocol import Record, RepairReport, SegmentInfo, StepResult, Store
from watchkeep.media._video_segment import (
    VIDEO_SUFFIX,
    VideoFile,
    VideoSegmentReader,
    read_video_file,
)
from watchkeep.media._writer import WriterProcess

__all__ = ["Recorder", "RecorderStats"]

log = logging.getLogger("watchkeep.media")

_PLAYBACK_BATCH = 4 * 1024 * 1024
# Frames are handed to the writer thread in batches: at most this long after the first of
# them arrived, or at once when this many bytes wait. One batch costs one trip to the
# thread and one pwritev per camera, however many frames it holds; a trip per frame cost
# more than the writing (and frames are flushed to disk every second anyway). Each pwritev
# lets the GIL go, and the writer then waits for the busy event loop to give it back:
# fewer, larger batches keep it from falling behind with hundreds of cameras.
_WRITE_DELAY = 0.25
_WRITE_BATCH_BYTES = 64 * 1024 * 1024
_LOCK_FILE = ".recorder.lock"
_T = TypeVar("_T")


@dataclass
class RecorderStats:
    """Live counters of a recorder since it opened."""

    frames_written: int = 0
    bytes_written: int = 0
    frames_dropped: int = 0  # lost while the disk could not keep up or was full
    flushes: int = 0
    segments_removed: int = 0  # by retention


class Recorder:
    """Records frames of any number of cameras under ``root``, indexed in ``database``.

    Each camera's frames go to segment files of ``segment_seconds`` each (see
    :mod:`watchkeep.media._segment` for the format), indexed in the SQLite file
    ``database``. :meth:`write` never blocks: frames are queued and written in batches by
    one writer thread, which makes them durable (fsync, then index commit) at least every
    ``flush_interval`` seconds and then applies retention: segments whose last frame is
    older than ``max_age`` seconds go, and the oldest go while all recordings exceed
    ``max_bytes``.

    With ``writer="process"`` that writer (and the records' CRCs) runs in a child process
    instead (:class:`~watchkeep.media._writer.WriterProcess`), off the GIL of the event
    loop that feeds it, at the cost of a copy of every frame through a socket: worth it on
    a server with cores to spare (bench/analysis.md has the measurements).

    :meth:`open` repairs what an unclean stop left (a torn last record, index rows behind
    their files), so everything flushed before a crash or ``kill -9`` is there after it.
    On a full disk, :attr:`error` holds a :class:`RecordingDiskFull` and :meth:`flush`
    raises it; frames wait in a buffer of ``max_pending_bytes`` (the oldest are dropped
    beyond it) and recording resumes by itself when space returns.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        database: str | os.PathLike[str],
        *,
        segment_seconds: float = 60.0,
        max_age: float | None = None,
        max_bytes: int | None = None,
        flush_interval: float = 1.0,
        max_pending_bytes: int = 256 * 1024 * 1024,
        max_playback_span: float = 24 * 3600.0,
        writer: Literal["thread", "process"] = "thread",
    ) -> None:
        if not segment_seconds > 0:
            raise ValueError("segment_seconds must be positive")
        if not 0 < flush_interval <= 1.0:
            raise ValueError(
                "flush_interval must be in (0, 1] seconds: frames are flushed every second"
            )
        if max_age is not None and not max_age > 0:
            raise ValueError("max_age must be positive (or None for no age limit)")
        if max_bytes is not None and max_bytes <= 0:
            raise ValueError("max_bytes must be positive (or None for no size limit)")
        if max_pending_bytes <= 0 or not max_playback_span > 0:
            raise ValueError("max_pending_bytes and max_playback_span must be positive")
        self.root = Path(root)
        self.database = Path(database)
        self.segment_seconds = segment_seconds
        self.max_age = max_age
        self.max_bytes = max_bytes
        self.flush_interval = flush_interval
        self.max_pending_bytes = max_pending_bytes
        self.max_playback_span = max_playback_span
        if writer not in ("thread", "process"):
            raise ValueError(f"writer must be 'thread' or 'process', not {writer!r}")
        self.writer = writer
        self.stats = RecorderStats()
        self.repair_report: RepairReport | None = None
        self.error: RecordingError | None = None
        self._store: Store | None = None
        self._engine: sa.Engine | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None
        self._pending: deque[Record] = deque()
        self._pending_bytes = 0
        self._pending_since = 0.0  # loop time of the oldest pending frame
        self._flush_waiters: list[asyncio.Future[None]] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._unflushed = False
        self._cameras: set[str] = set()
        self._lock_fd: int | None = None

    # Life cycle.

    async def open(self) -> None:
        """Open the index, repair it against the files, and start the writer."""
        if self._task is not None:
            raise RuntimeError("this recorder is already open")
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="watchkeep-recorder")
        loop = asyncio.get_running_loop()
        try:
            engine = await loop.run_in_executor(executor, self._open_index)
            store: Store
            if self.writer == "process":
                store = WriterProcess(self.root, str(self.database), self.segment_seconds)
            else:
                store = SegmentStore(self.root, engine, str(self.database), self.segment_seconds)
            try:
                report = await loop.run_in_executor(executor, store.repair)
            except BaseException:
                engine.dispose()
                self._release_lock()
                raise
        except BaseException:
            executor.shutdown(wait=False)
            raise
        if report.scanned or report.rows_removed:
            log.info(
                "recordings in %s: scanned %d segments, cut %d torn bytes, rewrote %d rows, "
                "removed %d rows and %d empty files, set %d unreadable files aside",
                self.root,
                report.scanned,
                report.truncated_bytes,
                report.rows_written,
                report.rows_removed,
                report.files_removed,
                report.files_set_aside,
            )
        self.repair_report = report
        self._executor, self._engine, self._store = executor, engine, store
        self._closing = False
        self._task = asyncio.create_task(self._run(), name=f"recorder {self.root}")

    def _open_index(self) -> sa.Engine:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self.database.parent.mkdir(parents=True, exist_ok=True)
            lock = os.open(self.root / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o640)
        except OSError as exc:
            raise RecordingError(
                None,
                f"cannot create the recordings directory: {exc.strerror or exc}",
                path=exc.filename or str(self.root),
                fix="choose a writable directory for the recordings",
            ) from exc
        try:
            # Two recorders appending to the same segments would corrupt them. The kernel
            # drops the lock when its process dies, even by kill -9.
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(lock)
            raise RecordingError(
                None,
                "another recorder is using these recordings",
                path=str(self.root),
                fix="stop the other recording server, or give this one its own data directory",
            ) from exc
        try:
            engine = open_index(self.database)
        except BaseException:
            os.close(lock)
            raise
        self._lock_fd = lock
        return engine

    async def close(self) -> None:
        """Write and flush everything queued, close the segments and stop the writer.

        Raises the :class:`RecordingError` of a last flush that failed (frames lost).
        """
        task = self._task
        if task is None:
            return
        self._closing = True
        self._wake.set()
        try:
            await task
        finally:
            self._task = None
            if self._executor is not None:
                self._executor.shutdown(wait=True)
            if self._engine is not None:
                self._engine.dispose()
            self._store = self._engine = self._executor = None
            self._release_lock()
        if self.error is not None:
            raise self.error

    def _release_lock(self) -> None:
        lock, self._lock_fd = self._lock_fd, None
        if lock is not None:
            os.close(lock)  # releases the flock

    async def __aenter__(self) -> Recorder:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # Writing.

    def write(self, frame: Frame) -> None:
        """Queue ``frame`` for recording; never blocks. Call from the event loop thread."""
        if self._task is None or self._closing:
            raise RuntimeError("write() on a recorder that is not open")
        if frame.camera not in self._cameras:
            self._cameras.add(validate_camera_name(frame.camera))
        pending = self._pending
        if not pending:
            self._pending_since = asyncio.get_running_loop().time()
            self._wake.set()  # the writer sets its deadline from this first frame
        # With a writer thread the record's CRC is computed here, on the event loop's thread
        # (a few microseconds a frame), so that the writer never lets the GIL go per frame;
        # a writer process makes it itself.
        if frame.init is not None:  # H.264/H.265: the fragment header was made with it
            header = frame.fragment
            start: bytes | None = frame.init.data if frame.keyframe else None
        else:
            header = b"" if self.writer == "process" else encode_record_header(frame)
            start = b""
        # A Record, a plain tuple: see its definition for why.
        pending.append((frame.camera, frame.sequence, frame.timestamp, frame.jpeg, header, start))
        self._pending_bytes += len(frame.jpeg)
        if self._pending_bytes > self.max_pending_bytes:
            self._drop_oldest()
        if self._pending_bytes >= _WRITE_BATCH_BYTES:
            self._wake.set()

    async def flush(self) -> None:
        """Return once every frame written before the call is on disk and indexed.

        Raises the :class:`RecordingError` that prevented it (e.g. :class:`RecordingDiskFull`).
        """
        if self._task is None or self._closing:
            raise RuntimeError("flush() on a recorder that is not open")
        waiter = asyncio.get_running_loop().create_future()
        self._flush_waiters.append(waiter)
        self._wake.set()
        await waiter

    async def enforce_retention(self) -> int:
        """Flush, which applies the retention limits, and return how many segments went."""
        before = self.stats.segments_removed
        await self.flush()
        return self.stats.segments_removed - before

    def _drop_oldest(self) -> None:
        while self._pending_bytes > self.max_pending_bytes and len(self._pending) > 1:
            dropped = self._pending.popleft()
            self._pending_bytes -= len(dropped[3])
            self.stats.frames_dropped += 1

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        store, executor = self._require_open()
        next_flush = loop.time() + self.flush_interval
        while True:
            now = loop.time()
            if not (self._flush_waiters or self._closing):
                if self.error is not None:
                    deadline: float | None = next_flush  # failing: retry at the flush pace
                elif self._pending_bytes >= _WRITE_BATCH_BYTES:
                    deadline = now
                elif self._pending:
                    deadline = self._pending_since + _WRITE_DELAY
                elif self._unflushed:
                    deadline = next_flush
                else:
                    deadline = None
                if deadline is None or deadline > now:
                    self._wake.clear()
                    try:
                        timeout = None if deadline is None else deadline - now
                        await asyncio.wait_for(self._wake.wait(), timeout)
                    except TimeoutError:
                        pass
                    continue
            batch = list(self._pending)
            self._pending.clear()
            self._pending_bytes = 0
            waiters, self._flush_waiters = self._flush_waiters, []
            flush = bool(waiters) or self._closing or now >= next_flush
            step = functools.partial(
                store.step, batch, flush=flush, max_age=self.max_age, max_bytes=self.max_bytes
            )
            try:
                result = await loop.run_in_executor(executor, step)
            except Exception as exc:  # a bug must not stop recording silently
                log.exception("recordings: the writer failed")
                result = StepResult(
                    unwritten=batch,
                    error=RecordingError(None, f"the recording writer failed: {exc!r}"),
                )
            self._account(result)
            if flush:
                next_flush = loop.time() + self.flush_interval
            for waiter in waiters:
                if waiter.done():
                    continue
                if result.error is not None or not result.flushed:
                    waiter.set_exception(result.error or RecordingError(None, "flush failed"))
                else:
                    waiter.set_result(None)
            if self._closing:
                break
        try:
            await loop.run_in_executor(executor, store.close)
        except RecordingError as exc:
            self.error = exc
        if self._pending:
            self.stats.frames_dropped += len(self._pending)
            log.error(
                "recordings: %d frames could not be written before closing: %s",
                len(self._pending),
                self.error,
            )
            self._pending.clear()

    def _account(self, result: StepResult) -> None:
        stats = self.stats
        stats.frames_written += result.frames_written
        stats.bytes_written += result.bytes_written
        stats.segments_removed += result.removed
        stats.frames_dropped += result.skipped
        if result.flushed:
            stats.flushes += 1
        if result.unwritten:
            self._pending.extendleft(reversed(result.unwritten))
            self._pending_bytes += sum(len(r[3]) for r in result.unwritten)
            self._drop_oldest()
        self._unflushed = not result.flushed and (self._unflushed or result.frames_written > 0)
        if result.error is not None:
            if self.error is None or type(self.error) is not type(result.error):
                log.error("recordings: %s", result.error)
            self.error = result.error
        elif result.flushed and self.error is not None:
            log.warning("recordings: writing again after: %s", self.error)
            self.error = None

    def _require_open(self) -> tuple[Store, ThreadPoolExecutor]:
        if self._store is None or self._executor is None:
            raise RuntimeError("the recorder is not open")
        return self._store, self._executor

    # Reading.

    async def cameras(self) -> list[str]:
        """Every camera with recordings here."""
        engine = self._require_engine()
        query = sa.select(segments.c.camera).distinct()
        names = await asyncio.to_thread(
            self._query, engine, lambda c: [r[0] for r in c.execute(query)]
        )
        store, _ = self._require_open()
        live = {camera for camera in self._cameras if store.recording(camera)}
        return sorted(set(names) | live)

    async def segments(self, camera: str) -> list[SegmentInfo]:
        """The segments of ``camera``, oldest first (including those being written)."""
        return await self._plan(camera, -math.inf, math.inf)

    @property
    def total_bytes(self) -> int:
        """Bytes of all recordings (segment files) under the root."""
        store, _ = self._require_open()
        return store.total_bytes

    def playback(self, camera: str, start: float, end: float) -> AsyncIterator[Frame]:
        """The recorded frames of ``camera`` with ``start <= timestamp < end``, in order
        (H.264/H.265: from the keyframe at or before ``start``, in decode order).

        An absurd range (not finite, end before start, longer than ``max_playback_span``)
        raises :class:`InvalidPlaybackRange` at once; a camera never recorded here raises
        :class:`UnknownCamera` from the first step of the iteration, before any frame, so a
        server can still answer with an error status::

            async for frame in recorder.playback("lobby", t0, t0 + 60):
                ...

        Frames not flushed yet are included once the writer has put them in their segment.
        """
        self._check_range(camera, start, end)
        self._require_open()
        return self._playback(camera, start, end)

    async def video_files(
        self, camera: str, start: float, end: float
    ) -> list[tuple[SegmentInfo, VideoFile]]:
        """The H.264/H.265 recording files of ``camera`` that hold pictures of ``[start,
        end)``, each read (its init segment and fragments) up to what the writer completed.

        Raises what :meth:`playback` raises for a bad range or an unknown camera.
        """
        self._check_range(camera, start, end)
        plan = await self._plan(camera, start, end)
        if not plan and not await self._known(camera):
            raise UnknownCamera(camera)
        found: list[tuple[SegmentInfo, VideoFile]] = []
        for info in plan:
            if info.path.suffix != VIDEO_SUFFIX:
                continue
            try:
                video = await asyncio.to_thread(read_video_file, str(info.path), info.bytes)
            except FileNotFoundError:
                continue  # removed by retention since the plan was made
            except (OSError, SegmentFormatError) as exc:
                raise RecordingError(
                    info.camera,
                    f"cannot read a recording file: {exc}",
                    path=str(info.path),
                    fix="restart the recording server: opening the recordings repairs them",
                ) from exc
            found.append((info, video))
        return found

    def _check_range(self, camera: str, start: float, end: float) -> None:
        if not (math.isfinite(start) and math.isfinite(end)):
            raise InvalidPlaybackRange(camera, start, end, "start and end must be finite")
        if end < start:
            raise InvalidPlaybackRange(camera, start, end, "end is before start")
        if end - start > self.max_playback_span:
            raise InvalidPlaybackRange(
                camera,
                start,
                end,
                f"it spans {end - start:.0f} s, over the maximum of {self.max_playback_span:.0f} s",
            )

    async def _playback(self, camera: str, start: float, end: float) -> AsyncIterator[Frame]:
        plan = await self._plan(camera, start, end)
        if not plan and not await self._known(camera):
            raise UnknownCamera(camera)
        async for frame in self._read(plan, start, end):
            yield frame

    async def _plan(self, camera: str, start: float, end: float) -> list[SegmentInfo]:
        engine = self._require_engine()
        store, _ = self._require_open()
        query = (
            sa.select(segments)
            .where(segments.c.camera == camera)
            .where(segments.c.start < end)
            .where(segments.c.end >= start)
            .order_by(segments.c.start, segments.c.id)
        )
        root = self.root

        def rows(conn: sa.Connection) -> list[SegmentInfo]:
            return [
                SegmentInfo(r.camera, root / r.path, r.start, r.end, r.frames, r.bytes)
                for r in conn.execute(query)
            ]

        found = {info.path: info for info in await asyncio.to_thread(self._query, engine, rows)}
        # Segments being written are ahead of their rows: their in-memory size wins.
        for info in store.tracked(camera):
            if info.start < end and info.end >= start:
                found[info.path] = info
        return sorted(found.values(), key=lambda info: (info.start, str(info.path)))

    async def _known(self, camera: str) -> bool:
        engine = self._require_engine()
        store, _ = self._require_open()
        if store.recording(camera):
            return True
        query = sa.select(segments.c.id).where(segments.c.camera == camera).limit(1)
        row = await asyncio.to_thread(self._query, engine, lambda c: c.execute(query).first())
        return row is not None

    def _query(self, engine: sa.Engine, run: Callable[[sa.Connection], _T]) -> _T:
        try:
            with engine.connect() as conn:
                return run(conn)
        except sa.exc.SQLAlchemyError as exc:
            raise index_error(exc, str(self.database)) from exc

    def _require_engine(self) -> sa.Engine:
        if self._engine is None:
            raise RuntimeError("the recorder is not open")
        return self._engine

    async def _read(
        self, plan: list[SegmentInfo], start: float, end: float
    ) -> AsyncIterator[Frame]:
        for info in plan:
            try:
                kind = VideoSegmentReader if info.path.suffix == VIDEO_SUFFIX else SegmentReader
                reader: SegmentReader | VideoSegmentReader = await asyncio.to_thread(
                    kind, str(info.path), info.bytes, start, end
                )
            except FileNotFoundError:
                continue  # removed by retention since the plan was made
            except (OSError, SegmentFormatError) as exc:
                raise RecordingError(
                    info.camera,
                    f"cannot read a recording segment: {exc}",
                    path=str(info.path),
                    fix="restart the recording server: opening the recordings repairs them",
                ) from exc
            try:
                while frames := await asyncio.to_thread(reader.read_batch, _PLAYBACK_BATCH):
                    for frame in frames:
                        yield frame
            finally:
                reader.close()
