"""Outside programs the tests run, as judges or as peers: pkilint (its JSON findings) and
`openssl s_server`, and a free port to put a server on."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from watchkeep.testing import eventually

BIN = Path(sys.executable).parent

__all__ = ["BIN", "Lint", "free_port", "openssl_s_server", "pkilint"]


def free_port(address: str) -> int:
    """A port the kernel has just found free on ``address``."""
    with socket.socket() as probe:
        probe.bind((address, 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class Lint:
    """The verdict of a pkilint command: its exit status and the codes it found."""

    status: int
    codes: tuple[str, ...]
    report: str


def pkilint(tool: str, cert: Path | str, *options: str) -> Lint:
    """Run pkilint's ``tool`` at severity WARNING and up, parsing its JSON report."""
    result = subprocess.run(
        [str(BIN / tool), "lint", *options, "-s", "WARNING", "-f", "JSON", str(cert)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"{tool} printed no JSON (status {result.returncode}): {result.stderr}")
    codes = tuple(
        finding["code"] for entry in report["results"] for finding in entry["finding_descriptions"]
    )
    return Lint(result.returncode, codes, result.stdout)


@contextlib.contextmanager
def openssl_s_server(
    address: str, port: int, cert: Path | str, key: Path | str, *options: str
) -> Iterator[subprocess.Popen[bytes]]:
    """`openssl s_server` on ``address:port`` with ``options``, once it accepts connections;
    stopped when the block ends."""
    process = subprocess.Popen(
        ["openssl", "s_server", "-accept", f"{address}:{port}", "-cert", str(cert),
         "-key", str(key), *options, "-quiet"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip

    def listening() -> bool:
        assert process.poll() is None, "openssl s_server exited"
        with contextlib.suppress(OSError), socket.create_connection((address, port), 0.2):
            return True
        return False

    try:
        eventually(listening, timeout=10, interval=0.05, what="openssl s_server listening")
        yield process
    finally:
        process.terminate()
        process.wait(10)
