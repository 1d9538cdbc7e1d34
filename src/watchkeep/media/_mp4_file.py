"""A standard MP4 file (ISO/IEC 14496-12, not fragmented, ``moov`` first, so that a
player starts before the file is whole): what ``watchkeep export`` writes.

The pictures are collected first (in a spool file, :class:`Mp4Builder`), their sizes and
times in memory (a few dozen bytes each); :meth:`Mp4Builder.finish` then writes the
``ftyp``, the ``moov`` with the whole sample table (one chunk), and the ``mdat``.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from watchkeep.media._fmp4 import TIMESCALE, box, full_box, iter_boxes, mjpeg_sample_entry, movie

__all__ = ["Mp4Builder", "sample_description_of"]

_COPY = 1 << 20


def sample_description_of(init: bytes) -> bytes:
    """The ``stsd`` box of an init segment (its sample entry with avcC/hvcC)."""
    start, end = 0, len(init)
    for name in (b"moov", b"trak", b"mdia", b"minf", b"stbl", b"stsd"):
        for kind, at, size in iter_boxes(init, start, end):
            if kind == name:
                start, end = at + 8, at + size
                break
        else:
            raise ValueError(f"the init segment has no {name.decode()} box")
    return init[start - 8 : end]


@dataclass
class Mp4Builder:
    """Collects the pictures of one stream, in decode order, for one MP4 file.

    ``description`` is the ``stsd`` box (see :func:`sample_description_of`, or
    :meth:`for_mjpeg`), ``width`` and ``height`` the picture size.
    """

    description: bytes
    width: int
    height: int
    directory: Path | None = None
    _decode: list[int] = field(default_factory=list)
    _offsets: list[int] = field(default_factory=list)  # composition offsets
    _sizes: list[int] = field(default_factory=list)
    _keys: list[int] = field(default_factory=list)
    _last_duration: int = TIMESCALE // 25
    _spool: BinaryIO | None = None

    @classmethod
    def for_mjpeg(cls, width: int, height: int, directory: Path | None = None) -> Mp4Builder:
        entry = mjpeg_sample_entry(width, height)
        return cls(full_box(b"stsd", 0, 0, struct.pack(">I", 1), entry), width, height, directory)

    @property
    def pictures(self) -> int:
        return len(self._sizes)

    @property
    def duration(self) -> float:
        """Seconds from the first picture's decode time to the end of the last."""
        if not self._decode:
            return 0.0
        return (self._decode[-1] - self._decode[0] + self._last_duration) / TIMESCALE

    def add(
        self,
        data: bytes,
        decode_time: int,
        composition_offset: int,
        keyframe: bool,
        duration: int,
    ) -> None:
        """Add a picture (times in 1/90,000 s), after the ones before it in decode order;
        ``duration`` is used for the last picture (the others last until the next)."""
        if self._spool is None:
            self._spool = tempfile.TemporaryFile(dir=self.directory)  # noqa: SIM115 - closed by finish()
        if self._decode and decode_time <= self._decode[-1]:
            decode_time = self._decode[-1] + 1  # decode times only grow
        self._last_duration = max(duration, 1)
        self._spool.write(data)
        self._decode.append(decode_time)
        self._offsets.append(composition_offset)
        self._sizes.append(len(data))
        if keyframe:
            self._keys.append(len(self._sizes))

    def finish(self, path: Path) -> None:
        """Write the file at ``path`` (replacing it whole: a half-written file never has
        its name)."""
        spool = self._spool
        if spool is None:
            raise ValueError("an MP4 file needs at least one picture")
        durations = [b - a for a, b in zip(self._decode, self._decode[1:], strict=False)]
        # The last picture lasts as pictures mostly do (the hint is for a clip of one).
        common = Counter(durations).most_common(1)
        durations.append(common[0][0] if common else self._last_duration)
        total = sum(durations)
        first_offset = self._offsets[0]
        head = box(b"ftyp", b"isom", struct.pack(">I", 0x200), b"isomiso2mp41")
        data_size = sum(self._sizes)
        large = data_size + 16 > 0xFFFFFFFF
        mdat_header = 16 if large else 8

        def moov(chunk_offset: int) -> bytes:
            tables = [
                self.description,
                full_box(b"stts", 0, 0, _runs(durations)),
                full_box(b"ctts", 1, 0, _runs(self._offsets, signed=True)),
                full_box(b"stss", 0, 0, struct.pack(f">I{len(self._keys)}I", len(self._keys), *self._keys)),
                full_box(b"stsc", 0, 0, struct.pack(">IIII", 1, 1, len(self._sizes), 1)),
                full_box(b"stsz", 0, 0, struct.pack(f">II{len(self._sizes)}I", 0, len(self._sizes), *self._sizes)),
                full_box(b"co64", 0, 0, struct.pack(">IQ", 1, chunk_offset)),
            ]  # fmt: skip
            # The edit list starts the presentation at the first picture (whose decode time
            # is ahead of its presentation time by its composition offset).
            edit = box(
                b"edts",
                full_box(b"elst", 1, 0, struct.pack(">IQqI", 1, total, first_offset, 0x00010000)),
            )
            return movie(self.width, self.height, total, box(b"stbl", *tables), trak_extra=edit)

        size = len(moov(0))
        body = moov(len(head) + size + mdat_header)
        temporary = path.with_name(f".{path.name}.part")
        try:
            with temporary.open("wb") as out:
                out.write(head)
                out.write(body)
                if large:
                    out.write(struct.pack(">I4sQ", 1, b"mdat", data_size + 16))
                else:
                    out.write(struct.pack(">I4s", data_size + 8, b"mdat"))
                spool.seek(0)
                shutil.copyfileobj(spool, out, _COPY)
                out.flush()
                os.fsync(out.fileno())
            temporary.replace(path)
        finally:
            temporary.unlink(missing_ok=True)
            spool.close()
            self._spool = None


def _runs(values: list[int], *, signed: bool = False) -> bytes:
    """Run-length entries (count, value) of ``values``, with their count first."""
    entries: list[tuple[int, int]] = []
    for value in values:
        if entries and entries[-1][1] == value:
            entries[-1] = (entries[-1][0] + 1, value)
        else:
            entries.append((1, value))
    kind = "i" if signed else "I"
    return struct.pack(">I", len(entries)) + b"".join(
        struct.pack(f">I{kind}", count, value) for count, value in entries
    )
