"""An incremental parser of ``multipart/x-mixed-replace`` MJPEG streams (no I/O).

Feed it the bytes as they arrive; it returns the JPEG parts completed so far. Real cameras
are sloppy and networks cut streams short, so it never raises on bad input: garbage between
parts is skipped, a part that is not a whole JPEG (truncated, wrong ``Content-Length``, not
a JPEG at all) is dropped, and each is counted. With ``Content-Length`` a part is returned
as soon as its last byte arrives; without it, when the next boundary shows where it ended.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["MjpegPart", "MultipartParser", "boundary_from_content_type"]

_HEADER_END = re.compile(rb"\r?\n\r?\n")
_MAX_HEADER_BLOCK = 8192
_MAX_TRAILER = 256
_SOI = b"\xff\xd8"
_EOI = b"\xff\xd9"
_TRAILING = b"\r\n"
_BOUNDARY_PARAM = re.compile(r""";\s*boundary=(?:"([^"]+)"|([^;\s]+))""", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class MjpegPart:
    """One JPEG part: its headers (names lower-cased) and the JPEG bytes."""

    headers: dict[str, str]
    jpeg: bytes


def boundary_from_content_type(content_type: str) -> str | None:
    """The boundary of a ``multipart/...; boundary=...`` content type, or None."""
    if not content_type.lower().lstrip().startswith("multipart/"):
        return None
    match = _BOUNDARY_PARAM.search(content_type)
    if match is None:
        return None
    return match.group(1) or match.group(2)


