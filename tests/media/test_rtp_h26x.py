"""H.264/H.265 over RTP, packet by packet: real streams (FFmpeg's libx264 and libx265 from
Debian, made at test time) cut into RTP packets as RFC 6184 and RFC 7798 say (single NAL
units, aggregation and fragmentation packets), then broken the ways networks and cameras
break them: lost packets, a missing parameter set, a timestamp that wraps, a new picture
size, and random bytes. FFmpeg decodes what comes out."""

from __future__ import annotations

import base64
import itertools
import logging
import sqlite3
import struct
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from h26x_support import decode
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from watchkeep.media import Frame, Recorder
from watchkeep.media._h26x import ParameterSets, nal_type
from watchkeep.media._rtp_h26x import (
    NATIVE,
    AccessUnit,
    H26xDepacketizer,
    H26xFramer,
    PyH26xDepacketizer,
    new_depacketizer,
    sender_report,
)
from watchkeep.media._rtp_jpeg import parse_rtp
from watchkeep.media._rtsp_camera import parse_sdp

Clip = list[list[bytes]]  # access units, each a list of NAL units
# The depacketizers: the C one (where built) and the Python one, its reference.
IMPLEMENTATIONS: list[Callable[[str], H26xDepacketizer]] = [PyH26xDepacketizer]
if NATIVE:
    IMPLEMENTATIONS.append(new_depacketizer)
MTU = 600
WRAP = (1 << 32) - 5 * 3600  # five pictures before the RTP timestamp wraps


def encode(tmp: Path, codec: str, size: str, frames: int = 30) -> Clip:
    """``frames`` pictures of FFmpeg's test pattern, a keyframe every 10, as access units."""
    encoder, bsf = ("libx264", "h264_metadata") if codec == "H264" else ("libx265", "hevc_metadata")
    out = tmp / f"{codec}-{size}.es"
    extra = ["-x265-params", "keyint=10:min-keyint=10:log-level=error"] if codec == "H265" else []
    subprocess.run(
        [
            "ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc=size={size}:rate=25",
            "-frames:v", str(frames), "-c:v", encoder, "-g", "10", "-bf", "0", "-pix_fmt",
            "yuv420p", *extra, "-bsf:v", f"{bsf}=aud=insert", "-f", codec.lower().replace("265", "evc"),
            str(out),
        ],
        check=True, timeout=60,
    )  # fmt: skip
    units: Clip = []
    for nal in _split_annex_b(out.read_bytes()):
        if nal_type(codec, nal) == (9 if codec == "H264" else 35):
            units.append([])
        units[-1].append(nal)
    assert len(units) == frames
    return units


def _split_annex_b(data: bytes) -> Iterator[bytes]:
    parts = data.split(b"\x00\x00\x01")
    for part in parts[1:]:
        yield part.rstrip(b"\x00")


def packetize(codec: str, units: Clip, first_timestamp: int = 0, ssrc: int = 7) -> list[bytes]:
    """RTP packets of ``units`` at 25 pictures a second: NAL units under 200 bytes
    aggregated (STAP-A, AP), those over the MTU fragmented (FU-A, FU), the rest alone."""
    packets: list[bytes] = []
    sequence = 65_530  # the sequence number wraps too
    for index, nals in enumerate(units):
        timestamp = (first_timestamp + index * 3600) & 0xFFFFFFFF
        payloads: list[bytes] = []
        small: list[bytes] = []
        for nal in nals:
            if len(nal) < 200:
                small.append(nal)
                continue
            if small:
                payloads.append(_aggregate(codec, small))
                small = []
            payloads += _fragments(codec, nal) if len(nal) > MTU else [nal]
        if small:
            payloads.append(_aggregate(codec, small))
        for number, payload in enumerate(payloads):
            marker = 0x80 if number == len(payloads) - 1 else 0
            header = struct.pack("!BBHII", 0x80, marker | 96, sequence & 0xFFFF, timestamp, ssrc)
            packets.append(header + payload)
            sequence += 1
    return packets


