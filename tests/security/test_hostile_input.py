"""Hostile input, and the servers keep serving.

Given the running encrypted site and a live viewer watching cam1 at rs1 all along, when
clients send what no honest peer sends (garbage and truncated TLS records, plaintext to
TLS ports and TLS to plaintext ones, idle and slow handshakes by the hundred, oversized
headers and bodies, malformed JSON and wrong types on every management route, path
traversal and absurd ranges in playback, forged, expired and other sites' tokens, log-in
guessing), then each gets a clear error (a 4xx problem document) or a closed connection,
every server process stays up, and the viewer sees every frame, in order, without a stall.

Hostile clients connect from an address of their own (NETWORK.250 and below), as an
attacker would, so that what the servers do to them never touches the legitimate clients.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import socket
import ssl
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from security_support import (
    HANDSHAKE_TIMEOUT,
    IDLE_TIMEOUT,
    MOBILE_MAX_CONNECTIONS,
    Figures,
    LiveViewer,
    assert_all_alive,
    attacker_address,
    http_request,
    json_request,
    log_lines,
    problem_of,
)

from watchkeep.servers._forwarded import CLIENT_HEADER, PROOF_HEADER
from watchkeep.servers._tokens import TokenSigner
from watchkeep.testing import LocalServer, LocalSite, eventually

TLS_ENDPOINTS = [("ms", "api"), ("rs1", "data"), ("rs1", "control"), ("mobile1", "https")]
IDLE_SOCKETS = 200


@pytest.fixture(scope="module")
def viewer(security_site: LocalSite) -> Iterator[LiveViewer]:
    """A legitimate live viewer of cam1 for the whole module."""
    rs1 = security_site.servers["rs1"]
    with LiveViewer(
        rs1, "cam1", security_site.stream_token("cam1"), security_site.home.ca_cert
    ) as watching:
        yield watching


@pytest.fixture(autouse=True)
def still_serving(security_site: LocalSite, viewer: LiveViewer, figures: Figures) -> Iterator[None]:
    """After each attack: every server runs, and the viewer saw no gap and no stall."""
    mark = viewer.mark()
    yield
    assert_all_alive(security_site, figures=figures)
    # Let a frame or two arrive after the attack, then judge everything since it began.
    eventually(lambda: viewer.mark() >= mark + 5, what="frames after the attack")
    viewer.assert_uninterrupted(mark)


def attacker(site: LocalSite) -> str:
    return attacker_address(site)


def ca(site: LocalSite) -> Path:
    return site.home.ca_cert


def client_hello(host: str) -> bytes:
    """The first flight of a real TLS client (a ClientHello record)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=host)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def closed_by_server(sock: socket.socket, within: float) -> bytes:
    """Wait until the server closes ``sock``; what it sent before (a TLS alert, say)."""
    sock.settimeout(within)
    received = b""
    deadline = time.monotonic() + within
    try:
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                return received
            received += chunk
    except ConnectionResetError:
        return received
    except TimeoutError:
        pass
    raise AssertionError(f"the server kept the connection open for {within} s: {received[:200]!r}")


def open_socket(server: LocalServer, listener: str, source: str) -> socket.socket:
    return socket.create_connection(
        (server.address, server.ports[listener]), timeout=10, source_address=(source, 0)
    )


def accepted_connections(server: LocalServer, listener: str, source: str) -> int:
    """How many connections from ``source`` to ``listener`` the server has accepted (taken
    from its listening socket's queue), as the kernel lists them: a connection still waiting
    in the queue has no file yet, so its inode reads 0 in /proc/net/tcp."""

    def hex_address(address: str) -> str:  # as /proc/net/tcp writes it: in host byte order
        return f"{int.from_bytes(socket.inet_aton(address), sys.byteorder):08X}"

    local = f"{hex_address(server.address)}:{server.ports[listener]:04X}"
    remote = hex_address(source) + ":"
    established = "01"
    return sum(
        1
        for fields in (line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:])
        if fields[1] == local
        and fields[2].startswith(remote)
        and fields[3] == established
        and fields[9] != "0"
    )


