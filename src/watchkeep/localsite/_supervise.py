"""Running a local site's servers: each its own process, started, awaited and stopped here.

Nothing waits a fixed time. ``wait_until`` asks again and again until a generous deadline,
so that a slow machine makes a site slower to start, never wrong; a wait that gives up
raises ``SiteNotReady`` naming what it waited for and what it saw last, and a server that
ends while it is awaited ``ServerExited`` with the last line it logged. A server's process
is in a session of its own and dies with the program that started it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from typing import TypeVar

from watchkeep.errors import ServerExited, SiteNotReady
from watchkeep.localsite._layout import LocalServer

__all__ = [
    "DEADLINE",
    "log_text",
    "speaks_tls",
    "start_process",
    "stop_process",
    "wait_listening",
    "wait_ready",
    "wait_until",
]

T = TypeVar("T")

# Generous: a loaded two-core machine may take several seconds to start a Python process.
DEADLINE = 30.0
START_DEADLINE = 20.0
POLL = 0.05


def wait_until(
    check: Callable[[], T | None],
    *,
    what: str,
    logs: str,
    timeout: float = DEADLINE,
    interval: float = 0.1,
    retry_on: tuple[type[Exception], ...] = (),
    last: Callable[[], object] | None = None,
) -> T:
    """Call ``check`` until it returns a true value (an exception of ``retry_on`` counts as
    not yet); that value. Past ``timeout`` seconds, SiteNotReady says ``what`` was awaited,
    where the ``logs`` are, and what was seen last: ``last()``, else the last exception or
    value."""
    deadline = time.monotonic() + timeout
    seen: object = None
    while True:
        try:
            result = check()
        except retry_on as exc:
            seen = exc
        else:
            if result:
                return result
            seen = result
        if time.monotonic() > deadline:
            described = last() if last is not None else seen
            raise SiteNotReady(
                what, timeout, logs, last=None if described is None else str(described)
            )
        time.sleep(interval)


def log_text(server: LocalServer, *, this_run: bool = False) -> str:
    """What the server logged, or with ``this_run`` only since its process last started
    (a server started again appends to its log)."""
    log = server.log
    if log is None or not log.exists():
        return ""
    data = log.read_bytes()
    return (data[server.log_start :] if this_run else data).decode(errors="replace")


def _still_running(server: LocalServer) -> None:
    """Raise ServerExited, with the last line it logged, if the server's process ended."""
    process = server.process
    if process is None or process.poll() is None:
        return
    lines = [line for line in log_text(server, this_run=True).splitlines() if line.strip()]
    raise ServerExited(
        server.name, process.returncode, str(server.log), last_line=lines[-1] if lines else None
    )


def start_process(server: LocalServer) -> subprocess.Popen[bytes]:
    """Start ``server`` as its own process (`watchkeep server run`), its output to its log.

    Call it from a thread that lives as long as the server should: Linux ends the server
    (SIGTERM) when the thread that started it ends, so that no server outlives the program
    running the site."""
    if server.log is None:
        raise ValueError(f"{server.name} has no log file to write to")
    role = "recording" if server.role.records else server.role.value
    with server.log.open("ab") as log:
        server.log_start = log.tell()
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "watchkeep",
                "server",
                "run",
                role,
                "--config",
                str(server.config),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            # A session of its own: Ctrl-C in a terminal signals the foreground process
            # group, and must reach only the program running the site (`watchkeep demo`,
            # a test run), which stops the servers in order; servers that stopped by
            # themselves meanwhile would make it fail on its way out.
            start_new_session=True,
            # And if that program dies without stopping them (kill -9), they go with it.
            preexec_fn=_die_with_parent,
        )


def stop_process(
    process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15.0
) -> int:
    """Send ``sig`` to a process still running and wait for it to end (kill it if it does
    not within ``timeout``); its exit status."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def wait_ready(server: LocalServer, timeout: float = START_DEADLINE) -> None:
    """Wait until the server says it has started (its log's "ready" line). A recording
    server never configured by the management server opens its listeners only with its
    first configuration (``wait_listening`` waits for those)."""
    ready = f"{server.name}: {server.role.value} server ready"
    _wait_while_running(
        server, lambda: ready in log_text(server, this_run=True), "starting", timeout
    )


def wait_listening(server: LocalServer, timeout: float = START_DEADLINE) -> None:
    """Wait until the server accepts connections on its first listener."""
    port = next(iter(server.ports.values()))

    def connects() -> bool:
        with socket.create_connection((server.address, port), 0.2):
            return True

    what = f"listening on {server.address}:{port}"
    _wait_while_running(server, connects, what, timeout, retry_on=(OSError,))


def _wait_while_running(
    server: LocalServer,
    condition: Callable[[], bool],
    what: str,
    timeout: float,
    *,
    retry_on: tuple[type[Exception], ...] = (),
) -> None:
    """Wait until ``condition`` holds; ServerExited as soon as the server's process ends."""

    def check() -> bool:
        _still_running(server)
        return condition()

    wait_until(
        check,
        what=f"{server.name} {what}",
        logs=str(server.log),
        timeout=timeout,
        interval=POLL,
        retry_on=retry_on,
    )


def speaks_tls(address: str, port: int) -> bool:
    """Whether ``address:port`` answers a TLS ClientHello with a TLS handshake. Nothing is
    verified, and no client certificate is sent: a listener that requires one refuses only
    after the client's side is done."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((address, port), timeout=5) as sock,
            context.wrap_socket(sock),
        ):
            return True
    except OSError:  # ssl.SSLError too; a listener being restarted refuses
        return False


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to send SIGTERM when the parent dies."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
