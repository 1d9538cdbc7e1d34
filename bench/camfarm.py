"""A farm of synthetic IP cameras in one process: each camera an MJPEG stream over plain
HTTP at ``/cam/NAME.mjpeg``, as IP cameras serve them.

    python -m bench.camfarm --address 127.1.2.3 --port 8554 --first 0 --count 250 \
        [--fps 25 --width 640 --height 480 --frame-bytes 20000]

Prints ``ready`` on standard output once every camera can serve. ``GET /stats`` answers
JSON: frames sent, frames a camera skipped because its viewer (the recording server) had
not taken the previous ones (``skipped``: a camera does not queue video without bound),
and how late the farm's clock ticks ran (its own lag, which would hide in the figures).

Each camera's frames are due at its own phase of the frame interval (cameras are not
synchronised), are made by `SyntheticCamera.render` with ``X-Timestamp`` set to the time of
rendering, and are written whole. The sequence number advances at every due time, sent or
not, so a skipped frame shows as a gap downstream.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import sys
import time
from typing import cast

from bench._common import new_event_loop
from watchkeep.media import MJPEG_PART_END, SyntheticCamera, mjpeg_content_type, mjpeg_part_head

# What a camera lets queue in its socket before it skips frames: half a second of video.
_MAX_BUFFERED = 256 * 1024
_TICK = 0.002  # frames due within this are sent together
_HEAD = (
    "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
)


class Camera:
    def __init__(self, source: SyntheticCamera) -> None:
        self.source = source
        self.sequence = 0
        self.viewers: list[asyncio.Transport] = []


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
        loop = asyncio.get_running_loop()
        now = loop.time()
        count = len(self.cameras)
        # Spread the cameras over one frame interval.
        due = [(now + self.interval * i / count, i, c) for i, c in enumerate(self.cameras.values())]
        heapq.heapify(due)
        while True:
            now = loop.time()
            lag = now - due[0][0]
            if lag > 0:
                self.max_lag = max(self.max_lag, lag)
                self.lag_total += lag
                self.ticks += 1
            limit = now + _TICK
            while due[0][0] <= limit:
                when, index, camera = due[0]
                self.send(camera)
                heapq.heapreplace(due, (when + self.interval, index, camera))
            await asyncio.sleep(max(0.0, due[0][0] - loop.time()))

    def send(self, camera: Camera) -> None:
        sequence = camera.sequence
        camera.sequence += 1
        if not camera.viewers:
            return
        frame = camera.source.render(sequence, time.time())
        self.rendered += 1
        part = b"".join((mjpeg_part_head(frame), frame.jpeg, MJPEG_PART_END))
        for transport in camera.viewers:
            if transport.get_write_buffer_size() > _MAX_BUFFERED:
                self.skipped += 1
            else:
                transport.write(part)
                self.sent += 1

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
