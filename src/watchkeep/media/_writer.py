"""The recorder's writer in a process of its own, for recording servers with many cameras.

A :class:`SegmentStore` in a thread shares the GIL with the event loop that receives and
serves the video: every write, CRC and fsync lets the GIL go, and the writer must then wait
for a busy loop to give it back. With hundreds of cameras the loop never idles, the writer
falls behind and frames are dropped. :class:`WriterProcess` offers the same interface as
the store, but the store runs in a child process: the frames of a batch travel over a Unix
socket (one ``sendmsg`` of many buffers, made by the recorder's thread without the GIL),
the child computes the CRCs, writes, syncs and indexes, and answers with the outcome and
the state of the segments being written (what playback needs).

The child runs :func:`main` with ``FD PARENT_PID``. It ends when its socket
closes, and is killed with the process that started it (``PR_SET_PDEATHSIG``), so a
recording server that dies takes it along; a child that dies is started again at the next
step, and its start repairs what it left, as after any crash.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from watchkeep.errors import RecordingError
from watchkeep.media._errors import RecordingDiskFull
from watchkeep.media._segment_store import SegmentStore
from watchkeep.media._store_protocol import Record, RepairReport, SegmentInfo, StepResult

__all__ = ["WriterProcess"]

log = logging.getLogger("watchkeep.media")

_HEAD = struct.Struct("<QQ")  # pickled message length, raw bytes following it
_IOV_MAX = 512
_SOCKET_BUFFER = 8 * 1024 * 1024
_PR_SET_PDEATHSIG = 1
# Not "-m watchkeep.media._writer": the package imports this module before it would run.
_CHILD = "import sys; from watchkeep.media._writer import main; sys.exit(main(sys.argv[1:]))"


class WriterProcess:
    """A :class:`SegmentStore` in a child process (see the module's docstring).

    :meth:`repair`, :meth:`step` and :meth:`close` block (call them from the recorder's
    thread); :meth:`tracked`, :meth:`recording` and :attr:`total_bytes` answer at once from
    the state the child sent with its last answer.
    """

    def __init__(self, root: Path, index_path: str, segment_seconds: float) -> None:
        self.root = root
        self._index_path = index_path
        self._segment_seconds = segment_seconds
        self._process: subprocess.Popen[bytes] | None = None
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()  # guards the state below against the loop's readers
        self._tracked: dict[str, list[SegmentInfo]] = {}
        self._total_bytes = 0

    # The state (any thread).

    def tracked(self, camera: str) -> list[SegmentInfo]:
        with self._lock:
            return list(self._tracked.get(camera, ()))

    def recording(self, camera: str) -> bool:
        with self._lock:
            return camera in self._tracked

    @property
    def total_bytes(self) -> int:
        with self._lock:
            return self._total_bytes

    # The child (the recorder's thread).

    def repair(self) -> RepairReport:
        """Start the child, which opens the index and repairs it against the files."""
        self._stop_child()
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for end in (parent, child):
            end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER)
            end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_BUFFER)
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-c", _CHILD, str(child.fileno()), str(os.getpid())],
                pass_fds=[child.fileno()],
                stdin=subprocess.DEVNULL,
            )
        finally:
            child.close()
        self._socket = parent
        answer = self._call(("open", str(self.root), self._index_path, self._segment_seconds))
        report = answer["report"]
        assert isinstance(report, RepairReport)
        return report

    def step(
        self,
        records: list[Record],
        *,
        flush: bool,
        max_age: float | None,
        max_bytes: int | None,
    ) -> StepResult:
        if self._socket is None or (self._process is not None and self._process.poll() is not None):
            # The child died (its exit was logged): a new one repairs what it left.
            try:
                self.repair()
            except (OSError, RecordingError) as exc:
                return StepResult(unwritten=records, error=_as_recording_error(exc))
        frames = [(r[0], r[1], r[2], len(r[3]), r[4], r[5]) for r in records]
        try:
            answer = self._call(
                ("step", frames, flush, max_age, max_bytes), [r[3] for r in records]
            )
        except (OSError, RecordingError) as exc:
            return StepResult(unwritten=records, error=_as_recording_error(exc))
        result: StepResult = answer["result"]
        result.unwritten = [records[i] for i in answer["unwritten"]]
        if answer["step_error"] is not None:
            result.error = _error_from(answer["step_error"])
        return result

    def close(self) -> None:
        try:
            process = self._process
            if self._socket is not None and process is not None and process.poll() is None:
                self._call(("close",))
        finally:
            self._stop_child()

    def _stop_child(self) -> None:
        sock, self._socket = self._socket, None
        if sock is not None:
            sock.close()  # the child sees the end of its socket and exits
        process, self._process = self._process, None
        if process is not None:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _call(self, message: tuple[Any, ...], data: list[bytes] | None = None) -> dict[str, Any]:
        sock = self._socket
        if sock is None:
            raise RecordingError(None, "the recording writer process is not running")
        try:
            _send(sock, message, data or [])
            answer, _ = _receive(sock)
        except (OSError, EOFError) as exc:
            code = self._process.poll() if self._process is not None else None
            self._stop_child()
            raise RecordingError(
                None,
                f"the recording writer process stopped (exit code {code}): {exc}",
                fix="see the recording server's log; the writer starts again by itself",
            ) from exc
        if not isinstance(answer, dict):
            raise RecordingError(None, "the recording writer process answered nonsense")
        with self._lock:
            self._tracked = answer["tracked"]
            self._total_bytes = answer["total_bytes"]
        if answer.get("error") is not None:
            raise _error_from(answer["error"])
        return answer


# -- the wire ------------------------------------------------------------------------------


def _send(sock: socket.socket, message: object, data: list[bytes]) -> None:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    head = _HEAD.pack(len(payload), sum(len(b) for b in data))
    views = [memoryview(head), memoryview(payload)]
    views += [memoryview(b).cast("B") for b in data if len(b)]
    index = 0
    while index < len(views):
        sent = sock.sendmsg(views[index : index + _IOV_MAX])
        while sent:
            size = len(views[index])
            if sent >= size:
                sent -= size
                index += 1
            else:
                views[index] = views[index][sent:]
                sent = 0


def _receive(sock: socket.socket) -> tuple[Any, bytearray]:
    head = _read_exactly(sock, _HEAD.size)
    size, raw = _HEAD.unpack(head)
    message = pickle.loads(_read_exactly(sock, size))  # noqa: S301 - our own child/parent
    return message, _read_exactly(sock, raw)


def _read_exactly(sock: socket.socket, size: int) -> bytearray:
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        count = sock.recv_into(view[got:])
        if not count:
            raise EOFError("the other end closed the connection")
        got += count
    return buffer


def _error_state(exc: RecordingError) -> tuple[str, str | None, str, str | None, str | None]:
    kind = "disk-full" if isinstance(exc, RecordingDiskFull) else "error"
    return (kind, exc.camera, exc.reason, exc.path, exc.fix)


def _error_from(state: tuple[str, str | None, str, str | None, str | None]) -> RecordingError:
    kind, camera, reason, path, fix = state
    if kind == "disk-full":
        return RecordingDiskFull(camera, path or "")
    return RecordingError(camera, reason, path=path, fix=fix)


def _as_recording_error(exc: BaseException) -> RecordingError:
    if isinstance(exc, RecordingError):
        return exc
    return RecordingError(None, f"cannot start the recording writer process: {exc}")


# -- the child -------------------------------------------------------------------------------


def _serve(sock: socket.socket) -> None:
    from watchkeep.media._index import open_index

    store: SegmentStore | None = None
    engine = None
    try:
        while True:
            try:
                message, data = _receive(sock)
            except EOFError:
                return  # the recorder closed, or its process is gone
            op = message[0]
            answer: dict[str, Any] = {"error": None}
            try:
                if op == "open":
                    _, root, index_path, segment_seconds = message
                    engine = open_index(Path(index_path))
                    store = SegmentStore(Path(root), engine, index_path, segment_seconds)
                    answer["report"] = store.repair()
                elif op == "step":
                    assert store is not None
                    _, frames, flush, max_age, max_bytes = message
                    records = _records(frames, data)
                    result = store.step(records, flush=flush, max_age=max_age, max_bytes=max_bytes)
                    position = {id(record): i for i, record in enumerate(records)}
                    answer["unwritten"] = [position[id(r)] for r in result.unwritten]
                    answer["step_error"] = (
                        None if result.error is None else _error_state(result.error)
                    )
                    result.unwritten, result.error = [], None
                    answer["result"] = result
                elif op == "close":
                    assert store is not None
                    store.close()
                else:
                    answer["error"] = (
                        "error",
                        None,
                        f"unknown writer operation {op!r}",
                        None,
                        None,
                    )
            except RecordingError as exc:
                answer["error"] = _error_state(exc)
            if store is not None:
                answer["tracked"], answer["total_bytes"] = store.snapshot()
            else:
                answer["tracked"], answer["total_bytes"] = {}, 0
            _send(sock, answer, [])
            if op == "close":
                return
    finally:
        if engine is not None:
            engine.dispose()


def _records(
    frames: list[tuple[str, int, float, int, bytes, bytes | None]], data: bytearray
) -> list[Record]:
    view = memoryview(data)
    records: list[Record] = []
    offset = 0
    for camera, sequence, timestamp, length, header, start in frames:
        # The picture stays in the received buffer: pwritev takes the view as it is. The
        # record header of a JPEG (its CRC) is made by the store.
        jpeg: Any = view[offset : offset + length]
        records.append((camera, sequence, timestamp, jpeg, header, start))
        offset += length
    return records


def _die_with(parent: int) -> None:
    """Be killed with the recorder's process, as a thread of it would be: a writer that
    outlived it could still be writing when a new recorder opens (and repairs) the files."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # it died before the line above
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    _die_with(int(args[1]))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sock = socket.socket(fileno=int(args[0]))
    try:
        _serve(sock)
    finally:
        sock.close()
    return 0
