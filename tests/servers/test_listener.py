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

from tool_support import free_port
from watchkeep._home import Home
from watchkeep.client import call_json, open_session
from watchkeep.errors import ConnectionFailed
from watchkeep.pki import KeyType, Role, SitePKI
from watchkeep.servers._listener import Listener, ListenerLimits
from watchkeep.tls import ClientAuth, Endpoint, ServerIdentity, TlsPolicy, TrustMaterial
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


# Bodies /echo began to read (the handler runs), for the tests to wait on.
READING: list[float] = []


async def echo(request: web.Request) -> web.Response:
    READING.append(time.monotonic())
    return web.Response(body=await request.read())


@contextlib.contextmanager
def listening(
    tmp_path: Path, tls: bool, limits: ListenerLimits, client_auth: str = ClientAuth.NONE
) -> Iterator[Served]:
    """A listener with ``limits``, its loop (uvloop) in a thread of its own."""
    server_context = client_context = None
    if tls:
        ca, chain, key = certificate(tmp_path)
        # The servers' own context: their policy, suites and groups.
        server_context = make_server_context(
            ServerIdentity("listener", HOST, chain, key),
            TlsPolicy.INTERMEDIATE,
            client_auth=client_auth,
            trust=TrustMaterial(tmp_path, (ca,), ()),
        )
        client_context = ssl.create_default_context(cafile=str(ca))
    port = free_port(ADDRESS)
    loop = uvloop.new_event_loop()
    app = web.Application()
    app.router.add_get("/stream", stream)
    app.router.add_get("/hello", hello)
    app.router.add_post("/echo", echo)
    runner = limits.runner(app)
    listener = Listener("test", "data", runner, ADDRESS, port, limits=limits)

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


@pytest.fixture(params=["plaintext", "tls"])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Served]:
    """A listener with max_connections = LIMIT."""
    with listening(tmp_path, request.param == "tls", ListenerLimits(LIMIT, 30, 60)) as served:
        yield served


def connect(served: Served, *, handshake: bool = True, source: str = CLIENT) -> socket.socket:
    sock = socket.create_connection((ADDRESS, served.port), timeout=10, source_address=(source, 0))
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


# -- requests that never arrive in full (issue 18) -------------------------------------------

OTHER_CLIENT = "127.0.58.10"
REQUEST_TIMEOUT = 1.0


def stalled_body(served: Served, *, source: str = CLIENT) -> socket.socket:
    """A connection whose request announces a body of 1000 bytes, then sends none."""
    sock = connect(served, source=source)
    sock.sendall(f"POST /echo HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 1000\r\n\r\n".encode())
    return sock


def wait_reading(count: int) -> None:
    """Until the application has begun to read ``count`` bodies in all."""
    deadline = time.monotonic() + 10
    while len(READING) < count:
        assert time.monotonic() < deadline, (len(READING), count)
        time.sleep(0.01)


