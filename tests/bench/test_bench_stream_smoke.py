"""The stream benchmark (`scripts/bench.sh --quick`) runs end to end at its smallest size
and writes its results with every key issue 6 fixes. Its figures are not judged here: the
benchmark reports, the test suite checks that it cannot rot.

(Named apart from tests/pki/test_bench_smoke.py: test modules outside packages share one
namespace.)
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
    "tls_vs_plain_ratio",
    "tls_vs_nginx_ratio",
    "max_cameras_encrypted",
    "handshake_ratio_vs_openssl",
    "failover_seconds",
    "issue_per_second",
}

# Each saturates the machine on purpose: two of them side by side would only slow each other.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("bench")]


def test_the_quick_benchmark_runs_and_writes_every_figure(tmp_path: Path) -> None:
    # Given the benchmark at its smallest size, writing into a directory of its own
    ran = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out-dir", str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    # Then it succeeds, prints its table, and writes JSON, Markdown and the chart
    assert ran.returncode == 0, ran.stderr[-4000:]
    result = json.loads((tmp_path / "stream.json").read_text())
    assert set(result) >= KEYS
    assert result["quick"] is True
    for key in ("tls_vs_plain_ratio", "tls_vs_nginx_ratio", "failover_seconds"):
        assert isinstance(result[key], float), (key, result[key])
        assert result[key] > 0, (key, result[key])
    assert isinstance(result["max_cameras_encrypted"], int)
    assert set(result["handshake_ratio_vs_openssl"]) == {"rsa-2048", "ecdsa-p256"}
    assert set(result["issue_per_second"]) == {"rsa-2048", "ecdsa-p256"}
    for section in ("versions", "cpu", "cores"):
        assert section in result["machine"]
    assert {"python", "openssl", "aiohttp", "cryptography"} <= set(result["machine"]["versions"])
    assert "tls_vs_plain_ratio" in ran.stdout
    # Each capacity row says how busy rs1's event loop (one thread) and the machine were
    cores = os.cpu_count() or 1
    for row in result["figures"]["capacity"]["rows"]:
        assert 0 < row["server_loop_thread_cores"] <= row["server_cores"] + 0.05, row
        assert row["server_loop_thread_cores"] <= 1.05, row
        assert 0 <= row["machine_idle_cores"] <= cores + 0.05, row
    markdown = (tmp_path / "stream.md").read_text()
    assert "## 2. Camera capacity" in markdown
    assert "rs1 loop thread cores" in markdown
    assert (tmp_path / "stream.png").read_bytes().startswith(b"\x89PNG")
