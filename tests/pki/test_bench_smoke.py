"""The PKI benchmark runs end to end at a tiny size (its figures are not judged here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_pki.py"


def test_bench_pki_runs_quick_and_writes_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "pki.json"
    ran = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    result = json.loads(out.read_text())
    assert result["quick"] is True
    figures = {f["figure"]: f for f in result["figures"]}
    assert set(figures) == {
        "issue_rate_ecdsa-p256",
        "issue_rate_rsa-2048",
        "process_wall_time_ecdsa-p256",
        "process_wall_time_rsa-2048",
    }
    for name, figure in figures.items():
        assert figure["ratio"] > 0, name
        assert isinstance(figure["meets_target"], bool), name
        assert name in ran.stdout
