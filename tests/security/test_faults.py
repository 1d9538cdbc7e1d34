"""Faults, with nothing lost.

Given an encrypted site recording cam1 at rs1 while a live viewer watches:

* when the management server is killed with SIGKILL and started again, then rs1
  registers again, the viewer never notices, and the recording has no gap;
* when rs1 itself is killed with SIGKILL while recording and started again, then every
  frame the viewer saw up to a second before the kill is in the recording, byte for byte
  (the recorder makes frames durable every second), the index and the segments agree
  (the playback parses to its end, nothing is set aside as damaged), and it records on;
* when the disk of a recording server fills (a small tmpfs mounted by the test as its
  data directory), then it says so clearly in its log, keeps serving, and records again
  once space returns, with nothing corrupt, before and after a restart.

Elsewhere, and not repeated here: a certificate file replaced by garbage keeps the working
certificate (tests/servers/test_hot_reload.py), and `ca init` / `cert issue` killed
mid-write leave no half-written CA or key (tests/pki/test_pki_atomicity.py).
"""

from __future__ import annotations

import itertools
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from security_support import (
    Figures,
    LiveViewer,
    SeenFrame,
    add_camera,
    assert_all_alive,
    camera_recorded,
    encrypt,
    log_lines,
    playback,
)

from watchkeep.site import ServerRole
from watchkeep.testing import LocalSite, can_mount, eventually

FLUSH_INTERVAL = 1.0  # the recorder's: frames older than this at a kill are durable


@pytest.fixture(scope="module")
def site(site_factory: Callable[[str], LocalSite]) -> LocalSite:
    site = site_factory("faults")
    servers = [("ms", ServerRole.MANAGEMENT), ("rs1", ServerRole.RECORDING)]
    for name, role in servers:
        site.add_server(name, role)
    site.start_all()
    add_camera(site, "cam1", "rs1")
    encrypt(site, "rs1", "ms")
    eventually(lambda: camera_recorded(site, "rs1", "cam1"), what="rs1 recording cam1")
    return site


def wait_recorded(site: LocalSite, server: str, camera: str, moment: float) -> list[SeenFrame]:
    """Wait until the recording holds a frame at or after ``moment``; the frames up to it."""
    token = site.stream_token(camera)

    def check() -> list[SeenFrame]:
        frames = playback(site, server, camera, moment - 3600, moment + 3600, token)
        assert frames, "nothing recorded"
        assert frames[-1].timestamp >= moment, frames[-1]
        return frames

    return eventually(check, what=f"{camera} recorded past {moment}")


def runs(frames: list[SeenFrame]) -> list[tuple[int, int]]:
    """Runs of consecutive sequence numbers: one run means no gap."""
    found = []
    for _, group in itertools.groupby(enumerate(frames), lambda p: p[1].sequence - p[0]):
        members = [f for _, f in group]
        found.append((members[0].sequence, members[-1].sequence))
    return found


def test_the_management_server_killed_and_restarted_interrupts_nothing(
    site: LocalSite, figures: Figures
) -> None:
    rs1 = site.servers["rs1"]
    with LiveViewer(rs1, "cam1", site.stream_token("cam1"), site.home.ca_cert) as viewer:
        mark = viewer.mark()
        started = time.time()
        log_start = len(site.log_text("rs1"))
        # When the management server dies without a word
        site.kill("ms")
        figures.faults_injected.append("kill -9 of the management server while recording")
        # rs1 notices at its next heartbeat, and serves on without it meanwhile
        eventually(
            lambda: log_lines(site, "rs1", r"rs1: cannot connect to", log_start),
            what="rs1 noticing that the management server is gone",
        )
        alone = viewer.mark()
        eventually(
            lambda: viewer.mark() >= alone + 10, what="frames with the management server gone"
        )
        assert_all_alive(site, figures=figures)
        # and comes back
        site.start("ms")
        site.wait_online("rs1")
        back = time.time()
        eventually(lambda: viewer.mark() >= mark + 10, what="frames after the restart")
        # Then the viewer at rs1 saw every frame, without a stall,
        viewer.assert_uninterrupted(mark)
    # and the recording over the whole outage has no gap.
    recorded = [
        f for f in wait_recorded(site, "rs1", "cam1", back) if started - 1 <= f.timestamp <= back
    ]
    assert len(runs(recorded)) == 1, runs(recorded)
    assert recorded[-1].timestamp - recorded[0].timestamp >= back - started - 1.5
    assert "registered with the management server again" in site.log_text("rs1")


