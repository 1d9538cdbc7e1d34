"""The recorder: round trips, rotation, retention, playback ranges, crash repair, full disk.

Segment files and the index are checked with an independent reader of the documented
format (struct and zlib) and the sqlite3 module, not with the code under test.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import signal
import sqlite3
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from recorder_child import CAMERA as CRASH_CAMERA
from recorder_child import crash_frame

from watchkeep.errors import RecordingError, UsageError, WatchkeepError
from watchkeep.media import (
    Frame,
    InvalidPlaybackRange,
    Recorder,
    RecordingDiskFull,
    UnknownCamera,
    _index,
    _segment_store,
    _uring,
)

T0 = 1_700_000_000.0
MAGIC = b"WKSEG\x00\x01\n"
RECORD = struct.Struct("!IIdQ")
INDEX_DEADLINE = 10.0  # for a writer asked to flush every 0.2 s, on a loaded machine


# An independent reader and writer of the on-disk format, and of the index.


def read_segment(path: Path) -> tuple[str, list[tuple[float, int, bytes]], int]:
    """(camera, valid records, offset where they end) of a segment file."""
    data = path.read_bytes()
    assert data[:8] == MAGIC
    name_length = int.from_bytes(data[8:10], "big")
    camera = data[10 : 10 + name_length].decode()
    offset = 10 + name_length
    records = []
    while offset + RECORD.size <= len(data):
        length, crc, timestamp, sequence = RECORD.unpack_from(data, offset)
        body = data[offset + RECORD.size : offset + RECORD.size + length]
        if (
            len(body) < length
            or zlib.crc32(body, zlib.crc32(data[offset + 8 : offset + 24])) != crc
        ):
            break
        records.append((timestamp, sequence, body))
        offset += RECORD.size + length
    return camera, records, offset


def encode_segment(camera: str, frames: list[Frame]) -> bytes:
    out = MAGIC + len(camera).to_bytes(2, "big") + camera.encode()
    for f in frames:
        stamp = struct.pack("!dQ", f.timestamp, f.sequence)
        out += RECORD.pack(
            len(f.jpeg), zlib.crc32(f.jpeg, zlib.crc32(stamp)), f.timestamp, f.sequence
        )
        out += f.jpeg
    return out


def index_rows(database: Path) -> dict[str, dict[str, Any]]:
    with sqlite3.connect(database) as conn:
        conn.row_factory = sqlite3.Row
        return {r["path"]: dict(r) for r in conn.execute("SELECT * FROM media_segments")}


def assert_index_matches_files(root: Path, database: Path) -> None:
    """Every file has exactly one row, and each row describes its file exactly."""
    rows = index_rows(database)
    files = {p.relative_to(root).as_posix() for p in root.glob("*/*.wkseg")}
    assert set(rows) == files
    for rel, row in rows.items():
        camera, records, valid = read_segment(root / rel)
        assert valid == (root / rel).stat().st_size == row["bytes"], rel
        assert row["camera"] == camera == rel.split("/")[0]
        assert row["frames"] == len(records) > 0
        assert row["start"] == min(r[0] for r in records)
        assert row["end"] == max(r[0] for r in records)
        assert row["open"] == 0


def frames_of(
    camera: str, count: int, *, step: float = 0.25, start: float = T0, size: int = 500
) -> list[Frame]:
    return [Frame(camera, n, start + n * step, os.urandom(size + n % 13)) for n in range(count)]


async def collect(recorder: Recorder, camera: str, start: float, end: float) -> list[Frame]:
    return [frame async for frame in recorder.playback(camera, start, end)]


async def assert_recorded(
    recorder: Recorder, cameras: dict[str, list[Frame]], end: float = T0 + 100
) -> None:
    """Playback from ``T0`` to ``end`` gives each camera exactly its frames."""
    for name, frames in cameras.items():
        assert await collect(recorder, name, T0, end) == frames


@pytest.fixture
def paths(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "recordings", tmp_path / "index.db"


@pytest.fixture(params=["thread", "process"], autouse=True)
def writer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs twice: the writer in a thread, and in a child process."""
    defaults = Recorder.__init__.__kwdefaults__
    assert defaults is not None
    monkeypatch.setitem(defaults, "writer", request.param)
    return str(request.param)