def _aggregate(codec: str, nals: list[bytes]) -> bytes:
    if len(nals) == 1:
        return nals[0]
    head = bytes((24,)) if codec == "H264" else bytes((48 << 1, 1))
    return head + b"".join(struct.pack("!H", len(n)) + n for n in nals)


def _fragments(codec: str, nal: bytes) -> list[bytes]:
    if codec == "H264":
        indicator, kind, body = bytes(((nal[0] & 0xE0) | 28,)), nal[0] & 0x1F, nal[1:]
    else:
        indicator, kind, body = (
            bytes(((nal[0] & 0x81) | (49 << 1), nal[1])),
            (nal[0] >> 1) & 0x3F,
            nal[2:],
        )
    pieces = [body[i : i + MTU] for i in range(0, len(body), MTU)]
    out = []
    for number, piece in enumerate(pieces):
        flags = (0x80 if number == 0 else 0) | (0x40 if number == len(pieces) - 1 else 0)
        out.append(indicator + bytes((flags | kind,)) + piece)
    return out


class Receiver:
    """A depacketizer and a framer, as a camera connection holds them."""

    def __init__(self, codec: str, sprop: ParameterSets | None = None) -> None:
        self.codec = codec
        self.depacketizer = new_depacketizer(codec)
        counter = iter(range(1 << 30))
        self.framer = H26xFramer(
            "cam", codec, sprop or ParameterSets(codec, None, None, None), lambda: next(counter)
        )
        self.frames: list[Frame] = []

    def feed(self, packets: list[bytes]) -> list[Frame]:
        for data in packets:
            packet = parse_rtp(data)
            if packet is None:
                continue
            for unit in self.depacketizer.push(packet):
                frame = self.framer.push(unit, 1_800_000_000.0)
                if frame is not None:
                    self.frames.append(frame)
        return self.frames

    def save(self, path: Path) -> Path:
        """The frames as a fragmented MP4 file (one init segment: one run of a stream)."""
        with path.open("wb") as out:
            for frame in self.frames:
                assert frame.init is self.frames[0].init is not None
                if frame is self.frames[0]:
                    out.write(frame.init.data)
                out.write(frame.fragment + frame.jpeg)
        return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Clip]:
    tmp = tmp_path_factory.mktemp("clips")
    return {
        "H264": encode(tmp, "H264", "160x120"),
        "H265": encode(tmp, "H265", "160x120"),
        "H264-large": encode(tmp, "H264", "320x240", frames=20),
    }


@pytest.mark.parametrize("codec", ["H264", "H265"])
def test_every_picture_comes_through_across_a_timestamp_wrap(
    clips: dict[str, Clip], codec: str, tmp_path: Path
) -> None:
    receiver = Receiver(codec)
    frames = receiver.feed(packetize(codec, clips[codec], first_timestamp=WRAP))
    assert len(frames) == 30
    assert [f.keyframe for f in frames] == [i % 10 == 0 for i in range(30)]
    steps = {round(b.timestamp - a.timestamp, 6) for a, b in itertools.pairwise(frames)}
    assert steps == {0.04}  # through the wrap after the fifth picture
    decoded = decode(receiver.save(tmp_path / "clip.mp4"))
    assert decoded.errors == ""
    assert decoded.sizes == {(160, 120)}
    assert len(decoded.times) == 30
    assert receiver.depacketizer.damaged == receiver.framer.dropped == 0


def test_a_lost_packet_costs_the_pictures_up_to_the_next_keyframe_and_one_log_line(
    clips: dict[str, Clip], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    packets = packetize("H264", clips["H264"])
    # A packet of picture 13 (RTP time 13 * 3600) goes missing.
    lost = next(i for i, p in enumerate(packets) if struct.unpack_from("!I", p, 4)[0] == 13 * 3600)
    receiver = Receiver("H264")
    with caplog.at_level(logging.INFO, "watchkeep.media"):
        frames = receiver.feed(packets[:lost] + packets[lost + 1 :])
    assert len(frames) == 30 - 7  # pictures 13-19 went; 20 is a keyframe
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "camera cam: packets were lost; the recording goes on from the next keyframe"
    ]
    decoded = decode(receiver.save(tmp_path / "clip.mp4"))
    assert decoded.errors == ""
    assert len(decoded.times) == 23


