"""Live frames over WebSocket: one binary message per frame, a small header then the JPEG.

Layout (network byte order), :data:`WS_HEADER_SIZE` bytes then the camera name::

    offset  size  field
    0       2     magic b"WK"
    2       1     version (1)
    3       1     length N of the camera name in bytes (1-255, UTF-8)
    4       8     timestamp, UTC seconds, IEEE 754 double
    12      8     sequence, unsigned
    20      N     camera name
    20+N    ...   the JPEG, to the end of the message
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from watchkeep.media._frame import Frame

__all__ = [
    "WS_HEADER_SIZE",
    "WsFrameHeader",
    "frame_from_ws_message",
    "pack_ws_header",
    "unpack_ws_header",
    "ws_message",
]

_MAGIC = b"WK"
_VERSION = 1
_HEADER = struct.Struct("!2sBBdQ")
WS_HEADER_SIZE = _HEADER.size


@dataclass(frozen=True, slots=True)
class WsFrameHeader:
    """A decoded header; the JPEG starts at byte ``length`` of the message."""

    camera: str
    timestamp: float
    sequence: int
    length: int


def pack_ws_header(camera: str, timestamp: float, sequence: int) -> bytes:
    """The header of a frame message (fixed part and camera name)."""
    name = camera.encode()
    if not 1 <= len(name) <= 255:
        raise ValueError("a camera name in a frame message takes 1-255 bytes of UTF-8")
    if not 0 <= sequence < 1 << 64:
        raise ValueError(f"a frame sequence must be an unsigned 64-bit integer, not {sequence}")
    return _HEADER.pack(_MAGIC, _VERSION, len(name), timestamp, sequence) + name


def unpack_ws_header(message: bytes | bytearray | memoryview) -> WsFrameHeader:
    """Decode the header at the start of ``message``; ``ValueError`` if it is not one."""
    if len(message) < WS_HEADER_SIZE:
        raise ValueError(f"a frame message has at least {WS_HEADER_SIZE} bytes, not {len(message)}")
    magic, version, name_length, timestamp, sequence = _HEADER.unpack_from(message)
    if magic != _MAGIC:
        raise ValueError("not a watchkeep frame message (bad magic)")
    if version != _VERSION:
        raise ValueError(f"unsupported frame message version {version}")
    end = WS_HEADER_SIZE + name_length
    if name_length == 0 or len(message) < end:
        raise ValueError("frame message truncated inside the camera name")
    try:
        camera = bytes(message[WS_HEADER_SIZE:end]).decode()
    except UnicodeDecodeError as exc:
        raise ValueError("frame message camera name is not UTF-8") from exc
    return WsFrameHeader(camera, timestamp, sequence, end)


def ws_message(frame: Frame) -> bytes:
    """The binary message carrying ``frame`` (header and JPEG joined: one copy)."""
    return pack_ws_header(frame.camera, frame.timestamp, frame.sequence) + frame.jpeg


def frame_from_ws_message(message: bytes | bytearray | memoryview) -> Frame:
    """The frame a binary message carries."""
    header = unpack_ws_header(message)
    return Frame(header.camera, header.sequence, header.timestamp, bytes(message[header.length :]))