# Round trips and rotation.


async def test_frames_come_back_byte_for_byte_before_and_after_a_restart(
    paths: tuple[Path, Path],
) -> None:
    root, database = paths
    cameras = {name: frames_of(name, 24) for name in ("lobby", "yard", "gate")}
    cameras["yard"][5] = Frame("yard", 5, T0 + 1.25, os.urandom(1 << 20))  # one large frame
    async with Recorder(root, database, segment_seconds=2.0) as recorder:
        for index in range(24):
            for frames in cameras.values():
                recorder.write(frames[index])
        await recorder.flush()
        await assert_recorded(recorder, cameras, T0 + 10)
        assert await recorder.cameras() == ["gate", "lobby", "yard"]
    assert_index_matches_files(root, database)
    # One file per camera per 2 s: 24 frames 0.25 s apart make three of eight frames each.
    for name in cameras:
        files = sorted((root / name).glob("*.wkseg"))
        assert [f.name for f in files] == [
            "01700000000000000.wkseg",
            "01700000002000000.wkseg",
            "01700000004000000.wkseg",
        ]
        assert [len(read_segment(f)[1]) for f in files] == [8, 8, 8]

    async with Recorder(root, database, segment_seconds=2.0) as again:
        assert again.repair_report is not None
        assert again.repair_report.scanned == 0  # a clean stop leaves nothing to repair
        await assert_recorded(again, cameras, T0 + 10)
        segments = await again.segments("lobby")
        assert [(s.start, s.end, s.frames) for s in segments] == [
            (T0, T0 + 1.75, 8),
            (T0 + 2, T0 + 3.75, 8),
            (T0 + 4, T0 + 5.75, 8),
        ]


