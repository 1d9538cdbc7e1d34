"""A farm of synthetic IP cameras in one process: each camera an MJPEG stream over plain
HTTP at ``/cam/NAME.mjpeg``, as IP cameras serve them.

    python -m bench.camfarm --address 127.1.2.3 --port 8554 --first 0 --count 250 \
        [--fps 25 --width 640 --height 480 --frame-bytes 20000]

Prints ``ready`` on standard output once every camera can serve. ``GET /stats`` answers
JSON: frames sent, frames a camera skipped because its viewer (the recording server) had
not taken the previous ones (``skipped``: a camera does not queue video without bound),
and how late the farm's clock ticks ran (its own lag, which would hide in the figures).

Each camera's frames are due at its own phase of the frame interval (cameras are not
synchronised). The farm must cost far less than the recording server it feeds, for they
share the machine, so a camera does not encode a picture per frame: it renders a few
pictures with `SyntheticCamera.render` at start and sends them in turn (the recording
server does not look at the picture, and each is a whole JPEG). What changes per frame is
the part head, written as `mjpeg_part_head` writes it: ``X-Timestamp`` is the time of the
clock tick that sends the frame (within ``_TICK`` of its writing), ``X-Sequence`` advances
at every due time, sent or not, so a skipped frame shows as a gap downstream. A part is
written whole, head and picture as two buffers of one ``writev``: the picture is not copied.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import cast

from bench._common import new_event_loop
from watchkeep.media import (
    MJPEG_PART_END,
    Frame,
    SyntheticCamera,
    mjpeg_content_type,
    mjpeg_part_head,
)

# What a camera lets queue in its socket before it skips frames: half a second of video.
_MAX_BUFFERED = 256 * 1024
_TICK = 0.002  # frames due within this are sent together
_PICTURES = 4  # rendered per camera at start, sent in turn
_HEAD = (
    "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
)
# The part head as mjpeg_part_head writes it, made per frame from three pieces: the part's
# lead (delimiter, Content-Type, Content-Length, "X-Timestamp: "), fixed per picture; the
# timestamp and "X-Sequence: ", once per tick; the sequence number and the blank line.
_STAMP = b"X-Timestamp: "
_TICK_PIECE = b"%.6f\r\nX-Sequence: "
_PART_HEAD = b"%b%b%d\r\n\r\n"


class Camera:
    __slots__ = ("name", "pictures", "sequence", "viewers")

    def __init__(self, source: SyntheticCamera) -> None:
        self.name = source.name
        self.sequence = 0
        self.viewers: list[asyncio.Transport] = []
        # Per picture: the lead of its part head, and its JPEG followed by the part's end
        # (copied once here, so that a part is two buffers).
        self.pictures: list[tuple[bytes, bytes]] = []
        for sequence in range(_PICTURES):
            frame = source.render(sequence, time.time())
            head = mjpeg_part_head(frame)
            lead = head[: head.index(_STAMP) + len(_STAMP)]
            self.pictures.append((lead, frame.jpeg + MJPEG_PART_END))
            # The head made per frame must be the one mjpeg_part_head writes.
            check = Frame(self.name, 123456 + sequence, 1700000000.25 + sequence, frame.jpeg)
            made = _PART_HEAD % (lead, _TICK_PIECE % check.timestamp, check.sequence)
            if made != mjpeg_part_head(check):
                raise RuntimeError(f"camfarm: a part head differs from mjpeg_part_head's: {made!r}")


class Farm:
    def __init__(self, cameras: dict[str, Camera], fps: float) -> None:
        self.cameras = cameras
        self.interval = 1.0 / fps
        self.sent = 0
        self.skipped = 0
        self.rendered = 0
        self.max_lag = 0.0
        self.lag_total = 0.0
        self.ticks = 0

    async def tick(self) -> None:
        """Send every camera's frames when due, until cancelled or failed."""
        loop = asyncio.get_running_loop()
        cameras = list(self.cameras.values())
        count = len(cameras)
        stopped: asyncio.Future[None] = loop.create_future()
        if not count:
            await stopped  # nothing to send, ever
            return
        interval = self.interval
        # Camera i is due at base + interval * i / count: spread over one frame interval.
        # They come due in their order, so one index walks them (no heap), and a timer
        # callback (no task switch) sends each tick's frames.
        phases = [interval * i / count for i in range(count)]
        base = loop.time()
        index = 0
        clock = loop.time
        wall = time.time

        def tick() -> None:
            nonlocal base, index
            if stopped.done():  # cancelled
                return
            try:
                now = clock()
                due = base + phases[index]
                lag = now - due
                if lag > 0:
                    if lag > self.max_lag:
                        self.max_lag = lag
                    self.lag_total += lag
                    self.ticks += 1
                limit = now + _TICK
                if due <= limit:
                    # One timestamp for the tick: every frame of it is written within it.
                    stamp = _TICK_PIECE % wall()
                    sent = skipped = rendered = 0
                    while due <= limit:
                        camera = cameras[index]
                        sequence = camera.sequence
                        camera.sequence = sequence + 1
                        viewers = camera.viewers
                        if viewers:
                            rendered += 1
                            lead, picture = camera.pictures[sequence % _PICTURES]
                            head = _PART_HEAD % (lead, stamp, sequence)
                            for transport in viewers:
                                if transport.get_write_buffer_size() > _MAX_BUFFERED:
                                    skipped += 1
                                else:
                                    transport.writelines((head, picture))
                                    sent += 1
                        index += 1
                        if index == count:
                            index = 0
                            base += interval
                        due = base + phases[index]
                    self.sent += sent
                    self.skipped += skipped
                    self.rendered += rendered
                loop.call_at(due, tick)
            except Exception as exc:  # ends the farm, as one in its loop would
                if not stopped.done():
                    stopped.set_exception(exc)

        loop.call_soon(tick)
        await stopped

    def stats(self) -> dict[str, object]:
        return {
            "cameras": len(self.cameras),
            "viewers": sum(len(c.viewers) for c in self.cameras.values()),
            "rendered": self.rendered,
            "sent": self.sent,
            "skipped": self.skipped,
            "max_tick_lag_seconds": round(self.max_lag, 4),
            "mean_tick_lag_seconds": round(self.lag_total / self.ticks, 5) if self.ticks else 0.0,
        }


