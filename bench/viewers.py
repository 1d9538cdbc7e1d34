"""Live MJPEG viewers for the benchmarks: many connections in one process, counting what
arrives (bytes, frames, sequence gaps, camera-to-viewer delay), for a fixed time.

    python -m bench.viewers   (spec on standard input, one line; then "go")

It prints ``connected`` once its connections are open (reading nothing yet), starts
reading at the next line of standard input, counting at the one after, and prints its
result (JSON, one line) after ``duration`` seconds.
The spec (JSON, one line)::

    {"targets": [{"address": "127.1.2.3", "port": 7563, "host": "rs1.site.test",
                  "path": "/api/v1/cameras/cam1/live.mjpeg",
                  "token": "..."}, ...],     # optional: this target's stream token
     "ca": "/path/ca.pem" | null,          # TLS verified against it; null: plaintext
     "token": "..." | null,                # sent as Authorization: Bearer (targets
                                           # without a token of their own)
     "duration": 10.0,                     # seconds counted after "go"
     "repeat": false,                      # request again when a response ends (nginx file)
     "protocol": "mjpeg" | "ws",           # ws: live.ws's fMP4 (bench._ws_viewer)
     "clock_offset": 1.7e9 | null}         # ws: the cameras' clock is the monotonic one
                                           # plus this (bench.rtspfarm --clock-offset)

A viewer decodes HTTP/1.1 (chunked, Content-Length or close-delimited bodies) and the
multipart parts by their Content-Length: it must cost far less than the server it
measures, for they share the machine. So each connection reads (the TLS layer decrypts)
into one buffer of its own, allocated once (`asyncio.BufferedProtocol`), and parses it in
place: pictures are skipped by their length, never copied or sliced; only a head cut off
by the end of a read is moved, to the buffer's start, to be completed by the next read.
The delay of a frame is the time of arrival of its last byte (the time of the read that
brought it) minus its ``X-Timestamp`` (set by the camera when it made the frame; every
process here reads the same clock).
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import sys
import time
from typing import Any, cast

from bench._common import Histogram, new_event_loop
from bench._ws_viewer import WsViewer, ws_request

_HEAD_END = b"\r\n\r\n"
_MAX_HEAD = 16384
# Per connection: what one read may bring (a read wants at least what the TLS layer holds
# decrypted; a burst larger than this is read in several goes). With a plain Protocol,
# uvloop's TLS layer makes a new 256 KB bytes per read (an mmap, page faults and a munmap):
# that, not the parsing, was most of a viewer's CPU per frame. As large as uvloop's reads:
# with 64 KB, viewers of a 24 MB/s stream took a call per 64 KB and delivered ~20% less.
_BUFFER = 256 * 1024
CONNECT_SECONDS = 30.0  # for all connections: a server too busy to accept fails the step

# A part head as watchkeep.media.mjpeg_part_head writes it (rs1, and the recording nginx
# serves): read with one match. Any other is parsed header by header.
_PART_HEAD = re.compile(
    rb"--[^\r\n]*\r\nContent-Type: image/jpeg\r\nContent-Length: (\d+)\r\n"
    rb"X-Timestamp: (\d+\.\d+)\r\nX-Sequence: (\d+)\r\n\r\n"
)
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,15})(?:;[^\r\n]*)?\r\n")  # others: by find
_BINS = Histogram.BINS

# Transfer states: where the next byte of the response belongs.
_RESPONSE = 0  # the response head
_CHUNK_SIZE = 1  # a chunk-size line
_CHUNK_DATA = 2  # the data of a chunk (``remaining`` bytes)
_CHUNK_CRLF = 3  # the CRLF after a chunk's data (``remaining`` bytes)
_BODY = 4  # a body of ``remaining`` bytes (-1: to the end of the connection)
_TRAILER = 5  # the lines after the last chunk, up to an empty one
_FAILED = 6  # nothing more is read


class Totals:
    def __init__(self) -> None:
        self.counting = False
        self.bytes = 0
        self.frames = 0
        self.gaps = 0
        self.delays = Histogram()
        self.errors: list[str] = []
        self.open = 0
        self.ended = 0


class Viewer(asyncio.BufferedProtocol):
    """One connection: an HTTP response whose body is a stream of MJPEG parts."""

    def __init__(self, request: bytes, totals: Totals, *, repeat: bool) -> None:
        self.request = request
        self.totals = totals
        self.repeat = repeat
        self.transport: asyncio.Transport | None = None
        self.frames = 0
        self.gaps = 0
        self.last_sequence: int | None = None
        self.closed = asyncio.get_running_loop().create_future()
        self.buffer = bytearray(_BUFFER)
        self.view = memoryview(self.buffer)
        self.kept = 0  # bytes at the buffer's start, kept from the last read (a cut head)
        self._new_response()

    def _new_response(self) -> None:
        self.state = _RESPONSE
        self.remaining = -1  # of the body (Content-Length) or of a chunk; -1: to the end
        self.part_left = 0  # bytes of the current part's picture (+ CRLF) still to come
        # A part head split between chunks (or bodies), gathered here; rare.
        self.part_head = bytearray()
        self.pending_timestamp: float | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)
        self.totals.open += 1
        self.transport.write(self.request)
        # Not a byte is read until every viewer is connected: a server already streaming
        # to the first viewers would make the handshakes of the last ones a test of its own.
        self.transport.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.totals.ended += 1
        if not self.closed.done():
            self.closed.set_result(None)

    def fail(self, why: str) -> None:
        self.state = _FAILED
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
        buffer = self.buffer
        end = self.kept + nbytes
        self.kept = 0
        now = 0.0  # the time of this read, taken when a frame ends in it
        start = 0
        while start < end:
            state = self.state
            if state in (_CHUNK_DATA, _BODY):
                remaining = self.remaining
                stop = end if remaining < 0 or remaining > end - start else start + remaining
                # The multipart body: skip pictures by their length, parse part heads.
                at = start
                while at < stop:
                    left = self.part_left
                    if left:
                        if left > stop - at:
                            self.part_left = left - (stop - at)
                            at = stop
                            break
                        at += left
                        self.part_left = 0
                        timestamp = self.pending_timestamp
                        if timestamp is not None:
                            # The frame's last byte is here: its delay ends now.
                            self.pending_timestamp = None
                            if totals.counting:
                                if not now:
                                    now = time.time()
                                index = int((now - timestamp) * 1000.0)
                                totals.delays.counts[
                                    index if 0 <= index < _BINS else (0 if index < 0 else _BINS - 1)
                                ] += 1
                        continue
                    if self.part_head:
                        at = self._gather_part_head(at, stop)
                        if self.state == _FAILED:
                            return
                        continue
                    match = _PART_HEAD.match(buffer, at, stop)
                    if match is not None:
                        length, stamp, sequence = match.groups()
                        self._part(int(length), float(stamp), int(sequence))
                        at = match.end()
                        continue
                    found = buffer.find(_HEAD_END, at, min(stop, at + _MAX_HEAD + 4))
                    if found >= 0:
                        self._part_fields(bytes(buffer[at:found]))
                        at = found + 4
                    elif stop - at > _MAX_HEAD:
                        self.fail("a part head too long")
                        return
                    elif stop == end and (remaining < 0 or remaining > end - start):
                        break  # the head goes on in the next read: kept below
                    else:  # the head goes on in the next chunk (or body)
                        self.part_head += buffer[at:stop]
                        at = stop
                    if self.state == _FAILED:
                        return
                if remaining >= 0:
                    remaining -= at - start
                    self.remaining = remaining
                start = at
                if remaining == 0:
                    if state == _CHUNK_DATA:
                        self.state, self.remaining = _CHUNK_CRLF, 2
                    else:
                        self._response_done()
                elif at < end:  # a part head cut by the end of this read
                    break
            elif state == _CHUNK_CRLF:
                take = min(self.remaining, end - start)
                start += take
                self.remaining -= take
                if self.remaining == 0:
                    self.state = _CHUNK_SIZE
            elif state == _FAILED:
                return
            else:  # the response head, a chunk-size line or a trailer line
                if state == _CHUNK_SIZE:
                    match = _CHUNK_LINE.match(buffer, start, end)
                    if match is not None:
                        size = int(match[1], 16)
                        start = match.end()
                        if size:
                            self.state, self.remaining = _CHUNK_DATA, size
                        else:
                            self.state = _TRAILER
                        continue
                marker = _HEAD_END if state == _RESPONSE else b"\r\n"
                found = buffer.find(marker, start, end)
                if found < 0:
                    if end - start > _MAX_HEAD:
                        self.fail("a response or chunk head too long")
                        return
                    break  # kept below, for the next read to complete
                line = bytes(buffer[start:found])
                start = found + len(marker)
                if state == _RESPONSE:
                    self._response_head(line)
                    if self.transport is None or self.transport.is_closing():
                        return
                elif state == _TRAILER:
                    if not line:
                        self._response_done()
                else:
                    size = int(line.split(b";", 1)[0], 16)
                    if size == 0:
                        self.state = _TRAILER
                    else:
                        self.state, self.remaining = _CHUNK_DATA, size
        if start < end:
            # A head cut by the end of the read: to the buffer's start, for the next read.
            buffer[: end - start] = buffer[start:end]
            self.kept = end - start

    def _gather_part_head(self, at: int, stop: int) -> int:
        """The slow path: a part head begun in an earlier chunk (or body) goes on here."""
        head = self.part_head
        old = len(head)
        head += self.buffer[at : min(stop, at + _MAX_HEAD + 4)]
        found = head.find(_HEAD_END, max(0, old - 3))
        if found < 0:
            if len(head) > _MAX_HEAD:
                self.fail("a part head too long")
            return min(stop, at + _MAX_HEAD + 4)
        fields = bytes(head[:found])
        head.clear()
        self._part_fields(fields)
        return at + found + 4 - old

    def _response_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        status = lines[0].split(b" ", 2)
        if len(status) < 2 or status[1] != b"200":
            self.fail(f"HTTP answer {lines[0][:80]!r}")
            return
        chunked = False
        self.remaining = -1
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif name == b"content-length":
                self.remaining = int(value)
        self.state = _CHUNK_SIZE if chunked else _BODY

    def _response_done(self) -> None:
        if self.repeat and self.transport is not None:
            self._new_response()
            self.transport.write(self.request)
        elif self.transport is not None:
            self.state = _FAILED  # the end: nothing more is read
            self.transport.close()

    def _part_fields(self, head: bytes) -> None:
        """A part head in any other form than mjpeg_part_head's: header by header."""
        length = -1
        timestamp = sequence = None
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            name = name.lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"x-timestamp":
                timestamp = float(value)
            elif name == b"x-sequence":
                sequence = int(value)
        if length < 0:
            self.fail("a part without Content-Length")
            return
        self._part(length, timestamp, sequence)

    def _part(self, length: int, timestamp: float | None, sequence: int | None) -> None:
        # The picture, then the CRLF that ends the part, are skipped by length.
        self.part_left = length + 2
        totals = self.totals
        if sequence is not None and not self.repeat:
            last = self.last_sequence
            if last is not None and sequence > last + 1 and totals.counting:
                self.gaps += sequence - last - 1
                totals.gaps += sequence - last - 1
            self.last_sequence = sequence
        if totals.counting:
            self.frames += 1
            totals.frames += 1
            if not self.repeat:
                self.pending_timestamp = timestamp


