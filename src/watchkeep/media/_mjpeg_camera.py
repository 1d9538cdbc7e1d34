"""MJPEG cameras: pull ``multipart/x-mixed-replace`` over HTTP or HTTPS, as IP cameras serve."""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import math
import random
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import cast
from urllib.parse import SplitResult, unquote, urlsplit

from watchkeep.media._frame import Frame
from watchkeep.media._multipart import MjpegPart, MultipartParser, boundary_from_content_type
from watchkeep.media._source import CameraSource

__all__ = ["MjpegCamera", "MjpegCameraStats"]

log = logging.getLogger("watchkeep.media")

_RECEIVE_BUFFER = 256 * 1024  # one read takes up to this much (several frames when behind)
_MAX_RESPONSE_HEAD = 64 * 1024
_MAX_CHUNK_LINE = 1024


@dataclass
class MjpegCameraStats:
    """What an MJPEG camera has seen since it was created (live counters)."""

    connections: int = 0
    reconnects: int = 0
    frames: int = 0
    bad_parts: int = 0
    skipped_bytes: int = 0
    last_error: str | None = None


class _StreamEnded(Exception):
    """Why one connection to the camera ended (internal: becomes ``stats.last_error``)."""


class MjpegCamera(CameraSource):
    """A camera serving MJPEG at ``url`` (``http://`` or ``https://``).

    Parts are split by the boundary of the response's ``Content-Type``, using each part's
    ``Content-Length`` when present. Garbage and truncated parts are skipped and counted in
    :attr:`stats`; a refused, failed, stalled (``read_timeout``) or closed connection is
    retried with exponential back-off from ``backoff_initial`` to ``backoff_max`` seconds,
    reset by the next frame. Iteration only ends with :meth:`stop`.

    A frame's sequence and timestamp are the part's ``X-Sequence`` and ``X-Timestamp``
    headers when the camera sends them (watchkeep's own streams do), else a local counter
    and the time of arrival. ``ssl_context`` verifies an HTTPS camera (default: the system's
    trust store). A user name and password in the URL are sent as HTTP Basic
    authentication, as IP cameras expect.

    The stream is read by a protocol that parses each read where it lands and hands the
    frames to :meth:`run`'s sink at once: a recording server with hundreds of cameras pays
    no task switch, stream reader or timer per read (this was a third of its CPU).
    """

    def __init__(
        self,
        name: str,
        url: str,
        ssl_context: ssl.SSLContext | None = None,
        *,
        connect_timeout: float = 10.0,
        read_timeout: float = 10.0,
        backoff_initial: float = 0.25,
        backoff_max: float = 10.0,
    ) -> None:
        super().__init__(name)
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"an MJPEG camera URL starts with http:// or https://, not {url!r}")
        if not 0 < backoff_initial <= backoff_max:
            raise ValueError("back-off must satisfy 0 < backoff_initial <= backoff_max")
        if not (connect_timeout > 0 and read_timeout > 0):
            raise ValueError("connect_timeout and read_timeout must be positive")
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"bad port in camera URL {url!r}") from exc
        if not parts.hostname:
            raise ValueError(f"no host in camera URL {url!r}")
        self.url = url
        self.stats = MjpegCameraStats()
        self._tls = parts.scheme == "https"
        self._host = parts.hostname
        self._port = port or (443 if self._tls else 80)
        self._ssl: ssl.SSLContext | None = None
        if self._tls:
            self._ssl = ssl_context if ssl_context is not None else ssl.create_default_context()
        self._request = _request(parts, port)
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._sequence = 0
        self._stream: _Stream | None = None

    async def _prepare(self) -> None:
        pass

    async def _release(self) -> None:
        stream = self._stream
        if stream is not None:
            stream.end("camera stopped")

    async def run(self, sink: Callable[[Frame], None]) -> None:
        if not self._started:
            raise RuntimeError(f"camera {self.name}: call start() before running it")
        loop = asyncio.get_running_loop()
        backoff = self._backoff_initial
        failures = 0
        while not self._stopping:
            stream = _Stream(self, sink, loop)
            self._stream = stream
            try:
                try:
                    await asyncio.wait_for(
                        loop.create_connection(
                            functools.partial(_same, stream),
                            self._host,
                            self._port,
                            ssl=self._ssl,
                            server_hostname=self._host if self._tls else None,
                        ),
                        self._connect_timeout,
                    )
                except TimeoutError:
                    raise _StreamEnded(
                        f"no connection within {self._connect_timeout:g} s"
                    ) from None
                if self._stopping:
                    stream.end("camera stopped")
                await stream.finished
                reason = "the camera ended the stream"
            except _StreamEnded as exc:
                reason = str(exc)
            except (OSError, ssl.SSLError) as exc:
                reason = _describe(exc)
            finally:
                self._stream = None
                stream.end("camera stopped")
            if stream.frames:
                backoff, failures = self._backoff_initial, 0
            if stream.sink_error is not None:
                raise stream.sink_error
            if self._stopping:
                break
            failures += 1
            self.stats.reconnects += 1
            self.stats.last_error = reason
            delay = backoff * random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not a secret
            log.log(
                logging.WARNING if failures == 1 else logging.DEBUG,
                "camera %s: %s; reconnecting to %s in %.1f s",
                self.name,
                reason,
                self.url,
                delay,
            )
            await self._pause(delay)
            backoff = min(backoff * 2, self._backoff_max)

    async def _frames(self) -> AsyncIterator[Frame]:
        # Iteration (one consumer, e.g. a test) on top of run(): frames wait in a queue.
        loop = asyncio.get_running_loop()
        queue: deque[Frame] = deque()
        waiter: list[asyncio.Future[None]] = []

        def sink(frame: Frame) -> None:
            queue.append(frame)
            if waiter and not waiter[0].done():
                waiter[0].set_result(None)

        runner = asyncio.ensure_future(self.run(sink))
        try:
            while True:
                while queue:
                    yield queue.popleft()
                if runner.done():
                    runner.result()
                    return
                future: asyncio.Future[None] = loop.create_future()
                waiter[:] = [future]
                runner.add_done_callback(functools.partial(_wake, future))
                await future
        finally:
            if not runner.done():
                await self.stop()
                runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)

    def _frame(self, part: MjpegPart) -> Frame:
        headers = part.headers
        timestamp = _float(headers.get("x-timestamp"))
        sequence = _int(headers.get("x-sequence"))
        if sequence is None:
            sequence = self._sequence
            self._sequence += 1
        return Frame(
            self.name, sequence, time.time() if timestamp is None else timestamp, part.jpeg
        )


