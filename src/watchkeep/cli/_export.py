"""`watchkeep export`: a camera's recording of a time range as a standard MP4 file."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from watchkeep.cli._common import add_json, emit_json, home_of

__all__ = ["register"]


def register(groups: Any) -> None:
    export = groups.add_parser(
        "export", help="write a camera's recording of a time range as an MP4 file"
    )
    export.add_argument("camera", metavar="CAMERA")
    export.add_argument("--from", dest="start", required=True, help="ISO 8601 time or UTC seconds")
    export.add_argument("--to", dest="end", required=True, help="ISO 8601 time or UTC seconds")
    export.add_argument("--out", type=Path, required=True, help="the MP4 file to write")
    add_json(export)
    export.set_defaults(handler=_export)


def _export(args: argparse.Namespace) -> int:
    from watchkeep.cli._video import parse_time
    from watchkeep.errors import UsageError

    start, end = parse_time(args.start), parse_time(args.end)
    if end <= start:
        raise UsageError(
            "--to is not after --from", fix="give a time range that ends after it starts"
        )
    if args.out.suffix.lower() != ".mp4":
        raise UsageError(f"{args.out} does not end in .mp4", fix="name the output FILE.mp4")
    report = export_to(args, args.camera, start, end, args.out, show_progress=not args.json)
    summarize(report, args.json)
    return 0


def summarize(report: Any, as_json: bool) -> None:
    """Say what an export wrote: JSON, or a line (and a line on stderr if it stopped short)."""
    data = report.as_json()
    if as_json:
        emit_json(data)
        return
    print(
        f"{data['camera']}: {data['frames']} {data['codec']} pictures, {data['duration']:.1f} s, "
        f"{data['bytes']} bytes in {data['path']} from {data['server']}"
        f"{' over TLS' if data['encrypted'] else ' in PLAINTEXT'}"
    )
    if report.stopped_at is not None:
        print(
            f"the camera's stream changed after {report.stopped_at:.3f}: export from there "
            "for the rest",
            file=sys.stderr,
        )


def export_to(
    args: argparse.Namespace,
    camera: str,
    start: float,
    end: float,
    out: Path,
    *,
    show_progress: bool,
) -> Any:
    """Export ``camera`` for ``[start, end)`` to ``out``, with a progress bar on a terminal."""
    from watchkeep.client import SiteClient
    from watchkeep.client._export import export_camera, progress_bar

    progress = progress_bar(camera, sys.stderr) if show_progress and sys.stderr.isatty() else None

    async def run() -> Any:
        async with SiteClient(home_of(args)) as client:
            return await export_camera(client, camera, start, end, out, progress)

    try:
        return asyncio.run(run())
    finally:
        if progress is not None:
            sys.stderr.write("\n")
