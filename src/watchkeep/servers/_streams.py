"""The recording server's cameras and data streams: sources feed one hub per camera, the
hub feeds live viewers (MJPEG and WebSocket) and the recorder; playback reads recordings.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import json
import logging
import math
import re
import struct
import sys
import time
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from aiohttp import WSMsgType, web
from aiohttp.http_writer import StreamWriter

from watchkeep.errors import RecordingError, WatchkeepError
from watchkeep.media import (
    MJPEG_PART_END,
    Frame,
    FrameHub,
    InitSegment,
    Recorder,
    UnknownCamera,
    hls_playlist,
    hls_segments,
    mjpeg_content_type,
    mjpeg_part,
    mjpeg_part_head,
    source_for,
    ws_message,
)
from watchkeep.servers._problems import camera_not_allowed, problem
from watchkeep.servers._tokens import may_view

__all__ = ["CameraService"]

log = logging.getLogger("watchkeep.recording")

MAX_PLAYBACK_SPAN = 24 * 3600.0
CAMERA_STOP_TIMEOUT = 5.0  # seconds a stopped camera has to end its connection and tasks
# H.264/H.265 pictures kept for new viewers (from the last keyframe), at most: one keyframe
# interval per camera (about 0.5 MB at 4 Mbit/s and a keyframe a second).
_MAX_GOP = 600
_MAX_GOP_BYTES = 8 * 1024 * 1024
# More pictures than this waiting for one viewer: it skips to the latest keyframe among them.
_LAG_FRAMES = 8
_WS_HEAD16 = struct.Struct(">BBH")
_WS_HEAD64 = struct.Struct(">BBQ")
GIL_SWITCH_INTERVAL = 0.0005


class _Camera:
    def __init__(self, name: str, source: dict[str, Any], recorder: Recorder) -> None:
        self.name = name
        self.source_config = source
        self.hub = FrameHub(name)
        self.recorder = recorder
        self.source = source_for(name, source)
        self.task: asyncio.Task[None] | None = None
        self.frames = 0
        self.started = time.monotonic()
        # The last frame as live viewers get it (an MJPEG part, with and without HTTP/1.1
        # chunk framing): made once per frame, however many viewers there are.
        self._part: tuple[Frame | None, bool, bytes] = (None, False, b"")
        # H.264/H.265: the pictures since the last keyframe (where a new viewer starts), and
        # the last fragment as viewers get it (moof and mdat in one message), made once.
        self.since_keyframe: list[Frame] = []
        self._kept = 0  # bytes of those pictures
        self._fragment: tuple[Frame | None, bytes] = (None, b"")
        self._message: tuple[Frame | None, bytes] = (None, b"")

    def live_fragment(self, frame: Frame) -> bytes:
        """An H.264/H.265 ``frame`` as one fragmented MP4 fragment (moof + mdat)."""
        last, data = self._fragment
        if last is not frame:
            data = frame.fragment + frame.jpeg
            self._fragment = (frame, data)
        return data

    def live_message(self, frame: Frame) -> bytes:
        """An H.264/H.265 ``frame`` as one binary WebSocket message of its fragment, framed
        (RFC 6455, from the server: not masked): what a viewer that keeps up is sent,
        written to its connection as it is, in one write, made once per picture."""
        last, data = self._message
        if last is not frame:
            size = len(frame.fragment) + len(frame.jpeg)
            if size < 126:
                head = bytes((0x82, size))
            elif size < 1 << 16:
                head = _WS_HEAD16.pack(0x82, 126, size)
            else:
                head = _WS_HEAD64.pack(0x82, 127, size)
            data = b"".join((head, frame.fragment, frame.jpeg))
            self._message = (frame, data)
        return data

    def live_part(self, frame: Frame, chunked: bool) -> bytes:
        """``frame`` as the bytes of one MJPEG part (one chunk when ``chunked``)."""
        last, last_chunked, data = self._part
        if last is frame and last_chunked == chunked:
            return data
        if chunked:
            # One HTTP/1.1 chunk around the part, joined in one copy of the JPEG.
            head = mjpeg_part_head(frame)
            size = len(head) + len(frame.jpeg) + len(MJPEG_PART_END)
            data = b"".join((b"%x\r\n" % size, head, frame.jpeg, MJPEG_PART_END, b"\r\n"))
        else:
            data = mjpeg_part(frame)
        self._part = (frame, chunked, data)
        return data

    async def run(self) -> None:
        await self.source.start()
        try:
            await self.source.run(self._frame)
        finally:
            await self.source.stop()

    def _frame(self, frame: Frame) -> None:
        # Called by the source as each frame arrives (for a network camera, from the code
        # that received its bytes): to live viewers first, then to the recorder.
        self.frames += 1
        if frame.init is None:
            self.since_keyframe.clear()
        elif frame.keyframe:
            self.since_keyframe = [frame]
            self._kept = len(frame.jpeg)
        elif self.since_keyframe:
            self._kept += len(frame.jpeg)
            self.since_keyframe.append(frame)
            if len(self.since_keyframe) > _MAX_GOP or self._kept > _MAX_GOP_BYTES:
                # A camera with keyframes far apart: new viewers wait for the next one.
                self.since_keyframe = []
        self.hub.publish(frame)
        try:
            self.recorder.write(frame)
        except RecordingError as exc:
            log.error("camera %s: %s", self.name, exc)

    @property
    def video_codec(self) -> str | None:
        """ "H264" or "H265" while the camera sends that; None for Motion JPEG."""
        latest = self.hub.latest
        return latest.codec if latest is not None and latest.init is not None else None

    def fps(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.frames / elapsed if elapsed > 0 else 0.0


class CameraService:
    """The cameras a recording server records now, and the routes that serve them."""

    def __init__(
        self,
        server: str,
        data_dir: Path,
        *,
        segment_seconds: float = 60.0,
        max_age: float | None = None,
        max_bytes: int | None = None,
        writer: Literal["thread", "process"] = "thread",
    ) -> None:
        self.server = server
        self.recorder = Recorder(
            data_dir / "recordings",
            data_dir / "recordings" / "index.db",
            segment_seconds=segment_seconds,
            max_age=max_age,
            max_bytes=max_bytes,
            max_playback_span=MAX_PLAYBACK_SPAN,
            writer=writer,
        )
        self.cameras: dict[str, _Camera] = {}

    async def start(self) -> None:
        # The recorder's writer thread lets the GIL go at every write and fsync, and then
        # waits for the event loop to give it back; with the default 5 ms switch interval a
        # busy loop let it do at most a few hundred writes a second, fewer than a few
        # hundred cameras need (it fell behind and dropped frames).
        sys.setswitchinterval(GIL_SWITCH_INTERVAL)
        await self.recorder.open()
        # Every frame makes a few short-lived objects; the collections they trigger walked
        # everything the server had loaded (aiohttp, SQLAlchemy, ...) at each full pass.
        # What exists once the server is up is kept out of the collector's walks.
        gc.freeze()

    async def set_cameras(self, wanted: list[dict[str, Any]]) -> None:
        want = {str(c["name"]): dict(c.get("source", {})) for c in wanted}
        for name in list(self.cameras):
            if name not in want or want[name] != self.cameras[name].source_config:
                await self._stop(name)
        for name, source in want.items():
            if name in self.cameras:
                continue
            try:
                camera = _Camera(name, source, self.recorder)
            except (WatchkeepError, ValueError, KeyError) as exc:
                log.error("%s: camera %s cannot start: %s", self.server, name, exc)
                continue
            camera.task = asyncio.create_task(camera.run())
            self.cameras[name] = camera

    async def _stop(self, name: str) -> None:
        camera = self.cameras.pop(name)
        camera.hub.close()
        task = camera.task
        if task is None:
            return
        task.cancel()
        # Bounded: this runs under the server's configuration lock, and a camera that never
        # finished stopping held it for good (seen under load: every later configuration,
        # heartbeats' included, waited behind it, so cameras added afterwards never started
        # and removed ones never stopped).
        done, _ = await asyncio.wait({task}, timeout=CAMERA_STOP_TIMEOUT)
        if not done:
            log.error(
                "%s: camera %s did not stop within %g s; left to end on its own: %r",
                self.server,
                name,
                CAMERA_STOP_TIMEOUT,
                task,
            )
        elif not task.cancelled():
            task.exception()  # retrieved: it was stopped, whatever it raised

    async def close(self) -> None:
        for name in list(self.cameras):
            await self._stop(name)
        await self.recorder.close()

    def stats(self) -> list[dict[str, Any]]:
        return [
            {
                "name": c.name,
                "frames": c.frames,
                "fps": round(c.fps(), 2),
                "viewers": c.hub.subscribers,
                "problem": c.source.problem,
            }
            for c in self.cameras.values()
        ]

    def problems(self) -> dict[str, str]:
        """Why each camera that sends no pictures sends none (the others are left out)."""
        found = {name: c.source.problem for name, c in self.cameras.items()}
        return {name: problem for name, problem in found.items() if problem}

    def recorder_stats(self) -> dict[str, Any]:
        """The recorder's counters: frames and bytes written, frames it had to drop."""
        stats = self.recorder.stats
        return {
            "frames_written": stats.frames_written,
            "bytes_written": stats.bytes_written,
            "frames_dropped": stats.frames_dropped,
            "flushes": stats.flushes,
        }

    # -- routes --------------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/api/v1/cameras/{name}/live.mjpeg", self.live_mjpeg)
        r.add_get("/api/v1/cameras/{name}/live.ws", self.live_ws)
        r.add_get("/api/v1/cameras/{name}/snapshot.jpg", self.snapshot)
        r.add_get("/api/v1/cameras/{name}/playback.mjpeg", self.playback)
        r.add_get("/api/v1/cameras/{name}/playback.m3u8", self.playback_hls)
        r.add_get("/api/v1/cameras/{name}/recordings/{file}", self.recording_file)

    def _camera(self, request: web.Request) -> _Camera | web.Response:
        name = request.match_info["name"]
        if not may_view(request["claims"], name):
            return camera_not_allowed(name, f"user {request['claims'].get('sub')}")
        camera = self.cameras.get(name)
        if camera is None:
            return problem(
                404,
                "unknown camera",
                f"{self.server} does not record camera {name} now",
                server=self.server,
                fix="ask the management server where the camera records: watchkeep site status",
            )
        return camera

    async def live_mjpeg(self, request: web.Request) -> web.StreamResponse:
        camera = self._camera(request)
        if isinstance(camera, web.Response):
            return camera
        if camera.video_codec is not None:
            return _not_jpeg(
                camera.name,
                camera.video_codec,
                "live.ws (the web client), or: watchkeep view CAMERA --out FILE.mp4",
            )
        response = web.StreamResponse(
            headers={"Content-Type": mjpeg_content_type(), "Cache-Control": "no-store"}
        )
        await response.prepare(request)
        transport, writer, protocol = request.transport, request.writer, request.protocol
        if transport is None:
            return response
        # Parts go to the transport directly, framed here (one chunk each on HTTP/1.1, as
        # aiohttp's writer would): the writer's per-write work and copies, paid per frame
        # and per viewer, were the largest cost of serving live video. write_eof() at the
        # end still comes from aiohttp, on the same framing.
        chunked = isinstance(writer, StreamWriter) and writer.chunked

        def direct(frame: Frame) -> bool:
            # Called by the hub as the frame is published: while the viewer's socket has
            # room, the frame is written at once, with no task switch per viewer.
            if frame.init is not None:  # the camera went over to H.264/H.265
                return True
            if protocol.writing_paused or transport.is_closing():
                return False
            transport.write(camera.live_part(frame, chunked))
            return True

        subscription = camera.hub.subscribe(direct=direct)
        try:
            # Frames queue only while the viewer's socket is full: whatever queued goes out
            # in one write once it drains.
            while frames := await subscription.get_many():
                if transport.is_closing():
                    break
                parts = [camera.live_part(f, chunked) for f in frames if f.init is None]
                transport.write(b"".join(parts))
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            subscription.close()
        return response

    async def live_ws(self, request: web.Request) -> web.StreamResponse:
        """Live video over a WebSocket. Motion JPEG: one binary message per picture (see
        :mod:`watchkeep.media._wire`). H.264/H.265, for Media Source Extensions: a text
        message ``{"type": "stream", "codec", "mime", "width", "height"}``, a binary message
        with the init segment, then one per picture (a fragment: moof and mdat), made once
        per camera; a new viewer starts at the last keyframe, and a viewer that falls
        behind (the hub dropped pictures for it, or many wait) skips to a keyframe."""
        camera = self._camera(request)
        if isinstance(camera, web.Response):
            return camera
        ws = web.WebSocketResponse(heartbeat=20, max_msg_size=1 << 16)
        await ws.prepare(request)
        transport, protocol = request.transport, request.protocol
        sender = _LiveSender(ws, camera)

        def direct(frame: Frame) -> bool:
            # Called by the hub as the picture is published: a viewer that keeps up (its
            # stream announced, no keyframe awaited, nothing being sent by its task, room in
            # its socket) is written the picture at once, with no task switch per viewer and
            # no second write for the WebSocket frame's head. Anything else is queued for
            # the sender.
            if (
                sender.busy
                or sender.skipping
                or frame.init is None
                or frame.init is not sender.init
                or transport is None
                or protocol.writing_paused
                or transport.is_closing()
            ):
                return False
            transport.write(camera.live_message(frame))
            return True

        subscription = camera.hub.subscribe(direct=direct)
        # Taken with no await since subscribing: the queue holds what comes after these.
        backlog = list(camera.since_keyframe)

        async def drain_incoming() -> None:
            async for message in ws:
                if message.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                    break
            subscription.close()

        reader = asyncio.create_task(drain_incoming())
        try:
            await sender.send(backlog)
            dropped = subscription.dropped
            while frames := await subscription.get_many():
                if subscription.dropped != dropped:
                    dropped = subscription.dropped
                    sender.skipping = True  # pictures lost: the next ones need a keyframe
                await sender.send(frames)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            subscription.close()
            reader.cancel()
            await ws.close()
        return ws

    async def snapshot(self, request: web.Request) -> web.StreamResponse:
        camera = self._camera(request)
        if isinstance(camera, web.Response):
            return camera
        frame = camera.hub.latest
        if frame is None:
            return problem(503, "no frame yet", f"camera {camera.name} has sent no frame yet")
        if frame.init is not None:
            return _not_jpeg(camera.name, frame.codec, "live.ws, or playback.m3u8")
        return web.Response(
            body=frame.jpeg,
            content_type="image/jpeg",
            headers={"X-Timestamp": f"{frame.timestamp:.6f}", "X-Sequence": str(frame.sequence)},
        )

    async def playback(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if not may_view(request["claims"], name):
            return camera_not_allowed(name)
        try:
            start = parse_moment(request.query["from"])
            end = parse_moment(request.query["to"])
        except (KeyError, ValueError):
            return problem(
                400,
                "bad range",
                "from and to must be ISO 8601 times (2026-12-02T08:00:00Z) or UTC seconds",
            )
        if end <= start or end - start > MAX_PLAYBACK_SPAN:
            return problem(
                400,
                "bad range",
                f"playback needs 0 < to - from <= {MAX_PLAYBACK_SPAN:.0f} s, got from={start} to={end}",
            )
        response = web.StreamResponse(headers={"Content-Type": mjpeg_content_type()})
        prepared = False
        try:
            async for frame in self.recorder.playback(name, start, end):
                if frame.init is not None:
                    if prepared:
                        break  # the camera went over to H.264/H.265 within the range
                    return _not_jpeg(name, frame.codec, "playback.m3u8 (HLS), or export it")
                if not prepared:
                    await response.prepare(request)
                    prepared = True
                await response.write(mjpeg_part(frame))
                # Frames come in batches of megabytes, and a connection that is gone never
                # pushes back: without a turn of the loop between frames its loss is noticed
                # a batch later, after hundreds of "socket.send() raised exception." lines.
                await asyncio.sleep(0)
            if not prepared:
                # As playback.m3u8 answers: a stream that ends at once says nothing (a
                # browser's image shows neither a picture nor an error).
                return problem(
                    404,
                    "no recording",
                    f"camera {name} has no Motion JPEG recording on {self.server} between "
                    f"{request.query['from']} and {request.query['to']}",
                    fix="choose a time the camera recorded (H.264/H.265 plays as playback.m3u8)",
                )
            await response.write_eof()
        except RecordingError as exc:
            if prepared:
                raise
            return problem(
                404 if isinstance(exc, UnknownCamera) else 400,
                "playback refused",
                exc.describe(),
                fix=exc.fix,
            )
        except ConnectionError:
            # The viewer left before the end (a reset, or "Connection lost" while waiting
            # for its socket to drain): stop reading the recording for it.
            pass
        return response

    async def playback_hls(self, request: web.Request) -> web.StreamResponse:
        """An HLS playlist of the H.264/H.265 recordings of ``[from, to)`` (ISO 8601 or UTC
        seconds): byte ranges of the recording files, served by :meth:`recording_file`."""
        name = request.match_info["name"]
        if not may_view(request["claims"], name):
            return camera_not_allowed(name)
        try:
            start = parse_moment(request.query["from"])
            end = parse_moment(request.query["to"])
        except (KeyError, ValueError):
            return problem(
                400,
                "bad range",
                "from and to must be ISO 8601 times (2026-12-02T08:00:00Z) or UTC seconds",
            )
        try:
            files = await self.recorder.video_files(name, start, end)
        except RecordingError as exc:
            return problem(
                404 if isinstance(exc, UnknownCamera) else 400,
                "playback refused",
                exc.describe(),
                fix=exc.fix,
            )
        # A token given in the URL (a player that sends no header) goes on to the segments.
        token = request.query.get("token")
        suffix = f"?token={quote(token, safe='')}" if token else ""
        entries = [(f"recordings/{info.path.name}{suffix}", video) for info, video in files]
        listed = [(uri, video, hls_segments(uri, video, start, end)) for uri, video in entries]
        if not any(segments for _, _, segments in listed):
            return problem(
                404,
                "no recording",
                f"camera {name} has no H.264/H.265 recording on {self.server} between "
                f"{request.query['from']} and {request.query['to']}",
                fix="choose a time the camera recorded (Motion JPEG plays as playback.mjpeg)",
            )
        return web.Response(
            text=hls_playlist(listed),
            content_type="application/vnd.apple.mpegurl",
            headers={"Cache-Control": "no-store"},
        )

    async def recording_file(self, request: web.Request) -> web.StreamResponse:
        """A recording file of an H.264/H.265 camera, whole or by byte ranges (HLS)."""
        name, file = request.match_info["name"], request.match_info["file"]
        if not may_view(request["claims"], name):
            return camera_not_allowed(name)
        path = self.recorder.root / name / file
        if not _RECORDING_FILE.fullmatch(file) or not path.is_file():
            return problem(
                404,
                "no recording",
                f"camera {name} has no recording file {file!r} on {self.server}",
                fix="ask for the playlist again: playback.m3u8",
            )
        return web.FileResponse(
            path, headers={"Content-Type": "video/mp4", "Cache-Control": "private, max-age=3600"}
        )


class _LiveSender:
    """What one WebSocket viewer has been sent: the init segment its pictures follow, and
    whether it waits for a keyframe."""

    def __init__(self, ws: web.WebSocketResponse, camera: _Camera) -> None:
        self.ws = ws
        self.camera = camera
        self.init: InitSegment | None = None
        self.skipping = False
        self.busy = False  # sending: nothing may be written past it meanwhile

    async def send(self, frames: list[Frame]) -> None:
        self.busy = True
        try:
            await self._send(frames)
        finally:
            self.busy = False

    async def _send(self, frames: list[Frame]) -> None:
        if len(frames) > _LAG_FRAMES:
            # Behind: start again at the latest keyframe waiting, rather than send them all.
            keys = [i for i, f in enumerate(frames) if f.keyframe and f.init is not None]
            if keys:
                frames = frames[keys[-1] :]
        for frame in frames:
            init = frame.init
            if init is None:
                await self.ws.send_bytes(ws_message(frame))
                continue
            if init is not self.init or self.skipping:
                if not frame.keyframe:
                    continue
                self.skipping = False
                if init is not self.init:
                    self.init = init
                    info = init.info
                    await self.ws.send_str(
                        json.dumps(
                            {
                                "type": "stream",
                                "codec": info.codec,
                                "mime": init.mime_type,
                                "width": info.width,
                                "height": info.height,
                            }
                        )
                    )
                    await self.ws.send_bytes(init.data)
            await self.ws.send_bytes(self.camera.live_fragment(frame))


def _not_jpeg(camera: str, codec: str, instead: str) -> web.Response:
    return problem(
        415,
        "not Motion JPEG",
        f"camera {camera} sends {codec.replace('H26', 'H.26')}, which is not served as JPEG",
        fix=f"watch it as {instead}",
    )


_RECORDING_FILE = re.compile(r"[0-9]{17}(-[0-9]{1,3})?\.mp4")


def parse_moment(text: str) -> float:
    """UTC seconds of ``text``: ISO 8601 (a time without a zone is UTC) or seconds."""
    try:
        value = float(text)
    except ValueError:
        moment = dt.datetime.fromisoformat(text.strip())
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.UTC)
        value = moment.timestamp()
    if not math.isfinite(value):
        raise ValueError(f"not a time: {text!r}")
    return value
