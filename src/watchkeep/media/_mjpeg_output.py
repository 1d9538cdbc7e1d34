"""Writing live video as ``multipart/x-mixed-replace`` MJPEG (browsers, VLC, ffplay, curl).

These run once per frame per viewer, so they build only the small part head: the JPEG
bytes are never copied here. A writer sends ``head``, ``frame.jpeg`` and
:data:`MJPEG_PART_END` as three buffers (``writelines``, ``os.writev``); :func:`mjpeg_part`
joins them for writers that take one buffer, at the cost of one copy.
"""

from __future__ import annotations

import functools
import re

from watchkeep.media._frame import Frame

__all__ = [
    "DEFAULT_BOUNDARY",
    "MJPEG_PART_END",
    "mjpeg_content_type",
    "mjpeg_part",
    "mjpeg_part_head",
]

DEFAULT_BOUNDARY = "watchkeep-frame"
MJPEG_PART_END = b"\r\n"
# RFC 2046 boundary characters, minus the space (never needed, often mishandled).
_BOUNDARY = re.compile(r"[A-Za-z0-9'()+_,./:=?-]{1,70}")


@functools.lru_cache(maxsize=16)
def _prefix(boundary: str) -> bytes:
    if not _BOUNDARY.fullmatch(boundary):
        raise ValueError(
            f"invalid multipart boundary {boundary!r}: 1-70 letters, digits or '()+_,-./:=?"
        )
    return b"--%b\r\nContent-Type: image/jpeg\r\nContent-Length: " % boundary.encode()


def mjpeg_content_type(boundary: str = DEFAULT_BOUNDARY) -> str:
    """The ``Content-Type`` of an MJPEG response whose parts use ``boundary``."""
    _prefix(boundary)
    return f"multipart/x-mixed-replace; boundary={boundary}"


def mjpeg_part_head(frame: Frame, boundary: str = DEFAULT_BOUNDARY) -> bytes:
    """The delimiter and headers of ``frame``'s part, up to the blank line before the JPEG.

    Headers: ``Content-Type: image/jpeg``, ``Content-Length``, ``X-Timestamp`` (UTC seconds,
    microsecond precision) and ``X-Sequence``. The part continues with ``frame.jpeg`` and
    ends with :data:`MJPEG_PART_END`.
    """
    return b"%b%d\r\nX-Timestamp: %.6f\r\nX-Sequence: %d\r\n\r\n" % (
        _prefix(boundary),
        len(frame.jpeg),
        frame.timestamp,
        frame.sequence,
    )


def mjpeg_part(frame: Frame, boundary: str = DEFAULT_BOUNDARY) -> bytes:
    """The whole part of ``frame`` in one buffer (one copy of the JPEG)."""
    return b"".join((mjpeg_part_head(frame, boundary), frame.jpeg, MJPEG_PART_END))
