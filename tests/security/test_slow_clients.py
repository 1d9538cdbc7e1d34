"""Slow, stalled and vanishing clients, and the site keeps running (issue 18).

Given an encrypted site (a management server and a mobile server with 20 connection slots
each, requests due in full within REQUEST_TIMEOUT, a recording server heartbeating every
0.5 s), when anonymous clients send requests whose bodies never come, dribble their heads,
reset their connections in the middle of requests, or log in with names that are not
Unicode text, then: the servers' own management link goes on (no failed heartbeat, every
server online), a legitimate client is served, stalled requests are dropped at the request
timeout with one log line, no server logs a traceback or a line per event, and the odd
log-ins are 400 problem documents that count against the guesser's address.

Every hostile client connects from an address of its own (NETWORK.250 and below); every
load loop is bounded in count and in time.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import re
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from security_support import (
    HANDSHAKE_TIMEOUT,
    IDLE_TIMEOUT,
    Figures,
    assert_all_alive,
    attacker_address,
    encrypt,
    http_request,
    log_lines,
    problem_of,
    set_server_options,
)

from watchkeep.localsite import LocalPostgres
from watchkeep.servers._base import _ClientFaultsInOneLine
from watchkeep.site import ServerRole
from watchkeep.testing import LocalServer, LocalSite, eventually, servers_by_name

pytestmark = pytest.mark.slow

MAX_CONNECTIONS = 20
REQUEST_TIMEOUT = 4
STALLED = 300  # stalled-body connections opened against the management API, at most
ATTACK_SECONDS = 8.0  # and for at most this long
RESETS = 40  # connections reset mid-request, at each server
LOGIN = "/api/v1/login"
# A log-in whose user name is a lone UTF-16 surrogate: valid JSON, not Unicode text.
SURROGATE_LOGIN = b'{"user": "\\ud800", "password": "x"}'


@pytest.fixture(scope="module")
def slow_site(
    open_sites: Callable[..., contextlib.AbstractContextManager[Callable[..., LocalSite]]],
    site_database: str,
) -> Iterator[LocalSite]:
    with open_sites(site_database) as make:
        site = make("slow")
        for name, role in [
            ("ms", ServerRole.MANAGEMENT),
            ("rs1", ServerRole.RECORDING),
            ("mobile1", ServerRole.MOBILE),
        ]:
            site.add_server(name, role)
        for name in ("ms", "mobile1"):
            set_server_options(
                site.servers[name],
                max_connections=MAX_CONNECTIONS,
                request_timeout=REQUEST_TIMEOUT,
                handshake_timeout=HANDSHAKE_TIMEOUT,
                idle_timeout=IDLE_TIMEOUT,
            )
        site.start_all()
        encrypt(site, "rs1", "mobile1", "ms")
        yield site


@pytest.fixture(autouse=True)
def all_alive(slow_site: LocalSite, figures: Figures) -> Iterator[None]:
    yield
    assert_all_alive(slow_site, figures=figures)


def tls_socket(site: LocalSite, server: LocalServer, listener: str, source: str) -> ssl.SSLSocket:
    sock = socket.create_connection(
        (server.address, server.ports[listener]), timeout=10, source_address=(source, 0)
    )
    context = ssl.create_default_context(cafile=str(site.home.ca_cert))
    return context.wrap_socket(sock, server_hostname=server.host)


def stalled_login(
    site: LocalSite, server: LocalServer, listener: str, source: str
) -> ssl.SSLSocket:
    """A log-in whose headers arrive and whose body (1000 bytes, it says) never does."""
    sock = tls_socket(site, server, listener, source)
    sock.sendall(
        f"POST {LOGIN} HTTP/1.1\r\nHost: {server.host}\r\nContent-Type: application/json\r\n"
        "Content-Length: 1000\r\n\r\n".encode()
    )
    return sock


def reset(sock: socket.socket) -> None:
    """Close with a reset (SO_LINGER 0), as a client that vanishes does."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes ``sock`` within ``seconds`` (reading what it sends)."""
    deadline = time.monotonic() + seconds
    with contextlib.suppress(ConnectionResetError, ssl.SSLError, OSError):
        while time.monotonic() < deadline:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                if sock.recv(65536) == b"":
                    return True
            except TimeoutError:
                return False
        return False
    return True