# -- the TLS layer --------------------------------------------------------------------------


def hostile_tls_openings(host: str) -> dict[str, bytes]:
    hello = client_hello(host)
    return {
        "random bytes": bytes(range(256)) * 4,
        "truncated ClientHello": hello[: len(hello) // 3],
        "ClientHello header only": hello[:5],
        "record claiming 16 KiB then nothing": b"\x16\x03\x01\x40\x00" + b"\x01" * 32,
        "ClientHello then garbage": hello + b"\xde\xad\xbe\xef" * 64,
        "oversized record length": b"\x16\x03\x03\xff\xff" + b"\x00" * 64,
        "alert record": b"\x15\x03\x03\x00\x02\x02\x28",
        "SSL 2.0 ClientHello": b"\x80\x2e\x01\x00\x02\x00\x15\x00\x00\x00\x10" + b"\x00" * 37,
    }


@pytest.mark.parametrize(("name", "listener"), TLS_ENDPOINTS)
def test_garbage_and_truncated_tls_records_get_a_closed_connection(
    security_site: LocalSite, figures: Figures, name: str, listener: str
) -> None:
    server = security_site.servers[name]
    for kind, opening in hostile_tls_openings(server.host).items():
        with open_socket(server, listener, attacker(security_site)) as sock:
            sock.sendall(opening)
            # Then the server answers with at most a TLS alert and closes, by the handshake
            # timeout at the latest (a truncated hello waits for the rest until then).
            reply = closed_by_server(sock, HANDSHAKE_TIMEOUT + 5)
            assert b"HTTP/" not in reply, (kind, reply[:100])
            assert not reply or reply[0] == 0x15, (kind, reply[:20])  # nothing but an alert
        figures.hostile(f"TLS garbage ({kind})")


@pytest.mark.parametrize(("name", "listener"), TLS_ENDPOINTS)
def test_plaintext_http_to_a_tls_port_gets_a_closed_connection(
    security_site: LocalSite, figures: Figures, name: str, listener: str
) -> None:
    server = security_site.servers[name]
    with open_socket(server, listener, attacker(security_site)) as sock:
        sock.sendall(f"GET / HTTP/1.1\r\nHost: {server.host}\r\n\r\n".encode())
        reply = closed_by_server(sock, HANDSHAKE_TIMEOUT + 5)
    assert b"HTTP/" not in reply, reply[:100]
    figures.hostile("plaintext HTTP to a TLS port")


def test_tls_to_the_plaintext_port_is_refused(security_site: LocalSite, figures: Figures) -> None:
    # The mobile server's http listener stays plaintext (it redirects to https).
    mobile1 = security_site.servers["mobile1"]
    sock = open_socket(mobile1, "http", attacker(security_site))
    context = ssl.create_default_context(cafile=str(ca(security_site)))
    with pytest.raises(ssl.SSLError, match=r"WRONG_VERSION_NUMBER|wrong version number"):
        context.wrap_socket(sock, server_hostname=mobile1.host)
    sock.close()
    figures.hostile("TLS to a plaintext port")
    status, headers, _ = http_request(mobile1, "http", "/", ca=None)
    assert status == 301, (status, headers)
    assert headers["location"].startswith("https://"), headers


def test_idle_and_slow_handshakes_are_dropped_at_the_handshake_timeout(
    security_site: LocalSite, figures: Figures
) -> None:
    rs1 = security_site.servers["rs1"]
    hello = client_hello(rs1.host)
    idle = [open_socket(rs1, "data", attacker(security_site)) for _ in range(5)]
    slow = open_socket(rs1, "data", attacker(security_site))
    started = time.monotonic()
    try:
        # A slow client dribbles its ClientHello, a byte every 0.2 s: it never finishes
        # within the timeout, and neither do the idle ones.
        for byte in hello[: int(HANDSHAKE_TIMEOUT / 0.2) + 10]:
            try:
                slow.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.2)
        for sock in [*idle, slow]:
            closed_by_server(sock, HANDSHAKE_TIMEOUT + 5)
        elapsed = time.monotonic() - started
        assert HANDSHAKE_TIMEOUT - 0.5 <= elapsed <= HANDSHAKE_TIMEOUT + 8, elapsed
    finally:
        for sock in [*idle, slow]:
            sock.close()
    figures.hostile("idle half-open connection", len(idle))
    figures.hostile("slow handshake")


