"""What every camera reached over the network shares: its URL, a connection at a time,
reconnection with back-off, counters, and the description of why a connection ended."""

from __future__ import annotations

import abc
import asyncio
import base64
import functools
import logging
import random
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import ClassVar, cast
from urllib.parse import SplitResult, urlsplit

from watchkeep.media._frame import Frame
from watchkeep.media._source import CameraSource

__all__ = [
    "CameraStream",
    "NetworkCamera",
    "NetworkCameraStats",
    "StreamEnded",
    "basic_authorization",
    "describe_error",
    "redact_url",
]

log = logging.getLogger("watchkeep.media")

_RECEIVE_BUFFER = 256 * 1024  # one read takes up to this much (several frames when behind)


@dataclass
class NetworkCameraStats:
    """What a network camera has seen since it was created (live counters).

    ``bad_parts`` counts pictures received damaged and dropped (an MJPEG part that is not
    a whole JPEG, an RTP/JPEG picture with a lost packet); ``skipped_bytes`` what came
    between pictures and was not part of any.
    """

    connections: int = 0
    reconnects: int = 0
    frames: int = 0
    bad_parts: int = 0
    skipped_bytes: int = 0
    last_error: str | None = None


class StreamEnded(Exception):
    """Why one connection to the camera ended (becomes ``stats.last_error``)."""


