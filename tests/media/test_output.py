"""MJPEG part and WebSocket message formats: exact bytes, round trips, refusals."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from watchkeep.media import (
    MJPEG_PART_END,
    WS_HEADER_SIZE,
    Frame,
    MultipartParser,
    frame_from_ws_message,
    mjpeg_content_type,
    mjpeg_part,
    mjpeg_part_head,
    pack_ws_header,
    unpack_ws_header,
    ws_message,
)

JPEG = b"\xff\xd8" + bytes(range(256)) * 4 + b"\xff\xd9"


def test_an_mjpeg_part_has_the_delimiter_headers_and_the_jpeg() -> None:
    frame = Frame("lobby", 42, 1_764_217_596.25, JPEG)
    head = mjpeg_part_head(frame)
    assert head == (
        b"--watchkeep-frame\r\n"
        b"Content-Type: image/jpeg\r\n"
        b"Content-Length: 1028\r\n"
        b"X-Timestamp: 1764217596.250000\r\n"
        b"X-Sequence: 42\r\n"
        b"\r\n"
    )
    assert mjpeg_part(frame) == head + JPEG + MJPEG_PART_END
    assert mjpeg_content_type() == "multipart/x-mixed-replace; boundary=watchkeep-frame"
    assert mjpeg_part_head(frame, "other").startswith(b"--other\r\n")


def test_a_stream_of_parts_parses_back_to_the_frames() -> None:
    frames = [Frame("c", n, 1000.0 + n / 8, JPEG[: 10 + n] + b"\xff\xd9") for n in range(20)]
    parser = MultipartParser("watchkeep-frame")
    stream = b"".join(mjpeg_part(f) for f in frames)
    parts = parser.feed(stream) + parser.feed(mjpeg_part(frames[0]))
    assert [p.jpeg for p in parts] == [f.jpeg for f in frames] + [frames[0].jpeg]
    assert [int(p.headers["x-sequence"]) for p in parts[:-1]] == list(range(20))
    assert [float(p.headers["x-timestamp"]) for p in parts[:-1]] == [f.timestamp for f in frames]
    assert parser.bad_parts == 0
    assert parser.skipped_bytes == 0


@pytest.mark.parametrize("boundary", ["", "has space", "x" * 71, "semi;colon", 'quote"'])
def test_bad_boundaries_are_refused(boundary: str) -> None:
    with pytest.raises(ValueError, match="boundary"):
        mjpeg_content_type(boundary)


@given(
    camera=st.text(min_size=1, max_size=60).filter(lambda s: len(s.encode()) <= 255),
    timestamp=st.floats(allow_nan=False),
    sequence=st.integers(min_value=0, max_value=2**64 - 1),
    jpeg=st.binary(max_size=200),
)
def test_websocket_messages_round_trip(
    camera: str, timestamp: float, sequence: int, jpeg: bytes
) -> None:
    frame = Frame(camera, sequence, timestamp, jpeg)
    message = ws_message(frame)
    assert len(message) == WS_HEADER_SIZE + len(camera.encode()) + len(jpeg)
    back = frame_from_ws_message(message)
    assert back == frame or (math.isnan(back.timestamp) and math.isnan(frame.timestamp))
    header = unpack_ws_header(memoryview(message))
    assert message[header.length :] == jpeg


def test_the_websocket_header_layout_is_fixed() -> None:
    header = pack_ws_header("cam", 1.5, 7)
    assert header == b"WK\x01\x03" + b"\x3f\xf8" + b"\x00" * 6 + (7).to_bytes(8, "big") + b"cam"


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (b"WK\x01", "at least"),
        (b"XX\x01\x03" + bytes(16) + b"cam", "magic"),
        (b"WK\x02\x03" + bytes(16) + b"cam", "version"),
        (b"WK\x01\x09" + bytes(16) + b"cam", "truncated"),
        (b"WK\x01\x00" + bytes(16), "truncated"),
        (b"WK\x01\x02" + bytes(16) + b"\xff\xfe", "UTF-8"),
    ],
)
def test_malformed_websocket_messages_are_refused(message: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        frame_from_ws_message(message)


def test_unencodable_headers_are_refused() -> None:
    with pytest.raises(ValueError, match="1-255 bytes"):
        pack_ws_header("", 0.0, 0)
    with pytest.raises(ValueError, match="1-255 bytes"):
        pack_ws_header("x" * 256, 0.0, 0)
    with pytest.raises(ValueError, match="unsigned 64-bit"):
        pack_ws_header("cam", 0.0, -1)
