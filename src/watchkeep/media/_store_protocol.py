"""What the recorder and its store exchange, whether the store writes in the recorder's
writer thread (SegmentStore) or in a child process (WriterProcess): the frames to record,
the segments and what a step or a repair did, and the store's protocol."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from watchkeep.errors import RecordingError

__all__ = ["Record", "RepairReport", "SegmentInfo", "StepResult", "Store"]

# A frame to record, (camera, sequence, timestamp, picture, record header), as a plain tuple:
# the garbage collector stops tracking a tuple of strings, numbers and bytes at its first
# pass, so frames waiting to be written never reach the older generations (as Frame
# instances, thousands a second did, and set off a full collection every few seconds,
# 40-70 ms at 350 cameras, with every stream stopped meanwhile). The header is made by the
# recorder as the frame arrives (the CRC is computed there, not in a writer thread, where
# each CRC let the GIL go and then waited for the busy event loop to give it back), or
# empty for the store to make (a writer process has a GIL of its own).
#
# The last field says where a segment may start: b"" for a JPEG (any picture may start a
# segment of the watchkeep format), the init segment (ftyp + moov) for an H.264/H.265
# keyframe (a fragmented MP4 file starts there, the header being the picture's moof),
# None for any other H.264/H.265 picture, which goes in the file of the keyframe before it.
Record = tuple[str, int, float, bytes, bytes, bytes | None]


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
    skipped: int = 0  # pictures that needed a keyframe before them in their file


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
