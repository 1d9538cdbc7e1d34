"""Exporting a camera's recording of a time range to a standard MP4 file, as the Smart
Client does: H.264/H.265 from the recording server's HLS playlist (the recorded pictures,
byte for byte, from the keyframe at or before the start), Motion JPEG from its MJPEG
playback; either way over verified TLS when the server is encrypted, nothing decoded."""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin

import aiohttp

from watchkeep.client._site import SiteClient, StreamAccess
from watchkeep.client._video import stream_frames
from watchkeep.errors import ApiError, ConnectionFailed, WatchkeepError
from watchkeep.media._fmp4 import TIMESCALE, Fragment, iter_boxes, parse_moof
from watchkeep.media._mp4_file import Mp4Builder, sample_description_of
from watchkeep.media._video_segment import init_from_bytes
from watchkeep.tls import client_context, explain_connection_failure

__all__ = ["ExportReport", "Progress", "export_camera", "parse_playlist", "progress_bar"]

#: Called as the export goes on with the share done (0-1) and the bytes fetched so far.
Progress = Callable[[float, int], None]


@dataclass
class ExportReport:
    camera: str
    path: str
    codec: str = ""
    frames: int = 0
    bytes: int = 0
    start: float = 0.0  # of the first picture, UTC seconds
    duration: float = 0.0
    server: str = ""
    encrypted: bool = False
    # The stream changed there (picture size, parameter sets): the rest is another export.
    stopped_at: float | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "camera": self.camera,
            "path": self.path,
            "codec": self.codec,
            "frames": self.frames,
            "bytes": self.bytes,
            "start": self.start,
            "duration": round(self.duration, 3),
            "server": self.server,
            "encrypted": self.encrypted,
            "stopped_at": self.stopped_at,
        }


@dataclass(frozen=True)
class PlaylistEntry:
    """A byte range of a recording file: an init segment (``init``) or a keyframe interval."""

    uri: str
    offset: int
    size: int
    init: bool


def parse_playlist(text: str) -> list[PlaylistEntry]:
    """The init segments and media segments of an HLS playlist as watchkeep writes them."""
    entries: list[PlaylistEntry] = []
    byterange: tuple[int, int] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#EXT-X-MAP:"):
            attributes = dict(
                part.split("=", 1) for part in line[len("#EXT-X-MAP:") :].split(",") if "=" in part
            )
            size, _, offset = attributes.get("BYTERANGE", '"0@0"').strip('"').partition("@")
            entries.append(
                PlaylistEntry(attributes["URI"].strip('"'), int(offset or 0), int(size), True)
            )
        elif line.startswith("#EXT-X-BYTERANGE:"):
            size, _, offset = line.split(":", 1)[1].partition("@")
            byterange = (int(offset or 0), int(size))
        elif line and not line.startswith("#"):
            if byterange is None:
                raise ValueError("a media segment without a byte range")
            entries.append(PlaylistEntry(line, byterange[0], byterange[1], False))
            byterange = None
    return entries


async def export_camera(
    client: SiteClient,
    camera: str,
    start: float,
    end: float,
    path: Path,
    progress: Progress | None = None,
) -> ExportReport:
    """Write the recording of ``camera`` for ``[start, end)`` to ``path`` (an MP4)."""
    report = ExportReport(camera, str(path))
    access = await client.stream_access(camera)
    report.server = access.endpoint.server
    report.encrypted = access.endpoint.tls
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(resolver=client.resolver()),
        timeout=aiohttp.ClientTimeout(connect=5, sock_read=60),
    ) as session:
        fetch = _Fetcher(client, access, session)
        playlist = await fetch.text(
            f"/api/v1/cameras/{quote(camera, safe='')}/playback.m3u8?from={start!r}&to={end!r}"
        )
        if playlist is not None:
            builder = await _export_video(fetch, playlist, end, report, progress, path)
        else:
            builder = await _export_mjpeg(
                client, access, session, start, end, report, progress, path
            )
    if builder is None or builder.pictures == 0:
        raise WatchkeepError(
            f"camera {camera}: nothing recorded between the times given",
            fix="choose a time range the camera recorded (watchkeep playback shows what is there)",
        )
    builder.finish(path)
    report.frames = builder.pictures
    report.duration = builder.duration
    report.bytes = path.stat().st_size
    return report


