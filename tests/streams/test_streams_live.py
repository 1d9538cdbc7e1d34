"""Live video over TLS and playback of exactly what was recorded.

Given the shared encrypted site (`streams_site`): rs1 records cam1 and cam2, small
synthetic cameras whose every JPEG carries its own camera name and sequence number in a
comment, so that a frame's headers can be checked against the picture itself.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import struct
import time
from pathlib import Path

import aiohttp
import pytest
from stream_support import (
    DEADLINE,
    assert_contiguous,
    assert_frame_from,
    camera_stream,
    cli_ok,
    live_frames,
    management_signer,
    parse_mjpeg_file,
    playback_frames,
    read_parts,
    read_problem,
    recorded_past,
    request,
    wait_recorded_past,
)

from watchkeep.client import SiteClient
from watchkeep.media import Frame, unpack_ws_header
from watchkeep.testing import LocalServer, LocalSite, eventually, servers_by_name
from watchkeep.tls import client_context

DAY = 24 * 3600


def test_frames_seen_live_over_tls_are_byte_for_byte_what_is_played_back(
    streams_site: LocalSite, tmp_path: Path
) -> None:
    # When the Smart Client watches cam1 live for 20 frames, writing them to a file
    live_file = tmp_path / "live.mjpeg"
    report = json.loads(
        cli_ok(streams_site, "view", "cam1", "--frames", "20", "--out", str(live_file), "--json")
    )

    # Then they came from rs1 over TLS, each a whole JPEG whose headers match the picture
    assert report["frames"] == 20, report
    assert report["servers"] == ["rs1"], report
    assert report["encrypted"] is True, report
    live = parse_mjpeg_file(live_file)
    assert len(live) == 20
    sequences = [int(part.headers["x-sequence"]) for part in live]
    assert_contiguous(sequences)
    for sequence, part in zip(sequences, live, strict=True):
        assert_frame_from("cam1", sequence, part.jpeg)
    stamps = [float(part.headers["x-timestamp"]) for part in live]

    # When, once the recording has gone past them, the time range covering them is played
    # back into another file
    recorded_past(streams_site, "cam1", stamps[-1] + 0.5)
    played_file = tmp_path / "played.mjpeg"
    played_report = json.loads(
        cli_ok(
            streams_site,
            "playback",
            "cam1",
            "--from",
            repr(stamps[0] - 0.05),
            "--to",
            repr(stamps[-1] + 0.05),
            "--out",
            str(played_file),
            "--json",
        )
    )

    # Then every frame seen live is in it, with the same timestamp and the same bytes
    played = {int(part.headers["x-sequence"]): part for part in parse_mjpeg_file(played_file)}
    assert played_report["encrypted"] is True, played_report
    assert played_report["frames"] == len(played), played_report
    assert set(sequences) <= set(played), f"missing from playback: {set(sequences) - set(played)}"
    for sequence, part in zip(sequences, live, strict=True):
        assert played[sequence].headers["x-timestamp"] == part.headers["x-timestamp"]
        assert played[sequence].jpeg == part.jpeg, f"frame {sequence} differs"


def _between(a: Frame, b: Frame) -> float:
    return (a.timestamp + b.timestamp) / 2


def test_playback_returns_exactly_the_frames_recorded_in_the_range(
    streams_site: LocalSite,
) -> None:
    # Given 30 consecutive frames of cam2 seen live
    async def scenario() -> tuple[list[Frame], list[Frame], float, float]:
        async with SiteClient(streams_site.home) as client:
            live = await live_frames(client, "cam2", 30)
            assert_contiguous([f.sequence for f in live])
            # When the range from between frames 4 and 5 to between frames 24 and 25 is
            # played back (boundaries between frames: the headers round timestamps to
            # microseconds, the recording does not), once the recording holds it all
            start, end = _between(live[4], live[5]), _between(live[24], live[25])
            await wait_recorded_past(client, "cam2", end)
            return live, await playback_frames(client, "cam2", start, end), start, end

    live, played, start, end = asyncio.run(scenario())

    # Then it holds every frame within [from, to) and nothing else, in order, unchanged
    assert all(start <= f.timestamp < end for f in played), [f.timestamp for f in played]
    assert [f.sequence for f in played] == [f.sequence for f in live[5:25]]
    assert [f.jpeg for f in played] == [f.jpeg for f in live[5:25]]


@pytest.mark.parametrize(
    "query",
    [
        "from=1700000100&to=1700000100",  # empty: to == from
        "from=1700000200&to=1700000100",  # to before from
        f"from=1700000000&to={1700000000 + DAY + 1}",  # more than 24 h
        "from=yesterday&to=1700000100",
        "from=1700000000",
        "to=1700000100",
        "from=nan&to=1700000100",
        "from=1700000000&to=inf",
    ],
)
def test_an_absurd_playback_range_is_refused_with_a_problem_document(
    streams_site: LocalSite, ca: Path, cam1_token: str, query: str
) -> None:
    # When a client asks rs1 for a playback range that can never be served
    rs1 = streams_site.servers["rs1"]
    path = f"/api/v1/cameras/cam1/playback.mjpeg?{query}"
    with request(rs1, "data", path, ca=ca, token=cam1_token) as response:
        # Then the answer is 400 with a problem document and not a byte of video
        problem = read_problem(response, 400)
    assert problem["title"] == "bad range", problem


def test_a_whole_day_is_a_valid_playback_range(
    streams_site: LocalSite, ca: Path, cam1_token: str
) -> None:
    # When a client asks for exactly 24 hours up to now (the longest range allowed)
    rs1 = streams_site.servers["rs1"]
    now = time.time()
    path = f"/api/v1/cameras/cam1/playback.mjpeg?from={now - DAY}&to={now}"
    with request(rs1, "data", path, ca=ca, token=cam1_token) as response:
        # Then it gets the recording
        parts = read_parts(response, 1)
    assert_frame_from("cam1", int(parts[0].headers["x-sequence"]), parts[0].jpeg)


def test_a_range_with_nothing_recorded_is_404_and_iso_times_are_taken(
    streams_site: LocalSite, ca: Path, cam1_token: str
) -> None:
    # When a client asks for a minute long before cam1 existed, in ISO 8601 as for HLS
    rs1 = streams_site.servers["rs1"]
    path = "/api/v1/cameras/cam1/playback.mjpeg?from=2020-01-01T00:00:00Z&to=2020-01-01T00:01:00Z"
    with request(rs1, "data", path, ca=ca, token=cam1_token) as response:
        # Then the answer says so (a 404 problem, as playback.m3u8 answers), not an empty 200
        problem = read_problem(response, 404)
    assert problem["title"] == "no recording", problem
    assert "cam1" in problem["detail"]
    assert "2020-01-01T00:00:00Z" in problem["detail"]
    # ... while the same in ISO 8601 over the last minute plays
    now = time.time()
    moment = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 60))
    with request(rs1, "data", f"/api/v1/cameras/cam1/playback.mjpeg?from={moment}&to={now}",
                 ca=ca, token=cam1_token) as response:  # fmt: skip
        assert read_parts(response, 1)
    # ... and `watchkeep playback` and `watchkeep export` say in one line that nothing is there
    for command in (
        ("playback", "cam1", "--from", "1577836800", "--to", "1577836860"),
        ("export", "cam1", "--from", "1577836800", "--to", "1577836860", "--out",
         str(streams_site.root / "nothing.mp4")),
    ):  # fmt: skip
        ran = streams_site.cli(*command)
        assert ran.returncode == 1, ran
        assert len(ran.stderr.splitlines()) == 1, ran.stderr
        assert "fix:" in ran.stderr, ran.stderr
        assert "recorded" in ran.stderr, ran.stderr
    assert not (streams_site.root / "nothing.mp4").exists()
    # ... and `playback --out` makes no empty file, and leaves a file already there as it was
    for out, before in (("none.mjpeg", None), ("kept.mjpeg", b"an earlier playback")):
        path = streams_site.root / out
        if before is not None:
            path.write_bytes(before)
        ran = streams_site.cli("playback", "cam1", "--from", "1577836800", "--to",
                               "1577836860", "--out", str(path))  # fmt: skip
        assert ran.returncode == 1, ran
        assert (path.read_bytes() if path.exists() else None) == before
    # ... while a directory that is not there is refused before anything is asked
    ran = streams_site.cli("view", "cam1", "--frames", "1", "--out",
                           str(streams_site.root / "no-such-dir" / "v.mjpeg"))  # fmt: skip
    assert ran.returncode == 1, ran
    assert len(ran.stderr.splitlines()) == 1, ran.stderr
    assert "no directory" in ran.stderr, ran.stderr


def test_the_smart_client_reports_a_refused_range_in_one_line(streams_site: LocalSite) -> None:
    # When `watchkeep playback` is asked for a range that ends before it starts
    ran = streams_site.cli("playback", "cam1", "--from", "1700000200", "--to", "1700000100")

    # Then it exits 1 with one line naming the recording server and the rule it broke
    assert ran.returncode == 1, ran
    assert ran.stdout == ""
    assert len(ran.stderr.splitlines()) == 1, ran.stderr
    assert "rs1" in ran.stderr, ran.stderr
    assert "to - from" in ran.stderr, ran.stderr


@pytest.mark.parametrize(
    "stream", ["playback.mjpeg?from=1700000000&to=1700000060", "live.mjpeg", "snapshot.jpg"]
)
def test_an_unknown_camera_is_404(streams_site: LocalSite, ca: Path, stream: str) -> None:
    # When a client asks rs1 for a camera it does not record, with a token for it (as the
    # management server would give for a camera just moved elsewhere)
    rs1 = streams_site.servers["rs1"]
    token = management_signer(streams_site).issue(
        "admin", "stream", "rs1", 600, cameras=["nosuch"], sid="s"
    )
    with request(rs1, "data", f"/api/v1/cameras/nosuch/{stream}", ca=ca, token=token) as r:
        # Then the answer is 404 with a problem document
        read_problem(r, 404)


def test_websocket_frames_carry_camera_timestamp_and_sequence(
    streams_site: LocalSite, cam1_token: str
) -> None:
    # When a client opens cam1's live WebSocket over verified TLS, the token in the query
    # as a browser must put it
    async def receive(count: int) -> list[bytes]:
        async with SiteClient(streams_site.home) as client:
            endpoint = (await client.stream_access("cam1")).endpoint
            url = (
                f"wss://{endpoint.host}:{endpoint.port}/api/v1/cameras/cam1/live.ws"
                f"?token={cam1_token}"
            )
            async with (
                aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(resolver=client.resolver())
                ) as session,
                session.ws_connect(url, ssl=client_context(client.trust)) as ws,
            ):
                messages: list[bytes] = []
                while len(messages) < count:
                    message = await ws.receive(timeout=DEADLINE)
                    assert message.type is aiohttp.WSMsgType.BINARY, message
                    messages.append(message.data)
                return messages

    messages = asyncio.run(receive(15))

    # Then each binary message is the header of media._wire then a JPEG, and they agree
    headers = [unpack_ws_header(m) for m in messages]
    assert {h.camera for h in headers} == {"cam1"}
    assert_contiguous([h.sequence for h in headers])
    stamps = [h.timestamp for h in headers]
    assert stamps == sorted(set(stamps)), stamps
    for header, message in zip(headers, messages, strict=True):
        jpeg = message[header.length :]
        assert_frame_from("cam1", header.sequence, jpeg)
        assert b"ts=%.6f" % header.timestamp in jpeg


def test_the_management_server_shows_a_snapshot_from_the_encrypted_recording_server(
    streams_site: LocalSite, ca: Path, admin_token: str
) -> None:
    # Given rs1, which records cam1, speaks only TLS
    rs1 = servers_by_name(streams_site.status())["rs1"]
    assert (rs1["encryption"], rs1["encrypted_now"]) == (True, True)

    # When an administrator asks the management server for cam1's snapshot
    ms = streams_site.management
    with request(ms, "api", "/api/v1/cameras/cam1/snapshot.jpg", ca=ca, token=admin_token) as r:
        body = r.read()
        # Then the answer is one JPEG of cam1: the management server fetched it from rs1
        # (it holds no video of its own) through its verified client
        assert r.status == 200, body[:300]
        assert r.getheader("Content-Type") == "image/jpeg"
    sequence = int(body.split(b"watchkeep camera=cam1 seq=")[1].split(b" ")[0])
    assert_frame_from("cam1", sequence, body)


def test_a_recording_server_snapshot_names_its_frame(
    streams_site: LocalSite, ca: Path, cam1_token: str
) -> None:
    # When a client asks rs1 itself for cam1's snapshot
    rs1 = streams_site.servers["rs1"]
    with request(rs1, "data", "/api/v1/cameras/cam1/snapshot.jpg", ca=ca, token=cam1_token) as r:
        body = r.read()
        assert r.status == 200, body[:300]
        sequence = int(r.getheader("X-Sequence", "-1"))
        stamp = float(r.getheader("X-Timestamp", "0"))
    # Then it is the picture its headers describe
    assert_frame_from("cam1", sequence, body)
    assert b"ts=%.6f" % stamp in body


def _vanish_mid_stream(
    rs: LocalServer, ca: Path, token: str, path: str = "/api/v1/cameras/cam1/live.mjpeg"
) -> float:
    """A viewer that reads part of a stream and disappears without a word.

    SO_LINGER with a zero timeout makes close() reset the connection (RST) instead of
    closing it in order (FIN): what a crashed app or a phone leaving the network does.
    Returns the moment of the reset.
    """
    raw = socket.create_connection((rs.address, rs.ports["data"]), timeout=DEADLINE)
    tls = ssl.create_default_context(cafile=str(ca)).wrap_socket(raw, server_hostname=rs.host)
    tls.sendall(
        f"GET {path} HTTP/1.1\r\nHost: {rs.host}\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
    )
    received = b""
    # Two part delimiters and a little more: the reset comes in the middle of a frame.
    while received.count(b"--watchkeep-frame") < 3:
        chunk = tls.recv(65536)
        assert chunk, f"the stream ended early: {received[:300]!r}"
        received += chunk
    assert received.startswith(b"HTTP/1.1 200 "), received[:300]
    tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    moment = time.time()
    tls.close()
    return moment


def test_recording_and_other_viewers_carry_on_when_a_viewer_vanishes(
    streams_site: LocalSite, ca: Path, cam1_token: str
) -> None:
    rs1 = streams_site.servers["rs1"]
    log_before = len(streams_site.log_text("rs1"))
    after_needed = 20

    async def scenario() -> tuple[list[Frame], list[float]]:
        async with SiteClient(streams_site.home) as client:
            seen: list[Frame] = []
            vanished: list[float] = []
            first_frames = asyncio.Event()

            async def watch() -> None:
                path = "/api/v1/cameras/cam1/live.mjpeg"
                async with camera_stream(client, "cam1", path) as stream:
                    async for frame in stream:
                        seen.append(frame)
                        if len(seen) >= 5:
                            first_frames.set()
                        if (
                            vanished
                            and sum(f.timestamp > max(vanished) for f in seen) >= after_needed
                        ):
                            return

            # Given a viewer watching cam1
            watcher = asyncio.create_task(watch())
            await asyncio.wait_for(first_frames.wait(), DEADLINE)
            # When three other viewers vanish in the middle of the stream, one by one, and
            # one in the middle of playing back the whole day (the recording server may
            # be waiting for its socket to drain when the reset comes)
            for _ in range(3):
                vanished.append(await asyncio.to_thread(_vanish_mid_stream, rs1, ca, cam1_token))
            now = time.time()
            playback = f"/api/v1/cameras/cam1/playback.mjpeg?from={now - DAY}&to={now}"
            vanished.append(
                await asyncio.to_thread(_vanish_mid_stream, rs1, ca, cam1_token, playback)
            )
            await asyncio.wait_for(watcher, DEADLINE)
            # And the recording goes on past the last of them
            await wait_recorded_past(client, "cam1", max(vanished) + 2.0)
            return seen, vanished

    seen, vanished = asyncio.run(scenario())

    # Then the viewer that stayed saw every frame, before, during and after
    assert_contiguous([f.sequence for f in seen])
    assert sum(f.timestamp > max(vanished) for f in seen) >= after_needed

    # And the recording has every frame from before the first to after the last
    async def recording() -> list[Frame]:
        async with SiteClient(streams_site.home) as client:
            return await playback_frames(client, "cam1", min(vanished) - 1.0, max(vanished) + 2.0)

    recorded = asyncio.run(recording())
    assert_contiguous([f.sequence for f in recorded])
    assert recorded[0].timestamp < min(vanished)
    assert recorded[-1].timestamp > max(vanished) + 1.0

    # And rs1 let go of every viewer (no subscription left behind by the vanished ones),
    # still runs, and logged no traceback
    def no_viewers_left() -> bool:
        with request(rs1, "data", "/api/v1/status", ca=ca, token=cam1_token) as response:
            status = json.loads(response.read())
        viewers = {c["name"]: c["viewers"] for c in status["cameras"]}
        assert viewers["cam1"] == 0, viewers
        return True

    eventually(no_viewers_left, what="rs1 has no viewers of cam1 left")
    assert rs1.process is not None
    assert rs1.process.poll() is None
    assert "Traceback" not in streams_site.log_text("rs1")[log_before:]