def test_stalled_bodies_on_the_management_api_do_not_cut_the_site_off(
    slow_site: LocalSite, figures: Figures
) -> None:
    ms = slow_site.servers["ms"]
    marks = {name: len(slow_site.log_text(name)) for name in ("rs1", "mobile1")}
    source = attacker_address(slow_site, 1)
    held: list[socket.socket] = []
    done = threading.Event()

    def attack() -> None:
        # Many times the management server's slots, kept coming: each new one takes the
        # place of an older stalled one, never of the site's own servers' connections.
        started = time.monotonic()
        while not done.is_set() and len(held) < STALLED:
            if time.monotonic() - started > ATTACK_SECONDS:
                break
            with contextlib.suppress(OSError):
                held.append(stalled_login(slow_site, ms, "api", source))

    attacker = threading.Thread(target=attack, daemon=True)
    attacker.start()
    try:
        eventually(lambda: len(held) >= 2 * MAX_CONNECTIONS, what="the stalled connections")
        # While the attack goes on: the administrator is served, every server stays online.
        while attacker.is_alive():
            servers = servers_by_name(slow_site.status())
            assert servers["rs1"]["online"], servers
            assert servers["mobile1"]["online"], servers
            time.sleep(0.5)
    finally:
        done.set()
        attacker.join(ATTACK_SECONDS + 10)
        for sock in held:
            sock.close()
    figures.hostile("stalled request body", len(held))
    assert len(held) >= 2 * MAX_CONNECTIONS
    # Not one heartbeat of the recording or the mobile server failed meanwhile.
    for name, mark in marks.items():
        assert not log_lines(slow_site, name, r" ERROR ", mark), slow_site.log_tails()
    line = eventually(
        lambda: log_lines(slow_site, "ms", "to make room"), what="ms logging its connection limit"
    )[-1]
    assert "its request not received in full" in line or "in its TLS handshake" in line, line


@dataclass(frozen=True)
class Target:
    """A public TLS listener under attack, and where its server's log stood before."""

    name: str
    server: LocalServer
    listener: str
    log_mark: int


@pytest.fixture(params=[("ms", "api"), ("mobile1", "https")], ids=["ms", "mobile1"])
def target(request: pytest.FixtureRequest, slow_site: LocalSite) -> Target:
    name, listener = request.param
    return Target(name, slow_site.servers[name], listener, len(slow_site.log_text(name)))


def test_a_request_not_in_full_within_the_request_timeout_is_dropped_and_logged_once(
    slow_site: LocalSite, figures: Figures, target: Target
) -> None:
    name, server, listener, mark = target.name, target.server, target.listener, target.log_mark
    source = attacker_address(slow_site, 2)
    stalled = [stalled_login(slow_site, server, listener, source) for _ in range(3)]
    slow = tls_socket(slow_site, server, listener, source)
    try:
        # A head a byte at a time, each well within the idle timeout.
        head = f"GET /healthz HTTP/1.1\r\nHost: {server.host}\r\nX-Pad: {'a' * 400}\r\n\r\n"
        deadline = time.monotonic() + REQUEST_TIMEOUT + 10
        with contextlib.suppress(OSError):
            for byte in head.encode():
                assert time.monotonic() < deadline, "the slow head was never cut off"
                slow.sendall(bytes([byte]))
                time.sleep(0.05)
        for sock in [*stalled, slow]:
            assert closed_within(sock, REQUEST_TIMEOUT + 5)
    finally:
        for sock in [*stalled, slow]:
            sock.close()
    figures.hostile("request not in full within the request timeout", len(stalled) + 1)
    lines = eventually(
        lambda: log_lines(slow_site, name, "did not arrive in full", mark),
        what=f"{name} logging the request timeout",
    )
    assert len(lines) == 1, lines
    assert "request_timeout" in lines[0], lines