async def test_a_single_camera_is_told_in_the_log_how_recordings_are_written(
    paths: tuple[Path, Path], caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    # The README promises the line; one camera never fills the ring, and it was never said.
    root, database = paths
    caplog.set_level(logging.INFO, logger="watchkeep.media")
    async with Recorder(root, database) as recorder:
        for frame in frames_of("lobby", 3):
            recorder.write(frame)
        await recorder.flush()
    # The thread writer logs here; the writer process on its own standard error.
    said = caplog.text + capfd.readouterr().err
    assert "recordings: writing through " in said


async def indexed(database: Path, frames: int) -> None:
    """Return once the index lists ``frames`` frames."""
    while not (
        database.exists() and sum(r["frames"] for r in index_rows(database).values()) == frames
    ):
        await asyncio.sleep(0.05)


async def test_frames_are_flushed_without_being_asked(paths: tuple[Path, Path]) -> None:
    root, database = paths
    async with Recorder(root, database, flush_interval=0.2) as recorder:
        for frame in frames_of("lobby", 3):
            recorder.write(frame)
        # Nobody calls flush(): the writer's own deadline (0.2 s) brings the frames into the
        # index, which another thread writes: read it until they are there.
        await asyncio.wait_for(indexed(database, 3), INDEX_DEADLINE)
        (row,) = index_rows(database).values()
        assert row["open"] == 1  # still being written: flushed, not closed
        segment = root / row["path"]
        assert read_segment(segment)[2] == segment.stat().st_size == row["bytes"]


async def test_frames_waiting_to_be_written_are_not_walked_by_the_garbage_collector(
    paths: tuple[Path, Path],
) -> None:
    # At hundreds of cameras, frames queued as objects the collector tracks reached its
    # oldest generation by the thousand a second and set off full collections of tens of
    # milliseconds, every stream stopped meanwhile.
    root, database = paths
    async with Recorder(root, database) as recorder:
        for frame in frames_of("lobby", 50):
            recorder.write(frame)
        queued = list(recorder._pending)  # nothing awaited: the writer has not taken them
        assert len(queued) == 50
        gc.collect()
        assert not [record for record in queued if gc.is_tracked(record)]
        await recorder.flush()
        assert await collect(recorder, "lobby", T0, T0 + 100) == as_frames(queued)


def as_frames(records: list[tuple[Any, ...]]) -> list[Frame]:
    return [
        Frame(camera, sequence, timestamp, jpeg)
        for camera, sequence, timestamp, jpeg, _header, _start in records
    ]


# Playback ranges.


async def test_playback_returns_exactly_the_range(paths: tuple[Path, Path]) -> None:
    root, database = paths
    frames = frames_of("lobby", 100)  # T0 .. T0 + 24.75, 0.25 s apart, 8 per segment
    async with Recorder(root, database, segment_seconds=2.0, max_playback_span=30) as recorder:
        for frame in frames:
            recorder.write(frame)
        await recorder.flush()

        async def sequences(start: float, end: float) -> list[int]:
            return [f.sequence for f in await collect(recorder, "lobby", start, end)]

        assert await sequences(T0 + 3.0, T0 + 7.5) == list(range(12, 30))  # [start, end)
        assert await sequences(T0 + 2.0, T0 + 4.0) == list(range(8, 16))  # one whole segment
        assert await sequences(T0 + 1.9, T0 + 2.1) == [8]  # across a segment boundary
        assert await sequences(T0 + 3.1, T0 + 3.2) == []  # between two frames
        assert await sequences(T0 + 3.0, T0 + 3.0) == []  # empty range
        assert await sequences(T0 - 20, T0) == []  # before the first frame
        assert await sequences(T0 + 24.75, T0 + 40) == [99]
        assert await sequences(T0 - 1, T0 + 29) == list(range(100))
        assert await collect(recorder, "lobby", T0 + 5, T0 + 6) == frames[20:24]


async def test_absurd_ranges_and_unknown_cameras_are_refused(paths: tuple[Path, Path]) -> None:
    root, database = paths
    async with Recorder(root, database, max_playback_span=3600) as recorder:
        recorder.write(frames_of("lobby", 1)[0])
        await recorder.flush()
        with pytest.raises(InvalidPlaybackRange, match="end is before start") as caught:
            recorder.playback("lobby", T0 + 10, T0)
        assert isinstance(caught.value, UsageError)  # bad input: exit status 2 in a CLI
        assert isinstance(caught.value, RecordingError)
        with pytest.raises(InvalidPlaybackRange, match="finite"):
            recorder.playback("lobby", float("nan"), T0)
        with pytest.raises(InvalidPlaybackRange, match="over the maximum of 3600 s"):
            recorder.playback("lobby", T0, T0 + 3601)
        stream = recorder.playback("nobody", T0, T0 + 10)
        with pytest.raises(UnknownCamera, match="camera nobody: no recordings"):
            await anext(stream)


# Retention.


async def test_segments_older_than_the_age_limit_go_after_a_flush(paths: tuple[Path, Path]) -> None:
    root, database = paths
    now = time.time()
    old = frames_of("lobby", 40, start=now - 7200, step=0.5)  # 20 s, two hours ago
    recent = [
        Frame("lobby", 100 + f.sequence, f.timestamp, f.jpeg)
        for f in frames_of("lobby", 20, start=now - 10, step=0.5)
    ]
    async with Recorder(root, database, segment_seconds=5.0, max_age=3600) as recorder:
        for frame in old + recent:
            recorder.write(frame)
        await recorder.flush()  # retention runs after every flush
        assert recorder.stats.segments_removed == 4
        assert await collect(recorder, "lobby", now - 7300, now - 7000) == []
        assert await collect(recorder, "lobby", now - 100, now + 1) == recent
        assert all(s.end >= now - 3600 for s in await recorder.segments("lobby"))
    assert_index_matches_files(root, database)
    assert len(list((root / "lobby").glob("*.wkseg"))) == 2


async def test_the_oldest_segments_go_while_recordings_exceed_the_byte_limit(
    paths: tuple[Path, Path],
) -> None:
    root, database = paths
    async with Recorder(root, database, segment_seconds=1.0) as recorder:
        for index, frame in enumerate(frames_of("lobby", 24, size=10_000)):
            recorder.write(frame)
            yard = frames_of("yard", 24, size=10_000, start=T0 + 0.1)[index]
            recorder.write(yard)
    before = {
        (s["camera"], s["path"]): (s["end"], s["bytes"]) for s in index_rows(database).values()
    }
    total_before = sum(size for _, size in before.values())
    limit = total_before // 2
    async with Recorder(root, database, segment_seconds=1.0, max_bytes=limit) as recorder:
        removed = await recorder.enforce_retention()
        assert recorder.total_bytes <= limit
    after = {(s["camera"], s["path"]) for s in index_rows(database).values()}
    gone = set(before) - after
    assert len(gone) == removed > 0
    # Oldest first, across cameras, and no more than needed.
    assert max(before[k][0] for k in gone) <= min(before[k][0] for k in after)
    newest_gone = max(gone, key=lambda k: before[k][0])
    assert sum(before[k][1] for k in after) + before[newest_gone][1] > limit
    assert_index_matches_files(root, database)


# Crash repair.


async def test_opening_repairs_torn_records_and_an_index_behind_its_files(
    paths: tuple[Path, Path],
) -> None:
    root, database = paths
    lobby = frames_of("lobby", 24)
    async with Recorder(root, database, segment_seconds=2.0) as recorder:
        for frame in lobby:
            recorder.write(frame)
    first, _second, last = sorted((root / "lobby").glob("*.wkseg"))
    # As a kill -9 in the middle of an append leaves it: a torn record after the last one,
    # and its row still marked open.
    torn = RECORD.pack(5000, 0, T0 + 9, 999) + b"\xff\xd8" + b"x" * 98
    with last.open("ab") as file:
        file.write(torn)
    with sqlite3.connect(database) as conn:
        conn.execute("UPDATE media_segments SET open = 1 WHERE path = ?", (f"lobby/{last.name}",))
    # A segment written and never flushed into the index, with a garbled tail.
    yard = frames_of("yard", 3)
    (root / "yard").mkdir()
    (root / "yard" / "01700000000000000.wkseg").write_bytes(
        encode_segment("yard", yard) + b"\x00" * 10
    )
    # A file created a moment before the kill, not even a whole header.
    (root / "yard" / "01700000009000000.wkseg").write_bytes(MAGIC[:5])
    # Something that is not a segment at all: kept, but out of the way.
    (root / "yard" / "01700000010000000.wkseg").write_bytes(b"GIF89a" + bytes(100))
    # A row whose file was deleted behind the recorder's back.
    first.unlink()

    async with Recorder(root, database, segment_seconds=2.0) as recorder:
        report = recorder.repair_report
        assert report is not None
        assert report.scanned == 4
        assert report.truncated_bytes == len(torn) + 10
        assert report.files_removed == 1
        assert report.files_set_aside == 1
        assert report.rows_removed == 1
        assert report.rows_written == 2
        assert await collect(recorder, "lobby", T0, T0 + 100) == lobby[8:]
        assert await collect(recorder, "yard", T0, T0 + 100) == yard
    assert_index_matches_files(root, database)
    assert (root / "yard" / "01700000010000000.wkseg.damaged").read_bytes()[:6] == b"GIF89a"
    assert not (root / "yard" / "01700000009000000.wkseg").exists()


def test_everything_flushed_before_a_kill_9_is_there_after_it(
    paths: tuple[Path, Path], writer: str
) -> None:
    root, database = paths
    child = Path(__file__).with_name("recorder_child.py")
    process = subprocess.Popen(
        [sys.executable, str(child), str(root), str(database), writer],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    durable = -1
    try:
        for line in process.stdout:
            durable = int(line)
            if durable >= 1999:
                break
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    # Lines the child printed before it died also count.
    for line in process.stdout.read().split():
        durable = max(durable, int(line))
    assert process.returncode == -signal.SIGKILL
    assert durable >= 1999

    async def reopen() -> tuple[list[Frame], int]:
        async with Recorder(root, database, segment_seconds=0.5) as recorder:
            assert recorder.repair_report is not None
            frames = await collect(recorder, CRASH_CAMERA, T0 - 1, T0 + 3600)
            return frames, recorder.repair_report.scanned

    frames, scanned = asyncio.run(reopen())
    assert scanned >= 1  # the segment being written when the kill came was read through
    # A prefix of what was written, with nothing missing before the last durable frame.
    assert [f.sequence for f in frames] == list(range(len(frames)))
    assert len(frames) > durable
    assert frames == [crash_frame(n) for n in range(len(frames))]
    assert_index_matches_files(root, database)


async def test_a_writer_process_that_dies_is_started_again(
    paths: tuple[Path, Path], writer: str
) -> None:
    if writer != "process":
        pytest.skip("only a writer process can die on its own")
    root, database = paths
    frames = frames_of("lobby", 20)
    async with Recorder(root, database, segment_seconds=60.0) as recorder:
        for frame in frames[:10]:
            recorder.write(frame)
        await recorder.flush()
        process = recorder._store._process  # type: ignore[union-attr]
        assert process is not None
        assert process.pid != os.getpid()
        process.kill()
        process.wait()
        for frame in frames[10:]:
            recorder.write(frame)
        await recorder.flush()  # a new writer repairs what the old one left, then writes
        again = recorder._store._process  # type: ignore[union-attr]
        assert again is not None
        assert again.pid != process.pid
        assert again.poll() is None
        assert await collect(recorder, "lobby", T0, T0 + 3600) == frames
        assert recorder.stats.frames_dropped == 0
    assert_index_matches_files(root, database)


# Many cameras: one syncfs() instead of an fdatasync() per segment.


def counted(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> list[tuple[Any, ...]]:
    """Wrap ``owner.name`` to record its calls (in this process: a writer thread's)."""
    calls: list[tuple[Any, ...]] = []
    real = getattr(owner, name)

    def wrapper(*args: Any) -> Any:
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(owner, name, wrapper)
    return calls


def write_all(recorder: Recorder, cameras: dict[str, list[Frame]]) -> None:
    for frames in cameras.values():
        for frame in frames:
            recorder.write(frame)


async def test_many_cameras_are_made_durable_with_one_syncfs(
    paths: tuple[Path, Path], writer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if _segment_store.syncfs is None:
        pytest.skip("syncfs(2) is Linux's")
    root, database = paths
    # Counted in this process, where a writer thread runs (a writer process is checked by
    # what it recorded).
    syncs = counted(monkeypatch, _segment_store, "syncfs")
    datasyncs = counted(monkeypatch, os, "fdatasync")
    few = {f"few{n}": frames_of(f"few{n}", 6) for n in range(_segment_store._SYNCFS_FROM - 1)}
    many = {f"many{n}": frames_of(f"many{n}", 6) for n in range(_segment_store._SYNCFS_FROM + 4)}
    async with Recorder(root, database) as recorder:
        # Fewer segments to sync than the threshold: one fdatasync() each, as before.
        write_all(recorder, few)
        await recorder.flush()
        if writer == "thread":
            assert (len(syncs), len(datasyncs)) == (0, len(few))
        # More: one syncfs() of the recordings' file system, no fdatasync().
        write_all(recorder, many)
        await recorder.flush()
        if writer == "thread":
            assert (len(syncs), len(datasyncs)) == (1, len(few))
        await assert_recorded(recorder, few | many)
    assert_index_matches_files(root, database)
    async with Recorder(root, database) as again:
        await assert_recorded(again, few | many)


async def test_a_camera_directory_on_another_file_system_is_synced_on_its_own(
    paths: tuple[Path, Path],
    writer: str,
    monkeypatch: pytest.MonkeyPatch,
    tmpfs: Callable[..., Path],
) -> None:
    if _segment_store.syncfs is None:
        pytest.skip("syncfs(2) is Linux's")
    root, database = paths
    mounted = tmpfs(root / "mounted", "4m")
    syncs = counted(monkeypatch, _segment_store, "syncfs")
    datasyncs = counted(monkeypatch, os, "fdatasync")
    cameras = {f"cam{n}": frames_of(f"cam{n}", 6) for n in range(_segment_store._SYNCFS_FROM)}
    cameras["mounted"] = frames_of("mounted", 6)
    async with Recorder(root, database) as recorder:
        write_all(recorder, cameras)
        await recorder.flush()
        if writer == "thread":
            # syncfs() of the recordings' file system does not reach the tmpfs.
            assert len(syncs) == 1
            (only,) = datasyncs
            assert Path(f"/proc/self/fd/{only[0]}").resolve().parent == mounted
        await assert_recorded(recorder, cameras)
    assert_index_matches_files(root, database)


async def test_a_failed_syncfs_is_one_clear_error_naming_the_recordings(
    paths: tuple[Path, Path], writer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if writer != "thread":
        pytest.skip("the failure is injected in this process")
    root, database = paths

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    working = _segment_store.syncfs
    monkeypatch.setattr(_segment_store, "syncfs", failing)
    cameras = {f"cam{n}": frames_of(f"cam{n}", 4) for n in range(_segment_store._SYNCFS_FROM)}
    async with Recorder(root, database) as recorder:
        write_all(recorder, cameras)
        with pytest.raises(RecordingError) as caught:
            await recorder.flush()
        message = str(caught.value)
        assert "Input/output error" in message, message
        assert str(root) in message, message
        # Nothing is lost: the frames stay written and the next flush that works indexes them.
        monkeypatch.setattr(_segment_store, "syncfs", working)
        await recorder.flush()
        await assert_recorded(recorder, cameras)


# Many cameras: their writes go together through an io_uring, where there is one.


@pytest.fixture(params=["io_uring", "pwritev"])
def write_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Writes through an io_uring (where the system gives one), and with WATCHKEEP_IO_URING=0."""
    monkeypatch.setenv("WATCHKEEP_IO_URING", "1" if request.param == "io_uring" else "0")
    return str(request.param)


def ring_available() -> bool:
    ring = _uring.WriteRing.open(entries=4)
    if ring is None:
        return False
    ring.close()
    return True


async def test_many_cameras_are_written_in_one_call_and_come_back_byte_for_byte(
    paths: tuple[Path, Path], writer: str, write_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, database = paths
    writes = counted(monkeypatch, os, "pwritev")
    # Segments of one second, 0.25 s frames: every camera's batch rotates inside it.
    cameras = {f"cam{n}": frames_of(f"cam{n}", 9, size=3000) for n in range(40)}
    async with Recorder(root, database, segment_seconds=1.0) as recorder:
        write_all(recorder, cameras)
        await recorder.flush()
        if writer == "thread":
            # Each segment's header is written as the file is made (three per camera);
            # the records go through the ring, or take a pwritev per camera and segment.
            headers = 3 * len(cameras)
            if write_path == "io_uring" and ring_available():
                assert len(writes) == headers
            else:
                assert len(writes) == 2 * headers
        await assert_recorded(recorder, cameras)
    assert_index_matches_files(root, database)
    async with Recorder(root, database, segment_seconds=1.0) as again:
        await assert_recorded(again, cameras)


async def test_a_ring_that_fails_hands_over_to_pwritev_and_nothing_is_lost(
    paths: tuple[Path, Path], writer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if writer != "thread" or not ring_available():
        pytest.skip("the failure is injected into a ring in this process")
    root, database = paths
    submitted: list[int] = []

    def failing(self: _uring.WriteRing, jobs: list[Any]) -> list[int]:
        submitted.append(len(jobs))
        # What the kernel did with the batch is unknown: half of each write went out.
        for fd, buffers, offset in jobs:
            os.pwrite(fd, b"".join(buffers)[: sum(map(len, buffers)) // 2], offset)
        raise OSError(errno.EFAULT, "io_uring_enter: Bad address")

    monkeypatch.setattr(_uring.WriteRing, "writev_many", failing)
    cameras = {f"cam{n}": frames_of(f"cam{n}", 8) for n in range(6)}
    async with Recorder(root, database) as recorder:
        for index in range(8):
            for frames in cameras.values():
                recorder.write(frames[index])
            if index in (3, 7):
                await recorder.flush()  # two batches: the second goes straight to pwritev
        assert recorder.error is None
        assert submitted == [len(cameras)]
        await assert_recorded(recorder, cameras)
    assert_index_matches_files(root, database)


async def test_index_rows_are_updated_one_by_one_by_an_older_sqlite(
    paths: tuple[Path, Path], writer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if writer != "thread":
        pytest.skip("the older SQLite is pretended in this process")
    monkeypatch.setattr(_index, "_UPDATE_FROM", False)
    root, database = paths
    cameras = {f"cam{n}": frames_of(f"cam{n}", 6) for n in range(5)}
    async with Recorder(root, database) as recorder:
        for index in range(6):
            for frames in cameras.values():
                recorder.write(frames[index])
            await recorder.flush()  # the first inserts the rows, the others update them
            rows = index_rows(database)
            assert sorted(r["frames"] for r in rows.values()) == [index + 1] * len(cameras)
    assert_index_matches_files(root, database)


async def test_many_cameras_on_a_full_disk_are_cut_back_and_resume(
    tiny_disk: Path, write_path: str
) -> None:
    root, database = tiny_disk / "recordings", tiny_disk / "index.db"
    cameras = {f"cam{n}": frames_of(f"cam{n}", 12, size=6000) for n in range(8)}
    async with Recorder(root, database) as recorder:
        for index in range(4):
            for frames in cameras.values():
                recorder.write(frames[index])
        await recorder.flush()
        fill(tiny_disk / "filler")
        for index in range(4, 8):
            for frames in cameras.values():
                recorder.write(frames[index])
        with pytest.raises(RecordingDiskFull):
            await recorder.flush()
        # No torn record is left behind: every file ends at its last complete record.
        for path in root.glob("*/*.wkseg"):
            assert read_segment(path)[2] == path.stat().st_size
        (tiny_disk / "filler").unlink()
        for index in range(8, 12):
            for frames in cameras.values():
                recorder.write(frames[index])
        await recorder.flush()
        assert recorder.error is None
        assert recorder.stats.frames_dropped == 0
        await assert_recorded(recorder, cameras)
    assert_index_matches_files(root, database)


# A full disk.


@pytest.fixture
def tiny_disk(tmp_path: Path, tmpfs: Callable[..., Path]) -> Path:
    """A 1 MiB tmpfs, mounted for the test (root only)."""
    return tmpfs(tmp_path / "tiny")


def fill(path: Path) -> None:
    """Take every free byte of the file system ``path`` is on."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with pytest.raises(OSError, match="No space left") as caught:  # noqa: PT012 - ends by raising
            while True:
                os.write(fd, b"\0" * 4096)
        assert caught.value.errno == errno.ENOSPC
    finally:
        os.close(fd)


async def test_a_full_disk_is_a_clear_error_and_recording_resumes_with_space(
    tiny_disk: Path,
) -> None:
    root, database = tiny_disk / "recordings", tiny_disk / "index.db"
    frames = frames_of("lobby", 15, size=20_000)
    async with Recorder(root, database) as recorder:
        for frame in frames[:5]:
            recorder.write(frame)
        await recorder.flush()

        fill(tiny_disk / "filler")
        for frame in frames[5:10]:
            recorder.write(frame)
        with pytest.raises(RecordingDiskFull) as caught:
            await recorder.flush()
        assert isinstance(caught.value, WatchkeepError)
        assert "the disk is full (ENOSPC)" in str(caught.value)
        assert "free space" in str(caught.value)
        assert isinstance(recorder.error, RecordingDiskFull)
        with pytest.raises(RecordingDiskFull):
            await recorder.flush()  # still full: still an error, nothing lost yet

        (tiny_disk / "filler").unlink()
        for frame in frames[10:]:
            recorder.write(frame)
        await recorder.flush()
        assert recorder.error is None
        assert recorder.stats.frames_dropped == 0
        assert await collect(recorder, "lobby", T0, T0 + 100) == frames
    assert_index_matches_files(root, database)


# Refusals.


async def test_two_recorders_cannot_share_recordings(paths: tuple[Path, Path]) -> None:
    root, database = paths
    async with Recorder(root, database):
        with pytest.raises(RecordingError, match="another recorder is using these recordings"):
            await Recorder(root, database).open()
    async with Recorder(root, database):  # released by close
        pass


async def test_misuse_is_refused(paths: tuple[Path, Path]) -> None:
    root, database = paths
    with pytest.raises(ValueError, match="flush_interval"):
        Recorder(root, database, flush_interval=2.0)
    recorder = Recorder(root, database)
    with pytest.raises(RuntimeError, match="not open"):
        recorder.write(frames_of("lobby", 1)[0])
    async with recorder:
        with pytest.raises(UsageError, match="invalid camera name"):
            recorder.write(Frame("../../etc", 0, T0, b"x"))
    with pytest.raises(RuntimeError, match="not open"):
        recorder.write(frames_of("lobby", 1)[0])
