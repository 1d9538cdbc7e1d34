"""A bad server config is one line naming the file, the setting and the fix; never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BASE = """[server]
name = "ms"
role = "management"
host = "ms.config.test"
address = "127.0.0.9"
"""


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ('[site]\nlogin_backoff_max = "lots"\n', "login_backoff_max"),
        ("[site]\nfailover_after = -1\n", "failover_after"),
        ("[site]\nrenew_at = 1.5\n", "renew_at"),
        ("[site]\nlogin_failures_per_account = 2.5\n", "login_failures_per_account"),
        ("[server]\nheartbeat_interval = nan\n", "heartbeat_interval"),
        ("[ports]\napi = 70000\n", "[ports] api"),
        ("[ports]\npublish = 9080\n", "holds no CA to publish"),
        ('[ports]\npublish = 9000\n[site]\nca_home = "ca"\n', "port of another listener"),
        ('[ports]\npublish = "http"\n[site]\nca_home = "ca"\n', "[ports] publish"),
        ("[site\n", "not valid TOML"),
        ('[recording]\nwriter = "fork"\n', "[recording] writer"),
        ('[recording]\nsegment_seconds = "a minute"\n', "[recording] segment_seconds"),
        ("[recording]\nmax_bytes = -5\n", "[recording] max_bytes"),
    ],
)
def test_bad_setting_is_one_line(tmp_path: Path, extra: str, words: str) -> None:
    config = tmp_path / "ms.toml"
    text = BASE + extra
    if extra.startswith("[server]"):
        text = BASE + extra.removeprefix("[server]\n")
    config.write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "watchkeep", "server", "run", "management", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(config) in lines[0]
    assert words in lines[0]
    assert "fix:" in lines[0]
