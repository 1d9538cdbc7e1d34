"""Live MJPEG viewers for the benchmarks: many connections in one process, counting what
arrives (bytes, frames, sequence gaps, camera-to-viewer delay), for a fixed time.

    python -m bench.viewers   (spec on standard input, one line; then "go")

It prints ``connected`` once its connections are open (reading nothing yet), starts
reading at the next line of standard input, counting at the one after, and prints its
result (JSON, one line) after ``duration`` seconds.
The spec (JSON, one line)::

    {"targets": [{"address": "127.1.2.3", "port": 7563, "host": "rs1.site.test",
                  "path": "/api/v1/cameras/cam1/live.mjpeg"}, ...],
     "ca": "/path/ca.pem" | null,          # TLS verified against it; null: plaintext
     "token": "..." | null,                # sent as Authorization: Bearer
     "duration": 10.0,                     # seconds counted after "go"
     "repeat": false}                      # request again when a response ends (nginx file)

A viewer decodes HTTP/1.1 (chunked, Content-Length or close-delimited bodies) and the
multipart parts by their Content-Length, without copying the pictures: it must cost far
less than the server it measures, for they share the machine. The delay of a frame is the
time of arrival of its last byte minus its ``X-Timestamp`` (set by the camera when it made
the frame; every process here reads the same clock).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
import time
from typing import Any, cast

from bench._common import Histogram, new_event_loop

_HEAD_END = b"\r\n\r\n"
_MAX_HEAD = 16384
_HEAD_COPY = 1024
CONNECT_SECONDS = 30.0  # for all connections: a server too busy to accept fails the step


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


class Viewer(asyncio.Protocol):
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
        self._new_response()

    def _new_response(self) -> None:
        self.state = "response"  # response | chunk-size | chunk-data | chunk-crlf | body
        self.head = bytearray()
        self.chunked = False
        self.remaining = -1  # of the body (Content-Length) or of a chunk; -1: to the end
        self.part_head = bytearray()
        self.part_left = 0  # bytes of the current part's picture (+ CRLF) still to come
        self.pending_timestamp: float | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)
        self.totals.open += 1
        transport.write(self.request)
        # Not a byte is read until every viewer is connected: a server already streaming
        # to the first viewers would make the handshakes of the last ones a test of its own.
        self.transport.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.totals.ended += 1
        if not self.closed.done():
            self.closed.set_result(None)

    def fail(self, why: str) -> None:
        self.totals.errors.append(why)
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        totals = self.totals
        if totals.counting:
            totals.bytes += len(data)
        start, end = 0, len(data)
        while start < end:
            state = self.state
            if state == "chunk-data" or state == "body":
                take = end - start if self.remaining < 0 else min(self.remaining, end - start)
                self._body(data, start, start + take)
                start += take
                if self.remaining >= 0:
                    self.remaining -= take
                    if self.remaining == 0:
                        if state == "chunk-data":
                            self.state, self.remaining = "chunk-crlf", 2
                        else:
                            self._response_done()
            elif state == "chunk-crlf":
                take = min(self.remaining, end - start)
                start += take
                self.remaining -= take
                if self.remaining == 0:
                    self.state = "chunk-size"
            else:  # response head or chunk-size line: small, copied into self.head
                marker = _HEAD_END if state == "response" else b"\r\n"
                old = len(self.head)
                self.head += data[start : start + _HEAD_COPY]
                found = self.head.find(marker, max(0, old - len(marker) + 1))
                if found < 0:
                    if len(self.head) > _MAX_HEAD:
                        self.fail("a response or chunk head too long")
                        return
                    start += min(_HEAD_COPY, end - start)
                    continue
                start += found + len(marker) - old
                line = bytes(self.head[:found])
                self.head.clear()
                if state == "response":
                    self._response_head(line)
                    if self.transport is None or self.transport.is_closing():
                        return
                else:
                    size = int(line.split(b";", 1)[0], 16)
                    if size == 0:
                        self._response_done()
                    else:
                        self.state, self.remaining = "chunk-data", size

    def _response_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        status = lines[0].split(b" ", 2)
        if len(status) < 2 or status[1] != b"200":
            self.fail(f"HTTP answer {lines[0][:80]!r}")
            return
        self.chunked = False
        self.remaining = -1
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"transfer-encoding" and b"chunked" in value.lower():
                self.chunked = True
            elif name == b"content-length":
                self.remaining = int(value)
        self.state = "chunk-size" if self.chunked else "body"

    def _response_done(self) -> None:
        if self.repeat and self.transport is not None:
            self._new_response()
            self.transport.write(self.request)
        elif self.transport is not None:
            self.transport.close()

    def _body(self, data: bytes, start: int, end: int) -> None:
        """A piece of the multipart body: skip pictures by their length, read part heads."""
        while start < end:
            left = self.part_left
            if left:
                take = min(left, end - start)
                self.part_left = left - take
                start += take
                if left == take and self.pending_timestamp is not None:
                    # The frame's last byte is here: its delay ends now.
                    if self.totals.counting:
                        self.totals.delays.add(time.time() - self.pending_timestamp)
                    self.pending_timestamp = None
                continue
            head = self.part_head
            old = len(head)
            head += data[start : min(end, start + _HEAD_COPY)]
            found = head.find(_HEAD_END, max(0, old - 3))
            if found < 0:
                if len(head) > _MAX_HEAD:
                    self.fail("a part head too long")
                    return
                start += min(_HEAD_COPY, end - start)
                continue
            start += found + 4 - old
            self._part(bytes(head[:found]))
            head.clear()

    def _part(self, head: bytes) -> None:
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
    viewers: list[Viewer] = []
    give_up = time.monotonic() + CONNECT_SECONDS

    async def open_one(target: dict[str, Any]) -> None:
        request = _request(target, spec.get("token"))
        if time.monotonic() > give_up:
            totals.errors.append(f"not connected within {CONNECT_SECONDS} s")
            return
        try:
            _, viewer = await asyncio.wait_for(
                loop.create_connection(
                    lambda: Viewer(request, totals, repeat=bool(spec.get("repeat"))),
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
