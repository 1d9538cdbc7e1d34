"""RTP/JPEG (RFC 2435) reassembly, judged by libjpeg: a picture cut into packets and put
back together decodes to exactly the pixels of the original.

The packetizer here is the test's own, written from the RFC; tests/media/test_rtsp_camera.py
checks the same code against GStreamer's payloader.
"""

from __future__ import annotations

import asyncio
import io
import random
import struct

import pytest
from PIL import Image, ImageChops

from watchkeep.media._rtp_jpeg import RtpJpegDepacketizer, parse_rtp, standard_tables
from watchkeep.media._synthetic import SyntheticCamera


def segments(jpeg: bytes) -> tuple[dict[int, bytes], bytes]:
    """The marker segments of ``jpeg`` before its scan (marker -> body; DQT bodies
    joined), and the entropy-coded scan up to EOI."""
    found: dict[int, bytes] = {}
    at = 2
    while True:
        marker = jpeg[at + 1]
        length = struct.unpack_from("!H", jpeg, at + 2)[0]
        body = jpeg[at + 4 : at + 2 + length]
        found[marker] = found.get(marker, b"") + body if marker == 0xDB else body
        at += 2 + length
        if marker == 0xDA:
            end = jpeg.rindex(b"\xff\xd9")
            return found, jpeg[at:end]


def packetize(
    jpeg: bytes,
    *,
    q: int,
    sequence: int,
    timestamp: int,
    size: int = 1400,
    tables: bool | None = None,
) -> list[bytes]:
    """RTP/JPEG packets of ``jpeg`` (RFC 2435, section 3): Q < 128 names standard tables,
    Q >= 128 sends the picture's own tables in the first packet."""
    found, scan = segments(jpeg)
    sof = found[0xC0]
    height, width = struct.unpack_from("!HH", sof, 1)
    kind = {0x21: 0, 0x22: 1}[sof[7]]
    restart = b""
    if 0xDD in found:
        kind += 64
        restart = found[0xDD][:2] + b"\xff\xff"
    dqt = found[0xDB]
    own_tables = b"".join(dqt[i + 1 : i + 65] for i in range(0, len(dqt), 65))
    packets = []
    offset = 0
    while offset < len(scan):
        header = struct.pack(
            "!BBBBBBBB", 0, *offset.to_bytes(3, "big"), kind, q, width // 8, height // 8
        )
        header += restart
        if offset == 0 and q >= 128 and (tables is None or tables):
            header += struct.pack("!BBH", 0, 0, len(own_tables)) + own_tables
        elif offset == 0 and q >= 128:
            header += struct.pack("!BBH", 0, 0, 0)
        chunk = scan[offset : offset + size]
        last = offset + len(chunk) >= len(scan)
        rtp = struct.pack(
            "!BBHII", 0x80, (0x80 if last else 0) | 26, sequence & 0xFFFF, timestamp, 1234
        )
        packets.append(rtp + header + chunk)
        sequence += 1
        offset += len(chunk)
    return packets


def picture(quality: int, subsampling: int, seed: int = 1) -> bytes:
    rng = random.Random(seed)  # noqa: S311 -- test pictures, not secrets
    image = Image.new("RGB", (64, 48))
    image.putdata([(rng.randrange(256), rng.randrange(256), x % 256) for x in range(64 * 48)])
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality, subsampling=subsampling)
    return out.getvalue()


def same_pixels(a: bytes, b: bytes) -> bool:
    first, second = Image.open(io.BytesIO(a)), Image.open(io.BytesIO(b))
    return first.size == second.size and ImageChops.difference(first, second).getbbox() is None


def rebuild(packets: list[bytes], depacketizer: RtpJpegDepacketizer | None = None) -> list[bytes]:
    depacketizer = depacketizer or RtpJpegDepacketizer()
    out = []
    for raw in packets:
        packet = parse_rtp(raw)
        assert packet is not None
        got = depacketizer.push(packet)
        if got is not None:
            out.append(got)
    return out


@pytest.mark.parametrize("quality", [5, 10, 50, 75, 95, 99])
def test_standard_tables_are_those_libjpeg_writes_for_each_quality(quality: int) -> None:
    dqt = segments(picture(quality, 2))[0][0xDB]
    assert (dqt[1:65], dqt[66:130]) == standard_tables(quality)


@pytest.mark.parametrize(("subsampling", "name"), [(2, "4:2:0"), (1, "4:2:2")])
@pytest.mark.parametrize("q", [75, 255])
def test_a_picture_cut_into_packets_decodes_to_the_same_pixels(
    subsampling: int, name: str, q: int
) -> None:
    original = picture(75, subsampling)
    packets = packetize(original, q=q, sequence=65530, timestamp=9000, size=300)
    assert len(packets) > 3  # and the sequence numbers wrap around
    (rebuilt,) = rebuild(packets)
    assert same_pixels(rebuilt, original), name


def test_restart_markers_survive_the_trip() -> None:
    # watchkeep's synthetic pictures have a restart marker after every row (types 64-127).
    camera = SyntheticCamera("bars", 320, 240, 25, 12_000)
    asyncio.run(camera.start())
    original = camera.render(1, 1_700_000_000.0).jpeg
    assert 0xDD in segments(original)[0]
    (rebuilt,) = rebuild(packetize(original, q=255, sequence=1, timestamp=1))
    assert same_pixels(rebuilt, original)


def test_tables_sent_once_for_q_128_to_254_are_remembered() -> None:
    original = picture(60, 2)
    depacketizer = RtpJpegDepacketizer()
    first = packetize(original, q=200, sequence=1, timestamp=1)
    later = packetize(original, q=200, sequence=100, timestamp=2, tables=False)
    assert len(rebuild(first + later, depacketizer)) == 2
    # Q=255 promises tables in every picture: one without them is dropped.
    fresh = RtpJpegDepacketizer()
    assert rebuild(packetize(original, q=255, sequence=1, timestamp=1, tables=False), fresh) == []
    assert fresh.dropped == 1


def test_a_picture_with_a_lost_packet_is_dropped_and_the_next_one_comes_through() -> None:
    one, two = picture(75, 2, seed=1), picture(75, 2, seed=2)
    first = packetize(one, q=75, sequence=10, timestamp=3000, size=200)
    second = packetize(two, q=75, sequence=10 + len(first), timestamp=6600, size=200)
    depacketizer = RtpJpegDepacketizer()
    got = rebuild(first[:2] + first[3:] + second, depacketizer)
    assert len(got) == 1
    assert same_pixels(got[0], two)
    assert depacketizer.dropped == 1
    assert depacketizer.pictures == 1
    # Its last packet lost: the picture is dropped when the next one starts.
    depacketizer = RtpJpegDepacketizer()
    got = rebuild(first[:-1] + second, depacketizer)
    assert len(got) == 1
    assert depacketizer.dropped == 1


def test_garbage_never_raises_and_is_counted() -> None:
    rng = random.Random(7)  # noqa: S311 -- damage to packets, not secrets
    original = picture(75, 2)
    packets = packetize(original, q=255, sequence=1, timestamp=1, size=100)
    depacketizer = RtpJpegDepacketizer()
    for index in range(3000):
        raw = bytearray(packets[index % len(packets)])
        for _ in range(rng.randrange(1, 4)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        raw = raw[: rng.randrange(1, len(raw) + 1)]
        packet = parse_rtp(bytes(raw))
        if packet is not None:
            depacketizer.push(packet)
    assert depacketizer.bad_packets + depacketizer.dropped > 0
    assert parse_rtp(b"\x00" * 20) is None  # RTP version 0
    assert parse_rtp(b"\x80\x1a") is None
