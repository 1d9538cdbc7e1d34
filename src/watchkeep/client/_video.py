"""Watching video as the Smart Client does: log in at the management server, ask it where a
camera records now and for a stream token for it there, and pull the stream from that
recording server over verified TLS. A viewer follows its camera to a failover server and
back (with a new token: each is good at one server only)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from watchkeep.client._site import SiteClient, StreamAccess
from watchkeep.errors import ApiError, ConnectionFailed, PeerTimedOut, WatchkeepError
from watchkeep.media import (
    MJPEG_PART_END,
    Frame,
    MultipartParser,
    boundary_from_content_type,
    mjpeg_part_head,
)
from watchkeep.tls import client_context, explain_connection_failure

__all__ = [
    "ByteSink",
    "ViewReport",
    "playback_camera",
    "stream_frames",
    "view_camera",
    "view_camera_mp4",
]


class ByteSink(Protocol):
    """Where pulled video goes: anything with ``write(bytes)`` (a file, a pipe, a counter)."""

    def write(self, data: bytes, /) -> object: ...


@dataclass
class ViewReport:
    camera: str
    frames: int = 0
    bytes: int = 0
    seconds: float = 0.0
    servers: list[str] = field(default_factory=list)
    reconnects: int = 0
    encrypted: bool = False

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "camera": self.camera,
            "frames": self.frames,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "fps": round(self.fps, 2),
            "servers": self.servers,
            "reconnects": self.reconnects,
            "encrypted": self.encrypted,
        }


async def stream_frames(
    client: SiteClient,
    access: StreamAccess,
    path: str,
    session: aiohttp.ClientSession,
) -> AsyncIterator[Frame]:
    """The frames of one MJPEG response from the recording server of ``access``."""
    endpoint, camera = access.endpoint, access.camera
    url = f"{'https' if endpoint.tls else 'http'}://{endpoint.host}:{endpoint.port}{path}"
    context = client_context(client.trust) if endpoint.tls else False
    try:
        response = await session.get(
            url, headers={"Authorization": f"Bearer {access.token}"}, ssl=context
        )
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise await explain_connection_failure(
            exc, endpoint, trust_dir=client.connection.trust_store
        ) from exc
    async with response:
        if response.status != 200:
            body = await response.json(content_type=None)
            raise ApiError(response.status, body if isinstance(body, dict) else {}, endpoint)
        boundary = boundary_from_content_type(response.headers.get("Content-Type", ""))
        if boundary is None:
            raise ConnectionFailed(str(endpoint), "the answer is not an MJPEG stream")
        parser = MultipartParser(boundary)
        try:
            async for chunk in response.content.iter_any():
                for part in parser.feed(chunk):
                    yield Frame(
                        camera,
                        int(part.headers.get("x-sequence", "0")),
                        float(part.headers.get("x-timestamp", "0")),
                        part.jpeg,
                    )
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, OSError) as exc:
            raise ConnectionFailed(str(endpoint), f"the stream broke off: {exc}") from exc


async def view_camera(
    client: SiteClient,
    camera: str,
    *,
    frames: int | None,
    duration: float | None = None,
    out: ByteSink | None = None,
    reconnect_for: float = 30.0,
    stop: asyncio.Event | None = None,
) -> ViewReport:
    """Pull live frames until ``frames`` arrived, ``duration`` passed or ``stop`` is set,
    following the camera to whichever recording server records it. The duration is kept
    even while no frame comes (a recording server failing over); a failure with no frame at
    all is raised."""
    report = ViewReport(camera)
    start = time.monotonic()
    failures: list[WatchkeepError] = []
    try:
        async with asyncio.timeout(duration):
            pull = asyncio.ensure_future(
                _pull(client, camera, report, frames, out, reconnect_for, failures)
            )
            stopped = asyncio.ensure_future((stop or asyncio.Event()).wait())
            try:
                await asyncio.wait((pull, stopped), return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (pull, stopped):
                    task.cancel()
                # what was pulled so far is the report; a stop is not a failure
                await asyncio.gather(pull, stopped, return_exceptions=True)
            if not pull.cancelled():
                pull.result()
    except TimeoutError:
        if duration is None or time.monotonic() - start < duration:
            raise
        if report.frames == 0 and failures:
            raise failures[-1] from None
    report.seconds = time.monotonic() - start
    return report


async def _pull(
    client: SiteClient,
    camera: str,
    report: ViewReport,
    frames: int | None,
    out: ByteSink | None,
    reconnect_for: float,
    failures: list[WatchkeepError],
) -> None:
    last_frame = time.monotonic()
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(resolver=client.resolver()),
        timeout=aiohttp.ClientTimeout(connect=5, sock_read=5),
    ) as session:
        while True:
            access = await client.stream_access(camera)
            endpoint = access.endpoint
            if not report.servers or report.servers[-1] != endpoint.server:
                report.servers.append(endpoint.server)
            report.encrypted = endpoint.tls
            try:
                async for frame in stream_frames(
                    client, access, f"/api/v1/cameras/{camera}/live.mjpeg", session
                ):
                    report.frames += 1
                    report.bytes += len(frame.jpeg)
                    last_frame = time.monotonic()
                    if out is not None:
                        out.write(mjpeg_part_head(frame))
                        out.write(frame.jpeg)
                        out.write(MJPEG_PART_END)
                    if frames is not None and report.frames >= frames:
                        return
            except (ConnectionFailed, ApiError, TimeoutError) as exc:
                # A TimeoutError here is a silent socket (aiohttp's read timeout): the
                # deadline of the whole view arrives as a cancellation instead.
                failure = (
                    exc
                    if isinstance(exc, WatchkeepError)
                    else PeerTimedOut(str(endpoint), "no frame for 5 s")
                )
                failures.append(failure)
                if time.monotonic() - last_frame > reconnect_for:
                    raise failure from exc
            report.reconnects += 1
            await asyncio.sleep(0.5)


async def playback_camera(
    client: SiteClient, camera: str, start: float, end: float, out: ByteSink | None
) -> ViewReport:
    report = ViewReport(camera)
    began = time.monotonic()
    access = await client.stream_access(camera)
    report.servers.append(access.endpoint.server)
    report.encrypted = access.endpoint.tls
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(resolver=client.resolver()),
        timeout=aiohttp.ClientTimeout(connect=5, sock_read=30),
    ) as session:
        path = f"/api/v1/cameras/{camera}/playback.mjpeg?from={start}&to={end}"
        async for frame in stream_frames(client, access, path, session):
            report.frames += 1
            report.bytes += len(frame.jpeg)
            if out is not None:
                out.write(mjpeg_part_head(frame))
                out.write(frame.jpeg)
                out.write(MJPEG_PART_END)
    report.seconds = time.monotonic() - began
    return report


async def view_camera_mp4(
    client: SiteClient,
    camera: str,
    out: ByteSink,
    *,
    frames: int | None,
    duration: float | None = None,
    reconnect_for: float = 30.0,
) -> ViewReport:
    """Write the live pictures of an H.264/H.265 camera to ``out`` as a fragmented MP4 (the
    init segment, then the fragments as the recording server sends them over its live
    WebSocket), from the last keyframe, until ``frames`` pictures or ``duration`` seconds,
    following the camera to whichever recording server records it (a server that takes
    over starts again at a keyframe). It stops early if the stream changes (a new picture
    size: another init segment than the file's)."""
    report = ViewReport(camera)
    began = time.monotonic()
    view = _Mp4View(out, report, frames)
    failures: list[WatchkeepError] = []
    try:
        async with asyncio.timeout(duration):
            async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(resolver=client.resolver()),
                timeout=aiohttp.ClientTimeout(connect=5, sock_read=5),
            ) as session:
                while not view.done:
                    try:
                        await _pull_mp4(client, camera, session, view)
                    except (ConnectionFailed, ApiError, TimeoutError, aiohttp.ClientError) as exc:
                        failure = (
                            exc
                            if isinstance(exc, WatchkeepError)
                            else PeerTimedOut(camera, f"the live stream broke off: {exc!r}")
                        )
                        failures.append(failure)
                    if view.done:
                        break
                    if time.monotonic() - view.last_picture > reconnect_for:
                        raise failures[-1] if failures else PeerTimedOut(camera, "no picture")
                    report.reconnects += 1
                    await asyncio.sleep(0.5)
    except TimeoutError:
        if duration is None or time.monotonic() - began < duration:
            raise
        if report.frames == 0 and failures:
            raise failures[-1] from None
    report.seconds = time.monotonic() - began
    return report


