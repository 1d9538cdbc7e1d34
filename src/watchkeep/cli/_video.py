"""`watchkeep view`, `watchkeep playback` and `watchkeep camera ...`: video as a user sees it."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import signal
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import quote

from watchkeep.cli._common import add_json, call_site, emit_json, home_of, print_table

if TYPE_CHECKING:
    from watchkeep.client._video import ByteSink

__all__ = ["register"]


def register(groups: Any) -> None:
    view = groups.add_parser("view", help="watch a camera live (the Smart Client of this site)")
    view.add_argument("camera", metavar="CAMERA")
    view.add_argument("--frames", type=int, default=None, help="stop after N frames")
    view.add_argument("--seconds", type=float, default=None, help="stop after S seconds")
    view.add_argument(
        "--out",
        type=Path,
        help="write the frames as an MJPEG file, or as FILE.mp4 (H.264/H.265 cameras: only so)",
    )
    add_json(view)
    view.set_defaults(handler=_view)

    playback = groups.add_parser("playback", help="fetch recorded video of a time range")
    playback.add_argument("camera", metavar="CAMERA")
    playback.add_argument(
        "--from", dest="start", required=True, help="ISO 8601 time or UTC seconds"
    )
    playback.add_argument("--to", dest="end", required=True, help="ISO 8601 time or UTC seconds")
    playback.add_argument(
        "--out",
        type=Path,
        help="write the frames as an MJPEG file, or as FILE.mp4 (H.264/H.265 cameras: only so)",
    )
    add_json(playback)
    playback.set_defaults(handler=_playback)

    camera = groups.add_parser("camera", help="the site's cameras")
    sub = camera.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add = sub.add_parser("add", help="add a camera to a recording server")
    add.add_argument("name", metavar="NAME")
    add.add_argument("--recording-server", required=True)
    kind = add.add_mutually_exclusive_group()
    kind.add_argument(
        "--mjpeg-url", help="an IP camera's MJPEG URL (http:// or https://; USER:PASSWORD@ in it)"
    )
    kind.add_argument(
        "--rtsp-url",
        help="an IP camera's RTSP URL streaming H.264, H.265 or Motion JPEG (rtsp:// or"
        " rtsps://; USER:PASSWORD@ in it)",
    )
    kind.add_argument(
        "--synthetic", default="640x360@10", metavar="WxH@FPS", help="a generated camera"
    )
    add.add_argument("--frame-bytes", type=int, default=30_000, help="synthetic frame size")
    add.add_argument(
        "--password-file",
        type=Path,
        help="a file holding the camera's password, for a URL that names the user but not the"
        " password (rtsp://USER@host/...): kept off the command line, where other users see it",
    )
    add_json(add)
    add.set_defaults(handler=_camera_add)
    remove = sub.add_parser("remove", help="remove a camera")
    remove.add_argument("name", metavar="NAME")
    add_json(remove)
    remove.set_defaults(handler=_camera_remove)


def parse_time(text: str) -> float:
    """UTC seconds of an ISO 8601 time (UTC when it names no zone) or of a number."""
    from watchkeep.errors import UsageError

    with contextlib.suppress(ValueError):
        return float(text)
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"invalid time {text!r}", fix="write 2026-11-27T10:00:00Z or UTC seconds"
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.timestamp()


def _view(args: argparse.Namespace) -> int:
    from watchkeep.client import SiteClient
    from watchkeep.client._video import view_camera, view_camera_mp4
    from watchkeep.errors import UsageError

    if args.frames is None and args.seconds is None:
        raise UsageError("say when to stop", fix="pass --frames N or --seconds S")

    mp4 = args.out is not None and args.out.suffix.lower() == ".mp4"

    async def run(out: ByteSink | None) -> Any:
        # SIGINT or SIGTERM ends the view early; the report covers what arrived.
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        async with SiteClient(home_of(args)) as client:
            if mp4:
                assert out is not None
                return await view_camera_mp4(
                    client, args.camera, out, frames=args.frames, duration=args.seconds
                )
            return await view_camera(
                client,
                args.camera,
                frames=args.frames,
                duration=args.seconds,
                out=out,
                stop=stop,
            )

    with _output(args.out) as out:
        report = asyncio.run(run(out))
    _report(report, args.json)
    return 0


def _playback(args: argparse.Namespace) -> int:
    from watchkeep.client import SiteClient
    from watchkeep.client._video import playback_camera

    start, end = parse_time(args.start), parse_time(args.end)
    if args.out is not None and args.out.suffix.lower() == ".mp4":
        from watchkeep.cli._export import export_to, summarize

        exported = export_to(args, args.camera, start, end, args.out, show_progress=not args.json)
        summarize(exported, args.json)
        return 0

    async def run(out: ByteSink | None) -> Any:
        async with SiteClient(home_of(args)) as client:
            return await playback_camera(client, args.camera, start, end, out)

    with _output(args.out) as out:
        report = asyncio.run(run(out))
    _report(report, args.json)
    return 0


@contextlib.contextmanager
def _output(path: Path | None) -> Any:
    if path is None:
        yield None
        return
    import os

    from watchkeep.errors import OutputNotWritable

    # Refused now if it cannot be written, but made (or emptied) only by the first frame.
    if not path.exists() and not path.parent.is_dir():
        raise OutputNotWritable(str(path), f"no directory {path.parent}")
    if not os.access(path if path.exists() else path.parent, os.W_OK):
        raise OutputNotWritable(str(path), "permission denied")
    out = _FileAtFirstWrite(path)
    try:
        yield out
    finally:
        out.close()


class _FileAtFirstWrite:
    """The file at ``path``, opened (so made, or emptied) by the first write: a view or a
    playback refused before its first frame (nothing recorded, no such camera) leaves no
    empty file and an earlier one as it was; the frames go in as they come, for whoever
    reads the file meanwhile."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: IO[bytes] | None = None

    def write(self, data: bytes, /) -> int:
        if self._handle is None:
            from watchkeep.errors import OutputNotWritable

            try:
                self._handle = self.path.open("wb")
            except OSError as exc:
                raise OutputNotWritable(str(self.path), exc.strerror or str(exc)) from exc
        return self._handle.write(data)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()


