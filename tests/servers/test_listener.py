"""A listener at its connection limit: idle connections make room, busy ones never do.

One process holding every slot with idle sockets must not lock other clients out. Given a
listener (uvloop, as the servers run it) with a small ``max_connections``, when the slots
are full and a new client connects, then the oldest connection serving no request (still
in its TLS handshake, or handshaken and silent) is reset and the new client is served;
when every slot serves a request (live streams), the new connection is reset at once and
the streams go on. Both are logged, with the fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvloop
from aiohttp import web

from watchkeep._home import Home
from watchkeep.pki import KeyType, Role, SitePKI
from watchkeep.servers._listener import Listener, ListenerLimits
from watchkeep.tls import ServerIdentity, TlsPolicy
from watchkeep.tls import server_context as make_server_context

HOST = "listener.test"
ADDRESS = "127.0.58.1"
CLIENT = "127.0.58.9"
LIMIT = 3


@dataclass
class Served:
    listener: Listener
    port: int
    client_context: ssl.SSLContext | None


def certificate(directory: Path) -> tuple[Path, Path, Path]:
    """A site CA and a recording server certificate for HOST: (CA, chain, key)."""
    home = Home(directory)
    pki = SitePKI(home)
    pki.init_ca("Listener Test CA", key_type=KeyType.ECDSA_P256)
    record = pki.issue(Role.RECORDING, [HOST], key_type=KeyType.ECDSA_P256, out=directory)
    return home.ca_cert, Path(record.chain_path), Path(str(record.key_path))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((ADDRESS, 0))
        return int(probe.getsockname()[1])


async def stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/plain"})
    await response.prepare(request)
    with contextlib.suppress(ConnectionError):
        while True:
            await response.write(b"tick\n")
            await asyncio.sleep(0.05)
    return response


async def hello(request: web.Request) -> web.Response:
    return web.Response(text="hello")


@pytest.fixture(params=["plaintext", "tls"])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Served]:
    """A listener with max_connections = LIMIT, its loop in a thread of its own."""
    server_context = client_context = None
    if request.param == "tls":
        ca, chain, key = certificate(tmp_path)
        # The servers' own context: their policy, suites and groups.
        server_context = make_server_context(
            ServerIdentity("listener", HOST, chain, key), TlsPolicy.INTERMEDIATE
        )
        client_context = ssl.create_default_context(cafile=str(ca))
    port = free_port()
    loop = uvloop.new_event_loop()
    app = web.Application()
    app.router.add_get("/stream", stream)
    app.router.add_get("/hello", hello)
    runner = ListenerLimits(LIMIT, handshake_timeout=30, idle_timeout=60).runner(app)
    listener = Listener("test", "data", runner, ADDRESS, port, limits=ListenerLimits(LIMIT, 30, 60))

    async def start() -> None:
        await runner.setup()
        await listener.start(server_context)

    async def stop() -> None:
        await listener.stop()
        await runner.cleanup()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        yield Served(listener, port, client_context)
    finally:
        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def connect(served: Served, *, handshake: bool = True) -> socket.socket:
    sock = socket.create_connection((ADDRESS, served.port), timeout=10, source_address=(CLIENT, 0))
    if handshake and served.client_context is not None:
        return served.client_context.wrap_socket(sock, server_hostname=HOST)
    return sock


def wait_for_open(served: Served, count: int) -> None:
    deadline = time.monotonic() + 10
    while served.listener.connections != count:
        assert time.monotonic() < deadline, (served.listener.connections, count)
        time.sleep(0.01)


def get(sock: socket.socket, path: str) -> None:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())


def read_answer(sock: socket.socket) -> bytes:
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        assert chunk, received
        received += chunk
    return received


def closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(5)
    try:
        return sock.recv(65536) == b""
    except (ConnectionResetError, ssl.SSLError):
        return True


def refused_by_server(served: Served) -> bool:
    # The server resets a refused connection at once; the reset can reach the client
    # before its connect() has returned, and then connect() itself raises it.
    try:
        sock = connect(served, handshake=False)
    except ConnectionResetError:
        return True
    with sock:
        return closed_by_server(sock)


def open_stream(served: Served) -> socket.socket:
    sock = connect(served)
    get(sock, "/stream")
    assert b" 200 " in read_answer(sock)
    return sock


def still_streaming(sock: socket.socket) -> bool:
    sock.settimeout(5)
    received = b""
    while received.count(b"tick") < 3:
        chunk = sock.recv(65536)
        if not chunk:
            return False
        received += chunk
    return True


def test_at_the_limit_a_new_client_takes_the_place_of_the_oldest_idle_connection(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "watchkeep.servers")
    idle = []
    for _ in range(LIMIT):
        idle.append(connect(served))
        wait_for_open(served, len(idle))
    try:
        with connect(served) as client:
            get(client, "/hello")
            assert read_answer(client).startswith(b"HTTP/1.1 200 ")
        # The oldest idle connection made room; the others were left alone.
        assert closed_by_server(idle[0])
        assert served.listener.evicted == 1
        assert served.listener.refused == 0
    finally:
        for sock in idle:
            sock.close()
    (line,) = [r.getMessage() for r in caplog.records if "make room" in r.getMessage()]
    assert f"connection limit ({LIMIT} open)" in line, line
    assert f"from {CLIENT}" in line, line
    assert "max_connections" in line, line


def test_half_open_connections_make_room_too(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    # Sockets that never start (or never finish) a TLS handshake hold slots as well.
    silent = []
    for _ in range(LIMIT):
        silent.append(connect(served, handshake=False))
        wait_for_open(served, len(silent))
    clients = []
    try:
        for _ in range(2):  # each kept open: the second one needs a slot of its own
            clients.append(connect(served))
            get(clients[-1], "/hello")
            assert read_answer(clients[-1]).startswith(b"HTTP/1.1 200 ")
        assert closed_by_server(silent[0])
        assert closed_by_server(silent[1])
        assert served.listener.evicted == 2
    finally:
        for sock in [*silent, *clients]:
            sock.close()


def test_connections_serving_a_request_are_never_closed_to_make_room(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "watchkeep.servers")
    streams = [open_stream(served) for _ in range(LIMIT - 1)]
    idle = connect(served)
    wait_for_open(served, LIMIT)
    try:
        # The idle one goes for the newcomer, then nothing is left to give way.
        newcomer = open_stream(served)
        streams.append(newcomer)
        assert closed_by_server(idle)
        assert refused_by_server(served)
        assert served.listener.refused >= 1
        assert served.listener.evicted == 1
        assert all(still_streaming(sock) for sock in streams)
    finally:
        idle.close()
        for sock in streams:
            sock.close()
    lines = [r.getMessage() for r in caplog.records if "every one serving" in r.getMessage()]
    assert lines, [r.getMessage() for r in caplog.records]
    assert "max_connections" in lines[0], lines
    # Once a stream ends, its slot is free again.
    wait_for_open(served, 0)
    with connect(served) as client:
        get(client, "/hello")
        assert read_answer(client).startswith(b"HTTP/1.1 200 ")
