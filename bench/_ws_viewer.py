"""A live H.264/H.265 viewer for the benchmarks: one WebSocket connection to a recording
server's ``live.ws`` (fMP4 fragments, as the web client's Media Source Extensions take
them), read as cheaply as the MJPEG viewers of :mod:`bench.viewers` read their parts.

It speaks just enough of RFC 6455 for the server's side of ``live.ws``: the upgrade, then
frames from the server (never masked, never fragmented by aiohttp), answering pings. Of a
binary message it reads only the first 104 bytes, and only when they start a ``moof``: the
fragment's sequence number (``mfhd``, to count pictures skipped) and its presentation time
(``tfdt`` plus the sample's composition offset, in 1/90,000 s: the camera's wall-clock time
of the picture). Everything else (the stream message, the init segment, the pictures) is
skipped by its length. The delay of a picture is the time of the read that brought its
last byte minus its presentation time, both on the cameras' clock: the monotonic clock plus
``clock_offset`` (what :mod:`bench.rtspfarm`'s cameras were given), so that a correction of
the wall clock during a run is not taken for a delay.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import time
from typing import TYPE_CHECKING, Any, cast

from bench._common import Histogram

if TYPE_CHECKING:
    from bench.viewers import Totals

__all__ = ["WsViewer", "ws_request"]

_BUFFER = 256 * 1024
_MAX_HEAD = 16384
_BINS = Histogram.BINS
# moof size and type, mfhd's sequence number, tfdt's decode time, trun's composition offset
# (the layout of watchkeep.media._fmp4.fragment_header).
_MOOF = struct.Struct(">4x4s12xI36xQ32xi")
_TIMESCALE = 90_000.0
_BINARY, _CLOSE, _PING = 2, 8, 9


def ws_request(target: dict[str, Any], token: str | None) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {target['path']} HTTP/1.1",
        f"Host: {target['host']}:{target['port']}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class WsViewer(asyncio.BufferedProtocol):
    """One connection: the upgrade's answer, then WebSocket frames of fMP4 fragments."""

    def __init__(
        self,
        request: bytes,
        totals: Totals,
        *,
        repeat: bool = False,
        clock_offset: float | None = None,
    ) -> None:
        self.request = request
        self.clock_offset = time.time() - time.monotonic() if clock_offset is None else clock_offset
        self.totals = totals
        self.transport: asyncio.Transport | None = None
        self.frames = 0
        self.gaps = 0
        self.last_sequence: int | None = None
        self.closed = asyncio.get_running_loop().create_future()
        self.buffer = bytearray(_BUFFER)
        self.view = memoryview(self.buffer)
        self.kept = 0  # bytes at the buffer's start, kept from the last read (a cut head)
        self.upgraded = False
        self.failed = False
        self.skip = 0  # payload bytes of the current message still to come
        self.pending: float | None = None  # the picture time of the message being skipped

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.totals.open += 1
        self.transport.write(self.request)
        self.transport.pause_reading()  # as bench.viewers: nothing read before "start"

    def connection_lost(self, exc: Exception | None) -> None:
        self.totals.ended += 1
        if not self.closed.done():
            self.closed.set_result(None)

    def fail(self, why: str) -> None:
        self.failed = True
        self.totals.errors.append(why)
        if self.transport is not None:
            self.transport.close()

    def get_buffer(self, sizehint: int) -> memoryview:
        kept = self.kept
        return self.view[kept:] if kept else self.view

    def buffer_updated(self, nbytes: int) -> None:
        totals = self.totals
        if totals.counting:
            totals.bytes += nbytes
        if self.failed:
            return
        buffer = self.buffer
        end = self.kept + nbytes
        self.kept = 0
        at = 0
        now = 0.0
        if not self.upgraded:
            found = buffer.find(b"\r\n\r\n", 0, end)
            if found < 0:
                if end > _MAX_HEAD:
                    self.fail("the upgrade's answer is too long")
                else:
                    self.kept = end
                return
            status = bytes(buffer[: buffer.find(b"\r\n", 0, found + 2)])
            if status.split(b" ", 2)[1:2] != [b"101"]:
                self.fail(f"HTTP answer {status[:80]!r}")
                return
            self.upgraded = True
            at = found + 4
        while at < end:
            skip = self.skip
            if skip:
                if skip > end - at:
                    self.skip = skip - (end - at)
                    at = end
                    break
                at += skip
                self.skip = 0
                stamp = self.pending
                if stamp is not None:
                    self.pending = None
                    if not now:
                        now = time.monotonic() + self.clock_offset
                    index = int((now - stamp) * 1000.0)
                    totals.delays.counts[
                        index if 0 <= index < _BINS else (0 if index < 0 else _BINS - 1)
                    ] += 1
                continue
            if end - at < 2:
                break
            first, second = buffer[at], buffer[at + 1]
            length = second & 0x7F
            head = 2
            if length == 126:
                head = 4
            elif length == 127:
                head = 10
            if end - at < head:
                break
            if head == 4:
                length = int.from_bytes(buffer[at + 2 : at + 4], "big")
            elif head == 10:
                length = int.from_bytes(buffer[at + 2 : at + 10], "big")
            opcode = first & 0x0F
            if opcode == _BINARY and length >= _MOOF.size:
                if end - at < head + _MOOF.size:
                    break  # the fragment's head goes on in the next read
                kind, sequence, decode, offset = _MOOF.unpack_from(buffer, at + head)
                if kind == b"moof":
                    self._picture(sequence, (decode + offset) / _TIMESCALE)
                self.skip = length
                at += head
            elif opcode == _PING:
                if end - at < head + length:
                    break
                payload = bytes(buffer[at + head : at + head + length])
                assert self.transport is not None
                # A client's frame is masked: a zero mask leaves the payload as it is.
                self.transport.write(bytes((0x8A, 0x80 | length)) + b"\0\0\0\0" + payload)
                at += head + length
            elif opcode == _CLOSE:
                self.fail("the server closed the WebSocket")
                return
            else:
                self.skip = length
                at += head
        if at < end:
            # A frame head cut by the end of the read: to the buffer's start.
            buffer[: end - at] = buffer[at:end]
            self.kept = end - at

    def _picture(self, sequence: int, stamp: float) -> None:
        totals = self.totals
        last = self.last_sequence
        self.last_sequence = sequence
        if not totals.counting:
            return
        if last is not None and sequence > last + 1:
            self.gaps += sequence - last - 1
            totals.gaps += sequence - last - 1
        self.frames += 1
        totals.frames += 1
        self.pending = stamp
