"""Just enough JPEG structure to compose frames from pre-encoded pieces (pure functions).

A baseline JPEG encoded with a restart marker after every MCU row codes each row on its own:
the DC predictors reset at every marker and each row starts byte-aligned. A row's bytes
therefore depend only on its pixels, the tables and the width, never on the rows around it.
Encoding a horizontal band of a picture alone (same width, quality and subsampling) gives
byte for byte the rows the whole picture would contain, so a frame can be assembled from a
pre-encoded background and a few re-encoded bands. :mod:`._synthetic` relies on this.
"""

from __future__ import annotations

import io
import re

from PIL import Image

__all__ = [
    "EOI",
    "MCU_SIZE",
    "RESTART_MARKERS",
    "EncodedPicture",
    "comment_segments",
    "encode_rows",
]

SOI = b"\xff\xd8"
EOI = b"\xff\xd9"
# 4:2:0 subsampling: an MCU covers 16x16 pixels, so bands are cut at multiples of 16 rows.
MCU_SIZE = 16
RESTART_MARKERS = tuple(bytes((0xFF, 0xD0 + n)) for n in range(8))
_RESTART = re.compile(rb"\xff[\xd0-\xd7]")
_COM_MAX = 0xFFFF - 2  # the length field counts itself
_ZEROS = memoryview(bytes(_COM_MAX))
_SOS = 0xDA
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


class EncodedPicture:
    """A JPEG split into the pieces frames are assembled from.

    ``leading`` is SOI plus the APPn segments that must come first (JFIF), ``tables`` the rest
    of the header up to and including the SOS header, ``rows`` the entropy-coded MCU rows
    without their restart markers.
    """

    __slots__ = ("leading", "rows", "tables")

    def __init__(self, jpeg: bytes) -> None:
        if not jpeg.startswith(SOI) or not jpeg.endswith(EOI):
            raise ValueError("not a complete JPEG: it must start with SOI and end with EOI")
        pos = 2
        first_non_app = -1
        while True:
            if jpeg[pos] != 0xFF:
                raise ValueError(f"JPEG marker expected at byte {pos}")
            marker = jpeg[pos + 1]
            if marker in _STANDALONE:
                pos += 2
                continue
            length = int.from_bytes(jpeg[pos + 2 : pos + 4], "big")
            if first_non_app < 0 and not 0xE0 <= marker <= 0xEF:
                first_non_app = pos
            pos += 2 + length
            if marker == _SOS:
                break
        self.leading = jpeg[:first_non_app]
        self.tables = jpeg[first_non_app:pos]
        self.rows = _RESTART.split(jpeg[pos:-2])


def encode_rows(image: Image.Image, quality: int) -> EncodedPicture:
    """Encode ``image`` as baseline 4:2:0 JPEG with one restart interval per MCU row."""
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality, subsampling=2, restart_marker_rows=1)
    return EncodedPicture(out.getvalue())


def comment_segments(text: bytes, padding: int) -> list[bytes | memoryview]:
    """COM segments carrying ``text`` and then ``padding`` more bytes, all in all.

    The segments take exactly ``len(text) + 4 + padding`` bytes, which lets a frame reach an
    exact size without touching the picture. The filler is sliced from one shared zero
    buffer, so it costs no allocation per frame.
    """
    if len(text) > _COM_MAX:
        raise ValueError("a JPEG comment holds at most 65533 bytes")
    total = len(text) + 4 + max(0, padding)
    count = -(-total // (_COM_MAX + 4))
    base, extra = divmod(total, count)
    parts: list[bytes | memoryview] = []
    for index in range(count):
        size = base + (1 if index < extra else 0)  # marker, length and payload
        head = text if index == 0 else b""
        parts.append(b"\xff\xfe" + (size - 2).to_bytes(2, "big") + head)
        filler = size - 4 - len(head)
        if filler:
            parts.append(_ZEROS[:filler])
    return parts
