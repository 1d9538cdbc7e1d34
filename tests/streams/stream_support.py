"""Helpers for the end-to-end data stream tests (issue 4); fixtures are in conftest.py.

Every site is a `watchkeep.testing.LocalSite`: each server its own process on its own
127.x.y.z address and host name. Tests reach the servers three ways: through the client
library (`watchkeep.client`, as the CLI and the Smart Client do), through the CLI as a
subprocess, and through clients that owe nothing to watchkeep (the standard library's
`http.client` over `ssl`, `curl`, Chromium), so that a bug shared by our client and our
servers cannot hide itself.

What any site's tests need (waiting with `eventually`, the management API as the
administrator, waiting until servers are online or encrypted) is in `watchkeep.testing`;
this module holds what only these tests use.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import itertools
import json
import os
import socket
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp

from watchkeep.client import SiteClient, SiteConnection
from watchkeep.client._video import stream_frames
from watchkeep.errors import ApiError
from watchkeep.media import DEFAULT_BOUNDARY, Frame, MjpegPart, MultipartParser
from watchkeep.servers._tokens import TokenSigner
from watchkeep.site import ServerRole
from watchkeep.testing import LocalServer, LocalSite

# Generous: a loaded 2-core machine may take several seconds to start a Python process.
DEADLINE = 30.0
# Small synthetic cameras keep a whole run cheap on two cores.
CAMERA_SIZE = "320x180@10"
FRAME_BYTES = 6000
JPEG_SOI = b"\xff\xd8"
JPEG_EOI = b"\xff\xd9"
PROBLEM_JSON = "application/problem+json"


# -- laying out and running ---------------------------------------------------------------


def build_site(site: LocalSite, servers: list[tuple[str, ServerRole]], **options: Any) -> None:
    """Lay out, start and register the servers (the management server first in the list)."""
    for name, role in servers:
        site.add_server(name, role, **options.get(name, {}))
    site.start_all()


# -- the CLI and the management API, as an administrator ----------------------------------


def cli_ok(site: LocalSite, *args: str) -> str:
    ran = site.cli(*args)
    assert ran.returncode == 0, f"watchkeep {' '.join(args)}: {ran.stderr}"
    return ran.stdout


def add_camera(site: LocalSite, camera: str, server: str) -> None:
    """Add a small synthetic camera with the CLI, as an administrator would."""
    added = json.loads(
        cli_ok(
            site,
            "camera",
            "add",
            camera,
            "--recording-server",
            server,
            "--synthetic",
            CAMERA_SIZE,
            "--frame-bytes",
            str(FRAME_BYTES),
            "--json",
        )
    )
    assert added == {"name": camera, "recording_server": server}


def add_user(site: LocalSite, name: str, role: str, cameras: list[str] | None) -> Path:
    """Create a user as the administrator; the file holding its password."""
    password = f"{name}-password-{os.urandom(6).hex()}"
    created = site.api(
        "POST",
        "/api/v1/users",
        {"name": name, "password": password, "role": role, "cameras": cameras},
    )
    assert created == {"name": name, "role": role, "cameras": cameras}
    path = site.root / f"{name}-password"
    path.write_text(password + "\n")
    path.chmod(0o600)
    return path


def connection_as(site: LocalSite, user: str, password_file: Path) -> SiteConnection:
    return replace(SiteConnection.load(site.home), user=user, password_file=str(password_file))


def management_signer(site: LocalSite) -> TokenSigner:
    """The management server's own token key (to sign expired or wrong-scope tokens)."""
    path = site.management.directory / "data" / "token.key"
    assert path.exists(), f"{path} is missing: where does the management server keep its key?"
    return TokenSigner.load_or_create(path)


# -- HTTP(S) with the standard library: a client that owes nothing to watchkeep -----------


@contextlib.contextmanager
def request(
    server: LocalServer,
    listener: str,
    path: str,
    *,
    ca: Path | None,
    token: str | None = None,
    method: str = "GET",
    body: Any = None,
) -> Iterator[http.client.HTTPResponse]:
    """One request to a listener at the server's address, under its host name; TLS
    verified against ``ca`` (host name included) when ``ca`` is given, plaintext if None."""
    port = server.ports[listener]
    sock: socket.socket = socket.create_connection((server.address, port), timeout=DEADLINE)
    if ca is not None:
        sock = ssl.create_default_context(cafile=str(ca)).wrap_socket(
            sock, server_hostname=server.host
        )
    connection = http.client.HTTPConnection(server.host, port, timeout=DEADLINE)
    connection.sock = sock
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    payload = None
    if body is not None:
        payload = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    try:
        connection.request(method, path, body=payload, headers=headers)
        yield connection.getresponse()
    finally:
        connection.close()


