"""The unit every part of the media layer passes around: one picture of one camera."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from watchkeep.errors import UsageError

if TYPE_CHECKING:
    from watchkeep.media._fmp4 import InitSegment

__all__ = ["Frame", "validate_camera_name"]

# Camera names become directory names of the recordings and travel in a one-byte-length
# field of the WebSocket header, so they are kept short and path-safe.
_CAMERA_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True, slots=True)
class Frame:
    """One picture: which camera, its sequence number, when (UTC seconds), the bytes.

    For Motion JPEG, ``jpeg`` is the JPEG. For H.264 and H.265 (``codec`` "H264", "H265")
    it is the picture as an MP4 sample (its NAL units, each behind a 4-byte length),
    ``fragment`` the ``moof`` and ``mdat`` header that goes in front of it in a fragmented
    MP4, ``init`` the init segment the fragment follows, and ``keyframe`` whether it
    decodes on its own (every JPEG does).

    Frames are immutable and shared: the hub hands the same object (and the same ``jpeg``
    bytes) to every subscriber and to the recorder, so nothing on the stream path copies them.
    """

    camera: str
    sequence: int
    timestamp: float
    jpeg: bytes
    codec: str = "JPEG"
    keyframe: bool = True
    init: InitSegment | None = None
    fragment: bytes = b""


def validate_camera_name(name: str) -> str:
    """Return ``name`` if it can name a camera, else raise :class:`~watchkeep.errors.UsageError`.

    1-64 ASCII letters, digits, ``.``, ``_`` or ``-``, starting with a letter or digit.
    """
    if not isinstance(name, str) or not _CAMERA_NAME.fullmatch(name):
        raise UsageError(
            f"invalid camera name {name!r}: use 1-64 letters, digits, '.', '_' or '-',"
            " starting with a letter or digit",
            fix="rename the camera, e.g. lobby-1",
        )
    return name
