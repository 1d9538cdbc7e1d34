"""H.264/H.265 recording files: fragmented MP4 (see :mod:`._fmp4`), one per camera and
stretch of time, beside the Motion JPEG segments of the watchkeep format.

A file (``<root>/<camera>/<first picture's UTC microseconds>.mp4``) is an init segment,
then one fragment per picture, the first a keyframe. Fragments are only ever appended, so
after a crash the damage is at the end: :func:`scan_video_segment` finds where the whole
fragments stop and the file is cut back there, as a watchkeep segment is. The file's own
``moof`` boxes are its index of pictures (offset, times, keyframe), read by playback, HLS
and export; the recordings index keeps one row per file, as for Motion JPEG.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from watchkeep.media._fmp4 import (
    FRAGMENT_HEADER_SIZE,
    TIMESCALE,
    Box,
    Fragment,
    InitSegment,
    iter_boxes,
    parse_moof,
    scan_fragments,
)
from watchkeep.media._frame import Frame
from watchkeep.media._h26x import BitstreamError, ParameterSets, parse_sps
from watchkeep.media._segment import (
    SEGMENT_SUFFIX,
    SegmentFormatError,
    SegmentScan,
    SegmentTooShort,
    scan_segment,
)

__all__ = [
    "VIDEO_SUFFIX",
    "VideoFile",
    "VideoSegmentReader",
    "init_from_bytes",
    "read_video_file",
    "scan_any_segment",
    "scan_video_segment",
]

VIDEO_SUFFIX = ".mp4"
_MAX_BOX = 1 << 20  # an ftyp, moov or moof larger than this is not ours


def scan_any_segment(path: str) -> SegmentScan:
    """:func:`scan_segment` or :func:`scan_video_segment`, by the file's suffix."""
    if path.endswith(SEGMENT_SUFFIX):
        return scan_segment(path)
    return scan_video_segment(path)


@dataclass(frozen=True)
class VideoFile:
    """A recording file read up to a size: its init segment and its whole fragments."""

    init: InitSegment
    init_size: int
    fragments: list[Fragment]
    valid_size: int
    file_size: int


def read_video_file(path: str, limit: int | None = None) -> VideoFile:
    """Read the first ``limit`` bytes (all of it by default) of the recording at ``path``.

    Raises :class:`SegmentTooShort` if the init segment is not whole (a file created a
    moment before a crash) and :class:`SegmentFormatError` if it is not a recording.
    """
    with open(path, "rb") as file:
        file_size = os.fstat(file.fileno()).st_size
        size = file_size if limit is None else min(limit, file_size)
        head = file.read(min(size, 16))
        if len(head) < 8 or head[4:8] != b"ftyp":
            if len(head) < 8 and b"ftyp".startswith(head[4:8]):
                raise SegmentTooShort(f"{path}: too short for an MP4 header")
            raise SegmentFormatError(f"{path}: not an MP4 recording (no ftyp)")
        scan = scan_fragments(_read_boxes(file, size))
        if scan.init_size == 0:
            raise SegmentTooShort(f"{path}: its init segment is not whole")
        file.seek(0)
        init_bytes = file.read(scan.init_size)
    try:
        init = init_from_bytes(init_bytes)
    except (BitstreamError, ValueError, struct.error) as exc:
        raise SegmentFormatError(f"{path}: its sample description cannot be read ({exc})") from exc
    return VideoFile(init, scan.init_size, scan.fragments, scan.valid_size, file_size)


def _read_boxes(file: BinaryIO, size: int) -> Iterator[Box]:
    """The file's top-level boxes up to ``size``, the pictures (mdat) not read: what
    scanning needs, without reading the bulk of a file of hundreds of megabytes."""
    pos = 0
    while size - pos >= 8:
        file.seek(pos)
        head = file.read(8)
        if len(head) < 8:
            return
        length, kind = struct.unpack(">I4s", head)
        if length < 8 or pos + length > size:
            return
        if kind == b"mdat":
            yield kind, pos, length, b""
        else:
            if length > _MAX_BOX:
                return
            content = head + file.read(length - 8)
            if len(content) < length:
                return
            yield kind, pos, length, content
        pos += length


def scan_video_segment(path: str) -> SegmentScan:
    """Read every fragment's header and report where the whole fragments end."""
    found = read_video_file(path)
    times = [f.presentation_time for f in found.fragments]
    camera = Path(path).parent.name
    if not times:
        return SegmentScan(camera, 0, None, None, found.valid_size, found.file_size)
    return SegmentScan(
        camera,
        len(times),
        min(times) / TIMESCALE,
        max(times) / TIMESCALE,
        found.valid_size,
        found.file_size,
    )


