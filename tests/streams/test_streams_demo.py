"""`watchkeep demo` as a user runs it: one command builds and runs a complete encrypted
site, describes itself to other tools while it runs, and leaves nothing running.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import pytest
from stream_support import DEADLINE, proc_cmdlines

pytestmark = pytest.mark.slow

# Building the site (a CA, five certificates, five processes, four cameras, encryption on
# everywhere) takes a while on a loaded 2-core machine.
BUILD_DEADLINE = 4 * DEADLINE
SERVERS = {"ms", "rs1", "rs2", "fo1", "mobile1"}
CAMERAS = {"cam1": "rs1", "cam2": "rs1", "cam3": "rs2", "cam4": "rs2"}


class _Demo:
    """A running `watchkeep demo`: its output lines as they come."""

    def __init__(self, home: Path, *args: str) -> None:
        self.home = home
        # Its error output goes to a file: only the output lines are read while it runs.
        self.stderr_file = home.with_name(f"{home.name}.stderr")
        with self.stderr_file.open("w") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "watchkeep", "demo", *args, "--home", str(home)],
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                # Its own process group, as a shell gives a foreground job: Ctrl-C in a
                # terminal signals the whole group.
                start_new_session=True,
            )
        self.lines: queue.Queue[str] = queue.Queue()
        self.stdout: list[str] = []
        assert self.process.stdout is not None
        self._reader = threading.Thread(target=self._read, args=(self.process.stdout,))
        self._reader.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line)

    def wait_for_line(self, pattern: str) -> re.Match[str]:
        deadline = time.monotonic() + BUILD_DEADLINE
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"the demo never printed {pattern!r}:\n{''.join(self.stdout)}"
            try:
                line = self.lines.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                assert self.process.poll() is None, self.failure("the demo ended")
                continue
            self.stdout.append(line)
            found = re.search(pattern, line)
            if found:
                return found

    def finish(self) -> tuple[int, str, str]:
        """Wait for the demo to end; its status, whole output and error output."""
        try:
            self.process.wait(timeout=BUILD_DEADLINE)
        finally:
            self.close()
        self._reader.join()
        while not self.lines.empty():
            self.stdout.append(self.lines.get())
        return self.process.returncode, "".join(self.stdout), self.stderr_file.read_text()

    def failure(self, what: str) -> str:
        return f"{what}:\n{''.join(self.stdout)}"

    def close(self) -> None:
        if self.process.poll() is None:
            # Only when a test failed: end the demo's whole process group (its servers).
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@contextmanager
def demo(home: Path, *args: str) -> Iterator[_Demo]:
    running = _Demo(home, *args)
    try:
        yield running
    finally:
        running.close()
        leftovers = _processes_under(home)
        for pid in leftovers:  # never leave a server of a failed demo running
            os.kill(pid, signal.SIGKILL)


def _processes_under(home: Path) -> dict[int, str]:
    """Processes whose command line names the demo's directory, but for this test's own."""
    return {
        pid: cmdline
        for pid, cmdline in proc_cmdlines().items()
        if str(home) in cmdline and pid != os.getpid()
    }


def _cli(home: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "watchkeep", "--home", str(home), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_the_demo_runs_a_site_that_other_tools_can_see_and_stops_cleanly(tmp_path: Path) -> None:
    home = tmp_path / "demo"

    # When `watchkeep demo --duration 8` runs
    with demo(home, "--duration", "8") as running:
        # Then it prints the CA file a browser must trust, then the web client's URL
        ca_file = running.wait_for_line(r"certificate authority: (\S+)").group(1)
        url = running.wait_for_line(r"(https://mobile1\.\S+/)\s").group(1)

        # And while it runs, the CLI describes the site and its CA (both at once: the
        # demo runs for 8 seconds from here)
        status_cli = _cli(home, "site", "status", "--json")
        ca_cli = _cli(home, "ca", "show", "--json")
        status_out, status_err = status_cli.communicate(timeout=DEADLINE * 2)
        ca_out, ca_err = ca_cli.communicate(timeout=DEADLINE * 2)

        # And it ends by itself, with status 0
        returncode, stdout, stderr = running.finish()

    assert status_cli.returncode == 0, status_err
    status = json.loads(status_out)
    servers = {s["name"]: s for s in status["servers"]}
    assert set(servers) == SERVERS
    for name, server in servers.items():
        assert server["encryption"] is True, (name, server)
        assert server["online"] is True, (name, server)
        assert server["certificate"]["days_left"] > 0, (name, server)
    assert {c["name"]: c["recording_server"] for c in status["cameras"]} == CAMERAS
    mobile = servers["mobile1"]
    assert url == f"https://{mobile['host']}:{mobile['ports']['https']}/"

    assert ca_cli.returncode == 0, ca_err
    ca = json.loads(ca_out)
    assert ca["cert_path"] == str(Path(ca_file).resolve())
    assert ca["name"] == "watchkeep Demo Site CA"
    assert status["site_ca_sha256_fingerprint"] == ca["sha256_fingerprint"]

    assert returncode == 0, f"{stdout}\n{stderr}"
    assert "Traceback" not in stderr, stderr
    assert "watchkeep demo: stopped" in stdout
    # Once encryption is on everywhere, every server says it speaks TLS (mobile1 included)
    (speaking,) = [line for line in stdout.splitlines() if "servers speaking TLS now:" in line]
    assert set(speaking.split(":", 1)[1].replace(",", " ").split()) == SERVERS, speaking
    # It pulled live video over TLS: some status table shows frames/s for every camera.
    for camera in CAMERAS:
        rates = re.findall(rf"^{camera}\s+\S+\s+(\d+\.\d)", stdout, flags=re.MULTILINE)
        assert any(float(rate) > 0 for rate in rates), f"{camera}: {rates}\n{stdout}"

    # And nothing it started runs any more
    assert _processes_under(home) == {}


def test_ctrl_c_stops_the_demo_cleanly(tmp_path: Path) -> None:
    home = tmp_path / "demo"
    with demo(home) as running:
        # Given a demo running with no end set
        running.wait_for_line(r"https://mobile1\.\S+/")
        servers = _processes_under(home)
        assert len([c for c in servers.values() if " server run " in c]) == len(SERVERS)

        # When the user presses Ctrl-C (SIGINT to the foreground process group)
        os.killpg(running.process.pid, signal.SIGINT)
        returncode, stdout, stderr = running.finish()

    # Then the demo stops every server and exits 0, leaving nothing running
    assert returncode == 0, f"{stdout}\n{stderr}"
    assert "Traceback" not in stderr, stderr
    assert "watchkeep demo: stopped" in stdout
    assert _processes_under(home) == {}
