"""MJPEG cameras: pull ``multipart/x-mixed-replace`` over HTTP or HTTPS, as IP cameras serve."""

from __future__ import annotations

import logging
import math
import random
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp

from watchkeep.media._frame import Frame
from watchkeep.media._multipart import MjpegPart, MultipartParser, boundary_from_content_type
from watchkeep.media._source import CameraSource

__all__ = ["MjpegCamera", "MjpegCameraStats"]

log = logging.getLogger("watchkeep.media")


@dataclass
class MjpegCameraStats:
    """What an MJPEG camera has seen since it was created (live counters)."""

    connections: int = 0
    reconnects: int = 0
    frames: int = 0
    bad_parts: int = 0
    skipped_bytes: int = 0
    last_error: str | None = None


class _NotAnMjpegStream(Exception):
    pass


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
    trust store).
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
        self.url = url
        self.stats = MjpegCameraStats()
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout, sock_read=read_timeout
        )
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._session: aiohttp.ClientSession | None = None
        self._response: aiohttp.ClientResponse | None = None
        self._sequence = 0

    async def _prepare(self) -> None:
        self._session = aiohttp.ClientSession(timeout=self._timeout)

    async def _release(self) -> None:
        response, self._response = self._response, None
        if response is not None:
            # Wake a read in progress (closing the session alone does not): the iterator
            # then sees _stopping and ends.
            response.content.set_exception(aiohttp.ClientConnectionError("camera stopped"))
            response.close()
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def _frames(self) -> AsyncIterator[Frame]:
        backoff = self._backoff_initial
        failures = 0
        while not self._stopping:
            session = self._session
            if session is None:
                break
            try:
                async with session.get(self.url, ssl=self._ssl) as response:
                    self._response = response
                    parser = self._open(response)
                    stats = self.stats
                    bad_before, skipped_before = stats.bad_parts, stats.skipped_bytes
                    try:
                        async for chunk in response.content.iter_any():
                            parts = parser.feed(chunk)
                            stats.bad_parts = bad_before + parser.bad_parts
                            stats.skipped_bytes = skipped_before + parser.skipped_bytes
                            for part in parts:
                                backoff, failures = self._backoff_initial, 0
                                yield self._frame(part)
                                if self._stopping:
                                    return
                    finally:
                        self._response = None
                        if parser.in_part:
                            stats.bad_parts += 1  # cut off in the middle of a part
                    reason = "the camera ended the stream"
            except (aiohttp.ClientError, OSError, TimeoutError, _NotAnMjpegStream) as exc:
                reason = _describe(exc)
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

    def _open(self, response: aiohttp.ClientResponse) -> MultipartParser:
        if response.status != 200:
            raise _NotAnMjpegStream(f"HTTP {response.status} {response.reason or ''}".strip())
        content_type = response.headers.get("Content-Type", "")
        boundary = boundary_from_content_type(content_type)
        if boundary is None:
            raise _NotAnMjpegStream(
                f"not an MJPEG stream (Content-Type {content_type!r} has no multipart boundary)"
            )
        self.stats.connections += 1
        return MultipartParser(boundary)

    def _frame(self, part: MjpegPart) -> Frame:
        self.stats.frames += 1
        headers = part.headers
        timestamp = _float(headers.get("x-timestamp"))
        sequence = _int(headers.get("x-sequence"))
        if sequence is None:
            sequence = self._sequence
            self._sequence += 1
        return Frame(
            self.name, sequence, time.time() if timestamp is None else timestamp, part.jpeg
        )


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
    if isinstance(exc, _NotAnMjpegStream):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return "no data within the read timeout"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"certificate verification failed: {exc.certificate_error}"
    text = str(exc) or exc.__class__.__name__
    return f"{exc.__class__.__name__}: {text}"