def test_requests_whose_bodies_never_arrive_make_room_for_a_client(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    # Headers in, body never: the application waits on it, but the request has not
    # arrived, so it serves nothing and holds its slot like an idle connection does.
    caplog.set_level(logging.WARNING, "watchkeep.servers")
    reading = len(READING)
    stalled = []
    try:
        for _ in range(LIMIT):
            stalled.append(stalled_body(served))
            wait_reading(reading + len(stalled))
        with connect(served) as client:
            get(client, "/hello")
            assert read_answer(client).startswith(b"HTTP/1.1 200 ")
        assert closed_by_server(stalled[0])
        assert (served.listener.evicted, served.listener.refused) == (1, 0)
    finally:
        for sock in stalled:
            sock.close()
    (line,) = [r.getMessage() for r in caplog.records if "make room" in r.getMessage()]
    assert "its request not received in full" in line, line


@pytest.fixture(params=["plaintext", "tls"])
def quick(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Served]:
    """A listener whose requests must arrive within REQUEST_TIMEOUT, at most 2 connections
    from one address."""
    limits = ListenerLimits(
        LIMIT,
        handshake_timeout=30,
        idle_timeout=60,
        request_timeout=REQUEST_TIMEOUT,
        max_connections_per_address=2,
    )
    with listening(tmp_path, request.param == "tls", limits) as served:
        yield served


def test_a_request_that_does_not_arrive_in_full_in_time_is_dropped_and_logged_once(
    quick: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "watchkeep.servers")
    stream = open_stream(quick)
    stalled = stalled_body(quick)
    slow = connect(quick, source=OTHER_CLIENT)
    try:
        # A head dribbled a byte at a time, each in time for the idle timeout, never in
        # time for the whole request; and a body that never comes.
        head = f"GET /hello HTTP/1.1\r\nHost: {HOST}\r\nX-Pad: {'a' * 200}\r\n\r\n".encode()
        deadline = time.monotonic() + REQUEST_TIMEOUT + 10
        with contextlib.suppress(ConnectionResetError, BrokenPipeError, ssl.SSLError):
            for byte in head:
                assert time.monotonic() < deadline, "the slow head was never cut off"
                slow.sendall(bytes([byte]))
                time.sleep(0.05)
        assert closed_by_server(slow)
        assert closed_by_server(stalled)
        assert quick.listener.timed_out == 2
        # A request that arrived in full is not timed: the stream outlives the timeout.
        assert still_streaming(stream)
    finally:
        for sock in (stream, stalled, slow):
            sock.close()
    lines = [r.getMessage() for r in caplog.records if "did not arrive in full" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "request_timeout" in lines[0], lines


def test_one_address_cannot_take_more_than_its_share_of_the_slots(
    quick: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "watchkeep.servers")
    other = connect(quick, source=OTHER_CLIENT)
    mine = [connect(quick) for _ in range(2)]
    wait_for_open(quick, 3)
    try:
        # A third connection from CLIENT takes the place of CLIENT's oldest, not of the
        # other address's (older still).
        with connect(quick) as third:
            get(third, "/hello")
            assert read_answer(third).startswith(b"HTTP/1.1 200 ")
        assert closed_by_server(mine[0])
        get(other, "/hello")
        assert read_answer(other).startswith(b"HTTP/1.1 200 ")
        # With both of CLIENT's slots serving streams, a third is refused; others are not.
        mine[1].close()
        streams = [open_stream(quick) for _ in range(2)]
        mine.extend(streams)
        assert refused_by_server(quick)
        get(other, "/hello")
        assert read_answer(other).startswith(b"HTTP/1.1 200 ")
        assert all(still_streaming(sock) for sock in streams)
    finally:
        for sock in [other, *mine]:
            sock.close()
    messages = [r.getMessage() for r in caplog.records]
    assert any("max_connections_per_address" in m and "make room" in m for m in messages)
    assert any("max_connections_per_address" in m and "refusing" in m for m in messages)


def test_a_client_reset_at_the_limit_is_told_so_not_that_its_certificate_is_refused(
    served: Served,
) -> None:
    # Every slot serves a stream: a new connection is reset before its handshake. The
    # management link's client (a recording server's heartbeat) must not read that as its
    # client certificate being refused.
    streams = [open_stream(served) for _ in range(LIMIT)]
    tls = served.client_context is not None
    endpoint = Endpoint("listener", HOST, ADDRESS, served.port, tls)

    async def call() -> ConnectionFailed:
        async with open_session({HOST: ADDRESS}, timeout=5) as session:
            try:
                await call_json(
                    session, endpoint, "GET", "/hello", ssl_context=served.client_context
                )
            except ConnectionFailed as exc:
                return exc
        raise AssertionError("the call went through a listener at its limit")

    try:
        failure = asyncio.run(call())
    finally:
        for sock in streams:
            sock.close()
    message = str(failure)
    assert "connection limit" in message, message
    assert "certificate" not in message, message
    assert "max_connections" in (failure.fix or ""), failure.fix


def test_anonymous_connections_give_way_before_one_with_a_site_client_certificate(
    tmp_path: Path,
) -> None:
    # The management API asks for client certificates (optional: browsers have none);
    # recording servers present theirs. Their idle keep-alive connection between two
    # heartbeats must outlast anonymous ones, however old and however recently active.
    limits = ListenerLimits(LIMIT, handshake_timeout=30, idle_timeout=60)
    with listening(tmp_path, True, limits, ClientAuth.OPTIONAL) as served:
        # A recording server's certificate (listening() issued it) as its client certificate.
        site_context = ssl.create_default_context(cafile=str(tmp_path / "ca" / "ca.pem"))
        site_context.load_cert_chain(
            tmp_path / f"recording-{HOST}.chain.pem", tmp_path / f"recording-{HOST}.key"
        )
        raw = socket.create_connection(
            (ADDRESS, served.port), timeout=10, source_address=(CLIENT, 0)
        )
        with site_context.wrap_socket(raw, server_hostname=HOST) as server_link:
            get(server_link, "/hello")
            assert read_answer(server_link).startswith(b"HTTP/1.1 200 ")
            anonymous = []
            try:
                for _ in range(LIMIT + 2):
                    anonymous.append(connect(served, source=OTHER_CLIENT))
                    get(anonymous[-1], "/hello")
                    assert read_answer(anonymous[-1]).startswith(b"HTTP/1.1 200 ")
                assert served.listener.evicted == 3
                # The site's server is still connected, and served on the same connection.
                get(server_link, "/hello")
                assert read_answer(server_link).startswith(b"HTTP/1.1 200 ")
            finally:
                for sock in anonymous:
                    sock.close()
