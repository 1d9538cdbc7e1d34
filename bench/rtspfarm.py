"""A farm of H.264 RTSP cameras in one process, replaying one clip encoded once: a camera
at every ``rtsp://ADDRESS:PORT/PATH``, RTP (RFC 6184: single NAL units and FU-A) over the
RTSP connection, as IP cameras send it to a recording server asking for TCP.

    python -m bench.rtspfarm --address 127.1.2.3 [--port 8554 --fps 25 --mbps 4 --clip F]

The clip (four seconds of noise, x264 at ``--mbps`` constant bit rate, a keyframe a
second) is encoded once by FFmpeg (at start, or into ``--clip`` by :func:`write_clip`, which
several farm processes then share) and cut into RTP packets once. Every camera of a farm
numbers its pictures on one timeline (picture n is due n/fps seconds after the farm's first
camera began, plus the camera's own phase within the picture's interval), so picture n's
packets, headers included, are the same bytes for every camera: made once per picture by
the farm, each camera sends them in one write. A camera's first picture is the one due when
it starts (a recording server waits for the next keyframe, as with any camera). Prints
``ready PORT`` once it listens.

Each camera sends an RTCP sender report (channel 1) with its first picture: the recording
server then takes the pictures' times from the camera's clock (when the picture is due),
so a viewer's delay, measured from the time in the fragment, runs from the camera, as the
MJPEG cameras' ``X-Timestamp`` does. The cameras' clock is the machine's monotonic clock
plus ``--clock-offset`` (default: the wall clock's offset from it at start), the clock the
benchmark's viewers read too: a step or a slew of the wall clock meanwhile (the system's
time being corrected) then moves neither the pictures' times nor the delays measured.

A line ``stats`` on standard input is answered with one line of JSON on standard output:
the pictures skipped so far (``skipped``: a camera skips a picture its connection has not
taken) and the longest lateness of a picture's send since the last ``stats``
(``max_tick_lag_seconds``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import random
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import cast

from bench._common import new_event_loop

_MTU = 1400
_SECONDS = 4
_MAX_BUFFERED = 512 * 1024  # a camera skips pictures its viewer has not taken


_NTP_TO_UNIX = 2_208_988_800
_RTP_HEAD = struct.Struct("!cBHBBHII")  # the interleaved frame's head, then the RTP header


def encode_clip(fps: int, mbps: float) -> list[list[bytes]]:
    """The clip's access units (NAL units without start codes), encoded once."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "clip.h264"
        write_clip(out, fps, mbps)
        return read_clip(out)


def write_clip(out: Path, fps: int, mbps: float) -> None:
    """The clip as an H.264 Annex B file (an access unit delimiter before each picture)."""
    rate = f"{mbps}M"
    subprocess.run(
        [
            "ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
            f"nullsrc=s=640x360:r={fps},geq=random(1)*255:128:128", "-t", str(_SECONDS),
            "-c:v", "libx264", "-preset", "ultrafast", "-b:v", rate, "-minrate", rate,
            "-maxrate", rate, "-bufsize", rate, "-g", str(fps), "-bf", "0",
            "-pix_fmt", "yuv420p", "-bsf:v", "h264_metadata=aud=insert", "-f", "h264", str(out),
        ],
        check=True,
    )  # fmt: skip


def read_clip(path: Path) -> list[list[bytes]]:
    """The access units of a clip :func:`write_clip` wrote."""
    data = path.read_bytes()
    units: list[list[bytes]] = []
    for part in data.split(b"\x00\x00\x01")[1:]:
        nal = part.rstrip(b"\x00")
        if nal[0] & 0x1F == 9:
            units.append([])
        elif units:
            units[-1].append(nal)
    return units