@pytest.mark.parametrize(("name", "listener"), TLS_ENDPOINTS)
def test_a_connection_idle_after_its_handshake_is_closed_at_the_idle_timeout(
    security_site: LocalSite, figures: Figures, name: str, listener: str
) -> None:
    server = security_site.servers[name]
    ms = security_site.management
    context = ssl.create_default_context(cafile=str(ca(security_site)))
    if listener == "control":
        context.load_cert_chain(str(ms.chain), str(ms.key))
    sock = open_socket(server, listener, attacker(security_site))
    started = time.monotonic()
    with context.wrap_socket(sock, server_hostname=server.host) as tls:
        # A handshake, then not one byte of a request: closed once idle_timeout passes.
        tls.settimeout(IDLE_TIMEOUT + 10)
        with contextlib.suppress(ConnectionResetError, ssl.SSLError):
            assert tls.recv(1024) == b""
    assert IDLE_TIMEOUT - 1 <= time.monotonic() - started <= IDLE_TIMEOUT + 8
    figures.hostile("idle connection after its handshake")


@pytest.mark.parametrize(
    ("name", "listener", "path"),
    [("rs1", "data", "/api/v1/status"), ("ms", "api", "/api/v1/site/status")],
)
def test_a_normal_client_is_served_while_200_idle_sockets_sit_on_the_port(
    security_site: LocalSite, figures: Figures, name: str, listener: str, path: str
) -> None:
    server = security_site.servers[name]
    token = security_site.stream_token("cam1") if name == "rs1" else security_site.login_token()
    idle = [open_socket(server, listener, attacker(security_site)) for _ in range(IDLE_SOCKETS)]
    try:
        started = time.monotonic()
        status, _, body = http_request(
            server, listener, path, ca=ca(security_site), token=token, timeout=10
        )
        took = time.monotonic() - started
        assert status == 200, body[:300]
        # Served at once, not after the idle sockets were dropped at the handshake timeout.
        assert took < HANDSHAKE_TIMEOUT, took
    finally:
        for sock in idle:
            sock.close()
    figures.hostile("idle socket beside a normal client", IDLE_SOCKETS)


def test_idle_connections_holding_every_slot_make_room_for_a_client_and_it_is_logged(
    security_site: LocalSite, figures: Figures
) -> None:
    mobile1 = security_site.servers["mobile1"]
    log_start = len(security_site.log_text("mobile1"))
    idle = [
        open_socket(mobile1, "https", attacker(security_site))
        for _ in range(MOBILE_MAX_CONNECTIONS)
    ]
    try:
        eventually(
            lambda: (
                accepted_connections(mobile1, "https", attacker(security_site))
                >= MOBILE_MAX_CONNECTIONS
            ),
            what=f"mobile1 accepting the {MOBILE_MAX_CONNECTIONS} idle connections",
        )
        # A client arriving now takes the place of the oldest idle socket, at once (not
        # after the handshake timeout frees a slot).
        started = time.monotonic()
        status, _, body = http_request(mobile1, "https", "/healthz", ca=ca(security_site))
        assert status == 200, body[:300]
        assert time.monotonic() - started < HANDSHAKE_TIMEOUT / 2
        closed_by_server(idle[0], 2.0)
        line = eventually(
            lambda: log_lines(security_site, "mobile1", "to make room", log_start),
            what="mobile1 logging its connection limit",
        )[0]
        assert f"connection limit ({MOBILE_MAX_CONNECTIONS} open)" in line, line
        assert "max_connections" in line, line
    finally:
        for sock in idle:
            sock.close()
    figures.hostile("idle connections holding every slot")


