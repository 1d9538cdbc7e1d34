"""The H.264 capacity benchmark (`python -m bench.h264_capacity --quick`) runs end to end at
its smallest size (two cameras of the RTSP camera farm, two WebSocket viewers, encrypted
then in plaintext) and writes its results with every key issue 15 asks for. Its figures
are not judged here, beyond what a working harness must show: every picture of the short
window reached its viewer, with a delay, from a server that spent CPU on it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KEYS = {
    "max_h264_cameras_encrypted",
    "max_cameras_encrypted",
    "max_cameras_plaintext",
    "capacity_tls_vs_plain_ratio",
    "rs1_us_per_frame_encrypted",
    "command",
}

# Each saturates the machine on purpose: two of them side by side would only slow each other.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("bench")]


def test_the_quick_h264_benchmark_runs_and_writes_every_figure(tmp_path: Path) -> None:
    # Given the benchmark at its smallest size, writing into a directory of its own
    ran = subprocess.run(
        [sys.executable, "-m", "bench.h264_capacity", "--quick", "--out-dir", str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    # Then it succeeds and writes JSON and Markdown with every figure
    assert ran.returncode == 0, ran.stderr[-4000:]
    result = json.loads((tmp_path / "h264.json").read_text())
    assert set(result) >= KEYS
    assert result["quick"] is True
    assert "--quick" in result["command"]
    assert set(result["searches"]) == {"encrypted", "plaintext"}
    for mode, search in result["searches"].items():
        (row,) = search["rows"]
        # The viewers decoded the WebSocket and the fragments: pictures counted, delays
        # taken from the fragments' times, rs1's CPU read from /proc.
        assert row["encrypted"] is (mode == "encrypted")
        assert row["viewers_connected"] == row["cameras"] == 2, row
        assert row["frames_viewed_per_second"] > 0, row
        assert row["delay_p50_ms"] is not None, row
        assert row["server_cores"] > 0, row
        assert row["server_loop_thread_cores"] <= row["server_cores"] + 0.05, row
        assert row["load_average_1m"] >= 0, row
    markdown = (tmp_path / "h264.md").read_text()
    assert "max_h264_cameras_encrypted" in markdown
    assert "## plaintext" in markdown
    assert "max_h264_cameras_encrypted:" in ran.stdout
