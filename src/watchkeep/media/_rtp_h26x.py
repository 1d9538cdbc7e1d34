"""H.264 over RTP (RFC 6184) and H.265 over RTP (RFC 7798): RTP packets in, recorded
pictures out (no I/O, nothing decoded).

:func:`new_depacketizer` rebuilds access units (the NAL units of one picture) from
single-NAL, aggregation (STAP-A, AP) and fragmentation (FU-A, FU) packets. Packets of one
picture share an RTP timestamp; the last has the marker bit. An access unit with a missing
packet is returned marked damaged. It is the C implementation (``_rtp_native.c``, the
per-packet work off the Python path) where it was built, and :class:`PyH26xDepacketizer`,
which does the same in Python, where it was not (or with ``WATCHKEEP_PURE_PYTHON=1``).

:class:`H26xFramer` turns access units into :class:`Frame` objects ready for every use:
the picture as an MP4 sample (each NAL unit behind its 4-byte length), its fragment header
(:func:`~watchkeep.media._fmp4.fragment_header`) and the init segment it belongs to. It
keeps the parameter sets (from the SDP and in band; a change makes a new init segment),
waits for a keyframe after damage or at the start, and maps RTP time to wall-clock time:
the camera's own clock from its first RTCP sender report when one came before the first
keyframe, the arrival time of that keyframe otherwise, once per connection so that the
recording's timeline never jumps. RTP timestamps are unwrapped (they wrap every 13 hours
at 90 kHz). Pictures keep the order the camera sent them in (decode order); B-frames have
their presentation time as a composition offset.

Every problem is logged once, in one line naming the camera, until the stream is good again.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import struct
from collections.abc import Callable
from typing import Protocol

from watchkeep.media._fmp4 import TIMESCALE, InitSegment, fragment_header, init_segment
from watchkeep.media._frame import Frame
from watchkeep.media._h26x import BitstreamError, ParameterSets, nal_roles, parse_sps
from watchkeep.media._rtp_jpeg import RtpPacket

__all__ = [
    "NATIVE",
    "AccessUnit",
    "H26xDepacketizer",
    "H26xFramer",
    "PyH26xDepacketizer",
    "new_depacketizer",
    "sender_report",
]

log = logging.getLogger("watchkeep.media")

_MAX_ACCESS_UNIT = 32 * 1024 * 1024
_NTP_TO_UNIX = 2_208_988_800
_DECODE_LEAD = TIMESCALE // 5
_RTP_HEAD = struct.Struct("!BBHI")
_ROLES = {codec: nal_roles(codec) for codec in ("H264", "H265")}
_BYTE = [bytes((i,)) for i in range(256)]
_COUNTING = bytes(range(256))


@dataclasses.dataclass(slots=True)
class AccessUnit:
    timestamp: int  # RTP
    nals: list[bytes]
    damaged: bool = False


class H26xDepacketizer(Protocol):
    """What rebuilds the access units of one H.264 or H.265 RTP stream (either
    implementation; :class:`PyH26xDepacketizer` documents each method)."""

    @property
    def codec(self) -> str: ...
    @property
    def units(self) -> int: ...
    @property
    def damaged(self) -> int: ...
    @property
    def bad_packets(self) -> int: ...
    @property
    def last_problem(self) -> str | None: ...
    def push(self, packet: RtpPacket) -> list[AccessUnit]: ...
    def feed(self, data: bytes | memoryview, payload_type: int) -> list[AccessUnit] | None: ...
    def feed_interleaved(
        self, data: bytes, pos: int, end: int, channel: int, payload_type: int
    ) -> tuple[list[AccessUnit], int]: ...


def new_depacketizer(codec: str) -> H26xDepacketizer:
    """The depacketizer of one stream: in C where it was built (:data:`NATIVE`)."""
    if _Native is not None and not os.environ.get("WATCHKEEP_PURE_PYTHON"):
        return _Native(codec, AccessUnit)
    return PyH26xDepacketizer(codec)


class PyH26xDepacketizer:
    """Rebuild the access units of one H.264 or H.265 RTP stream, in arrival order: the
    reference of ``_rtp_native.c``, which does the same step for step.

    Counters: :attr:`units`, :attr:`damaged` (returned marked damaged), :attr:`bad_packets`.
    Interleaved packetization (STAP-B, MTAP, FU-B, DONL) is not supported: its packets
    mark their access unit damaged, and :attr:`last_problem` says why.
    """

    def __init__(self, codec: str) -> None:
        if codec not in ("H264", "H265"):
            raise ValueError(f"not an H.264 or H.265 codec: {codec!r}")
        self.codec = codec
        self._h264 = codec == "H264"
        self.units = 0
        self.damaged = 0
        self.bad_packets = 0
        self.last_problem: str | None = None
        self._unit: AccessUnit | None = None
        self._size = 0
        self._next_sequence: int | None = None
        # The NAL unit an FU is rebuilding: its header, then views of the packets' data.
        self._fragment: list[bytes | memoryview] | None = None

    def push(self, packet: RtpPacket) -> list[AccessUnit]:
        """Add one packet; the access units it completes (none, one, rarely two).

        The packet's bytes must not change afterwards: fragments of a NAL unit are kept as
        views of them until it is whole.
        """
        return self._push(packet.payload, packet.sequence, packet.timestamp, packet.marker)

    def feed(self, data: bytes | memoryview, payload_type: int) -> list[AccessUnit] | None:
        """:meth:`push` for the bytes of an RTP packet, parsed here (None: not an RTP packet
        of ``payload_type``). What a camera connection calls per packet: without the
        packet object of :func:`parse_rtp`, whose making was a third of the work. As for
        :meth:`push`, the bytes behind ``data`` must not change afterwards."""
        end = len(data)
        if end < 12:
            return None
        first, second, sequence, timestamp = _RTP_HEAD.unpack_from(data)
        if first >> 6 != 2 or second & 0x7F != payload_type:
            return None
        start = 12 + 4 * (first & 0x0F)
        if first & 0x10:  # a header extension: 16-bit profile, 16-bit length in words
            if end < start + 4:
                return None
            start += 4 + 4 * ((data[start + 2] << 8) | data[start + 3])
        if first & 0x20:  # padding: its length is the last byte
            end -= data[end - 1]
        if start > end:
            return None
        return self._push(memoryview(data)[start:end], sequence, timestamp, second & 0x80)

    def feed_interleaved(
        self, data: bytes, pos: int, end: int, channel: int, payload_type: int
    ) -> tuple[list[AccessUnit], int]:
        """:meth:`feed` for the RTP packets interleaved in an RTSP connection's bytes
        (RFC 2326 10.12: ``$``, the channel, a 16-bit length, the packet) from ``pos``, as
        long as they are whole and on ``channel``: the access units they complete, and
        where the first that is not (or ``end``) begins. ``data`` must not change
        afterwards.

        The common packets, middle fragments of a NAL unit in sequence (most of a picture's
        packets, of one size), are taken here a run at a time (:meth:`_middles`), with no
        Python work per packet but a slice; any other goes through :meth:`feed`."""
        done: list[AccessUnit] = []
        view = memoryview(data)
        while end - pos >= 4 and data[pos] == 0x24 and data[pos + 1] == channel:
            length = (data[pos + 2] << 8) | data[pos + 3]
            stop = pos + 4 + length
            if stop > end:
                break
            if self._fragment is not None and self._unit is not None:
                taken = self._middles(data, view, pos, end, length, channel, payload_type)
                if taken:
                    pos += taken * (length + 4)
                    continue
            units = self.feed(view[pos + 4 : stop], payload_type)
            pos = stop
            if units:
                done += units
        return done, pos

    def _middles(
        self,
        data: bytes,
        view: memoryview,
        pos: int,
        end: int,
        length: int,
        channel: int,
        payload_type: int,
    ) -> int:
        """How many interleaved packets from ``pos``, each ``length`` bytes long, are middle
        fragments of the NAL unit being rebuilt, in sequence (0: the one at ``pos`` is not);
        those are taken. Each field is checked for the whole run at once: the bytes at one
        offset in every packet (a slice with a step) must all be the expected value, which
        is the field's value in a packet :meth:`_take` would take as a middle fragment."""
        unit, fragment, sequence = self._unit, self._fragment, self._next_sequence
        assert unit is not None
        assert fragment is not None
        header_size = 1 if self._h264 else 2
        size = length - 12  # the RTP payload
        if sequence is None or size <= header_size + 1 or end - pos < 4 + 12 + header_size + 1:
            return 0
        stride = length + 4
        payload = pos + 16
        indicator, fu = data[payload], data[payload + header_size]
        kind = indicator & 0x1F if self._h264 else (indicator >> 1) & 0x3F
        if kind != (28 if self._h264 else 49) or fu & 0xC0:
            return 0
        count = min(
            (end - pos) // stride,
            256 - (sequence & 0xFF),  # the sequence number's high byte is one for the run
            (_MAX_ACCESS_UNIT - self._size) // size,
        )
        if count <= 0:
            return 0
        last = pos + count * stride
        timestamp = unit.timestamp
        expected: tuple[tuple[int, int], ...] = (
            (0, 0x24),
            (1, channel),
            (2, length >> 8),
            (3, length & 0xFF),
            (4, 0x80),  # version 2; no padding, extension or CSRC
            (5, payload_type),  # and no marker
            (6, sequence >> 8),
            (8, timestamp >> 24),
            (9, (timestamp >> 16) & 0xFF),
            (10, (timestamp >> 8) & 0xFF),
            (11, timestamp & 0xFF),
            (16, indicator),
            (16 + header_size, fu),  # the same NAL unit type, neither start nor end
        )
        if header_size == 2:  # H.265's payload header: its second byte too
            expected += ((17, data[payload + 1]),)
        byte = _BYTE
        for offset, value in expected:
            column = data[pos + offset : last : stride]
            same = len(column) - len(column.lstrip(byte[value]))
            if same < count:
                if not same:
                    return 0
                count = same
                last = pos + count * stride
        low = sequence & 0xFF
        column = data[pos + 7 : last : stride]
        if column != _COUNTING[low : low + count]:
            expected_low = _COUNTING[low : low + count]
            count = next(
                i for i, (a, b) in enumerate(zip(column, expected_low, strict=True)) if a != b
            )
            if not count:
                return 0
            last = pos + count * stride
        start = payload + header_size + 1
        fragment += [view[at : at + size - header_size - 1] for at in range(start, last, stride)]
        self._size += count * size
        self._next_sequence = (sequence + count) & 0xFFFF
        return count

    def _push(
        self, payload: memoryview, sequence: int, timestamp: int, marker: int | bool
    ) -> list[AccessUnit]:
        done: list[AccessUnit] = []
        expected = self._next_sequence
        self._next_sequence = (sequence + 1) & 0xFFFF
        lost = expected is not None and sequence != expected
        unit = self._unit
        if unit is not None and timestamp != unit.timestamp:
            # The marker of the previous picture never came (or was lost with its packet).
            unit.damaged = unit.damaged or lost or self._fragment is not None
            done.append(self._finish())
            unit = None
        if unit is None:
            unit = self._unit = AccessUnit(timestamp, [])
            self._size = 0
            self._fragment = None
        if lost:
            unit.damaged = True
            self._fragment = None
            self.last_problem = "packets were lost"
        try:
            self._take(unit, payload)
        except _BadPacket as exc:
            self.bad_packets += 1
            self.last_problem = str(exc)
            unit.damaged = True
            self._fragment = None
        if marker:
            if self._fragment is not None:
                unit.damaged = True
            done.append(self._finish())
        return done

    def _finish(self) -> AccessUnit:
        unit = self._unit
        assert unit is not None
        self._unit, self._fragment, self._size = None, None, 0
        self.units += 1
        if unit.damaged:
            self.damaged += 1
        return unit

    def _count(self, size: int) -> None:
        self._size += size
        if self._size > _MAX_ACCESS_UNIT:
            raise _BadPacket("a picture over 32 MiB")

    def _add(self, unit: AccessUnit, nal: bytes) -> None:
        self._count(len(nal))
        if nal:
            unit.nals.append(nal)

    def _take(self, unit: AccessUnit, payload: memoryview) -> None:
        h264 = self._h264
        header_size = 1 if h264 else 2
        if len(payload) < header_size:
            raise _BadPacket("an empty RTP payload")
        # The NAL unit type, as nal_type() reads it (inline: this runs for every packet).
        kind = payload[0] & 0x1F if h264 else (payload[0] >> 1) & 0x3F
        if kind == (28 if h264 else 49) and len(payload) > header_size + 1:
            fu = payload[header_size]
            if not fu & 0xC0 and self._fragment is not None:
                # The common case, a middle fragment: a view of its data, joined later.
                self._fragment.append(payload[header_size + 1 :])
                self._count(len(payload))
                return
        single, aggregate, fragment = (kind < 24, 24, 28) if h264 else (kind < 48, 48, 49)
        if single:
            self._fragment = None
            self._add(unit, bytes(payload))
        elif kind == aggregate:
            self._fragment = None
            pos = header_size
            while pos < len(payload):
                if pos + 2 > len(payload):
                    raise _BadPacket("an aggregation packet cut inside a length")
                size = struct.unpack_from("!H", payload, pos)[0]
                pos += 2
                if size == 0 or pos + size > len(payload):
                    raise _BadPacket("an aggregation packet with a wrong NAL unit length")
                self._add(unit, bytes(payload[pos : pos + size]))
                pos += size
        elif kind == fragment:
            if len(payload) < header_size + 2:
                raise _BadPacket("a fragmentation unit with no data")
            fu = payload[header_size]
            start, end = fu & 0x80, fu & 0x40
            if h264:
                head = bytes(((payload[0] & 0xE0) | (fu & 0x1F),))
            else:
                head = bytes(((payload[0] & 0x81) | ((fu & 0x3F) << 1), payload[1]))
            # A view of the packet's bytes, joined once the NAL unit is whole.
            data = payload[header_size + 1 :]
            if start:
                if self._fragment is not None:
                    unit.damaged = True  # the previous fragmented NAL unit lost its end
                self._fragment = [head, data]
            elif self._fragment is None:
                unit.damaged = True  # its start was lost
                return
            else:
                self._fragment.append(data)
            self._count(len(data))
            if end:
                unit.nals.append(b"".join(self._fragment))
                self._fragment = None
        else:
            raise _BadPacket(
                f"RTP packets of type {kind} (interleaved or unknown packetization); fix: set "
                "the camera's RTP packetization mode to 1 (non-interleaved)"
            )