def packetize(unit: list[bytes]) -> list[bytes]:
    """RTP payloads of one access unit (the RTP header is added as it is sent)."""
    payloads: list[bytes] = []
    for nal in unit:
        if len(nal) <= _MTU:
            payloads.append(nal)
            continue
        indicator, kind, body = bytes(((nal[0] & 0xE0) | 28,)), nal[0] & 0x1F, nal[1:]
        pieces = [body[i : i + _MTU] for i in range(0, len(body), _MTU)]
        for index, piece in enumerate(pieces):
            flags = (0x80 if index == 0 else 0) | (0x40 if index == len(pieces) - 1 else 0)
            payloads.append(indicator + bytes((flags | kind,)) + piece)
    return payloads


class Clip:
    def __init__(self, units: list[list[bytes]], fps: int) -> None:
        self.fps = fps
        sps = next(n for n in units[0] if n[0] & 0x1F == 7)
        pps = next(n for n in units[0] if n[0] & 0x1F == 8)
        self.sprop = f"{base64.b64encode(sps).decode()},{base64.b64encode(pps).decode()}"
        self.profile = sps[1:4].hex()
        self.pictures = [packetize(unit) for unit in units]
        # The sequence number of each picture's first packet, within one pass of the clip.
        self.first_packet = [0]
        for payloads in self.pictures:
            self.first_packet.append(self.first_packet[-1] + len(payloads))
        self.packets = self.first_packet.pop()
        self._made: dict[int, bytes] = {}

    def picture(self, n: int) -> bytes:
        """Picture ``n`` of the farm's timeline as sent: its RTP packets, interleaved."""
        made = self._made.get(n)
        if made is not None:
            return made
        count = len(self.pictures)
        payloads = self.pictures[n % count]
        sequence = self.first_packet[n % count] + (n // count) * self.packets
        timestamp = (n * (90_000 // self.fps)) & 0xFFFFFFFF
        out: list[bytes] = []
        last = len(payloads) - 1
        for index, payload in enumerate(payloads):
            marker = 0x80 if index == last else 0
            head = _RTP_HEAD.pack(
                b"$", 0, 12 + len(payload), 0x80, marker | 96, (sequence + index) & 0xFFFF,
                timestamp, 0x57B00C,
            )  # fmt: skip
            out += (head, payload)
        made = b"".join(out)
        for old in [k for k in self._made if k < n - 8]:
            del self._made[old]
        self._made[n] = made
        return made


class Session(asyncio.Protocol):
    """One RTSP connection: answers the requests, then sends the clip in a loop."""

    def __init__(self, farm: Farm) -> None:
        self.farm = farm
        self.transport: asyncio.Transport | None = None
        self.data = b""
        self.reported = False
        self.playing = False
        self.skipped = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.data += data
        while b"\r\n\r\n" in self.data:
            head, self.data = self.data.split(b"\r\n\r\n", 1)
            self.request(head.decode("latin-1"))

    def request(self, head: str) -> None:
        lines = head.split("\r\n")
        method, url, _ = lines[0].split(" ", 2)
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])
        }
        cseq = headers.get("cseq", "0")
        extra = ""
        body = ""
        if method == "OPTIONS":
            extra = "Public: OPTIONS, DESCRIBE, SETUP, PLAY, GET_PARAMETER, TEARDOWN\r\n"
        elif method == "DESCRIBE":
            clip = self.farm.clip
            body = (
                "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=watchkeep bench camera\r\nt=0 0\r\n"
                "m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
                f"a=fmtp:96 packetization-mode=1;profile-level-id={clip.profile};"
                f"sprop-parameter-sets={clip.sprop}\r\na=control:{url}/track1\r\n"
            )
            extra = f"Content-Base: {url}/\r\nContent-Type: application/sdp\r\n"
        elif method == "SETUP":
            extra = "Session: 1;timeout=60\r\nTransport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n"
        elif method == "PLAY":
            extra = "Session: 1\r\n"
            self.playing = True
            self.farm.start(self)
        elif method == "TEARDOWN":
            self.farm.stop(self)
        reply = (
            f"RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\n{extra}Content-Length: {len(body)}\r\n\r\n{body}"
        )
        assert self.transport is not None
        self.transport.write(reply.encode("latin-1"))

    def send_picture(self, n: int, wall: float) -> None:
        """Picture ``n`` of the farm's timeline, due at ``wall`` (UTC seconds)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if transport.get_write_buffer_size() > _MAX_BUFFERED:
            # Skipped: its sequence numbers are missing downstream, as lost packets.
            self.skipped += 1
            self.farm.skipped += 1
            return
        if not self.reported:
            transport.write(self.sender_report(n, wall))
            self.reported = True
        transport.write(self.farm.clip.picture(n))

    def sender_report(self, n: int, wall: float) -> bytes:
        """An RTCP sender report (RFC 3550 6.4.1), interleaved on channel 1: picture ``n``'s
        RTP time is ``wall`` on the camera's clock (when the picture is due)."""
        now = wall + _NTP_TO_UNIX
        seconds = int(now)
        fraction = int((now - seconds) * 2**32) & 0xFFFFFFFF
        timestamp = (n * (90_000 // self.farm.clip.fps)) & 0xFFFFFFFF
        report = struct.pack(
            "!BBHIIIIII", 0x80, 200, 6, 0x57B00C, seconds, fraction, timestamp, 0, 0
        )
        return b"$\x01" + len(report).to_bytes(2, "big") + report

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.farm.stop(self)


class Farm:
    def __init__(self, clip: Clip, clock_offset: float) -> None:
        self.clip = clip
        self.clock_offset = clock_offset  # the cameras' wall clock minus the monotonic one
        self.sessions: set[Session] = set()
        self.skipped = 0
        self.max_lag = 0.0
        self.origin: tuple[float, float] | None = None  # (loop time, UTC) of picture 0

    def start(self, session: Session) -> None:
        loop = asyncio.get_running_loop()
        if self.origin is None:
            # The event loop's clock is the monotonic one (asyncio's and uvloop's alike).
            now = loop.time()
            self.origin = (now, now + self.clock_offset)
        origin, origin_wall = self.origin
        interval = 1 / self.clip.fps
        phase = random.uniform(0, interval)  # noqa: S311 - not a secret

        def tick(n: int) -> None:
            if session not in self.sessions:
                return
            due = origin + n * interval + phase
            lag = loop.time() - due
            if lag > self.max_lag:
                self.max_lag = lag
            session.send_picture(n, origin_wall + (due - origin))
            loop.call_at(due + interval, tick, n + 1)

        self.sessions.add(session)
        first = int((loop.time() - origin) / interval) + 1
        loop.call_at(origin + first * interval + phase, tick, first)

    def stop(self, session: Session) -> None:
        self.sessions.discard(session)

    def stats(self) -> None:
        """Answers a ``stats`` line on standard input (see the module's docstring)."""
        line = sys.stdin.readline()
        if not line:
            asyncio.get_running_loop().remove_reader(sys.stdin.fileno())
            return
        answer = {"skipped": self.skipped, "max_tick_lag_seconds": round(self.max_lag, 4)}
        self.max_lag = 0.0
        print(json.dumps(answer), flush=True)


async def serve(args: argparse.Namespace) -> None:
    units = read_clip(args.clip) if args.clip else encode_clip(args.fps, args.mbps)
    offset = args.clock_offset
    if offset is None:
        offset = time.time() - time.monotonic()
    farm = Farm(Clip(units, args.fps), offset)
    loop = asyncio.get_running_loop()
    if args.stats:
        loop.add_reader(sys.stdin.fileno(), farm.stats)
    server = await loop.create_server(lambda: Session(farm), args.address, args.port, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    print(f"ready {port}", flush=True)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--address", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--mbps", type=float, default=4.0)
    parser.add_argument("--clip", type=Path, help="an H.264 file of write_clip (else: encode)")
    parser.add_argument("--stats", action="store_true", help="answer 'stats' lines on stdin")
    parser.add_argument(
        "--clock-offset",
        type=float,
        help="the cameras' clock: the monotonic clock plus this (default: the wall clock)",
    )
    args = parser.parse_args(argv)
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        try:
            runner.run(serve(args))
        except KeyboardInterrupt:
            return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