class _Mp4View:
    """What a live MP4 view has written: the file's init segment, the pictures."""

    def __init__(self, out: ByteSink, report: ViewReport, frames: int | None) -> None:
        self.out = out
        self.report = report
        self.frames = frames
        self.init: bytes | None = None
        self.expect_init = False
        self.done = False
        self.last_picture = time.monotonic()

    def take(self, data: bytes) -> None:
        report = self.report
        if self.expect_init:
            self.expect_init = False
            if self.init is None:
                self.init = data
            elif data != self.init:
                self.done = True  # another stream: not in this file
                return
            else:
                return  # the same stream, from another server: the file goes on
        elif data[4:8] == b"moof":
            if self.init is None:
                return
            report.frames += 1
            self.last_picture = time.monotonic()
        else:
            return
        self.out.write(data)
        report.bytes += len(data)
        if self.frames is not None and report.frames >= self.frames:
            self.done = True


async def _pull_mp4(
    client: SiteClient, camera: str, session: aiohttp.ClientSession, view: _Mp4View
) -> None:
    access = await client.stream_access(camera)
    endpoint = access.endpoint
    report = view.report
    if not report.servers or report.servers[-1] != endpoint.server:
        report.servers.append(endpoint.server)
    report.encrypted = endpoint.tls
    url = f"{'wss' if endpoint.tls else 'ws'}://{endpoint.host}:{endpoint.port}"
    url += f"/api/v1/cameras/{camera}/live.ws"
    try:
        socket = await session.ws_connect(
            url,
            headers={"Authorization": f"Bearer {access.token}"},
            ssl=client_context(client.trust) if endpoint.tls else False,
            max_msg_size=64 * 1024 * 1024,
        )
    except aiohttp.WSServerHandshakeError as exc:
        raise ApiError(exc.status, {"detail": exc.message}, endpoint) from exc
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise await explain_connection_failure(
            exc, endpoint, trust_dir=client.connection.trust_store
        ) from exc
    async with socket:
        async for message in socket:
            if message.type == aiohttp.WSMsgType.TEXT:
                view.expect_init = True
                continue
            if message.type != aiohttp.WSMsgType.BINARY:
                break
            data: bytes = message.data
            if data[:2] == b"WK":
                raise WatchkeepError(
                    f"camera {camera} sends Motion JPEG",
                    fix="write it as an MJPEG file: --out FILE.mjpeg",
                )
            view.take(data)
            if view.done:
                return