def _report(report: Any, as_json: bool) -> None:
    if as_json:
        emit_json(report.as_json())
        return
    data = report.as_json()
    print(
        f"{data['camera']}: {data['frames']} frames, {data['bytes']} bytes in {data['seconds']:.1f} s "
        f"({data['fps']:.1f} frames/s) from {', '.join(data['servers'])}"
        f"{' over TLS' if data['encrypted'] else ' in PLAINTEXT'}",
        file=sys.stdout,
    )


def _camera_add(args: argparse.Namespace) -> int:
    from watchkeep.errors import UsageError

    url = args.mjpeg_url or args.rtsp_url
    if args.password_file is not None:
        if not url:
            raise UsageError(
                "--password-file is for a network camera's password",
                fix="give --mjpeg-url or --rtsp-url with the user name: rtsp://USER@host/path",
            )
        url = _with_password(url, args.password_file)
    if args.mjpeg_url:
        source: dict[str, Any] = {"kind": "mjpeg", "url": url}
    elif args.rtsp_url:
        source = {"kind": "rtsp", "url": url}
    else:
        try:
            size, fps = args.synthetic.split("@")
            width, height = (int(v) for v in size.lower().split("x"))
            source = {
                "kind": "synthetic",
                "width": width,
                "height": height,
                "fps": float(fps),
                "target_bytes": args.frame_bytes,
            }
        except ValueError:
            raise UsageError(
                f"invalid --synthetic {args.synthetic!r}", fix="write WxH@FPS, e.g. 1280x720@25"
            ) from None

    result = call_site(
        args,
        "POST",
        "/api/v1/cameras",
        {"name": args.name, "recording_server": args.recording_server, "source": source},
    )
    if args.json:
        emit_json(result)
    else:
        print_table(["camera", "recording server"], [[result["name"], result["recording_server"]]])
    return 0


def _with_password(url: str, password_file: Path) -> str:
    """``url`` (which names the user) with the password read from ``password_file``."""
    from urllib.parse import urlsplit

    from watchkeep.cli._common import read_secret_file
    from watchkeep.errors import UsageError

    parts = urlsplit(url)
    if parts.username is None or parts.password is not None:
        raise UsageError(
            "with --password-file the camera's URL names the user and no password",
            fix="write it as rtsp://USER@host/path (or http://USER@host/path)",
        )
    secret = read_secret_file(password_file, "camera password")
    assert secret is not None
    user, _, host = parts.netloc.rpartition("@")
    password = quote(secret.decode("utf-8"), safe="")
    return parts._replace(netloc=f"{user}:{password}@{host}").geturl()


def _camera_remove(args: argparse.Namespace) -> int:
    result = call_site(args, "DELETE", f"/api/v1/cameras/{quote(args.name, safe='')}")
    if args.json:
        emit_json(result)
    else:
        print(f"removed camera {args.name}")
    return 0
