"""Running the documentation's shell examples as an administrator would type them.

The README and docs/ show commands for a site at fixed places: the CA's home `~/site`,
the servers' files in `/etc/watchkeep` and `/var/lib/watchkeep`, addresses `10.0.0.x`,
the service account `watchkeep`. A test runs them with only these replaced (docs/
configuration.md lists the same substitutions for readers):

- `~/site` -> a home in the test's temporary directory,
- `/etc/watchkeep` and `/var/lib/watchkeep` -> directories there,
- `10.0.0.` -> a loopback network of its own (127.x.y.), so parallel runs never meet,
- the service account `watchkeep` (`--owner`, `chown`, `service_account`) -> the account
  running the tests,
- `docs/examples/` -> the repository's example files, which get the same substitutions
  once copied.

Each command runs in bash; `export` lines set the environment of the next ones, and a
`watchkeep server run ... &` line starts the server as a process of the test (stopped at its
end) and waits until it listens. A `site status` line whose comment says to wait is run
again until what it waits for is true, as its reader would.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from watchkeep.testing import eventually

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"


def shell_blocks(markdown: str, heading: str) -> list[str]:
    """The ```sh blocks of the section under ``heading`` (up to the next heading)."""
    lines = markdown.splitlines()
    start = lines.index(heading) + 1
    end = next((n for n in range(start, len(lines)) if lines[n].startswith("#")), len(lines))
    section = "\n".join(lines[start:end])
    return re.findall(r"^```sh\n(.*?)^```", section, flags=re.MULTILINE | re.DOTALL)


def commands(block: str) -> list[str]:
    """One command per entry: continuation lines joined."""
    joined = block.replace("\\\n", " ")
    return [line for line in joined.splitlines() if line.strip()]


@dataclass
class Ran:
    command: str
    code: int
    output: str


@dataclass
class Administrator:
    """Types the documentation's commands on this host, with the substitutions above."""

    root: Path
    network: str  # "127.x.y"
    env: dict[str, str] = field(default_factory=dict)
    servers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)
    ran: list[Ran] = field(default_factory=list)

    def __post_init__(self) -> None:
        bin_dir = str(Path(sys.executable).parent)
        self.env = {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"}
        self.env.pop("WATCHKEEP_HOME", None)
        self.account = pwd.getpwuid(os.geteuid()).pw_name

    @property
    def home(self) -> Path:
        return self.root / "site"

    def substitute(self, text: str) -> str:
        account = self.account
        for old, new in (
            ("~/site", str(self.home)),
            ("/etc/watchkeep", str(self.root / "etc")),
            ("/var/lib/watchkeep", str(self.root / "var")),
            ("10.0.0.", f"{self.network}."),
            ("docs/examples/", f"{DOCS / 'examples'}/"),
            ("--owner watchkeep", f"--owner {account}"),
            ("chown watchkeep ", f"chown {account} "),
            ('service_account = "watchkeep"', f'service_account = "{account}"'),
        ):
            text = text.replace(old, new)
        return text

    def run(self, command: str, *, waits: dict[str, Callable[[], None]] | None = None) -> Ran:
        line = self.substitute(command)
        words = shlex.split(line, comments=True)
        if words and words[0] == "export":
            name, _, value = words[1].partition("=")
            self.env[name] = value
            return self._record(command, 0, "")
        if words[:3] == ["watchkeep", "server", "run"] and line.rstrip().endswith("&"):
            self._start(words)
            return self._record(command, 0, "")
        result = subprocess.run(
            ["bash", "-c", line], cwd=self.root, env=self.env, capture_output=True,
            text=True, timeout=120, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        ran = self._record(command, result.returncode, result.stdout + result.stderr)
        if words and words[0] == "cp" and words[-1].endswith(".toml"):
            copied = Path(words[-1])
            copied.write_text(self.substitute(copied.read_text()))
        comment = command.partition("#")[2].strip()
        for when, wait in (waits or {}).items():
            if when in comment:
                wait()
        return ran

    def _record(self, command: str, code: int, output: str) -> Ran:
        ran = Ran(command, code, output)
        self.ran.append(ran)
        return ran

    def _start(self, words: list[str]) -> None:
        from watchkeep.servers import load_config

        config = load_config(Path(words[words.index("--config") + 1]))
        log = self.root / f"{config.name}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                words[:-1] if words[-1] == "&" else words, cwd=self.root, env=self.env,
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        self.servers[config.name] = process
        self.logs[config.name] = log
        port = next(iter(config.ports.values()))

        def listening() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"{config.name} exited:\n{log.read_text()}")
            with contextlib.suppress(OSError), socket.create_connection((config.address, port), 1):
                return True
            raise AssertionError(f"{config.name} not listening on {config.address}:{port}")

        eventually(listening, what=f"{config.name} listening")

    def log_tails(self) -> str:
        return "\n".join(
            f"--- {name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-40:])
            for name, log in self.logs.items()
        )

    def stop_servers(self) -> None:
        for process in self.servers.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.servers.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