# -- the HTTP layer -------------------------------------------------------------------------


def raw_exchange(server: LocalServer, listener: str, request: bytes, site: LocalSite) -> bytes:
    """Send ``request`` as it is over verified TLS; everything the server answers."""
    context = ssl.create_default_context(cafile=str(ca(site)))
    sock = open_socket(server, listener, attacker(site))
    with context.wrap_socket(sock, server_hostname=server.host) as tls:
        with contextlib.suppress(ConnectionResetError, BrokenPipeError, ssl.SSLError):
            tls.sendall(request)
        tls.settimeout(10)
        received = b""
        with contextlib.suppress(ConnectionResetError, ssl.SSLError, TimeoutError):
            while chunk := tls.recv(65536):
                received += chunk
                if b"\r\n\r\n" in received and b"Connection: close" not in received:
                    break
        return received


def status_of(reply: bytes) -> int:
    assert reply.startswith(b"HTTP/1."), reply[:200]
    return int(reply.split(b" ", 2)[1])


@pytest.mark.parametrize(
    ("name", "listener"), [("ms", "api"), ("rs1", "data"), ("mobile1", "https")]
)
def test_oversized_headers_and_bodies_are_refused(
    security_site: LocalSite, figures: Figures, name: str, listener: str
) -> None:
    server = security_site.servers[name]
    host = server.host.encode()
    cases = {
        "a 64 KiB header line": b"GET / HTTP/1.1\r\nHost: %b\r\nX-Big: %b\r\n\r\n"
        % (host, b"a" * 65536),
        "1000 headers": b"GET / HTTP/1.1\r\nHost: %b\r\n%b\r\n"
        % (host, b"".join(b"X-H%d: v\r\n" % i for i in range(1000))),
        "a 64 KiB request line": b"GET /%b HTTP/1.1\r\nHost: %b\r\n\r\n" % (b"a" * 65536, host),
    }
    for kind, request in cases.items():
        status = status_of(raw_exchange(server, listener, request, security_site))
        assert 400 <= status < 500, (kind, status)
        figures.hostile(f"oversized ({kind})")


def test_an_oversized_body_is_a_413_problem(security_site: LocalSite, figures: Figures) -> None:
    ms = security_site.servers["ms"]
    body = b'{"user": "' + b"a" * (2 << 20) + b'", "password": "x"}'
    status, headers, reply = http_request(
        ms, "api", "/api/v1/login", ca=ca(security_site), method="POST", body=body,
        source=attacker(security_site),
    )  # fmt: skip
    assert status == 413, reply[:300]
    problem_of(status, headers, reply)
    figures.hostile("oversized body")


# Every state-changing management route, aimed so that no body, however valid, can change
# the shared site: an unknown server for encryption, an unregistered name for heartbeats.
MS_POST_ROUTES = [
    "/api/v1/login",
    "/api/v1/servers/no-such-server/encryption",
    "/api/v1/servers/intruder/heartbeat",
    "/api/v1/cameras",
    "/api/v1/users",
]
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = ["user", "password", "enabled", "name", "recording_server", "source", "role",
          "cameras", "host", "address", "ports", "readiness", "registration_key", "kind"]  # fmt: skip
NASTY_BODIES = [
    b"[" * 100_000 + b"]" * 100_000,  # nesting deeper than any parser's recursion
    b'{"user": ' * 50_000 + b"1" + b"}" * 50_000,
    b"NaN",
    b'{"enabled": Infinity, "ports": {"data": Infinity}, "role": "recording"}',
    b'{"role": "recording", "host": "a.b", "address": "x", "ports": {"data": 1e400}}',
    b'{"user": "\xff\xfe", "password": "x"}',  # not UTF-8
    b'{"name": 1' + b"0" * 5000 + b"}",  # more digits than int() takes
    b"",
]
BODIES = st.one_of(
    st.binary(max_size=200),
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES, max_size=6).map(
        lambda v: json.dumps(v).encode()
    ),
    st.sampled_from(NASTY_BODIES),
)


