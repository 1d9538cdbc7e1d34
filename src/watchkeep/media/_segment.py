"""The segment file format: one camera, a stretch of time, frames as checksummed records.

A segment file (``<root>/<camera>/<first frame's UTC microseconds>.wkseg``) is::

    file header   magic b"WKSEG\\x00\\x01\\n" (8 bytes), camera name length (u16), camera name
    record        payload length (u32), CRC-32 (u32), timestamp (f64, UTC s), sequence (u64),
    record        then the JPEG (payload length bytes)
    ...

All integers big-endian. The CRC-32 covers the timestamp, the sequence and the JPEG, so a
torn or garbled record is recognised wherever it is; records are only ever appended, so
after a crash the damage is at the end: :func:`scan_segment` finds where the valid records
stop, and the file is cut back there.
"""

from __future__ import annotations

import binascii
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from watchkeep.media._frame import Frame

__all__ = [
    "RECORD_HEADER_SIZE",
    "SEGMENT_SUFFIX",
    "SegmentFormatError",
    "SegmentReader",
    "SegmentScan",
    "SegmentTooShort",
    "encode_record_header",
    "encode_segment_header",
    "scan_segment",
]

MAGIC = b"WKSEG\x00\x01\n"
SEGMENT_SUFFIX = ".wkseg"
_FILE_HEADER = struct.Struct("!8sH")
_RECORD = struct.Struct("!IIdQ")
_STAMP = struct.Struct("!dQ")
RECORD_HEADER_SIZE = _RECORD.size
# No camera sends a 64 MiB JPEG: a larger length is a garbled header, not a frame.
MAX_PAYLOAD = 64 * 1024 * 1024
_READ_CHUNK = 1 << 20


class SegmentFormatError(Exception):
    """A file that does not start like a segment (internal: mapped to RecordingError)."""


class SegmentTooShort(SegmentFormatError):
    """A file cut off inside its header: created just before a crash, it holds no frame."""


def encode_segment_header(camera: str) -> bytes:
    name = camera.encode()
    return _FILE_HEADER.pack(MAGIC, len(name)) + name


def encode_record_header(frame: Frame) -> bytes:
    """The record header for ``frame``; the record continues with ``frame.jpeg``."""
    return record_header(frame.timestamp, frame.sequence, frame.jpeg)


def record_header(timestamp: float, sequence: int, jpeg: bytes) -> bytes:
    """The record header of a picture ``jpeg`` taken at ``timestamp``, number ``sequence``."""
    # Wrap the sequence into the field rather than fail the whole batch on a silly camera.
    sequence &= 0xFFFFFFFFFFFFFFFF
    # binascii's CRC-32 is zlib's, but keeps the GIL: this runs on the event loop's thread
    # (once per frame), where zlib.crc32 would let the GIL go for every picture and then
    # wait to get it back from whatever thread took it (twice the time, and stalls).
    crc = binascii.crc32(jpeg, binascii.crc32(_STAMP.pack(timestamp, sequence)))
    return _RECORD.pack(len(jpeg), crc, timestamp, sequence)


def _read_file_header(file: BinaryIO, path: str) -> tuple[str, int]:
    head = file.read(_FILE_HEADER.size)
    if not MAGIC.startswith(head[: len(MAGIC)]):
        raise SegmentFormatError(f"{path}: not a watchkeep segment (bad magic)")
    if len(head) < _FILE_HEADER.size:
        raise SegmentTooShort(f"{path}: too short for a segment header")
    _magic, name_length = _FILE_HEADER.unpack(head)
    name = file.read(name_length)
    if len(name) < name_length:
        raise SegmentTooShort(f"{path}: truncated in its header")
    try:
        camera = name.decode()
    except UnicodeDecodeError as exc:
        raise SegmentFormatError(f"{path}: camera name is not UTF-8") from exc
    return camera, _FILE_HEADER.size + name_length


@dataclass(frozen=True)
class SegmentScan:
    """What a full read of a segment found."""

    camera: str
    frames: int
    start: float | None  # None when there is no valid record
    end: float | None
    valid_size: int  # bytes up to the end of the last valid record
    file_size: int


def scan_segment(path: str) -> SegmentScan:
    """Read every record, checking lengths and CRCs, and report where valid data ends."""
    with open(path, "rb", buffering=_READ_CHUNK) as file:
        file_size = os.fstat(file.fileno()).st_size
        camera, offset = _read_file_header(file, path)
        frames = 0
        start = end = None
        for timestamp, _sequence, payload in _records(file, file_size - offset):
            offset += RECORD_HEADER_SIZE + len(payload)
            frames += 1
            start = timestamp if start is None else min(start, timestamp)
            end = timestamp if end is None else max(end, timestamp)
    return SegmentScan(camera, frames, start, end, offset, file_size)


def _records(file: BinaryIO, available: int) -> Iterator[tuple[float, int, bytes]]:
    """Valid records from the current position, stopping at the first damaged one."""
    while available >= RECORD_HEADER_SIZE:
        head = file.read(RECORD_HEADER_SIZE)
        if len(head) < RECORD_HEADER_SIZE:
            return
        length, crc, timestamp, sequence = _RECORD.unpack(head)
        available -= RECORD_HEADER_SIZE
        if length > MAX_PAYLOAD or length > available:
            return
        payload = file.read(length)
        if len(payload) < length:
            return
        if zlib.crc32(payload, zlib.crc32(head[8:])) != crc:
            return
        available -= length
        yield timestamp, sequence, payload


class SegmentReader:
    """Reads the frames of one segment inside [start, end), a batch at a time.

    Only the first ``limit`` bytes are read: the part a writer has completed. Bytes
    outside the range are skipped with a seek, never read; records read are CRC-checked
    and reading stops at the first damaged one.
    """

    def __init__(self, path: str, limit: int, start: float, end: float) -> None:
        self._file: BinaryIO | None = open(path, "rb", buffering=_READ_CHUNK)  # noqa: SIM115 - closed by close()
        self._start = start
        self._end = end
        try:
            self.camera, offset = _read_file_header(self._file, path)
        except BaseException:
            self.close()
            raise
        self._available = limit - offset

    def read_batch(self, max_bytes: int) -> list[Frame]:
        """The next frames in range, about ``max_bytes`` of them; empty once at the end."""
        frames: list[Frame] = []
        size = 0
        start, end = self._start, self._end
        while size < max_bytes:
            file = self._file
            if file is None:
                break
            if self._available < RECORD_HEADER_SIZE:
                self.close()
                break
            head = file.read(RECORD_HEADER_SIZE)
            if len(head) < RECORD_HEADER_SIZE:  # the file shrank under us
                self.close()
                break
            length, crc, timestamp, sequence = _RECORD.unpack(head)
            self._available -= RECORD_HEADER_SIZE + length
            if length > MAX_PAYLOAD or self._available < 0:
                self.close()
                break
            if not start <= timestamp < end:
                file.seek(length, os.SEEK_CUR)
                continue
            payload = file.read(length)
            if len(payload) < length or zlib.crc32(payload, zlib.crc32(head[8:])) != crc:
                self.close()
                break
            frames.append(Frame(self.camera, sequence, timestamp, payload))
            size += length
        return frames

    def close(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            file.close()