def read_problem(response: http.client.HTTPResponse, status: int) -> dict[str, Any]:
    """The RFC 9457 problem document of an error answer; asserts that it carries no video."""
    body = response.read()
    assert response.status == status, f"HTTP {response.status}, wanted {status}: {body[:300]!r}"
    assert response.getheader("Content-Type", "").startswith(PROBLEM_JSON), body[:300]
    assert JPEG_SOI not in body, "an error answer carried JPEG bytes"
    document: dict[str, Any] = json.loads(body)
    assert document["status"] == status, document
    return document


def read_parts(response: http.client.HTTPResponse, count: int) -> list[MjpegPart]:
    """The first ``count`` JPEG parts of an MJPEG answer."""
    assert response.status == 200, response.read()[:300]
    content_type = response.getheader("Content-Type", "")
    assert content_type == f"multipart/x-mixed-replace; boundary={DEFAULT_BOUNDARY}", content_type
    parser = MultipartParser(DEFAULT_BOUNDARY)
    parts: list[MjpegPart] = []
    while len(parts) < count:
        chunk = response.read1(65536)
        assert chunk, f"the stream ended after {len(parts)} parts"
        parts += parser.feed(chunk)
    assert parser.bad_parts == 0
    return parts[:count]


def parse_mjpeg_file(path: Path) -> list[MjpegPart]:
    parser = MultipartParser(DEFAULT_BOUNDARY)
    parts = parser.feed(path.read_bytes())
    assert parser.bad_parts == 0, f"{path}: {parser.bad_parts} bad parts"
    assert not parser.in_part, f"{path} ends inside a part"
    return parts


def assert_frame_from(camera: str, sequence: int, jpeg: bytes) -> None:
    """The JPEG is a whole picture of ``camera`` whose own comment carries ``sequence``:
    the header that came with it and the picture agree."""
    assert jpeg.startswith(JPEG_SOI), jpeg[:16]
    assert jpeg.endswith(JPEG_EOI), jpeg[-16:]
    assert b"watchkeep camera=%b seq=%d ts=" % (camera.encode(), sequence) in jpeg


def assert_contiguous(sequences: list[int]) -> None:
    gaps = [(a, b) for a, b in itertools.pairwise(sequences) if b != a + 1]
    assert not gaps, f"sequence gaps (before, after): {gaps}"


# -- the client library's view of a camera ------------------------------------------------


@contextlib.asynccontextmanager
async def camera_stream(
    client: SiteClient, camera: str, path: str
) -> AsyncIterator[AsyncIterator[Frame]]:
    """The frames of one stream of ``camera`` from the server that records it now, through
    the client library (verified TLS when that server is encrypted)."""
    access = await client.stream_access(camera)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(resolver=client.resolver()),
        timeout=aiohttp.ClientTimeout(connect=DEADLINE, sock_read=DEADLINE),
    ) as session:
        yield stream_frames(client, access, path, session)


async def live_frames(client: SiteClient, camera: str, count: int) -> list[Frame]:
    frames: list[Frame] = []
    async with camera_stream(client, camera, f"/api/v1/cameras/{camera}/live.mjpeg") as stream:
        async for frame in stream:
            frames.append(frame)
            if len(frames) == count:
                break
    return frames


async def playback_frames(client: SiteClient, camera: str, start: float, end: float) -> list[Frame]:
    """The frames recorded in ``[start, end)``; none when the recording server answers
    that it recorded nothing then (404 "no recording")."""
    path = f"/api/v1/cameras/{camera}/playback.mjpeg?from={start!r}&to={end!r}"
    try:
        async with camera_stream(client, camera, path) as stream:
            return [frame async for frame in stream]
    except ApiError as exc:
        if exc.status == 404 and exc.document.get("title") == "no recording":
            return []
        raise


async def wait_recorded_past(client: SiteClient, camera: str, moment: float) -> None:
    """Return once the recording of ``camera`` holds a frame at or after ``moment``.

    The recorder writes frames in the order they come, so every frame before that one is
    in the recording too: a playback up to ``moment`` is then complete.
    """
    deadline = time.monotonic() + DEADLINE
    while not await playback_frames(client, camera, moment, moment + 3600):
        assert time.monotonic() < deadline, f"{camera}: nothing recorded after {moment}"
        await asyncio.sleep(0.2)


def recorded_past(site: LocalSite, camera: str, moment: float) -> None:
    """`wait_recorded_past` for tests that are not coroutines."""

    async def go() -> None:
        async with SiteClient(site.home) as client:
            await wait_recorded_past(client, camera, moment)

    asyncio.run(go())


def proc_cmdlines() -> dict[int, str]:
    """Every process's command line (a /proc scan: the tests need no psutil)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if raw:
            found[int(entry.name)] = raw.replace(b"\0", b" ").decode(errors="replace")
    return found