@pytest.fixture(scope="module")
def admin_token(security_site: LocalSite) -> str:
    return security_site.login_token()


@pytest.fixture
def cam1_token(security_site: LocalSite) -> str:
    """The administrator's stream token for cam1 (good at rs1 only)."""
    return security_site.stream_token("cam1")


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(route=st.sampled_from(MS_POST_ROUTES), body=BODIES, content_type=st.sampled_from(
    ["application/json", "text/plain", "application/x-www-form-urlencoded"]))  # fmt: skip
def test_malformed_json_and_wrong_types_on_every_route_are_4xx_problems(
    security_site: LocalSite, figures: Figures, admin_token: str, route: str, body: bytes,
    content_type: str,
) -> None:  # fmt: skip
    with contextlib.suppress(ValueError, RecursionError):
        decoded = json.loads(body)
        # A body that could really add a camera to the shared site is not hostile input.
        assume(not (isinstance(decoded, dict) and decoded.get("recording_server") == "rs1"))
    ms = security_site.servers["ms"]
    status, headers, reply = http_request(
        ms, "api", route, ca=ca(security_site), method="POST", body=body, token=admin_token,
        headers={"Content-Type": content_type}, source=attacker(security_site),
    )  # fmt: skip
    figures.hostile("malformed body on a management route")
    if status == 201 and route == "/api/v1/users":
        return  # a valid user by chance: not an error, and harmless
    assert 400 <= status < 500, (route, body[:100], status, reply[:300])
    problem_of(status, headers, reply)


@pytest.mark.parametrize("route", MS_POST_ROUTES)
def test_the_nastiest_bodies_on_every_route_are_4xx_problems(
    security_site: LocalSite, figures: Figures, admin_token: str, route: str
) -> None:
    ms = security_site.servers["ms"]
    for body in NASTY_BODIES:
        status, headers, reply = http_request(
            ms, "api", route, ca=ca(security_site), method="POST", body=body, token=admin_token,
            source=attacker(security_site),
        )  # fmt: skip
        assert 400 <= status < 500, (route, body[:60], status, reply[:300])
        problem_of(status, headers, reply)
        figures.hostile("malformed body on a management route")


def test_malformed_log_ins_through_the_mobile_server_are_4xx_problems(
    security_site: LocalSite, figures: Figures
) -> None:
    mobile1 = security_site.servers["mobile1"]
    for body in (b"not json", b"[" * 100_000 + b"]" * 100_000, b'{"user": 1}', b"[]"):
        status, headers, reply = http_request(
            mobile1, "https", "/api/v1/login", ca=ca(security_site), method="POST", body=body,
            source=attacker(security_site),
        )  # fmt: skip
        assert 400 <= status < 500, (body[:40], status, reply[:300])
        problem_of(status, headers, reply)
        figures.hostile("malformed log-in through the mobile server")


# -- playback -------------------------------------------------------------------------------

TRAVERSALS = [
    "..%2F..%2F..%2Fetc%2Fpasswd",
    "..%2Fms%2Fdata%2Ftoken.key",
    "%2E%2E",
    "cam1%00",
    "cam1%2F..%2F..%2Findex.db",
    "a" * 300,
]
ABSURD_RANGES = [
    "from=nan&to=nan",
    "from=0&to=inf",
    "from=-inf&to=0",
    "from=-1e308&to=1e308",
    "from=100&to=50",
    "from=0&to=1e12",
    "from=abc&to=def",
    "from=1e999&to=2e999",
    "to=5",
    "",
]


