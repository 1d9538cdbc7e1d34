"""What one live WebSocket viewer of an H.264/H.265 camera is sent, picture by picture:
the stream's announcement and init segment before its first picture, a keyframe first,
a keyframe again after pictures were lost for it or when it falls behind, and a new init
segment when the camera's stream changes (pure: a WebSocket that records what it sends)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from watchkeep.media import Frame, InitSegment
from watchkeep.media._h26x import StreamInfo
from watchkeep.servers._streams import _LiveSender

SMALL = InitSegment(b"init-320", StreamInfo("H264", 320, 240, 1, 8, 8, bytes.fromhex("42c015")))
LARGE = InitSegment(b"init-640", StreamInfo("H264", 640, 480, 1, 8, 8, bytes.fromhex("42c01e")))


class RecordingSocket:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    async def send_str(self, text: str) -> None:
        self.sent.append(json.loads(text))

    async def send_bytes(self, data: bytes) -> None:
        self.sent.append(data)


class Camera:
    def live_fragment(self, frame: Frame) -> bytes:
        return frame.fragment + frame.jpeg


def pictures(first: int, keyframes: str, init: InitSegment = SMALL) -> list[Frame]:
    """Pictures numbered from ``first``, "K" a keyframe and "p" not, e.g. "Kpp"."""
    return [
        Frame(
            "door",
            first + i,
            first + i / 25,
            b"#%d" % (first + i),
            "H264",
            kind == "K",
            init,
            b"moof",
        )
        for i, kind in enumerate(keyframes)
    ]


def sent_numbers(socket: RecordingSocket) -> list[Any]:
    return [m if isinstance(m, dict) else m.decode() for m in socket.sent]


def send(sender: _LiveSender, frames: list[Frame]) -> None:
    asyncio.run(sender.send(frames))


def test_a_viewer_gets_the_stream_then_pictures_from_a_keyframe() -> None:
    socket = RecordingSocket()
    sender = _LiveSender(socket, Camera())  # type: ignore[arg-type]
    send(sender, pictures(0, "Kpp"))
    send(sender, pictures(3, "pp"))
    announced, *rest = sent_numbers(socket)
    assert announced["type"] == "stream"
    assert announced["mime"] == 'video/mp4; codecs="avc1.42c015"'
    assert (announced["width"], announced["height"]) == (320, 240)
    assert rest == ["init-320", "moof#0", "moof#1", "moof#2", "moof#3", "moof#4"]


def test_a_viewer_that_lost_pictures_waits_for_the_next_keyframe() -> None:
    socket = RecordingSocket()
    sender = _LiveSender(socket, Camera())  # type: ignore[arg-type]
    send(sender, pictures(0, "Kp"))
    socket.sent.clear()
    sender.skipping = True
    send(sender, pictures(5, "ppKp"))
    assert sent_numbers(socket) == ["moof#7", "moof#8"]


def test_a_viewer_far_behind_skips_to_the_latest_keyframe_waiting() -> None:
    socket = RecordingSocket()
    sender = _LiveSender(socket, Camera())  # type: ignore[arg-type]
    send(sender, pictures(0, "K"))
    socket.sent.clear()
    send(sender, pictures(1, "pppKpppppKpp"))
    assert sent_numbers(socket) == ["moof#10", "moof#11", "moof#12"]


def test_a_new_stream_is_announced_at_its_first_keyframe() -> None:
    socket = RecordingSocket()
    sender = _LiveSender(socket, Camera())  # type: ignore[arg-type]
    send(sender, pictures(0, "Kp"))
    socket.sent.clear()
    send(sender, pictures(2, "pKp", init=LARGE))
    announced, *rest = sent_numbers(socket)
    assert (announced["width"], announced["height"]) == (640, 480)
    assert rest == ["init-640", "moof#3", "moof#4"]
