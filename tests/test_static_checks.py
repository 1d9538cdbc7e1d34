"""The code stays as STYLE.md asks: ruff's rules and format, and mypy's strict typing of the
package and the benchmarks (pinned versions, so that every machine judges alike)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *command], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def test_ruff_finds_nothing_and_the_format_is_ruffs() -> None:
    checked = run("ruff", "check", "src", "tests", "bench")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    formatted = run("ruff", "format", "--check", "src", "tests", "bench")
    assert formatted.returncode == 0, formatted.stdout + formatted.stderr


def test_mypy_finds_nothing_in_the_package_and_the_benchmarks() -> None:
    typed = run("mypy", "--no-incremental", "src", "bench")
    assert typed.returncode == 0, typed.stdout + typed.stderr