def test_path_traversal_in_playback_and_live_finds_nothing(
    security_site: LocalSite, figures: Figures, cam1_token: str
) -> None:
    rs1 = security_site.servers["rs1"]
    now = time.time()
    for name in TRAVERSALS:
        for path in (
            f"/api/v1/cameras/{name}/playback.mjpeg?from={now - 60}&to={now}",
            f"/api/v1/cameras/{name}/live.mjpeg",
            f"/api/v1/cameras/{name}/snapshot.jpg",
            f"/api/v1/cameras/../../../../etc/passwd?from=0&to=1{name}",
        ):
            status, _, reply = http_request(
                rs1, "data", path, ca=ca(security_site), token=cam1_token,
                source=attacker(security_site),
            )  # fmt: skip
            assert 400 <= status < 500, (path, status, reply[:300])
            assert b"root:" not in reply
            assert b"PRIVATE KEY" not in reply
            assert b"\xff\xd8" not in reply, path  # no JPEG bytes either
            figures.hostile("path traversal")


def test_absurd_playback_ranges_are_400_problems(
    security_site: LocalSite, figures: Figures, cam1_token: str
) -> None:
    rs1 = security_site.servers["rs1"]
    for query in ABSURD_RANGES:
        status, headers, reply = http_request(
            rs1, "data", f"/api/v1/cameras/cam1/playback.mjpeg?{query}", ca=ca(security_site),
            token=cam1_token, source=attacker(security_site),
        )  # fmt: skip
        assert status == 400, (query, status, reply[:300])
        problem_of(status, headers, reply)
        figures.hostile("absurd playback range")


# -- tokens ---------------------------------------------------------------------------------