def test_resets_in_the_middle_of_requests_cost_no_traceback_and_a_line_at_most(
    slow_site: LocalSite, figures: Figures, target: Target
) -> None:
    name, server, listener, mark = target.name, target.server, target.listener, target.log_mark
    source = attacker_address(slow_site, 3)
    started = time.monotonic()
    for _ in range(RESETS):
        if time.monotonic() - started > 60:
            break
        with tls_socket(slow_site, server, listener, source) as sock:
            sock.sendall(
                f"POST {LOGIN} HTTP/1.1\r\nHost: {server.host}\r\nExpect: 100-continue\r\n"
                "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n".encode()
            )
            # "100 Continue": the server has the request and waits for its body. Then vanish.
            received = b""
            while b"\r\n\r\n" not in received:
                chunk = sock.recv(4096)
                assert chunk, received
                received += chunk
            assert received.startswith(b"HTTP/1.1 100 "), received[:100]
            sock.sendall(b'{"user": "')
            reset(sock)
        figures.hostile("reset in the middle of a request")
    # The server has seen every reset once a request after them is answered.
    status, _, body = http_request(
        server, listener, "/healthz" if name == "mobile1" else "/api/v1/token-key",
        ca=slow_site.home.ca_cert,
    )  # fmt: skip
    assert status == 200, body[:300]
    text = slow_site.log_text(name)[mark:]
    assert "Traceback" not in text, text[-3000:]
    # One line per interval at most (none if an earlier test's line is that recent).
    lines = log_lines(slow_site, name, "ended while its request was handled", mark)
    assert len(lines) <= 2, lines


@pytest.mark.parametrize("through", ["ms", "mobile1"])
def test_a_log_in_whose_name_is_not_unicode_text_is_a_400_and_counts_against_the_address(
    slow_site: LocalSite, figures: Figures, through: str
) -> None:
    server = slow_site.servers[through]
    listener = "api" if through == "ms" else "https"
    source = attacker_address(slow_site, 10 if through == "ms" else 11)
    ca = slow_site.home.ca_cert
    for _ in range(20):  # the management server's login_failures_per_address
        status, headers, reply = http_request(
            server, listener, LOGIN, ca=ca, method="POST", body=SURROGATE_LOGIN, source=source
        )
        assert status == 400, reply[:300]
        assert "surrogate" in problem_of(status, headers, reply)["detail"], reply[:300]
        figures.hostile("log-in with a lone surrogate")
    body = json.dumps({"user": "someone", "password": "guess"}).encode()
    status, headers, reply = http_request(
        server, listener, LOGIN, ca=ca, method="POST", body=body, source=source
    )
    assert (status, problem_of(status, headers, reply).get("code")) == (429, "auth.login_rate")
    assert "Traceback" not in slow_site.log_text("ms")


# -- a long-running client --------------------------------------------------------------------

DEMO_DEADLINE = 180.0  # building the demo's site (five servers, encryption) on two cores


def processes_naming(text: str) -> list[int]:
    """The processes whose command line names ``text`` (a /proc scan)."""
    found = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and text in (entry / "cmdline").read_bytes().decode(
                errors="replace"
            ).replace("\0", " "):
                found.append(int(entry.name))
    return [pid for pid in found if pid != os.getpid()]


