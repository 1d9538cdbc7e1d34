"""Helpers for the security and reliability tests (issue 7); fixtures are in conftest.py.

Every site is a `watchkeep.testing.LocalSite`: each server its own process on its own
127.x.y.z address and host name. The tests reach the servers as outsiders do: raw sockets,
the standard library's `http.client` over `ssl`, `openssl s_client`, sslyze (in its own
virtual environment), so that nothing they prove leans on watchkeep's own client code.
Hostile clients bind to an address of their own on the loopback network, so that what
the servers do to an attacker's address (rate limits) never touches the legitimate
clients of the same test run.

What any site's tests need (waiting with `eventually`, the management API as the
administrator, waiting until servers are online or encrypted) is in `watchkeep.testing`;
this module holds what only these tests use.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import itertools
import json
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from watchkeep.client import SiteClient
from watchkeep.media import DEFAULT_BOUNDARY, MultipartParser
from watchkeep.testing import LocalServer, LocalSite, eventually

DEADLINE = 30.0
PROBLEM_JSON = "application/problem+json"
# Small synthetic cameras keep a whole run cheap on two cores.
CAMERA = {"kind": "synthetic", "width": 320, "height": 180, "fps": 10.0, "target_bytes": 6000}
ATTACKER_HOST = 250  # hostile clients connect from NETWORK.250
# Short handshake timeouts let the tests watch half-open connections being dropped; the
# mobile server's small connection limit lets them reach it cheaply.
HANDSHAKE_TIMEOUT = 3
IDLE_TIMEOUT = 5
HANDSHAKE_TIMEOUT_OPTION = {"handshake_timeout": HANDSHAKE_TIMEOUT}
MOBILE_MAX_CONNECTIONS = 40


# -- laying out and running ---------------------------------------------------------------


def set_server_options(server: LocalServer, **options: Any) -> None:
    """Add settings to the [server] table of a server's config file (tls_policy, limits)."""
    lines = []
    for key, value in options.items():
        text = json.dumps(value) if isinstance(value, str) else str(value)
        lines.append(f"{key} = {text}")
    config = server.config.read_text()
    assert config.startswith("[server]\n"), config[:80]
    server.config.write_text(
        config.replace("[server]\n", "[server]\n" + "\n".join(lines) + "\n", 1)
    )


def add_camera(site: LocalSite, camera: str, server: str, **source: Any) -> None:
    added = site.api(
        "POST",
        "/api/v1/cameras",
        {"name": camera, "recording_server": server, "source": {**CAMERA, **source}},
    )
    assert added == {"name": camera, "recording_server": server}


def encrypt(site: LocalSite, *names: str) -> None:
    """Turn encryption on through the client library, as `watchkeep encryption enable`
    does, in the order given; return when each of those servers speaks TLS."""

    async def go() -> None:
        async with SiteClient(site.home) as client:
            for name in names:
                await client.set_encryption(name, True)

    asyncio.run(go())
    site.wait_encrypted(*names)


def camera_recorded(site: LocalSite, server: str, camera: str) -> bool:
    """Whether ``server`` records ``camera`` now (its status lists it with frames)."""
    rs = site.servers[server]
    status, _, body = http_request(
        rs, "data", "/api/v1/status", ca=site.home.ca_cert, token=site.stream_token(camera)
    )
    assert status == 200, body
    cams = {c["name"]: c for c in json.loads(body)["cameras"]}
    return camera in cams and cams[camera]["frames"] > 0


def assert_all_alive(site: LocalSite, *, figures: Figures | None = None) -> None:
    """Every started server process still runs (a dead one is a crash)."""
    dead = [
        f"{name} (status {s.process.returncode})"
        for name, s in site.servers.items()
        if s.process is not None and s.process.poll() is not None
    ]
    if figures is not None:
        figures.crashes += len(dead)
    assert not dead, f"server processes died: {dead}\n{site.log_tails()}"


def attacker_address(site: LocalSite, offset: int = 0) -> str:
    return f"{site.network}.{ATTACKER_HOST - offset}"


# -- HTTP(S) with the standard library ----------------------------------------------------