def init_from_bytes(data: bytes) -> InitSegment:
    """The :class:`InitSegment` of ``data`` (an ftyp and moov as watchkeep writes them)."""
    stsd = _find(data, [b"moov", b"trak", b"mdia", b"minf", b"stbl", b"stsd"])
    # stsd: its header, version and flags, entry count; then the sample entry, whose boxes
    # follow 78 bytes of visual sample entry fields after its own header.
    entry = stsd + 16
    entry_size, kind = struct.unpack_from(">I4s", data, entry)
    config_start = entry + 8 + 78
    codec = {b"avc1": "H264", b"hvc1": "H265"}.get(bytes(kind))
    if codec is None:
        raise ValueError(f"a sample entry of type {bytes(kind)!r}")
    for name, at, size in iter_boxes(data, config_start, entry + entry_size):
        if name in (b"avcC", b"hvcC"):
            parameters = _parameter_sets(codec, data[at + 8 : at + size])
            assert parameters.sps is not None
            return InitSegment(data, parse_sps(codec, parameters.sps))
    raise ValueError("no avcC or hvcC box")


def _find(data: bytes, path: list[bytes]) -> int:
    start, end = 0, len(data)
    found = -1
    for name in path:
        for kind, at, size in iter_boxes(data, start, end):
            if kind == name:
                found, start, end = at, at + 8, at + size
                break
        else:
            raise ValueError(f"no {name.decode()} box")
    return found


def _parameter_sets(codec: str, config: bytes) -> ParameterSets:
    if codec == "H264":
        count = config[5] & 0x1F
        pos = 6
        sps = pps = None
        for index in range(count):
            length = struct.unpack_from(">H", config, pos)[0]
            if index == 0:
                sps = config[pos + 2 : pos + 2 + length]
            pos += 2 + length
        if config[pos]:
            length = struct.unpack_from(">H", config, pos + 1)[0]
            pps = config[pos + 3 : pos + 3 + length]
        if sps is None:
            raise ValueError("an avcC without an SPS")
        return ParameterSets(codec, None, sps, pps)
    found: dict[int, bytes] = {}
    pos = 23
    for _ in range(config[22]):
        kind = config[pos] & 0x3F
        count = struct.unpack_from(">H", config, pos + 1)[0]
        pos += 3
        for _ in range(count):
            length = struct.unpack_from(">H", config, pos)[0]
            found.setdefault(kind, config[pos + 2 : pos + 2 + length])
            pos += 2 + length
    if 33 not in found:
        raise ValueError("an hvcC without an SPS")
    return ParameterSets(codec, found.get(32), found.get(33), found.get(34))


class VideoSegmentReader:
    """Reads the pictures of one recording file for ``[start, end)``, a batch at a time:
    from the keyframe at or before ``start`` (a picture needs the ones since its keyframe)
    up to the first picture decoded at or after ``end``. Only the first ``limit`` bytes
    are read (what the writer has completed)."""

    def __init__(self, path: str, limit: int, start: float, end: float) -> None:
        self.camera = Path(path).parent.name
        found = read_video_file(path, limit)
        self._init = found.init
        begin = start * TIMESCALE
        first = 0
        for index, fragment in enumerate(found.fragments):
            if fragment.presentation_time > begin:
                break
            if fragment.keyframe:
                first = index
        stop = end * TIMESCALE
        chosen = []
        for fragment in found.fragments[first:]:
            if fragment.decode_time >= stop and fragment.presentation_time >= stop:
                break
            chosen.append(fragment)
        if chosen and max(f.presentation_time for f in chosen) < begin:
            chosen = []  # the file ends before the range
        self._fragments = chosen
        self._next = 0
        self._file: BinaryIO | None = open(path, "rb")  # noqa: SIM115 - closed by close()

    def read_batch(self, max_bytes: int) -> list[Frame]:
        """The next pictures, about ``max_bytes`` of them; empty once at the end."""
        frames: list[Frame] = []
        size = 0
        file = self._file
        init = self._init
        while file is not None and self._next < len(self._fragments) and size < max_bytes:
            fragment = self._fragments[self._next]
            file.seek(fragment.offset)
            data = file.read(fragment.size)
            if len(data) < fragment.size:
                self.close()
                break
            header, sample = data[:FRAGMENT_HEADER_SIZE], data[FRAGMENT_HEADER_SIZE:]
            if parse_moof(header, 0, FRAGMENT_HEADER_SIZE - 8) is None:
                self.close()
                break
            frames.append(
                Frame(
                    self.camera,
                    self._next,
                    fragment.presentation_time / TIMESCALE,
                    sample,
                    codec=init.info.codec,
                    keyframe=fragment.keyframe,
                    init=init,
                    fragment=header,
                )
            )
            self._next += 1
            size += len(data)
        if self._next >= len(self._fragments):
            self.close()
        return frames

    def close(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            file.close()