def test_the_demo_waits_out_a_management_server_that_stops_answering(
    tmp_path: Path, site_database: str, request: pytest.FixtureRequest
) -> None:
    # Given `watchkeep demo` running, when the management server stops answering for a
    # while (SIGSTOP: every call to it times out), then the demo says so in a line, keeps
    # the site running, and shows the status again once it answers; Ctrl-C still ends it
    # cleanly. (It used to stop every server at the first failed status call.)
    home = tmp_path / "demo"
    command = [sys.executable, "-m", "watchkeep", "demo", "--refresh", "1", "--home", str(home)]
    if site_database == "postgresql":  # the demo's site on the run's PostgreSQL server
        postgres: LocalPostgres = request.getfixturevalue("postgres")
        command += ["--database-url", postgres.create_database()]
    lines: queue.Queue[str] = queue.Queue()
    output: list[str] = []
    errors = tmp_path / "demo.stderr"
    with errors.open("w") as stderr:
        demo = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            start_new_session=True,  # its own process group, as a shell's foreground job
        )
    assert demo.stdout is not None
    reader = threading.Thread(target=lambda: [lines.put(line) for line in demo.stdout or ()])
    reader.start()

    def wait_for(pattern: str) -> str:
        deadline = time.monotonic() + DEMO_DEADLINE
        while time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                line = lines.get(timeout=1.0)
                output.append(line)
                if re.search(pattern, line):
                    return line
                continue
            assert demo.poll() is None, "the demo ended:\n" + "".join(output)
        raise AssertionError(f"the demo never printed {pattern!r}:\n" + "".join(output))

    ms_config = str(home / "servers" / "ms" / "server.toml")
    try:
        wait_for(r"frames/s")  # a status table: the site is built and shown
        (ms,) = processes_naming(ms_config)
        os.kill(ms, signal.SIGSTOP)
        try:
            failed = wait_for(r"site status failed")
        finally:
            os.kill(ms, signal.SIGCONT)
        assert "trying again" in failed, failed
        assert "Traceback" not in failed, failed
        wait_for(r"frames/s")  # shown again
        assert demo.poll() is None
        os.killpg(demo.pid, signal.SIGINT)  # Ctrl-C
        demo.wait(DEMO_DEADLINE)
        reader.join(10)
        while not lines.empty():
            output.append(lines.get())
        assert demo.returncode == 0, "".join(output) + errors.read_text()
        assert "watchkeep demo: stopped" in "".join(output)
        assert "Traceback" not in errors.read_text(), errors.read_text()
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
        for pid in processes_naming(str(home)):  # never leave a server of the demo running
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)


# -- the log filter, in-process -----------------------------------------------------------------


def aiohttp_error(message: str, error: BaseException, *args: object) -> logging.LogRecord:
    """A record as aiohttp's server logs an error (with its traceback)."""
    return logging.LogRecord(
        "aiohttp.server", logging.ERROR, __file__, 1, message, args, (type(error), error, None)
    )


def test_client_faults_are_one_line_each_interval_and_other_errors_pass_untouched() -> None:
    one_line = _ClientFaultsInOneLine(interval=3600)
    faults = [
        aiohttp_error("Error handling request from %s", ConnectionResetError("reset"), "10.0.0.9"),
        # uvloop's word for a write to a connection closed under the answer.
        aiohttp_error(
            "Unhandled exception",
            RuntimeError("unable to perform operation on <TCPTransport>; the handler is closed"),
        ),
        aiohttp_error("Error handling request from %s", BrokenPipeError("pipe"), "10.0.0.9"),
    ]
    passed = [record for record in faults if one_line.filter(record)]
    # The first stands for all, as one warning line without a traceback.
    assert passed == faults[:1]
    assert (passed[0].levelno, passed[0].exc_info) == (logging.WARNING, None)
    assert "10.0.0.9" in passed[0].getMessage()
    # A server's own error keeps its traceback.
    bug = aiohttp_error("Error handling request from %s", KeyError("bug"), "10.0.0.9")
    assert one_line.filter(bug)
    assert (bug.levelno, bug.exc_info is not None) == (logging.ERROR, True)
