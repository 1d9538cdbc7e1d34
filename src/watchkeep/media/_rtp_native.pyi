from collections.abc import Callable
from typing import Any

from watchkeep.media._rtp_h26x import AccessUnit
from watchkeep.media._rtp_jpeg import RtpPacket

class Depacketizer:
    codec: str
    units: int
    damaged: int
    bad_packets: int
    last_problem: str | None
    def __init__(self, codec: str, unit_type: Callable[..., Any]) -> None: ...
    def push(self, packet: RtpPacket) -> list[AccessUnit]: ...
    def feed(self, data: bytes | memoryview, payload_type: int) -> list[AccessUnit] | None: ...
    def feed_interleaved(
        self, data: bytes, pos: int, end: int, channel: int, payload_type: int
    ) -> tuple[list[AccessUnit], int]: ...
