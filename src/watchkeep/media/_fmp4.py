"""Fragmented MP4 (ISO/IEC 14496-12, with 14496-15 for H.264 and H.265): the few boxes
watchkeep writes, and the reading of them back.

An H.264 or H.265 recording file is an *init segment* (``ftyp`` and ``moov``: one video
track, its sample description with the parameter sets in ``avcC``/``hvcC``, no samples)
followed by one *fragment* per picture (``moof`` with the picture's decode time, duration,
composition offset and keyframe flag, then ``mdat`` with the picture). The same bytes are
what a browser's Media Source Extensions take live and what HLS serves as byte ranges, so
each fragment is built once, as the picture arrives, and only ever copied.

Times are in 1/90,000 s (the RTP clock of video) since the Unix epoch: a file's timeline is
the wall-clock time of its pictures, and files of one camera follow one another on it.

Why a writer of our own rather than FFmpeg's (through PyAV): the fragment of one picture is
a fixed 112-byte header filled by one ``struct.pack``; FFmpeg's muxer would cost a Python
call, a packet object and its own buffering per picture, and could not share its output
between the recording, live viewers and playback.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from watchkeep.media._h26x import ParameterSets, StreamInfo

__all__ = [
    "TIMESCALE",
    "Fragment",
    "InitSegment",
    "fragment_header",
    "init_segment",
    "iter_boxes",
    "scan_fragments",
]

TIMESCALE = 90_000
_KEY_FLAGS = 0x02000000  # sample_depends_on = 2: depends on no other picture
_DELTA_FLAGS = 0x01010000  # depends on others, not a sync sample
_MATRIX = struct.pack(">9I", 0x00010000, 0, 0, 0, 0x00010000, 0, 0, 0, 0x40000000)
# moof(mfhd, traf(tfhd, tfdt v1, trun v1 with one sample)), then the mdat header.
_FRAGMENT = struct.Struct(">I4s" + "I4sII" + "I4s" + "I4sII" + "I4sIQ" + "I4sIIiIIIi" + "I4s")
MOOF_SIZE = _FRAGMENT.size - 8
FRAGMENT_HEADER_SIZE = _FRAGMENT.size
_TRUN_FLAGS = 0x000001 | 0x000100 | 0x000200 | 0x000400 | 0x000800


def box(kind: bytes, *payload: bytes) -> bytes:
    body = b"".join(payload)
    return struct.pack(">I4s", 8 + len(body), kind) + body


def full_box(kind: bytes, version: int, flags: int, *payload: bytes) -> bytes:
    return box(kind, struct.pack(">I", (version << 24) | flags), *payload)


@dataclass(frozen=True)
class InitSegment:
    """An init segment and what it describes (shared by every fragment that follows it)."""

    data: bytes
    info: StreamInfo

    @property
    def mime_type(self) -> str:
        return f'video/mp4; codecs="{self.info.mime_codec}"'


def fragment_header(
    sequence: int, decode_time: int, duration: int, size: int, keyframe: bool, offset: int
) -> bytes:
    """The ``moof`` and ``mdat`` header of one picture of ``size`` bytes (what follows)."""
    return _FRAGMENT.pack(
        MOOF_SIZE, b"moof",
        16, b"mfhd", 0, sequence & 0xFFFFFFFF,
        MOOF_SIZE - 24, b"traf",
        16, b"tfhd", 0x020000, 1,  # default-base-is-moof, track 1
        20, b"tfdt", 0x01000000, decode_time,
        36, b"trun", 0x01000000 | _TRUN_FLAGS, 1, FRAGMENT_HEADER_SIZE,
        max(duration, 0), size, _KEY_FLAGS if keyframe else _DELTA_FLAGS, offset,
        8 + size, b"mdat",
    )  # fmt: skip


def init_segment(parameters: ParameterSets, info: StreamInfo) -> InitSegment:
    """The ``ftyp`` and ``moov`` of a stream with these parameter sets."""
    if parameters.codec == "H264":
        entry = _visual_entry(b"avc1", info, box(b"avcC", _avcc(parameters, info)))
    else:
        entry = _visual_entry(b"hvc1", info, box(b"hvcC", _hvcc(parameters, info)))
    return InitSegment(_init(entry, info.width, info.height), info)


def mjpeg_sample_entry(width: int, height: int) -> bytes:
    """The sample description of Motion JPEG (QuickTime's ``jpeg``, which FFmpeg, VLC and
    the players built on them read)."""
    return _visual_entry(b"jpeg", StreamInfo("JPEG", width, height, 1, 8, 8, b""), b"")


def _init(entry: bytes, width: int, height: int) -> bytes:
    ftyp = box(b"ftyp", b"isom", struct.pack(">I", 0x200), b"isomiso6iso5mp41")
    empty_tables = (
        full_box(b"stts", 0, 0, struct.pack(">I", 0)),
        full_box(b"stsc", 0, 0, struct.pack(">I", 0)),
        full_box(b"stsz", 0, 0, struct.pack(">II", 0, 0)),
        full_box(b"stco", 0, 0, struct.pack(">I", 0)),
    )
    stbl = box(b"stbl", full_box(b"stsd", 0, 0, struct.pack(">I", 1), entry), *empty_tables)
    mvex = box(b"mvex", full_box(b"trex", 0, 0, struct.pack(">IIIII", 1, 1, 0, 0, 0)))
    return ftyp + movie(width, height, 0, stbl, mvex)


def movie(
    width: int,
    height: int,
    duration: int,
    stbl: bytes,
    extra: bytes = b"",
    *,
    trak_extra: bytes = b"",
) -> bytes:
    """A ``moov`` with one video track whose sample table is ``stbl`` (and ``trak_extra``,
    an edit list, in the track; ``extra``, an ``mvex``, after it)."""
    mvhd = full_box(
        b"mvhd", 0, 0,
        struct.pack(">IIII", 0, 0, TIMESCALE, duration),
        struct.pack(">IH10x", 0x00010000, 0x0100), _MATRIX, bytes(24), struct.pack(">I", 2),
    )  # fmt: skip
    tkhd = full_box(
        b"tkhd", 0, 3,
        struct.pack(">IIIII", 0, 0, 1, 0, duration), bytes(8),
        struct.pack(">hhhH", 0, 0, 0, 0), _MATRIX, struct.pack(">II", width << 16, height << 16),
    )  # fmt: skip
    mdhd = full_box(b"mdhd", 0, 0, struct.pack(">IIIIHH", 0, 0, TIMESCALE, duration, 0x55C4, 0))
    hdlr = full_box(b"hdlr", 0, 0, struct.pack(">I4s12x", 0, b"vide"), b"watchkeep video\x00")
    dinf = box(b"dinf", full_box(b"dref", 0, 0, struct.pack(">I", 1), full_box(b"url ", 0, 1)))
    minf = box(b"minf", full_box(b"vmhd", 0, 1, bytes(8)), dinf, stbl)
    trak = box(b"trak", tkhd, trak_extra, box(b"mdia", mdhd, hdlr, minf))
    return box(b"moov", mvhd, trak, extra)


def _visual_entry(kind: bytes, info: StreamInfo, config: bytes) -> bytes:
    return box(
        kind,
        bytes(6), struct.pack(">H", 1), bytes(16),
        struct.pack(">HHIIIH", info.width, info.height, 0x00480000, 0x00480000, 0, 1),
        bytes(32), struct.pack(">Hh", 0x18, -1), config,
    )  # fmt: skip


def _avcc(parameters: ParameterSets, info: StreamInfo) -> bytes:
    sps, pps = parameters.sps or b"", parameters.pps or b""
    out = bytes((1, *info.profile[:3], 0xFF, 0xE1)) + struct.pack(">H", len(sps)) + sps
    out += bytes((1,)) + struct.pack(">H", len(pps)) + pps
    if info.profile[0] in (100, 110, 122, 144):
        out += bytes(
            (
                0xFC | info.chroma_format,
                0xF8 | (info.bit_depth_luma - 8),
                0xF8 | (info.bit_depth_chroma - 8),
                0,
            )
        )
    return out


def _hvcc(parameters: ParameterSets, info: StreamInfo) -> bytes:
    ptl = info.profile
    out = bytes((1,)) + ptl + struct.pack(">H", 0xF000) + bytes((0xFC, 0xFC | info.chroma_format))
    out += bytes((0xF8 | (info.bit_depth_luma - 8), 0xF8 | (info.bit_depth_chroma - 8)))
    layers = (min(info.max_sub_layers, 7) << 3) | (int(info.temporal_id_nesting) << 2) | 3
    out += struct.pack(">HB", 0, layers)
    arrays = [(32, parameters.vps), (33, parameters.sps), (34, parameters.pps)]
    out += bytes((len(arrays),))
    for kind, nal in arrays:
        data = nal or b""
        out += bytes((0x80 | kind,)) + struct.pack(">HH", 1, len(data)) + data
    return out


# Reading.


def iter_boxes(
    data: bytes | memoryview, start: int = 0, end: int | None = None
) -> Iterator[tuple[bytes, int, int]]:
    """(type, offset, size) of each whole box in ``data[start:end]``, stopping at the first
    that is cut off or malformed."""
    end = len(data) if end is None else end
    pos = start
    while end - pos >= 8:
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            if end - pos < 16:
                return
            size = struct.unpack_from(">Q", data, pos + 8)[0]
            header = 16
        if size < header or pos + size > end:
            return
        yield bytes(kind), pos, size
        pos += size


@dataclass(frozen=True, slots=True)
class Fragment:
    """One ``moof`` + ``mdat`` of a recording file."""

    offset: int  # of the moof
    size: int  # moof and mdat
    decode_time: int
    duration: int
    composition_offset: int
    keyframe: bool
    data_offset: int  # of the picture in the file
    data_size: int

    @property
    def presentation_time(self) -> int:
        return self.decode_time + self.composition_offset


def parse_moof(data: bytes | memoryview, offset: int, size: int) -> Fragment | None:
    """The fragment whose ``moof`` is at ``offset`` (``size`` bytes, ``mdat`` excluded), if it
    is one picture as watchkeep writes it."""
    decode_time = None
    sample: tuple[int, int, int, int] | None = None
    data_offset = 0
    for kind, pos, length in iter_boxes(data, offset + 8, offset + size):
        if kind != b"traf":
            continue
        for inner, at, inner_size in iter_boxes(data, pos + 8, pos + length):
            if inner == b"tfdt" and inner_size >= 16:
                version = data[at + 8]
                if version == 1 and inner_size >= 20:
                    decode_time = struct.unpack_from(">Q", data, at + 12)[0]
                else:
                    decode_time = struct.unpack_from(">I", data, at + 12)[0]
            elif inner == b"trun" and inner_size >= 36:
                flags = struct.unpack_from(">I", data, at + 8)[0] & 0xFFFFFF
                count, data_offset = struct.unpack_from(">Ii", data, at + 12)
                if flags != _TRUN_FLAGS or count != 1:
                    return None
                sample = struct.unpack_from(">IIIi", data, at + 20)
    if decode_time is None or sample is None:
        return None
    duration, sample_size, flags, composition = sample
    return Fragment(
        offset,
        0,
        decode_time,
        duration,
        composition,
        not flags & 0x00010000,
        offset + data_offset,
        sample_size,
    )


@dataclass(frozen=True)
class FragmentScan:
    """What a read of a recording file found: its init segment and its whole fragments."""

    init_size: int  # ftyp + moov
    fragments: list[Fragment]
    valid_size: int  # up to the end of the last whole fragment


#: A top-level box: type, offset, size, and its bytes (header included; b"" for an mdat,
#: whose picture a scan need not read).
Box = tuple[bytes, int, int, bytes]


def boxes_of(data: bytes) -> Iterator[Box]:
    """The top-level boxes of ``data`` as :func:`scan_fragments` takes them."""
    for kind, offset, size in iter_boxes(data):
        yield kind, offset, size, b"" if kind == b"mdat" else data[offset : offset + size]


def scan_fragments(boxes: Iterator[Box]) -> FragmentScan:
    """Read the top-level boxes of a recording file, stopping at the first damaged one."""
    init_size = 0
    fragments: list[Fragment] = []
    valid = 0
    pending: Fragment | None = None
    for kind, offset, size, content in boxes:
        if kind == b"ftyp" and offset == 0:
            continue
        if kind == b"moov" and init_size == 0:
            init_size = valid = offset + size
            continue
        if init_size == 0:
            break
        if kind == b"moof" and pending is None:
            moof = parse_moof(content, 0, size)
            if moof is None:
                break
            pending = dataclasses.replace(
                moof, offset=offset, data_offset=offset + moof.data_offset
            )
            continue
        if kind == b"mdat" and pending is not None:
            if pending.data_offset != offset + 8 or pending.data_size != size - 8:
                break
            fragments.append(dataclasses.replace(pending, size=offset + size - pending.offset))
            valid = offset + size
            pending = None
            continue
        break
    return FragmentScan(init_size, fragments, valid)
