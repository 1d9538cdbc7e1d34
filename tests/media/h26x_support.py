"""H.264/H.265 in the media tests: the outside decoder's view of a file (FFmpeg's ffprobe
and ffmpeg from Debian), and recording cameras for a number of pictures."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from watchkeep.media import Frame, NetworkCamera, Recorder


@dataclass(frozen=True)
class Decoded:
    """What FFmpeg made of a file: the codec, the size and type of every picture it decoded
    (in presentation order), their presentation times, and what it complained of."""

    codec: str
    sizes: set[tuple[int, int]]
    kinds: list[str]
    times: list[float]
    errors: str


def decode(path: Path) -> Decoded:
    """Decode every picture of ``path`` with FFmpeg."""
    probe = subprocess.run(
        [
            "ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
            "stream=codec_name:frame=width,height,pict_type,pts_time", "-of", "json", str(path),
        ],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    found = json.loads(probe.stdout)
    frames = found.get("frames", [])
    errors = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "null", "-"],
        capture_output=True, text=True, timeout=120,
    ).stderr  # fmt: skip
    return Decoded(
        found["streams"][0]["codec_name"],
        {(f["width"], f["height"]) for f in frames},
        [f["pict_type"] for f in frames],
        [float(f["pts_time"]) for f in frames],
        errors + probe.stderr,
    )


async def record(
    recorder: Recorder, cameras: list[NetworkCamera], count: int, within: float = 30.0
) -> dict[str, list[Frame]]:
    """Record ``count`` pictures of each camera (fewer if ``within`` seconds pass); the
    frames each one sent."""
    got: dict[str, list[Frame]] = {camera.name: [] for camera in cameras}
    done = asyncio.Event()

    def sink(frame: Frame) -> None:
        frames = got[frame.camera]
        if len(frames) < count:
            frames.append(frame)
            recorder.write(frame)
        if all(len(f) >= count for f in got.values()):
            done.set()

    for camera in cameras:
        await camera.start()
    tasks = [asyncio.create_task(camera.run(sink)) for camera in cameras]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), within)
    for camera in cameras:
        await camera.stop()
    await asyncio.gather(*tasks)
    await recorder.flush()
    return got