class _BadPacket(Exception):
    pass


try:
    from watchkeep.media._rtp_native import Depacketizer as _Native
except ImportError:  # not built (no C compiler where it was installed)
    _Native = None  # type: ignore[assignment,misc]

#: Whether the per-packet work runs in C (the extension was built).
NATIVE = _Native is not None


def sender_report(packet: bytes | memoryview) -> tuple[int, float] | None:
    """(RTP timestamp, wall-clock UTC seconds) of the first RTCP sender report (RFC 3550
    6.4.1) in a compound RTCP packet, if there is one."""
    pos = 0
    while len(packet) - pos >= 8:
        first, kind, words = struct.unpack_from("!BBH", packet, pos)
        if first >> 6 != 2:
            return None
        if kind == 200 and len(packet) - pos >= 20:
            seconds, fraction, rtp = struct.unpack_from("!III", packet, pos + 8)
            if seconds == 0:
                return None
            return rtp, seconds - _NTP_TO_UNIX + fraction / 2**32
        pos += 4 * (words + 1)
    return None


class H26xFramer:
    """Frames of one connection to an H.264/H.265 camera (see the module's docstring).

    ``sprop`` holds the parameter sets the SDP gave (any may be None); ``clock_rate`` is
    the RTP clock of the stream (90 kHz for video). ``next_sequence`` numbers the frames.
    """

    def __init__(
        self,
        camera: str,
        codec: str,
        sprop: ParameterSets,
        next_sequence: Callable[[], int],
        clock_rate: int = TIMESCALE,
    ) -> None:
        self.camera = camera
        self.codec = codec
        self.frames = 0
        self.dropped = 0
        self.init: InitSegment | None = None
        self._clock_rate = clock_rate if clock_rate > 0 else TIMESCALE
        self._roles = _ROLES["H264" if codec == "H264" else "H265"]
        self._next_sequence = next_sequence
        self._vps, self._sps, self._pps = sprop.vps, sprop.sps, sprop.pps
        self._parameters_changed = True
        self._waiting = True  # for a keyframe
        self._problem: str | None = None
        self._last_rtp: int | None = None
        self._extended = 0
        self._report: tuple[int, float] | None = None
        self._origin: int | None = None  # tick of RTP (extended) time 0
        self._last_decode: int | None = None
        self._duration = TIMESCALE // 25
        self._fragments = 0

    @property
    def problem(self) -> str | None:
        """Why pictures are being dropped now (logged once), or None."""
        return self._problem

    def sender_report(self, rtp: int, wall: float) -> None:
        """An RTCP sender report: the camera's wall-clock time at RTP time ``rtp``."""
        if self._origin is None:
            self._report = (rtp, wall)

    def push(self, unit: AccessUnit, arrival: float) -> Frame | None:
        """The frame of access unit ``unit`` (arrived at ``arrival``), or None if it cannot be
        recorded (damaged, no keyframe yet since the start or the damage, no parameter sets)."""
        extended = self._extend(unit.timestamp)
        sample: list[bytes] = []
        keyframe = False
        roles = self._roles
        for nal in unit.nals:
            role = roles[nal[0]] if nal else None
            if role is None:
                sample.append(nal)
            elif role == "key":
                keyframe = True
                sample.append(nal)
            elif role != "delimiter":
                self._parameter_set(role, nal)
        if unit.damaged:
            self._wait("packets were lost; the recording goes on from the next keyframe")
            return None
        if self._waiting and not keyframe:
            self.dropped += 1
            return None
        if keyframe and not self._ready():
            self.dropped += 1
            return None
        if not sample:
            return None
        self._waiting = False
        if self._problem is not None:
            log.info("camera %s: the stream is good again (%s)", self.camera, self._problem)
            self._problem = None
        init = self.init
        assert init is not None
        return self._frame(extended, sample, keyframe, init, arrival)

    def _extend(self, timestamp: int) -> int:
        """The RTP timestamp on a timeline that does not wrap."""
        last = self._last_rtp
        self._last_rtp = timestamp
        if last is None:
            self._extended = timestamp
        else:
            step = (timestamp - last) & 0xFFFFFFFF
            self._extended += step - (1 << 32) if step >= 1 << 31 else step
        return self._extended

    def _parameter_set(self, which: str, nal: bytes) -> None:
        if getattr(self, f"_{which}") != nal:
            setattr(self, f"_{which}", nal)
            self._parameters_changed = True

    def _ready(self) -> bool:
        """Whether a keyframe can start a fragment: the init segment made from the current
        parameter sets, made again if they changed."""
        if not self._parameters_changed and self.init is not None:
            return True
        parameters = ParameterSets(self.codec, self._vps, self._sps, self._pps)
        if not parameters.complete:
            self._wait(
                f"a keyframe came without its {parameters.missing()} (neither in the SDP nor "
                "in the stream); waiting for the camera to send them"
            )
            return False
        assert parameters.sps is not None
        try:
            info = parse_sps(self.codec, parameters.sps)
        except BitstreamError as exc:
            self._wait(f"its sequence parameter set cannot be read ({exc}); waiting for another")
            return False
        previous = self.init
        self.init = init_segment(parameters, info)
        self._parameters_changed = False
        if previous is not None and previous.info != info:
            log.info(
                "camera %s: the stream changed to %s %dx%d",
                self.camera,
                self.codec,
                info.width,
                info.height,
            )
        return True

    def _wait(self, problem: str) -> None:
        self._waiting = True
        self.dropped += 1
        if self._problem != problem:
            log.warning("camera %s: %s", self.camera, problem)
            self._problem = problem

    def _frame(
        self, extended: int, nals: list[bytes], keyframe: bool, init: InitSegment, arrival: float
    ) -> Frame:
        scale = TIMESCALE / self._clock_rate
        if self._origin is None:
            report = self._report
            if report is not None:
                # The report's RTP time, on the unwrapped timeline (it is near the present).
                step = (report[0] - (extended & 0xFFFFFFFF)) & 0xFFFFFFFF
                at = extended + (step - (1 << 32) if step >= 1 << 31 else step)
                self._origin = round(report[1] * TIMESCALE - at * scale)
            else:
                self._origin = round(arrival * TIMESCALE - extended * scale)
        presentation = self._origin + round(extended * scale)
        last = self._last_decode
        # Decode times follow the order pictures come in, a fixed lead ahead of the
        # presentation times: a B-frame, presented before the picture that came ahead of it,
        # then still has a decode time before its presentation (up to four B-frames at 25
        # pictures a second; beyond, its composition offset is negative, which MP4 allows).
        decode = presentation - _DECODE_LEAD
        if last is not None and decode <= last:
            decode = last + 1
        elif last is not None:
            self._duration = min(decode - last, TIMESCALE * 10)
        self._last_decode = decode
        parts: list[bytes] = []
        for nal in nals:
            parts += (len(nal).to_bytes(4, "big"), nal)
        sample = b"".join(parts)  # one copy of the picture
        header = fragment_header(
            self._fragments, decode, self._duration, len(sample), keyframe, presentation - decode
        )
        self._fragments += 1
        self.frames += 1
        return Frame(
            self.camera,
            self._next_sequence(),
            presentation / TIMESCALE,
            sample,
            codec=self.codec,
            keyframe=keyframe,
            init=init,
            fragment=header,
        )