class CameraStream(asyncio.BufferedProtocol):
    """One connection to a network camera, as :class:`NetworkCamera` drives it.

    It reads into one buffer of its own and hands each read to :meth:`_received`, which
    parses it where it lands and gives the frames to the sink at once. It counts the
    frames it handed on, keeps the error the sink raised, ends the connection when nothing
    arrives for the camera's ``read_timeout``, and resolves ``finished`` (with
    :class:`StreamEnded` for why) when the connection is over: the first reason wins.
    Subclasses say what to send first (:meth:`_begin`) and how to parse (:meth:`_received`).
    """

    def __init__(
        self, camera: NetworkCamera, sink: Callable[[Frame], None], loop: asyncio.AbstractEventLoop
    ) -> None:
        self._camera = camera
        self._sink = sink
        self._loop = loop
        self._buffer = memoryview(bytearray(_RECEIVE_BUFFER))
        self._transport: asyncio.Transport | None = None
        self._done = False
        self._last_data = loop.time()
        self._watchdog: asyncio.TimerHandle | None = None
        self.frames = 0
        self.sink_error: BaseException | None = None
        self.finished: asyncio.Future[None] = loop.create_future()

    @abc.abstractmethod
    def _begin(self, transport: asyncio.Transport) -> None:
        """The connection is open: send what the camera needs first."""

    @abc.abstractmethod
    def _received(self, data: memoryview) -> None:
        """Parse ``data`` (valid during the call only); raise :class:`StreamEnded` to end."""

    def _ended(self) -> None:
        """Called once, when the connection ends."""

    def _close(self, transport: asyncio.Transport) -> None:
        transport.abort()

    def end(self, reason: str | None = None, exc: BaseException | None = None) -> None:
        """End the connection (the first reason given is the one kept)."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if not self._done:
            self._done = True
            self._ended()
        finished = self.finished
        if not finished.done():
            if exc is not None or reason is not None:
                finished.set_exception(exc if exc is not None else StreamEnded(reason))
                finished.exception()  # retrieved: nobody may await it (e.g. after a stop)
            else:
                finished.set_result(None)
        transport = self._transport
        if transport is not None:
            self._transport = None
            self._close(transport)

    # asyncio.BufferedProtocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self._transport = cast(asyncio.Transport, transport)
        if self._done:
            self._transport = None
            cast(asyncio.Transport, transport).abort()
            return
        self._last_data = self._loop.time()
        self._watchdog = self._loop.call_later(self._camera._read_timeout / 2, self._watch)
        self._begin(self._transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        self._last_data = self._loop.time()
        try:
            self._received(self._buffer[:nbytes])
        except StreamEnded as exc:
            self.end(str(exc))
        except Exception as exc:  # the sink failed: the camera's consumer must hear of it
            self.sink_error = exc
            self.end(exc=exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self.end(None if exc is None else describe_error(exc))

    def _watch(self) -> None:
        self._watchdog = None
        if self._done:
            return
        timeout = self._camera._read_timeout
        idle = self._loop.time() - self._last_data
        if idle >= timeout:
            self.end("no data within the read timeout")
        else:
            self._watchdog = self._loop.call_later(timeout - idle, self._watch)


class NetworkCamera(CameraSource):
    """A camera at ``url`` whose scheme is one of ``schemes`` (plain, TLS), default ports
    given with them. Subclasses make the protocol of one connection (:meth:`_open`); this
    class connects, waits for the connection to end, and connects again after a back-off
    from ``backoff_initial`` to ``backoff_max`` seconds (reset by a connection that brought
    a frame), until :meth:`stop`. ``ssl_context`` verifies a TLS camera (default: the
    system's trust store).
    """

    #: scheme -> (default port, TLS)
    schemes: ClassVar[dict[str, tuple[int, bool]]] = {}

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
        parts = urlsplit(url)
        shown = redact_url(url)
        if parts.scheme not in self.schemes:
            wanted = " or ".join(f"{scheme}://" for scheme in self.schemes)
            raise ValueError(f"{self.kind} camera URL starts with {wanted}, not {shown!r}")
        if not 0 < backoff_initial <= backoff_max:
            raise ValueError("back-off must satisfy 0 < backoff_initial <= backoff_max")
        if not (connect_timeout > 0 and read_timeout > 0):
            raise ValueError("connect_timeout and read_timeout must be positive")
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"bad port in camera URL {shown!r}") from exc
        if not parts.hostname:
            raise ValueError(f"no host in camera URL {shown!r}")
        default_port, tls = self.schemes[parts.scheme]
        self.url = url
        self.stats = NetworkCameraStats()
        self._split: SplitResult = parts
        self._tls = tls
        self._host = parts.hostname
        self._port = port or default_port
        self._ssl: ssl.SSLContext | None = None
        if tls:
            self._ssl = ssl_context if ssl_context is not None else ssl.create_default_context()
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._sequence = 0
        self._stream: CameraStream | None = None
        self._frames_at_failure: int | None = None

    @property
    def kind(self) -> str:
        """What the camera speaks, for messages ("an MJPEG", "an RTSP")."""
        return "a network"

    @abc.abstractmethod
    def _open(self, sink: Callable[[Frame], None], loop: asyncio.AbstractEventLoop) -> CameraStream:
        """A new protocol for one connection, handing frames to ``sink``."""

    async def _prepare(self) -> None:
        pass

    async def _release(self) -> None:
        stream = self._stream
        if stream is not None:
            stream.end("camera stopped")

    def _next_sequence(self) -> int:
        sequence = self._sequence
        self._sequence += 1
        return sequence

    async def run(self, sink: Callable[[Frame], None]) -> None:
        if not self._started:
            raise RuntimeError(f"camera {self.name}: call start() before running it")
        loop = asyncio.get_running_loop()
        backoff = self._backoff_initial
        failures = 0
        while not self._stopping:
            stream = self._open(sink, loop)
            self._stream = stream
            try:
                try:
                    # asyncio.timeout, not wait_for: Python 3.11's wait_for returns the
                    # connection instead of raising when the task is cancelled as the
                    # connection completes, and a camera removed then went on reading (and
                    # recording) for good, holding its stop (and the configuration) up.
                    async with asyncio.timeout(self._connect_timeout):
                        await loop.create_connection(
                            functools.partial(_same, stream),
                            self._host,
                            self._port,
                            ssl=self._ssl,
                            server_hostname=self._host if self._tls else None,
                        )
                except TimeoutError:
                    raise StreamEnded(f"no connection within {self._connect_timeout:g} s") from None
                if self._stopping:
                    stream.end("camera stopped")
                await stream.finished
                reason = "the camera ended the stream"
            except StreamEnded as exc:
                reason = str(exc)
            except (OSError, ssl.SSLError) as exc:
                reason = describe_error(exc)
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
            self._frames_at_failure = self.stats.frames
            delay = backoff * random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not a secret
            log.log(
                logging.WARNING if failures == 1 else logging.DEBUG,
                "camera %s: %s; reconnecting to %s in %.1f s",
                self.name,
                reason,
                self.safe_url,
                delay,
            )
            await self._pause(delay)
            backoff = min(backoff * 2, self._backoff_max)

    @property
    def problem(self) -> str | None:
        """Why the last connection failed, for as long as no picture has come since."""
        if self._frames_at_failure is None or self.stats.frames != self._frames_at_failure:
            return None
        return self.stats.last_error

    @property
    def safe_url(self) -> str:
        """The URL without its password, for logs."""
        return redact_url(self.url)

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


def _same(stream: CameraStream) -> CameraStream:
    return stream


def _wake(future: asyncio.Future[None], _task: object) -> None:
    if not future.done():
        future.set_result(None)


def basic_authorization(user: str, password: str) -> str:
    """The value of an ``Authorization`` header for HTTP Basic (RFC 7617), which HTTP and
    RTSP cameras share."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def redact_url(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***`` (for logs and status pages)."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:
        return url
    user, _, host = parts.netloc.rpartition("@")
    return parts._replace(netloc=f"{user.split(':', 1)[0]}:***@{host}").geturl()


def describe_error(exc: BaseException) -> str:
    """Why a connection failed, in a few words."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verification failed: {exc.verify_message or exc}"
    if isinstance(exc, TimeoutError):
        return "no data within the read timeout"
    text = str(exc) or exc.__class__.__name__
    return f"{exc.__class__.__name__}: {text}"