class MultipartParser:
    """Split an MJPEG byte stream into JPEG parts; counts what it had to throw away."""

    def __init__(self, boundary: str, *, max_part_size: int = 16 * 1024 * 1024) -> None:
        if not boundary:
            raise ValueError("a multipart boundary cannot be empty")
        # Some cameras put the delimiter's dashes in the parameter too ("boundary=--x") and
        # then write "--x" or "----x": searching for "--x" finds both.
        raw = boundary.encode("latin-1")
        self._delimiter = raw if raw.startswith(b"--") else b"--" + raw
        self._max_part_size = max_part_size
        self._buffer = bytearray()
        self._pos = 0
        self._headers: dict[str, str] | None = None  # set while reading a part's body
        self._body_start = 0
        self.parts = 0
        self.bad_parts = 0
        self.skipped_bytes = 0

    @property
    def in_part(self) -> bool:
        """True while a part's body is incomplete (it is lost if the stream ends now)."""
        return self._headers is not None

    def feed(self, data: bytes | bytearray | memoryview) -> list[MjpegPart]:
        """Add ``data`` to the stream; return the parts it completed."""
        buffer = self._buffer
        buffer += data
        out: list[MjpegPart] = []
        while True:
            if self._headers is None:
                if self._take_whole_part(out):
                    continue
                if not self._read_head():
                    break
            elif not self._read_body(out):
                break
        # Keep only what is not consumed: at most one partial part (or delimiter).
        if self._pos:
            del buffer[: self._pos]
            if self._headers is not None:
                self._body_start -= self._pos
            self._pos = 0
        return out

    def _take_whole_part(self, out: list[MjpegPart]) -> bool:
        """The usual case in one step: at the read position, a delimiter (after the line
        break that ends the previous part), headers ending in CRLF CRLF with a
        ``Content-Length``, and that many bytes from a JPEG's SOI to its EOI, all received.
        False, having changed nothing, for anything else: the general path decides."""
        buffer, delimiter, pos = self._buffer, self._delimiter, self._pos
        if buffer.startswith(b"\r\n", pos):
            pos += 2
        if not buffer.startswith(delimiter, pos):
            return False
        start = pos + len(delimiter)
        end = buffer.find(b"\r\n\r\n", start, start + _MAX_HEADER_BLOCK)
        if end < 0:
            return False
        text = buffer[start:end].decode("latin-1")
        if "\n\n" in text or "\n\r\n" in text or text.startswith("--"):
            return False  # an earlier end of the headers, or the close delimiter
        headers: dict[str, str] = {}
        for line in text.split("\r\n")[1:]:  # [0] ends the delimiter line
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        length = _content_length(headers.get("content-length"))
        body = end + 4
        if length is None or length > self._max_part_size or len(buffer) < body + length:
            return False
        stop = body + length
        # A JPEG that begins and ends where its length says. The body is not searched for
        # a delimiter: a part shorter than it claims ends, at its claimed length, inside
        # whatever follows, which ends in EOI only if the camera's length covers whole
        # parts to the byte; and a picture whose bytes happen to hold the delimiter is a
        # whole picture. (The search was 6% of a recording server's loop at 500 cameras.)
        if not (length > 4 and buffer.startswith(_SOI, body) and buffer.endswith(_EOI, body, stop)):
            return False
        with memoryview(buffer) as view:  # one copy; a bytearray slice would make two
            out.append(MjpegPart(headers, bytes(view[body:stop])))
        self.parts += 1
        self._pos = stop
        return True

    def _read_head(self) -> bool:
        """Find the next delimiter and parse the part headers after it."""
        buffer, delimiter = self._buffer, self._delimiter
        found = buffer.find(delimiter, self._pos)
        if found < 0:
            # Keep a tail that could be the start of a delimiter split across reads.
            keep = max(self._pos, len(buffer) - len(delimiter) - 1)
            self._skip(self._pos, keep)
            self._pos = keep
            return False
        self._skip(self._pos, found)
        start = found + len(delimiter)
        if buffer[start : start + 2] == b"--":
            # The close delimiter: whatever follows is an epilogue (or a new preamble).
            self._pos = start + 2
            return True
        end = _HEADER_END.search(buffer, start, start + _MAX_HEADER_BLOCK)
        if end is None:
            if len(buffer) - start > _MAX_HEADER_BLOCK:
                self.bad_parts += 1
                self._pos = start
                return True
            self._pos = found
            return False
        headers: dict[str, str] = {}
        # Decoded once for the block (one call per header would cost more than the rest).
        lines = buffer[start : end.start()].decode("latin-1").split("\n")
        for line in lines[1:]:  # lines[0] ends the delimiter line (transport padding)
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        self._headers = headers
        self._body_start = self._pos = end.end()
        return True

    def _read_body(self, out: list[MjpegPart]) -> bool:
        headers = self._headers
        assert headers is not None
        buffer, start, delimiter = self._buffer, self._body_start, self._delimiter
        length = _content_length(headers.get("content-length"))
        if length is not None and length > self._max_part_size:
            self._reject(start)
            return True
        if length is not None:
            end = start + length
            if len(buffer) < end:
                return False
            # A part shorter than it claimed swallows the next delimiter: resynchronise there.
            inner = buffer.find(delimiter, start, end)
            if inner >= 0:
                self._reject(inner)
                return True
            if self._is_jpeg(start, end):
                self._accept(out, headers, start, end, end)
                return True
            # Not a JPEG. The next delimiter may straddle the claimed end: look past it.
            horizon = end + len(delimiter) - 1
            if len(buffer) < horizon:
                return False
            straddling = buffer.find(delimiter, start, horizon)
            self._reject(straddling if straddling >= 0 else end)
            return True
        found = buffer.find(delimiter, start)
        if found < 0:
            if len(buffer) - start > self._max_part_size:
                self._reject(len(buffer))
            return False
        # Without a length, bytes a camera sent after the JPEG belong to the part: keep the
        # picture, up to its EOI when that is near the end, and count the rest as skipped.
        eoi = buffer.rfind(_EOI, max(start, found - _MAX_TRAILER), found)
        end = found if eoi < 0 else eoi + 2
        self._skip(end, found)
        if self._is_jpeg(start, end):
            self._accept(out, headers, start, end, found)
        else:
            self._reject(found)
        return True

    def _is_jpeg(self, start: int, end: int) -> bool:
        buffer = self._buffer
        while end > start and buffer[end - 1] in _TRAILING:
            end -= 1
        return (
            end - start > 4 and buffer.startswith(_SOI, start) and buffer.endswith(_EOI, start, end)
        )

    def _accept(
        self, out: list[MjpegPart], headers: dict[str, str], start: int, end: int, resume: int
    ) -> None:
        buffer = self._buffer
        while end > start and buffer[end - 1] in _TRAILING:
            end -= 1
        with memoryview(buffer) as view:  # one copy; a bytearray slice would make two
            jpeg = bytes(view[start:end])
        out.append(MjpegPart(headers, jpeg))
        self.parts += 1
        self._headers = None
        self._pos = resume

    def _reject(self, resume: int) -> None:
        self.bad_parts += 1
        self._headers = None
        self._pos = resume

    def _skip(self, start: int, end: int) -> None:
        # Line breaks around delimiters are the format, not garbage: count the other bytes.
        if end > start:
            buffer = self._buffer
            breaks = buffer.count(b"\r", start, end) + buffer.count(b"\n", start, end)
            self.skipped_bytes += end - start - breaks


def _content_length(value: str | None) -> int | None:
    if value is None or not value.isdigit():
        return None
    return int(value)