def _unsigned(claims: dict[str, Any], alg: str, key: bytes = b"") -> str:
    """A token with ``claims`` under the header algorithm ``alg`` (none, or HMAC keyed with
    ``key``): what an attacker makes when a verifier lets the token choose its algorithm."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": alg, "typ": "watchkeep-user+jwt"}).encode())
    body = b64(json.dumps(claims).encode())
    signing = f"{head}.{body}".encode()
    mac = hmac.new(key, signing, hashlib.sha256).digest() if alg == "HS256" else b""
    return f"{head}.{body}.{b64(mac)}"


def hostile_tokens(site: LocalSite, tmp_path: Path, server: str) -> dict[str, str]:
    """Tokens ``server`` must refuse with 401, each made from one it accepts."""
    own = TokenSigner.load_or_create(site.management.directory / "data" / "token.key")
    # Another site's management server: its own key, made the way every MS makes one.
    other = TokenSigner.load_or_create(tmp_path / "other-site-token.key")
    if server == "rs1":
        scope, audience, real = "stream", "rs1", site.stream_token("cam1")
        claims: dict[str, Any] = {"cameras": ["cam1"], "sid": "s"}
    else:
        scope, audience, real = "user", server, site.login_token(via="mobile1")
        claims = {"role": "administrator", "cameras": "*"}
    head, body, signature = real.split(".")
    public = own.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    payload = json.loads(base64.urlsafe_b64decode(body + "=="))
    return {
        "garbage": "not-a-token",
        "empty signature": f"{head}.{body}.",
        "no signature": f"{head}.{body}",
        "forged claims": own.issue("admin", scope, audience, 600, **claims)[:-4] + "AAAA",
        "signature of another token": ".".join(
            [*own.issue("mallory", scope, audience, 600, **claims).split(".")[:2], signature]
        ),
        # One token, one spelling: padding or anything appended is not skipped over
        "padded": real + "==",
        "junk appended": real + "!:",
        "expired": own.issue("admin", scope, audience, -60, **claims),
        "control scope": own.issue("ms", "control", audience, 600),
        "for another server": own.issue("admin", scope, "rs9", 600, **claims),
        "another site's": other.issue("admin", scope, audience, 600, **claims),
        # The algorithm is the verifier's choice, never the token's (RFC 8725)
        "alg none": _unsigned(payload, "none"),
        "HMAC keyed with the public key": _unsigned(payload, "HS256", public),
    }


def test_forged_expired_and_other_sites_tokens_are_401_everywhere(
    security_site: LocalSite, figures: Figures, tmp_path: Path
) -> None:
    ms, rs1, mobile1 = (security_site.servers[n] for n in ("ms", "rs1", "mobile1"))
    targets = [
        (ms, "api", "/api/v1/site/status"),
        (rs1, "data", "/api/v1/status"),
        (rs1, "data", "/api/v1/cameras/cam1/live.mjpeg"),
        (rs1, "data", "/api/v1/cameras/cam1/snapshot.jpg"),
        (mobile1, "https", "/api/v1/cameras"),
        (mobile1, "https", "/api/v1/cameras/cam1/snapshot.jpg"),
    ]
    tokens = {s: hostile_tokens(security_site, tmp_path, s) for s in ("ms", "rs1", "mobile1")}
    for server, listener, path in targets:
        for kind, token in tokens[server.name].items():
            status, headers, reply = http_request(
                server, listener, path, ca=ca(security_site), token=token,
                source=attacker(security_site),
            )  # fmt: skip
            assert status == 401, (kind, server.name, path, status, reply[:300])
            assert problem_of(status, headers, reply)["code"] == "auth.token"
            figures.hostile(f"bad token ({kind})")


def test_a_token_with_a_line_break_in_the_query_is_refused_by_the_relay(
    security_site: LocalSite, figures: Figures
) -> None:
    # When a browser-style request puts a real token with CRLF after it in the query
    mobile1 = security_site.servers["mobile1"]
    token = security_site.login_token(via="mobile1")
    for suffix in ("%0D%0A", "%0D%0AX-Injected:%201", "%00"):
        path = f"/api/v1/cameras/cam1/snapshot.jpg?token={token}{suffix}"
        status, headers, reply = http_request(
            mobile1, "https", path, ca=ca(security_site), source=attacker(security_site)
        )
        # Then the mobile server refuses the token (401), it does not answer 500
        assert status == 401, (suffix, status, reply[:300])
        assert problem_of(status, headers, reply)["code"] == "auth.token"
        figures.hostile("token with a line break")


def test_a_user_token_does_not_open_the_control_link(
    security_site: LocalSite, figures: Figures, admin_token: str
) -> None:
    rs1, ms = security_site.servers["rs1"], security_site.management
    status, headers, reply = json_request(
        rs1, "control", "/control/v1/config", {"cameras": []}, ca=ca(security_site),
        token=admin_token, client_cert=(ms.chain, ms.key),
    )  # fmt: skip
    assert status == 401, reply[:300]
    # nor does a stream token for rs1
    status, headers, reply = json_request(
        rs1, "control", "/control/v1/config", {"cameras": []}, ca=ca(security_site),
        token=security_site.stream_token("cam1"), client_cert=(ms.chain, ms.key),
    )  # fmt: skip
    assert status == 401, reply[:300]
    assert problem_of(status, headers, reply)["code"] == "auth.token"
    figures.hostile("user token on the control link")


# -- log-in guessing ------------------------------------------------------------------------


def login(
    site: LocalSite,
    user: str,
    password: str,
    source: str,
    *,
    through: str = "ms",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """A log-in at the management server, or ``through`` the mobile server (mobile1)."""
    server = site.servers[through]
    listener = "api" if through == "ms" else "https"
    status, answer, reply = json_request(
        server, listener, "/api/v1/login", {"user": user, "password": password},
        ca=ca(site), source=source, headers=headers,
    )  # fmt: skip
    return status, json.loads(reply), answer


def test_guessing_one_account_is_slowed_down_whatever_the_address(
    security_site: LocalSite, figures: Figures
) -> None:
    password = "victim-password-1234"
    security_site.api(
        "POST",
        "/api/v1/users",
        {"name": "victim", "password": password, "role": "operator"},
    )
    log_start = len(security_site.log_text("ms"))
    # Five guesses from five addresses: each a plain 401.
    for n in range(5):
        status, document, _ = login(
            security_site, "victim", f"guess-{n}", attacker_address(security_site, 10 + n)
        )
        assert (status, document["code"]) == (401, "auth.login"), document
    figures.hostile("log-in guess", 5)
    # Then the account is shut out for a while, from any address, even with the right
    # password: a 429 problem that says when to come back.
    status, document, headers = login(
        security_site, "victim", password, attacker_address(security_site, 20)
    )
    assert (status, document["code"]) == (429, "auth.login_rate"), document
    assert int(headers["retry-after"]) >= 1
    assert document["retry_after"] >= 1
    figures.hostile("log-in guess")
    # and says so in its log, naming the account.
    line = eventually(
        lambda: log_lines(security_site, "ms", "log-in rate limit", log_start), what="ms log line"
    )[0]
    assert "'victim'" in line, line
    # Other accounts are not affected,
    assert security_site.login_token()
    # and once the back-off has passed, the right password works (and clears the count).
    time.sleep(int(headers["retry-after"]) + 0.2)
    home = attacker_address(security_site, 21)
    status, document, _ = login(security_site, "victim", password, home)
    assert status == 200, document
    # Guessing again from elsewhere shuts out log-ins from elsewhere only: the address the
    # user logs in from is not locked out by it ("smart lockout")
    for n in range(6):
        status, document, _ = login(
            security_site, "victim", f"again-{n}", attacker_address(security_site, 10 + n)
        )
        assert status in (401, 429), document
    figures.hostile("log-in guess", 6)
    status, document, _ = login(
        security_site, "victim", password, attacker_address(security_site, 22)
    )
    assert (status, document["code"]) == (429, "auth.login_rate"), document
    status, document, _ = login(security_site, "victim", password, home)
    assert status == 200, document


def test_guessing_from_one_address_is_slowed_down_whatever_the_account(
    security_site: LocalSite, figures: Figures
) -> None:
    source = attacker_address(security_site, 30)
    for n in range(20):
        status, document, _ = login(security_site, f"nobody-{n}", "guess", source)
        assert status == 401, document
    figures.hostile("log-in guess", 20)
    status, document, headers = login(security_site, "someone-else", "guess", source)
    assert (status, document["code"]) == (429, "auth.login_rate"), document
    assert "retry-after" in headers
    figures.hostile("log-in guess")
    # A legitimate client at another address logs in as usual meanwhile.
    assert security_site.login_token()


def test_guessing_through_the_mobile_server_slows_the_guesser_not_its_other_users(
    security_site: LocalSite, figures: Figures
) -> None:
    password = "mobile-user-password-1234"
    security_site.api(
        "POST", "/api/v1/users", {"name": "mobile-user", "password": password, "role": "operator"}
    )
    guesser = attacker_address(security_site, 40)
    # The guesser names another client, as a relay would: the management server believes
    # only the mobile server, whose claim is proven with the site's registration key.
    forged = {CLIENT_HEADER: attacker_address(security_site, 42), PROOF_HEADER: "0:00"}
    for n in range(20):
        status, document, _ = login(
            security_site, f"nobody-m{n}", "guess", guesser, through="mobile1", headers=forged
        )
        assert (status, document["code"]) == (401, "auth.login"), document
    figures.hostile("log-in guess through the mobile server", 20)
    status, document, headers = login(
        security_site, "anyone-m", "guess", guesser, through="mobile1"
    )
    assert (status, document["code"]) == (429, "auth.login_rate"), document
    assert int(headers["retry-after"]) >= 1
    assert document["retry_after"] >= 1
    # Another mobile user, at another address, logs in through the same mobile server.
    other = attacker_address(security_site, 41)
    status, document, _ = login(security_site, "mobile-user", password, other, through="mobile1")
    assert status == 200, document
    # A client that names itself to the management server directly is not believed.
    status, document, _ = login(security_site, "nobody-direct", "guess", other)
    assert status == 401, document
    forged = {CLIENT_HEADER: guesser, PROOF_HEADER: f"{time.time():.0f}:{'0' * 64}"}
    status, document, _ = login(security_site, "mobile-user", password, other, headers=forged)
    assert status == 200, document