class _Stream(asyncio.BufferedProtocol):
    """One connection to the camera: the HTTP response head, the body (chunked or not),
    then the multipart parser, all within the read callback."""

    def __init__(
        self, camera: MjpegCamera, sink: Callable[[Frame], None], loop: asyncio.AbstractEventLoop
    ) -> None:
        self._camera = camera
        self._sink = sink
        self._loop = loop
        self._buffer = memoryview(bytearray(_RECEIVE_BUFFER))
        self._transport: asyncio.Transport | None = None
        self._head = bytearray()
        self._state = "head"  # head | chunk-size | chunk-data | chunk-end | body | done
        self._left = 0  # bytes left in the chunk (or its CRLF)
        self._parser: MultipartParser | None = None
        self._bad_before = 0
        self._skipped_before = 0
        self._last_data = loop.time()
        self._watchdog: asyncio.TimerHandle | None = None
        self.frames = 0
        self.sink_error: BaseException | None = None
        self.finished: asyncio.Future[None] = loop.create_future()

    # The end of the connection, for whatever reason: first reason wins.

    def end(self, reason: str | None = None, exc: BaseException | None = None) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._state != "done":
            self._state = "done"
            parser = self._parser
            if parser is not None and parser.in_part:
                self._camera.stats.bad_parts += 1  # cut off in the middle of a part
        finished = self.finished
        if not finished.done():
            if exc is not None or reason is not None:
                finished.set_exception(exc if exc is not None else _StreamEnded(reason))
                finished.exception()  # retrieved: nobody may await it (e.g. after a stop)
            else:
                finished.set_result(None)
        transport = self._transport
        if transport is not None:
            self._transport = None
            transport.abort()

    # asyncio.BufferedProtocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self._transport = cast(asyncio.Transport, transport)
        if self._state == "done":
            self._transport = None
            cast(asyncio.Transport, transport).abort()
            return
        self._transport.write(self._camera._request)
        self._last_data = self._loop.time()
        self._watchdog = self._loop.call_later(self._camera._read_timeout / 2, self._watch)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        self._last_data = self._loop.time()
        try:
            self._received(self._buffer[:nbytes])
        except _StreamEnded as exc:
            self.end(str(exc))
        except Exception as exc:  # the sink failed: the camera's consumer must hear of it
            self.sink_error = exc
            self.end(exc=exc)

    def eof_received(self) -> bool:
        if self._state == "head":
            self.end("the camera closed the connection before answering")
        else:
            self.end()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if exc is None:
            self.end()
        else:
            self.end(_describe(exc))

    def _watch(self) -> None:
        self._watchdog = None
        if self._state == "done":
            return
        timeout = self._camera._read_timeout
        idle = self._loop.time() - self._last_data
        if idle >= timeout:
            self.end("no data within the read timeout")
        else:
            self._watchdog = self._loop.call_later(timeout - idle, self._watch)

    # Parsing.

    def _received(self, data: memoryview) -> None:
        start, end = 0, len(data)
        while start < end:
            state = self._state
            if state == "body":
                self._feed(data[start:end])
                return
            if state == "chunk-data":
                take = min(self._left, end - start)
                self._feed(data[start : start + take])
                start += take
                self._left -= take
                if not self._left:
                    self._state, self._left = "chunk-end", 2
            elif state == "chunk-end":
                take = min(self._left, end - start)
                start += take
                self._left -= take
                if not self._left:
                    self._state = "chunk-size"
            elif state == "head" or state == "chunk-size":
                marker = b"\r\n\r\n" if state == "head" else b"\r\n"
                head = self._head
                old = len(head)
                head += data[start:end]
                found = head.find(marker, max(0, old - len(marker) + 1))
                if found < 0:
                    limit = _MAX_RESPONSE_HEAD if state == "head" else _MAX_CHUNK_LINE
                    if len(head) > limit:
                        what = "response head" if state == "head" else "chunk size line"
                        raise _StreamEnded(f"a {what} over {limit} bytes")
                    return
                start += found + len(marker) - old
                line = bytes(head[:found])
                head.clear()
                if state == "head":
                    self._response(line)
                else:
                    self._chunk(line)
            else:  # done
                return

    def _response(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        status = lines[0].split(" ", 2)
        if len(status) < 2 or not status[0].startswith("HTTP/"):
            raise _StreamEnded(f"not an HTTP answer: {lines[0][:80]!r}")
        if status[1] != "200":
            raise _StreamEnded(f"HTTP {status[1]} {status[2] if len(status) > 2 else ''}".strip())
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        content_type = headers.get("content-type", "")
        boundary = boundary_from_content_type(content_type)
        if boundary is None:
            raise _StreamEnded(
                f"not an MJPEG stream (Content-Type {content_type!r} has no multipart boundary)"
            )
        self._parser = MultipartParser(boundary)
        stats = self._camera.stats
        stats.connections += 1
        self._bad_before, self._skipped_before = stats.bad_parts, stats.skipped_bytes
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        self._state = "chunk-size" if chunked else "body"

    def _chunk(self, line: bytes) -> None:
        size_text = line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise _StreamEnded(f"a bad chunk size line {line[:40]!r}") from None
        if size == 0:
            raise _StreamEnded("the camera ended the stream")
        self._state, self._left = "chunk-data", size

    def _feed(self, data: memoryview) -> None:
        parser = self._parser
        assert parser is not None
        parts = parser.feed(data)
        stats = self._camera.stats
        stats.bad_parts = self._bad_before + parser.bad_parts
        stats.skipped_bytes = self._skipped_before + parser.skipped_bytes
        if parts:
            camera, sink = self._camera, self._sink
            for part in parts:
                stats.frames += 1
                self.frames += 1
                sink(camera._frame(part))
                if self._state == "done":
                    return


def _same(stream: _Stream) -> _Stream:
    return stream


def _wake(future: asyncio.Future[None], _task: object) -> None:
    if not future.done():
        future.set_result(None)


def _request(split: SplitResult, port: int | None) -> bytes:
    host = split.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    target = (split.path or "/") + (f"?{split.query}" if split.query else "")
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: {host}{f':{port}' if port else ''}",
        "User-Agent: watchkeep",
        "Accept: multipart/x-mixed-replace, */*",
        "Connection: close",
    ]
    if split.username is not None:
        credentials = f"{unquote(split.username)}:{unquote(split.password or '')}"
        lines.append(f"Authorization: Basic {base64.b64encode(credentials.encode()).decode()}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _float(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _int(text: str | None) -> int | None:
    if text is None or not text.isdigit():
        return None
    value = int(text)
    return value if value < 1 << 64 else None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verification failed: {exc.verify_message or exc}"
    if isinstance(exc, TimeoutError):
        return "no data within the read timeout"
    text = str(exc) or exc.__class__.__name__
    return f"{exc.__class__.__name__}: {text}"