def test_a_missing_parameter_set_is_waited_for(
    clips: dict[str, Clip], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Neither the SDP nor the first ten pictures carry the SPS.
    units = [
        [n for n in unit if i >= 10 or nal_type("H264", n) != 7]
        for i, unit in enumerate(clips["H264"])
    ]
    receiver = Receiver("H264")
    packets = packetize("H264", units)
    first_keyframe_interval = packets[: len(packetize("H264", units[:10]))]
    with caplog.at_level(logging.INFO, "watchkeep.media"):
        assert receiver.feed(first_keyframe_interval) == []
        # What the camera's problem says (in the site status) meanwhile
        assert "without its SPS" in (receiver.framer.problem or "")
        frames = receiver.feed(packets[len(first_keyframe_interval) :])
    assert receiver.framer.problem is None
    assert len(frames) == 20
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "a keyframe came without its SPS" in warnings[0]
    assert decode(receiver.save(tmp_path / "clip.mp4")).errors == ""


def test_parameter_sets_from_the_sdp_alone_are_enough(
    clips: dict[str, Clip], tmp_path: Path
) -> None:
    units = clips["H264"]
    sps = next(n for n in units[0] if nal_type("H264", n) == 7)
    pps = next(n for n in units[0] if nal_type("H264", n) == 8)
    stripped = [[n for n in unit if nal_type("H264", n) not in (7, 8)] for unit in units]
    receiver = Receiver("H264", ParameterSets("H264", None, sps, pps))
    assert len(receiver.feed(packetize("H264", stripped))) == 30
    assert decode(receiver.save(tmp_path / "clip.mp4")).errors == ""


def test_a_new_picture_size_mid_stream_makes_a_new_init_segment(
    clips: dict[str, Clip], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    units = clips["H264"] + clips["H264-large"]
    receiver = Receiver("H264")
    with caplog.at_level(logging.INFO, "watchkeep.media"):
        frames = receiver.feed(packetize("H264", units))
    assert len(frames) == 50
    inits = [f.init for f in frames]
    assert inits[0] is not inits[-1]
    assert [i.info.width for i in (inits[0], inits[-1]) if i is not None] == [160, 320]
    assert any("changed to H264 320x240" in r.getMessage() for r in caplog.records)
    # The recorder starts a new file there; each decodes at its size.
    for run, size in ((frames[:30], (160, 120)), (frames[30:], (320, 240))):
        receiver.frames = run
        decoded = decode(receiver.save(tmp_path / f"{size[0]}.mp4"))
        assert (decoded.sizes, len(decoded.times), decoded.errors) == ({size}, len(run), "")


# The fuzzers' settings: the clips fixture is made once for the module, not per example.
_FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _flipped(data: st.DataObject, packet: bytes, start: int, end: int) -> bytes:
    """``packet`` with one byte in ``start:end`` changed."""
    at = data.draw(st.integers(start, end - 1))
    return packet[:at] + bytes((packet[at] ^ data.draw(st.integers(1, 255)),)) + packet[at + 1 :]


@_FUZZ
@given(data=st.data())
def test_random_and_mangled_packets_never_crash(
    clips: dict[str, Clip], data: st.DataObject
) -> None:
    codec = data.draw(st.sampled_from(["H264", "H265"]))
    real = packetize(codec, clips[codec][:12])
    packets: list[bytes] = []
    for packet in real:
        action = data.draw(st.sampled_from(["keep", "keep", "drop", "flip", "cut", "junk"]))
        if action == "keep":
            packets.append(packet)
        elif action == "flip":
            packets.append(_flipped(data, packet, 12, len(packet)))
        elif action == "cut":
            packets.append(packet[: data.draw(st.integers(0, len(packet)))])
        elif action == "junk":
            packets.append(packet[:12] + data.draw(st.binary(max_size=300)))
    receiver = Receiver(codec)
    for frame in receiver.feed(packets):
        assert frame.init is not None
        assert len(frame.fragment) == 112
        assert frame.fragment[-4:] == b"mdat"
    # And a framer fed access units of random NAL units.
    framer = Receiver(codec).framer
    for _ in range(5):
        nals = data.draw(st.lists(st.binary(min_size=1, max_size=64), max_size=5))
        framer.push(AccessUnit(data.draw(st.integers(0, 2**32 - 1)), nals), 1_800_000_000.0)


@_FUZZ
@given(data=st.data())
def test_mangled_interleaved_packets_give_the_pictures_of_one_by_one(
    clips: dict[str, Clip], data: st.DataObject
) -> None:
    # Given a stream's packets (runs of same-size middle fragments, as cameras send them)
    # mangled in the header fields the interleaved reader checks a run at a time: lost,
    # repeated, a byte of the first 20 changed (sequence, timestamp, marker, payload type,
    # FU header...) or a packet on another channel
    codec = data.draw(st.sampled_from(["H264", "H265"]))
    real = packetize(codec, clips[codec][:8], first_timestamp=data.draw(st.sampled_from([0, WRAP])))
    framed: list[bytes] = []
    for packet in real:
        action = data.draw(st.sampled_from(["keep"] * 6 + ["drop", "repeat", "flip", "channel"]))
        head = b"$\x00" + len(packet).to_bytes(2, "big")
        if action == "keep":
            framed.append(head + packet)
        elif action == "repeat":
            framed += [head + packet, head + packet]
        elif action == "flip":
            framed.append(head + _flipped(data, packet, 0, min(len(packet), 20)))
        elif action == "channel":
            framed.append(b"$\x01" + head[2:] + packet)
    one_by_one = PyH26xDepacketizer(codec)
    expected: list[AccessUnit] = []
    for item in framed:
        if item[1] == 0:
            expected += one_by_one.feed(item[4:], 96) or []
    # When the bytes come in reads of any size
    stream = b"".join(framed)
    read_size = data.draw(st.sampled_from([len(stream), 4096, 1500, 333]))
    depacketizer = data.draw(st.sampled_from(IMPLEMENTATIONS))(codec)
    got: list[AccessUnit] = []
    left = b""
    for at in range(0, len(stream), read_size):
        chunk = left + stream[at : at + read_size]
        pos = 0
        while True:
            units, pos = depacketizer.feed_interleaved(chunk, pos, len(chunk), 0, 96)
            got += units
            if len(chunk) - pos >= 4 and chunk[pos + 1] == 1:
                length = int.from_bytes(chunk[pos + 2 : pos + 4], "big")
                if len(chunk) - pos >= 4 + length:
                    pos += 4 + length  # not for the depacketizer
                    continue
            break
        left = chunk[pos:]
    # Then the pictures, their damage and the counters are those of feeding one by one
    assert [(u.timestamp, [bytes(n) for n in u.nals], u.damaged) for u in got] == [
        (u.timestamp, [bytes(n) for n in u.nals], u.damaged) for u in expected
    ]
    assert (depacketizer.units, depacketizer.damaged, depacketizer.bad_packets) == (
        one_by_one.units,
        one_by_one.damaged,
        one_by_one.bad_packets,
    )


async def test_a_recording_torn_by_a_crash_is_cut_back_to_its_last_whole_picture(
    clips: dict[str, Clip], tmp_path: Path
) -> None:
    receiver = Receiver("H265")
    frames = receiver.feed(packetize("H265", clips["H265"]))
    root, index = tmp_path / "recordings", tmp_path / "index.db"
    async with Recorder(root, index) as recorder:
        for frame in frames:
            recorder.write(frame)
    (path,) = (root / "cam").glob("*.mp4")
    whole = path.stat().st_size
    # A crash in the middle of the last picture's write, then a torn box after it; the
    # index row still says the file was being written, as a killed recorder leaves it.
    with sqlite3.connect(index) as db:
        db.execute("UPDATE media_segments SET open = 1")
    with path.open("r+b") as file:
        file.truncate(whole - 100)
        file.seek(0, 2)
        file.write(b"\x00\x00\x10\x00moof")
    async with Recorder(root, index) as recorder:
        report = recorder.repair_report
        assert report is not None
        assert report.truncated_bytes > 0
        (segment,) = await recorder.segments("cam")
        assert segment.frames == 29
        replayed = [
            f async for f in recorder.playback("cam", frames[0].timestamp, frames[-1].timestamp + 1)
        ]
    assert [f.timestamp for f in replayed] == [f.timestamp for f in frames[:29]]
    assert [f.jpeg for f in replayed] == [f.jpeg for f in frames[:29]]
    decoded = decode(path)
    assert (len(decoded.times), decoded.errors) == (29, "")


async def test_a_writer_process_records_the_same_bytes(
    clips: dict[str, Clip], tmp_path: Path
) -> None:
    frames = Receiver("H264").feed(packetize("H264", clips["H264"]))
    async with Recorder(tmp_path / "r", tmp_path / "index.db", writer="process") as recorder:
        for frame in frames:
            recorder.write(frame)
        await recorder.flush()
        (segment,) = await recorder.segments("cam")
        replayed = [
            f async for f in recorder.playback("cam", frames[0].timestamp, frames[-1].timestamp + 1)
        ]
    assert [f.jpeg for f in replayed] == [f.jpeg for f in frames]
    assert [f.fragment for f in replayed] == [f.fragment for f in frames]
    decoded = decode(segment.path)
    assert (len(decoded.times), decoded.errors) == (30, "")


async def test_a_picture_lost_before_the_recorder_costs_the_rest_of_its_keyframe_interval(
    clips: dict[str, Clip], tmp_path: Path
) -> None:
    # A picture dropped on its way (a recorder queue full while the disk was): the pictures
    # after it, up to the next keyframe, would not decode, and are not written.
    frames = Receiver("H264").feed(packetize("H264", clips["H264"]))
    async with Recorder(tmp_path / "r", tmp_path / "index.db") as recorder:
        for frame in frames[:13] + frames[14:]:
            recorder.write(frame)
        await recorder.flush()
        (segment,) = await recorder.segments("cam")
        assert recorder.stats.frames_dropped == 6
    assert segment.frames == 23
    decoded = decode(segment.path)
    assert (len(decoded.times), decoded.errors) == (23, "")


def test_the_session_description_names_the_codec_and_its_parameter_sets() -> None:
    sps, pps = bytes.fromhex("6742c01e95a014016c84"), bytes.fromhex("68ce3c80")
    h264 = parse_sdp(
        "v=0\r\ns=cam\r\nm=audio 0 RTP/AVP 0\r\nm=video 0 RTP/AVP 96\r\n"
        "a=rtpmap:96 H264/90000\r\na=control:trackID=1\r\n"
        "a=fmtp:96 packetization-mode=1;profile-level-id=42c01e;sprop-parameter-sets="
        f"{base64.b64encode(sps).decode()},{base64.b64encode(pps).decode()}\r\n"
    )
    assert (h264.codec, h264.payload_type, h264.clock_rate, h264.control) == (
        "H264",
        96,
        90000,
        "trackID=1",
    )
    assert h264.parameter_sets() == ParameterSets("H264", None, sps, pps)

    vps, hsps, hpps = b"\x40\x01\x0c", b"\x42\x01\x01", b"\x44\x01\xc0"
    h265 = parse_sdp(
        "v=0\r\nm=video 0 RTP/AVP 97\r\na=rtpmap:97 H265/90000\r\na=fmtp:97 "
        + ";".join(
            f"sprop-{k}={base64.b64encode(v).decode()}"
            for k, v in (("vps", vps), ("sps", hsps), ("pps", hpps))
        )
    )
    assert h265.codec == "H265"
    assert h265.parameter_sets() == ParameterSets("H265", vps, hsps, hpps)

    # Parameter sets that do not decode are left for the stream to bring.
    broken = parse_sdp(
        "m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=fmtp:96 sprop-parameter-sets=%%%,\r\n"
    )
    assert broken.parameter_sets() == ParameterSets("H264", None, None, None)

    # A codec watchkeep does not record is named, and none is chosen.
    mpeg4 = parse_sdp("m=video 0 RTP/AVP 96\r\na=rtpmap:96 MP4V-ES/90000\r\n")
    assert (mpeg4.codecs, mpeg4.payload_type) == (("MP4V-ES",), None)


def test_a_sender_report_puts_the_pictures_on_the_cameras_clock(clips: dict[str, Clip]) -> None:
    # RTCP SR (RFC 3550 6.4.1): the camera says RTP time 1000 was 2026-12-02 08:00:00 UTC
    # by its clock (NTP seconds since 1900), a minute away from when the pictures arrive.
    wall = 1_796_198_400.0
    report = struct.pack(
        "!BBHIIIIII", 0x80, 200, 6, 7, int(wall) + 2_208_988_800, 1 << 31, 1000, 0, 0
    )
    assert sender_report(report) == (1000, wall + 0.5)
    assert sender_report(b"\x80\xc9\x00\x01" + bytes(4)) is None  # a receiver report only
    receiver = Receiver("H264")
    receiver.framer.sender_report(1000, wall)
    frames = receiver.feed(packetize("H264", clips["H264"], first_timestamp=1000 + 90_000))
    # The first picture is one second after the report's moment, whatever the arrival time.
    assert frames[0].timestamp == pytest.approx(wall + 1.0, abs=1e-5)
    assert frames[-1].timestamp == pytest.approx(wall + 1.0 + 29 / 25, abs=1e-5)

    arriving = Receiver("H264")  # no report: the arrival time of the first picture
    assert arriving.feed(packetize("H264", clips["H264"]))[0].timestamp == pytest.approx(
        1_800_000_000.0
    )


def test_the_per_packet_work_runs_in_c() -> None:
    assert NATIVE, (
        "watchkeep.media._rtp_native was not built (pip install -e . compiles it with the "
        "machine's C compiler); the recording server runs its per-packet work in Python, "
        "slower; fix: install gcc and the Python headers, then bash scripts/setup.sh"
    )


def _outcome(units: list[AccessUnit] | None) -> list[tuple[int, list[bytes], bool]] | None:
    if units is None:
        return None
    return [(u.timestamp, [bytes(n) for n in u.nals], u.damaged) for u in units]


def _state(depacketizer: H26xDepacketizer) -> tuple[int, int, int, str | None]:
    d = depacketizer
    return (d.units, d.damaged, d.bad_packets, d.last_problem)


# First payload bytes of every packetization of both codecs, well formed or not.
_PAYLOAD_HEADS = [0x65, 0x41, 0x67, 0x18, 0x1C, 0x19, 0x1D, 0x1A, 0x1B, 0x1E, 0x00, 0x26,
                  0x02, 0x40, 0x60, 0x62, 0x64, 0x66, 0x7E]  # fmt: skip


@pytest.mark.skipif(not NATIVE, reason="the C depacketizer was not built")
@_FUZZ
@given(data=st.data())
def test_the_c_depacketizer_does_what_the_python_one_does(
    clips: dict[str, Clip], data: st.DataObject
) -> None:
    # Given a real stream's packets lost, repeated, mangled, cut, replaced by random
    # payloads of every packetization, fed one at a time (as bytes or parsed)
    codec = data.draw(st.sampled_from(["H264", "H265"]))
    real = packetize(
        codec, clips[codec][:12], first_timestamp=data.draw(st.sampled_from([0, WRAP]))
    )
    packets: list[bytes] = []
    for packet in real:
        action = data.draw(
            st.sampled_from(["keep"] * 5 + ["drop", "repeat", "head", "flip", "cut", "typed"])
        )
        if action == "keep":
            packets.append(packet)
        elif action == "repeat":
            packets += [packet, packet]
        elif action == "head":
            packets.append(_flipped(data, packet, 0, min(len(packet), 16)))
        elif action == "flip":
            packets.append(_flipped(data, packet, 0, len(packet)))
        elif action == "cut":
            packets.append(packet[: data.draw(st.integers(0, len(packet)))])
        elif action == "typed":
            head = data.draw(st.sampled_from(_PAYLOAD_HEADS))
            packets.append(packet[:12] + bytes((head,)) + data.draw(st.binary(max_size=80)))
    python, c = PyH26xDepacketizer(codec), new_depacketizer(codec)
    for packet in packets:
        # When each is given the same packet, Then each says the same: the pictures it
        # completes, their damage, the counters and the problem named
        if data.draw(st.booleans()):
            assert _outcome(c.feed(packet, 96)) == _outcome(python.feed(packet, 96))
        else:
            parsed = parse_rtp(packet)
            if parsed is None:
                continue
            assert _outcome(c.push(parsed)) == _outcome(python.push(parsed))
        assert _state(c) == _state(python)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS, ids=lambda i: i.__name__)
@pytest.mark.parametrize("codec", ["H264", "H265"])
def test_a_picture_over_32_mib_is_refused_whole(
    codec: str, implementation: Callable[[str], H26xDepacketizer]
) -> None:
    # Given a camera sending one NAL unit of 33 MiB in fragments, then a small picture
    depacketizer = implementation(codec)
    nal = (b"\x65" if codec == "H264" else b"\x26\x01") + bytes(33 << 20)
    fragments = _fragments(codec, nal)
    single = b"\x41\x9a" if codec == "H264" else b"\x02\x01\xd0"
    packets = [
        struct.pack("!BBHII", 0x80, 0x80 * (payload is fragments[-1]) | 96, i & 0xFFFF, 0, 7)
        + payload
        for i, payload in enumerate(fragments)
    ]
    packets.append(
        struct.pack("!BBHII", 0x80, 0x80 | 96, len(fragments) & 0xFFFF, 3600, 7) + single
    )
    units = [u for p in packets for u in depacketizer.feed(p, 96) or []]
    # Then the big one comes out damaged, with no NAL unit, and the next picture whole
    assert [(u.timestamp, len(u.nals), u.damaged) for u in units] == [
        (0, 0, True),
        (3600, 1, False),
    ]
    assert depacketizer.last_problem == "a picture over 32 MiB"
    assert depacketizer.bad_packets == 1  # the rest of its fragments have lost their start


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS, ids=lambda i: i.__name__)
@pytest.mark.parametrize("codec", ["H264", "H265"])
def test_packets_interleaved_in_reads_of_any_size_give_the_same_pictures(
    clips: dict[str, Clip], codec: str, implementation: Callable[[str], H26xDepacketizer]
) -> None:
    # Given a stream's packets interleaved as on an RTSP connection (channel 0), an RTCP
    # packet on channel 1 every 7 packets, one packet lost, and the bytes cut into reads
    packets = packetize(codec, clips[codec])
    del packets[40]
    one_by_one = PyH26xDepacketizer(codec)
    expected = [u for p in packets for u in one_by_one.feed(p, 96) or []]
    stream = b"".join(
        b"$\x00" + len(p).to_bytes(2, "big") + p + (b"$\x01\x00\x04\x81\xc9\x00\x00" * (i % 7 == 0))
        for i, p in enumerate(packets)
    )
    for read_size in (1, 97, 1500, 65536):
        depacketizer = implementation(codec)
        got: list[AccessUnit] = []
        left = b""
        for at in range(0, len(stream), read_size):
            data = left + stream[at : at + read_size]
            pos = 0
            while True:
                units, pos = depacketizer.feed_interleaved(data, pos, len(data), 0, 96)
                got += units
                if len(data) - pos >= 8 and data[pos + 1] == 1:
                    pos += 8  # the RTCP packet: not for the depacketizer
                    continue
                break
            left = data[pos:]
        # Then the access units are those of feeding the packets one by one
        assert left == b""
        assert [(u.timestamp, [bytes(n) for n in u.nals], u.damaged) for u in got] == [
            (u.timestamp, [bytes(n) for n in u.nals], u.damaged) for u in expected
        ]
        assert depacketizer.damaged == one_by_one.damaged == 1