def _request(target: dict[str, Any], token: str | None) -> bytes:
    lines = [f"GET {target['path']} HTTP/1.1", f"Host: {target['host']}:{target['port']}"]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    totals = Totals()
    context: ssl.SSLContext | None = None
    if spec.get("ca"):
        context = ssl.create_default_context(cafile=spec["ca"])
    viewers: list[Viewer | WsViewer] = []
    opened: list[dict[str, Any]] = []  # their targets
    give_up = time.monotonic() + CONNECT_SECONDS
    kind, make_request = (
        (WsViewer, ws_request) if spec.get("protocol") == "ws" else (Viewer, _request)
    )

    options: dict[str, Any] = {"repeat": bool(spec.get("repeat"))}
    if kind is WsViewer:
        options["clock_offset"] = spec.get("clock_offset")

    async def open_one(target: dict[str, Any]) -> None:
        request = make_request(target, target.get("token", spec.get("token")))
        if time.monotonic() > give_up:
            totals.errors.append(f"not connected within {CONNECT_SECONDS} s")
            return
        try:
            _, viewer = await asyncio.wait_for(
                loop.create_connection(
                    lambda: kind(request, totals, **options),
                    target["address"],
                    target["port"],
                    ssl=context,
                    server_hostname=target["host"] if context else None,
                ),
                CONNECT_SECONDS,
            )
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            totals.errors.append(f"connect {target['address']}:{target['port']}: {exc}")
            return
        viewers.append(viewer)
        opened.append(target)

    # A few at a time: a burst of hundreds of handshakes would be a test of its own.
    batch = 25
    for i in range(0, len(spec["targets"]), batch):
        await asyncio.gather(*(open_one(t) for t in spec["targets"][i : i + batch]))
    # Tell the orchestrator; read from its "start" (given to every viewer process at once);
    # count from its "go" (after a warm-up) for the duration.
    print("connected", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    for viewer in viewers:
        if viewer.transport is not None and not viewer.transport.is_closing():
            viewer.transport.resume_reading()
    await loop.run_in_executor(None, sys.stdin.readline)
    totals.counting = True
    began = time.monotonic()
    await asyncio.sleep(float(spec["duration"]))
    totals.counting = False
    seconds = time.monotonic() - began
    per_viewer = [v.frames for v in viewers]
    silent = [t["path"] for t, v in zip(opened, viewers, strict=True) if not v.frames]
    ended = totals.ended
    for viewer in viewers:
        if viewer.transport is not None:
            viewer.transport.abort()
    return {
        "connections": len(spec["targets"]),
        "connected": len(viewers),
        "ended_early": ended,
        "seconds": seconds,
        "bytes": totals.bytes,
        "frames": totals.frames,
        "gaps": totals.gaps,
        "frames_per_viewer_min": min(per_viewer, default=0),
        "frames_per_viewer_max": max(per_viewer, default=0),
        "silent": silent[:10],  # what the viewers that got no frame asked for
        "silent_count": len(silent),
        "delays": totals.delays.compact(),
        "errors": totals.errors[:20],
        "error_count": len(totals.errors),
    }


def main() -> int:
    spec = json.loads(sys.stdin.readline())
    loop = new_event_loop()
    try:
        result = loop.run_until_complete(run(spec))
    finally:
        loop.close()
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