def test_a_recording_server_killed_while_recording_loses_nothing_it_flushed(
    site: LocalSite, figures: Figures
) -> None:
    rs1 = site.servers["rs1"]
    with LiveViewer(rs1, "cam1", site.stream_token("cam1"), site.home.ca_cert) as viewer:
        eventually(lambda: viewer.mark() >= 40, what="four seconds of live video")
        # When rs1 is killed in the middle of recording
        killed_at = time.time()
        site.kill("rs1")
        figures.faults_injected.append("kill -9 of a recording server while recording")
        seen = list(viewer.frames)
    # and started again (it records again at once, from the cameras it remembers)
    site.start("rs1")
    site.wait_online("rs1")
    wait_recorded(site, "rs1", "cam1", time.time() + 1)
    # Then everything the viewer saw up to a second before the kill is in the recording,
    # byte for byte,
    token = site.stream_token("cam1")
    recorded = playback(site, "rs1", "cam1", seen[0].timestamp - 0.001, killed_at + 1, token)
    durable = [f for f in seen if f.timestamp < killed_at - FLUSH_INTERVAL]
    kept = {(f.sequence, f.timestamp, f.digest) for f in recorded}
    lost = [f for f in durable if (f.sequence, f.timestamp, f.digest) not in kept]
    figures.recording_bytes_lost = (figures.recording_bytes_lost or 0) + sum(f.size for f in lost)
    figures.recording_bytes_checked += sum(f.size for f in durable)
    assert not lost, f"{len(lost)} of {len(durable)} frames flushed before the kill are missing"
    assert len(durable) >= 20
    # the recording before the kill has no hole either (the viewer may have joined late),
    before_kill = [f for f in recorded if f.timestamp <= durable[-1].timestamp]
    assert len(runs(before_kill)) == 1, runs(before_kill)
    # and index and segments agree: nothing was set aside as damaged.
    recordings = rs1.directory / "data" / "recordings"
    assert not list(recordings.rglob("*.damaged")), list(recordings.rglob("*.damaged"))


# -- a full disk ------------------------------------------------------------------------------


@pytest.fixture
def tiny_disk(site: LocalSite, tmpfs: Callable[..., Path]) -> Iterator[Path]:
    """A 1 MiB tmpfs as the data directory of a new recording server, rsfull (root only)."""
    if not can_mount():  # before the server joins the site
        pytest.skip("the full-disk test needs root to mount a 1 MiB tmpfs (run the suite as root)")
    server = site.add_server("rsfull", ServerRole.RECORDING)
    data = tmpfs(server.directory / "data", mode="0700")
    try:
        yield data
    finally:
        site.stop("rsfull")  # before the tmpfs goes


def test_a_full_disk_is_a_clear_error_and_recording_resumes_when_space_returns(
    site: LocalSite, figures: Figures, tiny_disk: Path
) -> None:
    began = time.time()
    site.start("rsfull")
    site.wait_online("rsfull")
    # 30 kB frames ten times a second fill 1 MiB in a few seconds.
    add_camera(site, "cam2", "rsfull", width=640, height=360, target_bytes=30_000)
    figures.faults_injected.append("disk full on a recording server")
    # Then rsfull says, in one line, that the disk is full and recording is paused,
    full = eventually(
        lambda: log_lines(site, "rsfull", "disk is full"), what="rsfull logging the full disk"
    )
    assert "ENOSPC" in full[0], full[0]
    # keeps serving (the site sees it online, its status answers),
    assert_all_alive(site, figures=figures)
    site.wait_online("rsfull")
    token = site.stream_token("cam2")
    assert playback(site, "rsfull", "cam2", began, time.time(), token)
    # and, when space returns, records again.
    subprocess.run(["mount", "-o", "remount,size=64m", str(tiny_disk)], check=True)
    space_back = time.time()
    eventually(
        lambda: log_lines(site, "rsfull", "writing again"), what="rsfull resuming its recording"
    )
    after = wait_recorded(site, "rsfull", "cam2", space_back + 2)
    assert [f for f in after if f.timestamp > space_back], "nothing recorded after space returned"
    # Nothing is corrupt: the whole recording plays back cleanly, before and after a restart.
    everything = playback(site, "rsfull", "cam2", began, time.time() + 60, token)
    site.stop("rsfull")
    site.start("rsfull")
    site.wait_online("rsfull")
    again = playback(
        site, "rsfull", "cam2", began, everything[-1].timestamp + 0.001, site.stream_token("cam2")
    )
    assert [(f.sequence, f.digest) for f in again][: len(everything)] == [
        (f.sequence, f.digest) for f in everything
    ]
    assert not list(tiny_disk.rglob("*.damaged"))