class Connection(asyncio.Protocol):
    def __init__(self, farm: Farm) -> None:
        self.farm = farm
        self.request = bytearray()
        self.transport: asyncio.Transport | None = None
        self.camera: Camera | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.camera is not None or self.transport is None:
            return  # a viewer says nothing more after its request
        self.request += data
        if b"\r\n\r\n" not in self.request:
            if len(self.request) > 8192:
                self.transport.close()
            return
        path = bytes(self.request.split(b" ", 2)[1]).decode("latin-1")
        if path == "/stats":
            body = json.dumps(self.farm.stats()).encode()
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n\r\n%b" % (len(body), body)
            )
            self.transport.close()
            return
        name = path.removeprefix("/cam/").removesuffix(".mjpeg")
        camera = self.farm.cameras.get(name)
        if camera is None:
            self.transport.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            self.transport.close()
            return
        self.transport.write(_HEAD.format(mjpeg_content_type()).encode())
        self.camera = camera
        camera.viewers.append(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.camera is not None and self.transport in self.camera.viewers:
            self.camera.viewers.remove(self.transport)


def camera_name(index: int) -> str:
    return f"cam{index:04d}"


async def serve(args: argparse.Namespace) -> None:
    sources = [
        SyntheticCamera(camera_name(i), args.width, args.height, args.fps, args.frame_bytes)
        for i in range(args.first, args.first + args.count)
    ]
    for source in sources:
        await source.start()
    farm = Farm({s.name: Camera(s) for s in sources}, args.fps)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Connection(farm), args.address, args.port, backlog=1024, reuse_address=True
    )
    print("ready", flush=True)
    async with server:
        await farm.tick()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--frame-bytes", type=int, default=20_000)
    args = parser.parse_args(argv)
    loop = new_event_loop()
    try:
        loop.run_until_complete(serve(args))
    except KeyboardInterrupt:
        pass
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