class _Fetcher:
    """GETs at the recording server of ``access``, with its token; problems raised."""

    def __init__(self, client: SiteClient, access: StreamAccess, session: aiohttp.ClientSession):
        endpoint = access.endpoint
        self.base = f"{'https' if endpoint.tls else 'http'}://{endpoint.host}:{endpoint.port}"
        self.access = access
        self.client = client
        self.session = session
        self.context = client_context(client.trust) if endpoint.tls else False

    async def get(
        self, path: str, byte_range: tuple[int, int] | None = None
    ) -> aiohttp.ClientResponse:
        headers = {"Authorization": f"Bearer {self.access.token}"}
        if byte_range is not None:
            headers["Range"] = f"bytes={byte_range[0]}-{byte_range[0] + byte_range[1] - 1}"
        try:
            return await self.session.get(
                urljoin(self.base, path), headers=headers, ssl=self.context
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise await explain_connection_failure(
                exc, self.access.endpoint, trust_dir=self.client.connection.trust_store
            ) from exc

    async def text(self, path: str) -> str | None:
        """The body of ``path``; None when the server has no H.264/H.265 recording there."""
        async with await self.get(path) as response:
            if response.status in (404, 415):
                return None
            if response.status != 200:
                body = await response.json(content_type=None)
                raise ApiError(
                    response.status, body if isinstance(body, dict) else {}, self.access.endpoint
                )
            self.playlist_url = str(response.url)
            return await response.text()

    async def bytes(self, uri: str, offset: int, size: int) -> bytes:
        async with await self.get(urljoin(self.playlist_url, uri), (offset, size)) as response:
            if response.status not in (200, 206):
                body = await response.json(content_type=None)
                raise ApiError(
                    response.status, body if isinstance(body, dict) else {}, self.access.endpoint
                )
            data = await response.read()
            if response.status == 200:
                data = data[offset : offset + size]
            if len(data) != size:
                raise ConnectionFailed(
                    self.access.endpoint.server, "a recording came back cut short"
                )
            return data


async def _export_video(
    fetch: _Fetcher,
    playlist: str,
    end: float,
    report: ExportReport,
    progress: Progress | None,
    path: Path,
) -> Mp4Builder | None:
    entries = parse_playlist(playlist)
    total = sum(e.size for e in entries)
    done = 0
    builder: Mp4Builder | None = None
    first_init: bytes | None = None
    stop = end * TIMESCALE
    last_time: float | None = None
    # Pictures presented at or after the end are kept back until one before it follows
    # (a B-frame may need them); those still waiting at the end are left out.
    waiting: list[tuple[Fragment, bytes]] = []
    for entry in entries:
        data = await fetch.bytes(entry.uri, entry.offset, entry.size)
        done += entry.size
        if progress is not None:
            progress(done / total if total else 1.0, done)
        if entry.init:
            if first_init is None:
                first_init = data
                init = init_from_bytes(data)
                report.codec = init.info.codec
                builder = Mp4Builder(
                    sample_description_of(data), init.info.width, init.info.height, path.parent
                )
                continue
            if data != first_init:
                # A new picture size or parameter sets: another file, as the recorder did.
                report.stopped_at = last_time
                break
            continue
        assert builder is not None
        for fragment, picture in _fragments(data):
            if fragment.presentation_time >= stop:
                waiting.append((fragment, picture))
                continue
            last_time = fragment.presentation_time / TIMESCALE
            for held, held_picture in [*waiting, (fragment, picture)]:
                if builder.pictures == 0:
                    report.start = held.presentation_time / TIMESCALE
                builder.add(
                    held_picture,
                    held.decode_time,
                    held.composition_offset,
                    held.keyframe,
                    held.duration,
                )
            waiting.clear()
    return builder


def _fragments(data: bytes) -> list[tuple[Fragment, bytes]]:
    """The pictures of a keyframe interval (fragments one after another)."""
    found = []
    pending: Fragment | None = None
    for kind, at, size in iter_boxes(data):
        if kind == b"moof":
            pending = parse_moof(data, at, size)
        elif kind == b"mdat" and pending is not None:
            found.append((pending, data[at + 8 : at + size]))
            pending = None
    if not found and data:
        raise ValueError("a keyframe interval without pictures")
    return found


async def _export_mjpeg(
    client: SiteClient,
    access: StreamAccess,
    session: aiohttp.ClientSession,
    start: float,
    end: float,
    report: ExportReport,
    progress: Progress | None,
    path: Path,
) -> Mp4Builder | None:
    builder: Mp4Builder | None = None
    fetched = 0
    first: float | None = None
    previous: float | None = None
    path_qs = (
        f"/api/v1/cameras/{quote(access.camera, safe='')}/playback.mjpeg?from={start!r}&to={end!r}"
    )
    try:
        async for frame in stream_frames(client, access, path_qs, session):
            if builder is None:
                size = jpeg_size(frame.jpeg)
                if size is None:
                    continue
                builder = Mp4Builder.for_mjpeg(*size, directory=path.parent)
                report.codec = "JPEG"
                report.start = first = frame.timestamp
            assert first is not None
            ticks = round((frame.timestamp - first) * TIMESCALE)
            duration = (
                round((frame.timestamp - previous) * TIMESCALE)
                if previous is not None
                else TIMESCALE // 10
            )
            previous = frame.timestamp
            builder.add(frame.jpeg, ticks, 0, True, duration)
            fetched += len(frame.jpeg)
            if progress is not None:
                progress(min(max((frame.timestamp - start) / (end - start), 0.0), 1.0), fetched)
    except ApiError as exc:
        if exc.status == 404 and exc.document.get("title") == "no recording":
            return None  # nothing recorded in the range: said by the caller
        raise
    return builder


def jpeg_size(jpeg: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's start-of-frame segment."""
    pos = 2
    while pos + 9 <= len(jpeg):
        if jpeg[pos] != 0xFF:
            return None
        marker = jpeg[pos + 1]
        length = struct.unpack_from(">H", jpeg, pos + 2)[0]
        if marker in (0xC0, 0xC1, 0xC2):
            height, width = struct.unpack_from(">HH", jpeg, pos + 5)
            return width, height
        pos += 2 + length
    return None


def progress_bar(camera: str, stream: Any) -> Progress:
    """A progress bar on ``stream`` (a terminal), redrawn in place."""
    began = time.monotonic()

    def show(share: float, fetched: int) -> None:
        filled = int(30 * min(share, 1.0))
        rate = fetched / max(time.monotonic() - began, 1e-3) / 1e6
        stream.write(
            f"\rexporting {camera} [{'#' * filled}{'.' * (30 - filled)}] {share:4.0%} {rate:.1f} MB/s"
        )
        stream.flush()

    return show
