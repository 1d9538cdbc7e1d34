"""H.264 cameras on a whole site, measured as users meet them: a recording server (rs1)
pulling cameras of :mod:`bench.rtspfarm` (4 Mbit/s, 25 pictures a second), recording
them, and serving each to one live viewer over its WebSocket (fMP4 fragments), encrypted
or not. Per step: what rs1's CPU costs per picture (recorded and served), the viewers'
delay (arrival at the viewer minus the picture's time, from its ``tfdt``: rs1's
wall-clock time of the picture), and what was lost.

    python -m bench.h264_live [--cameras 50,100] [--seconds 20] [--plaintext]

One step per camera count, the site built once; each step adds cameras, waits, measures.
Not the capacity search of ``bench/run.py`` (its H.264 mode is still to come): these are
figures at chosen counts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import select
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench._common import proc_sample
from bench._site import BenchSite
from watchkeep.client import SiteClient
from watchkeep.media._fmp4 import TIMESCALE, parse_moof
from watchkeep.tls import client_context

_FARM_ADDRESS = "127.0.98.1"


async def _watch(home: Any, cameras: list[str], seconds: float, warmup: float) -> dict[str, Any]:
    """One live viewer per camera for ``warmup + seconds``; counts of the last ``seconds``."""
    delays: list[float] = []
    counts = {"pictures": 0, "bytes": 0, "measuring": 0}
    async with SiteClient(home) as client:
        accesses = [await client.stream_access(camera) for camera in cameras]
        connector = aiohttp.TCPConnector(resolver=client.resolver(), limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def viewer(access: Any) -> None:
                endpoint = access.endpoint
                scheme = "wss" if endpoint.tls else "ws"
                url = f"{scheme}://{endpoint.host}:{endpoint.port}/api/v1/cameras/{access.camera}/live.ws"
                async with session.ws_connect(
                    url,
                    headers={"Authorization": f"Bearer {access.token}"},
                    ssl=client_context(client.trust) if endpoint.tls else False,
                    max_msg_size=64 * 1024 * 1024,
                ) as socket:
                    async for message in socket:
                        if message.type != aiohttp.WSMsgType.BINARY:
                            continue
                        data = message.data
                        if data[4:8] != b"moof" or not counts["measuring"]:
                            continue
                        fragment = parse_moof(data, 0, int.from_bytes(data[:4], "big"))
                        if fragment is None:
                            continue
                        counts["pictures"] += 1
                        counts["bytes"] += len(data)
                        delays.append(time.time() - fragment.presentation_time / TIMESCALE)

            tasks = [asyncio.create_task(viewer(a)) for a in accesses]
            await asyncio.sleep(warmup)
            counts["measuring"] = 1
            await asyncio.sleep(seconds)
            counts["measuring"] = 0
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    delays.sort()
    return {
        "pictures": counts["pictures"],
        "bytes": counts["bytes"],
        "p50_ms": round(statistics.median(delays) * 1000, 1) if delays else None,
        "p99_ms": round(delays[int(len(delays) * 0.99)] * 1000, 1) if delays else None,
    }


def step(bench: BenchSite, farm_port: int, have: int, want: int, seconds: float) -> dict[str, Any]:
    calls = [
        (
            "POST",
            "/api/v1/cameras",
            {
                "name": f"h{i}",
                "recording_server": "rs1",
                "source": {"kind": "rtsp", "url": f"rtsp://{_FARM_ADDRESS}:{farm_port}/h{i}"},
            },
        )
        for i in range(have, want)
    ]
    bench.api_many(calls)
    cameras = [f"h{i}" for i in range(want)]
    time.sleep(5)  # connected, past a keyframe
    pid = bench.pid("rs1")
    warmup = 3.0
    before: dict[str, Any] = {}

    def sample() -> None:
        before["cpu"] = proc_sample(pid)
        before["written"] = bench.rs_status()["recorder"]["frames_written"]

    async def measure() -> dict[str, Any]:
        async def at_warmup() -> None:
            await asyncio.sleep(warmup)
            await asyncio.to_thread(sample)  # the site's API client runs a loop of its own

        sampler = asyncio.create_task(at_warmup())
        viewed = await _watch(bench.site.home, cameras, seconds, warmup)
        await sampler
        return viewed

    viewed = asyncio.run(measure())
    after_cpu = proc_sample(pid)
    recorder = bench.rs_status()["recorder"]
    recorded = recorder["frames_written"] - before["written"]
    cpu = after_cpu.cpu_seconds - before["cpu"].cpu_seconds
    expected = want * 25 * seconds
    return {
        "cameras": want,
        "rs1_cores": round(cpu / seconds, 3),
        "rs1_cpu_us_per_picture": round(cpu / recorded * 1e6, 1) if recorded else None,
        "pictures_recorded": recorded,
        "pictures_viewed": viewed["pictures"],
        "viewed_share": round(viewed["pictures"] / expected, 4),
        "recorder_dropped_total": recorder["frames_dropped"],
        "p50_ms": viewed["p50_ms"],
        "p99_ms": viewed["p99_ms"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cameras", default="50,100")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--plaintext", action="store_true", help="rs1 without encryption")
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.cameras.split(",")]
    farm = subprocess.Popen(
        [sys.executable, "-m", "bench.rtspfarm", "--address", _FARM_ADDRESS],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="wk-h264-bench-") as tmp:
        bench = BenchSite(Path(tmp), failover_after=3600, heartbeat=2.0)
        try:
            assert farm.stdout is not None
            ready, _, _ = select.select([farm.stdout], [], [], 60)
            line = farm.stdout.readline().decode() if ready else ""
            if not line.startswith("ready "):
                print(f"the camera farm did not start: {line!r}", file=sys.stderr)
                return 1
            port = int(line.split()[1])
            bench.start()
            if not args.plaintext:
                bench.set_encryption("rs1", True)
            have = 0
            for want in counts:
                results.append(step(bench, port, have, want, args.seconds))
                have = want
                print(json.dumps(results[-1]), file=sys.stderr, flush=True)
        finally:
            bench.stop()
            farm.kill()
            farm.wait(10)
    print(json.dumps({"encrypted": not args.plaintext, "steps": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
