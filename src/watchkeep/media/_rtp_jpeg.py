"""Motion JPEG over RTP (RFC 2435): RTP packets in, whole JPEG pictures out (no I/O).

An RTP/JPEG packet carries a fragment of one picture's entropy-coded scan and, in a small
header, what is needed to rebuild the rest: the picture's size in 8-pixel blocks, its
chroma subsampling (type 0: 4:2:2, type 1: 4:2:0; 64 and 65 add restart markers), and its
quantization tables (a quality factor Q of 1-99 that scales the tables of the JPEG standard,
or tables sent in the first fragment when Q is 128-255). The receiver writes the JPEG
headers back (SOI, DQT, DRI, SOF0, the standard Huffman tables, SOS) in front of the scan.

Packets of one picture share an RTP timestamp; the last has the marker bit. A picture with
a missing fragment (a gap in sequence numbers or fragment offsets) is dropped, never
returned damaged, and counted.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["RtpJpegDepacketizer", "RtpPacket", "parse_rtp", "standard_tables"]

RTP_VERSION = 2
_MAX_PICTURE = 16 * 1024 * 1024

# The tables of the JPEG standard (ITU-T T.81, Annex K), in zigzag order as DQT holds them.
_LUMA_QUANT = bytes(
    (16, 11, 12, 14, 12, 10, 16, 14, 13, 14, 18, 17, 16, 19, 24, 40,
     26, 24, 22, 22, 24, 49, 35, 37, 29, 40, 58, 51, 61, 60, 57, 51,
     56, 55, 64, 72, 92, 78, 64, 68, 87, 69, 55, 56, 80, 109, 81, 87,
     95, 98, 103, 104, 103, 62, 77, 113, 121, 112, 100, 120, 92, 101, 103, 99)
)  # fmt: skip
_CHROMA_QUANT = bytes(
    (17, 18, 18, 24, 21, 24, 47, 26, 26, 47, 99, 66, 56, 66, 99, 99, *(99,) * 48)
)  # fmt: skip
_DC_LUMA_BITS = bytes((0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0))
_DC_CHROMA_BITS = bytes((0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0))
_DC_VALUES = bytes(range(12))
_AC_LUMA_BITS = bytes((0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7D))
_AC_LUMA_VALUES = bytes.fromhex(
    "01020300041105122131410613516107227114328191a1082342b1c11552d1f0"
    "2433627282090a161718191a25262728292a3435363738393a434445464748494a"
    "535455565758595a636465666768696a737475767778797a838485868788898a"
    "92939495969798999aa2a3a4a5a6a7a8a9aab2b3b4b5b6b7b8b9bac2c3c4c5c6"
    "c7c8c9cad2d3d4d5d6d7d8d9dae1e2e3e4e5e6e7e8e9eaf1f2f3f4f5f6f7f8f9fa"
)
_AC_CHROMA_BITS = bytes((0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 0x77))
_AC_CHROMA_VALUES = bytes.fromhex(
    "000102031104052131061241510761711322328108144291a1b1c109233352f0"
    "156272d10a162434e125f11718191a262728292a35363738393a434445464748"
    "494a535455565758595a636465666768696a737475767778797a828384858687"
    "88898a92939495969798999aa2a3a4a5a6a7a8a9aab2b3b4b5b6b7b8b9bac2c3"
    "c4c5c6c7c8c9cad2d3d4d5d6d7d8d9dae2e3e4e5e6e7e8e9eaf2f3f4f5f6f7f8f9fa"
)


def standard_tables(q: int) -> tuple[bytes, bytes]:
    """The luminance and chrominance tables for quality factor ``q`` (1-99), in zigzag
    order: the standard's tables scaled as RFC 2435 (Appendix A) and libjpeg's
    ``jpeg_set_quality`` do."""
    factor = min(max(q, 1), 99)
    scale = 5000 // factor if factor < 50 else 200 - factor * 2
    return tuple(  # type: ignore[return-value]
        bytes(min(max((value * scale + 50) // 100, 1), 255) for value in table)
        for table in (_LUMA_QUANT, _CHROMA_QUANT)
    )


@dataclass(frozen=True, slots=True)
class RtpPacket:
    """The fields of one RTP packet (RFC 3550) that a receiver of video uses."""

    payload_type: int
    marker: bool
    sequence: int
    timestamp: int
    ssrc: int
    payload: memoryview


def parse_rtp(packet: bytes | bytearray | memoryview) -> RtpPacket | None:
    """Parse an RTP packet; None if it is not one (wrong version, cut short)."""
    view = memoryview(packet)
    if len(view) < 12:
        return None
    first, second, sequence, timestamp, ssrc = struct.unpack_from("!BBHII", view)
    if first >> 6 != RTP_VERSION:
        return None
    start = 12 + 4 * (first & 0x0F)
    end = len(view)
    if first & 0x10:  # a header extension: 16-bit profile, 16-bit length in words
        if end < start + 4:
            return None
        start += 4 + 4 * struct.unpack_from("!H", view, start + 2)[0]
    if first & 0x20:  # padding: its length is the last byte
        end -= view[end - 1]
    if start > end:
        return None
    return RtpPacket(second & 0x7F, bool(second & 0x80), sequence, timestamp, ssrc, view[start:end])


class RtpJpegDepacketizer:
    """Rebuild JPEG pictures from RTP/JPEG packets of one stream, in arrival order.

    ``dimensions`` is the picture size to use when the packets say 0 x 0 (pictures over
    2040 pixels, whose size the camera gives in the SDP's ``a=x-dimensions``).
    Counters: :attr:`pictures`, :attr:`dropped` (pictures lost to missing or bad packets),
    :attr:`bad_packets`.
    """

    def __init__(self, dimensions: tuple[int, int] | None = None) -> None:
        self.dimensions = dimensions
        self.pictures = 0
        self.dropped = 0
        self.bad_packets = 0
        self.last_problem: str | None = None
        self._timestamp: int | None = None
        self._next_sequence: int | None = None
        self._fragments: list[bytes] = []
        self._size = 0  # scan bytes gathered for the current picture
        self._head: bytes | None = None  # the rebuilt headers of the current picture
        self._broken = False
        self._cached_tables: dict[int, bytes] = {}  # Q 128-254: tables sent once

    def push(self, packet: RtpPacket) -> bytes | None:
        """Add one packet; the picture it completes, if any."""
        expected = self._next_sequence
        self._next_sequence = (packet.sequence + 1) & 0xFFFF
        if packet.timestamp != self._timestamp:
            if self._fragments or self._broken:
                self._drop("its last packet never came")
            self._start(packet.timestamp)
        elif expected is not None and packet.sequence != expected:
            self._broken = True  # a packet of this picture was lost
            self.last_problem = "packets were lost"
        if self._broken:
            if packet.marker:
                self._drop(self.last_problem or "packets were lost")
            return None
        try:
            self._take(packet.payload)
        except _BadPacket as exc:
            self.bad_packets += 1
            self.last_problem = str(exc)
            self._broken = True
            if packet.marker:
                self._drop(str(exc))
            return None
        if not packet.marker:
            return None
        assert self._head is not None
        scan = b"".join(self._fragments)
        self._fragments, self._size, self._timestamp = [], 0, None
        self.pictures += 1
        tail = b"" if scan.endswith(b"\xff\xd9") else b"\xff\xd9"
        return b"".join((self._head, scan, tail))

    def _start(self, timestamp: int) -> None:
        self._timestamp = timestamp
        self._fragments, self._size, self._head, self._broken = [], 0, None, False

    def _drop(self, why: str) -> None:
        self.dropped += 1
        self.last_problem = why
        self._fragments, self._size, self._head, self._broken = [], 0, None, False
        self._timestamp = None

    def _take(self, payload: memoryview) -> None:
        if len(payload) < 8:
            raise _BadPacket("an RTP/JPEG packet shorter than its header")
        offset = int.from_bytes(payload[1:4], "big")
        kind, q, width, height = payload[4], payload[5], payload[6] * 8, payload[7]
        height *= 8
        at = 8
        restart_interval = 0
        if 64 <= kind <= 127:
            if len(payload) < at + 4:
                raise _BadPacket("an RTP/JPEG packet cut short in its restart header")
            restart_interval = int.from_bytes(payload[at : at + 2], "big")
            at += 4
            kind -= 64
        if kind not in (0, 1):
            raise _BadPacket(f"RTP/JPEG type {payload[4]} (only 0, 1, 64 and 65 are defined)")
        if offset != self._size:
            raise _BadPacket("a fragment at the wrong offset (a packet was lost)")
        if offset == 0:
            tables, at = self._tables(payload, at, q)
            if not width or not height:
                if self.dimensions is None:
                    raise _BadPacket("a picture of size 0 x 0 and no a=x-dimensions in the SDP")
                width, height = self.dimensions
            self._head = _headers(kind, width, height, tables, restart_interval)
        elif self._head is None:
            raise _BadPacket("a picture without its first fragment")
        data = bytes(payload[at:])
        self._size += len(data)
        if self._size > _MAX_PICTURE:
            raise _BadPacket(f"a picture over {_MAX_PICTURE} bytes")
        self._fragments.append(data)

    def _tables(self, payload: memoryview, at: int, q: int) -> tuple[list[tuple[int, bytes]], int]:
        """The quantization tables, as (precision, table) pairs; and where the scan starts."""
        if q < 128:
            if q == 0:
                raise _BadPacket("quality factor 0 (reserved)")
            luma, chroma = standard_tables(q)
            return [(0, luma), (0, chroma)], at
        if len(payload) < at + 4:
            raise _BadPacket("an RTP/JPEG packet cut short in its table header")
        precision = payload[at + 1]
        length = int.from_bytes(payload[at + 2 : at + 4], "big")
        at += 4
        if length == 0:
            cached = self._cached_tables.get(q)
            if q == 255 or cached is None:
                raise _BadPacket(f"quality factor {q} without its tables")
            data = cached
        else:
            if len(payload) < at + length:
                raise _BadPacket("an RTP/JPEG packet cut short in its tables")
            data = bytes(payload[at : at + length])
            at += length
            if q != 255:
                self._cached_tables[q] = data
        tables: list[tuple[int, bytes]] = []
        pos = 0
        while pos < len(data) and len(tables) < 4:
            wide = precision >> len(tables) & 1
            size = 128 if wide else 64
            if pos + size > len(data):
                raise _BadPacket("quantization tables of a bad length")
            tables.append((wide, data[pos : pos + size]))
            pos += size
        if not tables or pos != len(data):
            raise _BadPacket("quantization tables of a bad length")
        return tables, at


class _BadPacket(Exception):
    pass


def _segment(marker: int, body: bytes) -> bytes:
    return struct.pack("!BBH", 0xFF, marker, len(body) + 2) + body


def _headers(
    kind: int, width: int, height: int, tables: list[tuple[int, bytes]], restart: int
) -> bytes:
    parts = [b"\xff\xd8", _segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")]
    for number, (wide, table) in enumerate(tables):
        parts.append(_segment(0xDB, bytes(((wide << 4) | number,)) + table))
    if restart:
        parts.append(_segment(0xDD, struct.pack("!H", restart)))
    chroma_table = 1 if len(tables) > 1 else 0
    luma_sampling = 0x21 if kind == 0 else 0x22  # 4:2:2 or 4:2:0
    parts.append(
        _segment(
            0xC0,
            struct.pack("!BHHB", 8, height, width, 3)
            + bytes((1, luma_sampling, 0, 2, 0x11, chroma_table, 3, 0x11, chroma_table)),
        )
    )
    parts.append(_DHT)
    parts.append(_segment(0xDA, bytes((3, 1, 0x00, 2, 0x11, 3, 0x11, 0, 63, 0))))
    return b"".join(parts)


_DHT = b"".join(
    _segment(0xC4, bytes((table_class,)) + bits + values)
    for table_class, bits, values in (
        (0x00, _DC_LUMA_BITS, _DC_VALUES),
        (0x10, _AC_LUMA_BITS, _AC_LUMA_VALUES),
        (0x01, _DC_CHROMA_BITS, _DC_VALUES),
        (0x11, _AC_CHROMA_BITS, _AC_CHROMA_VALUES),
    )
)
