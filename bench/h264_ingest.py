"""What receiving one H.264 camera costs the recording server's CPU, per picture, two ways:
watchkeep's own asyncio RTSP client (RTP depacketized in Python, each picture made into its
fMP4 fragment), and FFmpeg's RTSP demuxer through PyAV (the packets handed to Python one
picture at a time), on the same camera: GStreamer's RTSP server sending x264 at 4 Mbit/s,
25 pictures a second (noise, so that the encoder fills its bit rate), RTP over the RTSP
connection (TCP) for both.

    python -m bench.h264_ingest [--seconds 10] [--cameras 4] [--farm] [--record DIR]

With ``--farm`` the cameras are :mod:`bench.rtspfarm`'s (a clip encoded once and replayed,
which costs the machine far less than live encoders, so that many cameras can be
measured); ``--record DIR`` has watchkeep's arm record what it receives there too.

The PyAV arm needs PyAV (``pip install av==18.1.0``), which watchkeep does not depend on;
without it that arm says so and only watchkeep's is measured. Prints JSON: per arm, the
pictures received, the bytes, and the CPU time of this process per picture (user and
system), each arm alone in the process.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import resource
import select
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from bench._common import new_event_loop
from watchkeep.media import Frame, Recorder, RtspCamera

_GST_SERVER = Path(__file__).resolve().parent.parent / "tests" / "gst_rtsp_server.py"
_PIPELINE = (
    "videotestsrc is-live=true pattern=snow ! video/x-raw,format=I420,width=640,height=360,"
    "framerate=25/1 ! x264enc bitrate=4000 pass=cbr speed-preset=ultrafast tune=zerolatency "
    "key-int-max=25 ! video/x-h264,profile=constrained-baseline ! rtph264pay name=pay0 pt=96"
)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _watchkeep(urls: list[str], seconds: float, record: Path | None) -> dict[str, Any]:
    counts = {"frames": 0, "bytes": 0}
    recorder = Recorder(record, record / "index.db") if record is not None else None
    if recorder is not None:
        await recorder.open()

    def sink(frame: Frame) -> None:
        counts["frames"] += 1
        counts["bytes"] += len(frame.jpeg)
        if recorder is not None:
            recorder.write(frame)

    cameras = [RtspCamera(f"cam{i}", url) for i, url in enumerate(urls)]
    for camera in cameras:
        await camera.start()
    tasks = [asyncio.create_task(camera.run(sink)) for camera in cameras]
    await asyncio.sleep(2)  # connected and past the first keyframe
    before, frames, size = _cpu(), counts["frames"], counts["bytes"]
    await asyncio.sleep(seconds)
    used, frames, size = _cpu() - before, counts["frames"] - frames, counts["bytes"] - size
    for camera in cameras:
        await camera.stop()
    await asyncio.gather(*tasks)
    figures = _figures(frames, size, used)
    if recorder is not None:
        await recorder.close()
        figures["recorded_pictures"] = recorder.stats.frames_written
        figures["recorder_dropped"] = recorder.stats.frames_dropped
    return figures


def _pyav(urls: list[str], seconds: float) -> dict[str, Any]:
    try:
        av: Any = importlib.import_module("av")
    except ImportError:
        return {"skipped": "PyAV is not installed (pip install av==18.1.0)"}
    counts = {"frames": 0, "bytes": 0}
    stop = threading.Event()

    def pull(url: str) -> None:
        container = av.open(url, options={"rtsp_transport": "tcp"}, timeout=10)
        try:
            for packet in container.demux(video=0):
                if packet.size:
                    counts["frames"] += 1
                    counts["bytes"] += packet.size
                if stop.is_set():
                    break
        finally:
            container.close()

    threads = [threading.Thread(target=pull, args=(url,), daemon=True) for url in urls]
    for thread in threads:
        thread.start()
    time.sleep(2)
    before, frames, size = _cpu(), counts["frames"], counts["bytes"]
    time.sleep(seconds)
    used, frames, size = _cpu() - before, counts["frames"] - frames, counts["bytes"] - size
    stop.set()
    for thread in threads:
        thread.join(10)
    return _figures(frames, size, used)


def _figures(frames: int, size: int, used: float) -> dict[str, Any]:
    return {
        "pictures": frames,
        "megabits_per_second_per_camera": None,
        "bytes": size,
        "cpu_seconds": round(used, 3),
        "cpu_us_per_picture": round(used / frames * 1e6, 1) if frames else None,
    }


def _run(coroutine: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(coroutine)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--address", default="127.0.97.1")
    parser.add_argument("--farm", action="store_true", help="cameras of bench.rtspfarm")
    parser.add_argument("--record", type=Path, help="record watchkeep's arm here")
    parser.add_argument("--skip-pyav", action="store_true")
    args = parser.parse_args(argv)
    if args.farm:
        command = [sys.executable, "-m", "bench.rtspfarm", "--address", args.address]
    else:
        mounts = [arg for i in range(args.cameras) for arg in ("--mount", f"/cam{i}", _PIPELINE)]
        command = ["/usr/bin/python3", str(_GST_SERVER), "--address", args.address, *mounts]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert server.stdout is not None
        ready, _, _ = select.select([server.stdout], [], [], 60)
        line = server.stdout.readline().decode() if ready else ""
        if not line.startswith("ready "):
            print(f"the GStreamer RTSP server did not start: {line!r}", file=sys.stderr)
            return 1
        port = int(line.split()[1])
        urls = [f"rtsp://{args.address}:{port}/cam{i}" for i in range(args.cameras)]
        results = {
            "cameras": args.cameras,
            "source": "bench.rtspfarm" if args.farm else "GStreamer x264enc (live encoders)",
            "seconds": args.seconds,
            # On uvloop, as the recording server runs.
            "watchkeep": _run(_watchkeep(urls, args.seconds, args.record)),
            "pyav": {"skipped": "--skip-pyav"} if args.skip_pyav else _pyav(urls, args.seconds),
        }
    finally:
        server.kill()
        server.wait(10)
    for arm in ("watchkeep", "pyav"):
        figures = results[arm]
        if figures.get("bytes"):
            rate = figures["bytes"] * 8 / args.seconds / args.cameras / 1e6
            figures["megabits_per_second_per_camera"] = round(rate, 2)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