def connect(
    server: LocalServer,
    listener: str,
    *,
    ca: Path | None,
    source: str | None = None,
    timeout: float = DEADLINE,
    client_cert: tuple[Path, Path] | None = None,
) -> socket.socket:
    """A connection to a listener: TLS verified against ``ca`` (host name included) when
    ``ca`` is given, plaintext when None; from ``source`` when given."""
    sock = socket.create_connection(
        (server.address, server.ports[listener]),
        timeout=timeout,
        source_address=(source, 0) if source else None,
    )
    if ca is None:
        return sock
    context = ssl.create_default_context(cafile=str(ca))
    if client_cert is not None:
        context.load_cert_chain(str(client_cert[0]), str(client_cert[1]))
    return context.wrap_socket(sock, server_hostname=server.host)


def http_request(
    server: LocalServer,
    listener: str,
    path: str,
    *,
    ca: Path | None,
    token: str | None = None,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    source: str | None = None,
    timeout: float = DEADLINE,
    client_cert: tuple[Path, Path] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request; (status, headers with lower-case names, body)."""
    sock = connect(server, listener, ca=ca, source=source, timeout=timeout, client_cert=client_cert)
    connection = http.client.HTTPConnection(server.host, server.ports[listener], timeout=timeout)
    connection.sock = sock
    sent = dict(headers or {})
    if token:
        sent["Authorization"] = f"Bearer {token}"
    if body is not None:
        sent.setdefault("Content-Type", "application/json")
    try:
        connection.request(method, path, body=body, headers=sent)
        response = connection.getresponse()
        data = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data
    finally:
        connection.close()


def json_request(
    server: LocalServer, listener: str, path: str, body: Any, **kwargs: Any
) -> tuple[int, dict[str, str], bytes]:
    return http_request(
        server, listener, path, method="POST", body=json.dumps(body).encode(), **kwargs
    )


def problem_of(status: int, headers: dict[str, str], body: bytes) -> dict[str, Any]:
    """The RFC 9457 problem document of an error answer (asserts that it is one)."""
    assert headers.get("content-type", "").startswith(PROBLEM_JSON), (status, headers, body[:300])
    document: dict[str, Any] = json.loads(body)
    assert document["status"] == status, document
    return document


# -- a live viewer that must see no interruption -------------------------------------------


@dataclass
class SeenFrame:
    sequence: int
    timestamp: float
    size: int
    arrived: float  # time.monotonic() when its part was complete
    digest: str = ""  # SHA-256 of the JPEG bytes


@dataclass
class LiveViewer:
    """Watches a camera's live MJPEG stream in a thread, over verified TLS, and records
    every frame's sequence number, timestamp and size as it arrives."""

    server: LocalServer
    camera: str
    token: str
    ca: Path
    frames: list[SeenFrame] = field(default_factory=list)
    error: BaseException | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> LiveViewer:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        eventually(lambda: len(self.frames) >= 3, what=f"{self.camera}: the viewer's first frames")
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(DEADLINE)

    def _run(self) -> None:
        try:
            self._watch()
        except BaseException as exc:  # the test thread reads it: never lost in a thread
            if not self._stop.is_set():
                self.error = exc

    def _watch(self) -> None:
        path = f"/api/v1/cameras/{self.camera}/live.mjpeg"
        sock = connect(self.server, "data", ca=self.ca, timeout=5)
        with sock:
            sock.sendall(
                # HTTP/1.0: the parts come as they are, with no chunked framing between.
                f"GET {path} HTTP/1.0\r\nHost: {self.server.host}\r\n"
                f"Authorization: Bearer {self.token}\r\n\r\n".encode()
            )
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(4096)
                if not chunk:
                    raise ConnectionError("the stream closed before its headers")
                head += chunk
            head, _, rest = head.partition(b"\r\n\r\n")
            assert head.split(b"\r\n")[0].split(b" ")[1] == b"200", head
            parser = MultipartParser(DEFAULT_BOUNDARY)
            data = rest
            while not self._stop.is_set():
                for part in parser.feed(data):
                    self.frames.append(
                        SeenFrame(
                            int(part.headers["x-sequence"]),
                            float(part.headers["x-timestamp"]),
                            len(part.jpeg),
                            time.monotonic(),
                            hashlib.sha256(part.jpeg).hexdigest(),
                        )
                    )
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("the live stream ended")

    def mark(self) -> int:
        return len(self.frames)

    def assert_uninterrupted(self, since: int = 0, *, max_gap: float = 3.0) -> list[SeenFrame]:
        """Frames since ``since`` kept coming, in order and without a missing number."""
        assert self.error is None, f"the live viewer failed: {self.error!r}"
        seen = self.frames[since:]
        assert len(seen) >= 2, f"the viewer received {len(seen)} frames"
        sequences = [f.sequence for f in seen]
        gaps = [(a, b) for a, b in itertools.pairwise(sequences) if b != a + 1]
        assert not gaps, f"sequence gaps (before, after): {gaps}"
        stalls = [
            round(b.arrived - a.arrived, 2)
            for a, b in itertools.pairwise(seen)
            if b.arrived - a.arrived > max_gap
        ]
        assert not stalls, f"the stream stalled for {stalls} s"
        return seen


# -- figures of the run -------------------------------------------------------------------


@dataclass
class Figures:
    """What SECURITY.md reports from the last run (written to bench/results/security.json)."""

    endpoints_scanned: list[str] = field(default_factory=list)
    hostile_inputs: dict[str, int] = field(default_factory=dict)
    faults_injected: list[str] = field(default_factory=list)
    crashes: int = 0
    recording_bytes_lost: int | None = None
    recording_bytes_checked: int = 0
    notes: list[str] = field(default_factory=list)

    def hostile(self, kind: str, count: int = 1) -> None:
        self.hostile_inputs[kind] = self.hostile_inputs.get(kind, 0) + count

    def as_json(self) -> dict[str, Any]:
        return {
            "endpoints_scanned": len(self.endpoints_scanned),
            "endpoints": self.endpoints_scanned,
            "hostile_inputs_tried": sum(self.hostile_inputs.values()),
            "hostile_inputs": dict(sorted(self.hostile_inputs.items())),
            "faults_injected": len(self.faults_injected),
            "faults": self.faults_injected,
            "crashes": self.crashes,
            "recording_bytes_lost": self.recording_bytes_lost,
            "recording_bytes_checked": self.recording_bytes_checked,
            "notes": self.notes,
        }


def tracebacks(site: LocalSite) -> list[str]:
    return [name for name in site.servers if "Traceback" in site.log_text(name)]


def log_lines(site: LocalSite, name: str, pattern: str, start: int = 0) -> list[str]:
    return [
        line
        for line in site.log_text(name)[start:].splitlines()
        if re.search(pattern, line) is not None
    ]


@contextlib.contextmanager
def raw_socket(
    server: LocalServer, listener: str, *, source: str | None = None, timeout: float = 10.0
) -> Iterator[socket.socket]:
    sock = socket.create_connection(
        (server.address, server.ports[listener]),
        timeout=timeout,
        source_address=(source, 0) if source else None,
    )
    try:
        yield sock
    finally:
        sock.close()


def playback(
    site: LocalSite, server: str, camera: str, start: float, end: float, token: str
) -> list[SeenFrame]:
    """Every frame of ``camera`` recorded between ``start`` and ``end`` (UTC seconds), as
    the recording server plays it back; asserts the answer parses cleanly to its end."""
    rs = site.servers[server]
    path = f"/api/v1/cameras/{camera}/playback.mjpeg?from={start!r}&to={end!r}"
    status, _, body = http_request(rs, "data", path, ca=site.home.ca_cert, token=token)
    if status == 404 and json.loads(body).get("title") == "no recording":
        return []  # nothing recorded in the range
    assert status == 200, body[:300]
    parser = MultipartParser(DEFAULT_BOUNDARY)
    parts = parser.feed(body)
    assert parser.bad_parts == 0, f"{parser.bad_parts} bad parts in the playback"
    assert not parser.in_part, "the playback ends inside a part"
    return [
        SeenFrame(
            int(p.headers["x-sequence"]),
            float(p.headers["x-timestamp"]),
            len(p.jpeg),
            0.0,
            hashlib.sha256(p.jpeg).hexdigest(),
        )
        for p in parts
    ]
