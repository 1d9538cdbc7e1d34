"""Who may see video: clients that do not trust the site CA are refused before a byte of
video, and a token opens only the cameras of its user.

Given the shared encrypted site (`streams_site`) and op1, an operator who may view cam1
only (the `operator` fixture, created through POST /api/v1/users as the administrator).
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from stream_support import (
    DEADLINE,
    assert_frame_from,
    management_signer,
    read_parts,
    read_problem,
    request,
)

from watchkeep._home import Home
from watchkeep.client import SiteClient, SiteConnection
from watchkeep.client._video import stream_frames
from watchkeep.errors import UntrustedIssuer
from watchkeep.pki import SitePKI
from watchkeep.servers._tokens import TokenSigner
from watchkeep.testing import LocalSite
from watchkeep.tls import client_context
from watchkeep.trust import DirectoryTrustStore

# -- trust ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def other_ca_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trust store holding another CA (a real one, with its CRL), not the site's."""
    root = tmp_path_factory.mktemp("other-ca")
    pki = SitePKI(Home(root / "home"))
    pki.init_ca("Some Other CA")
    store = DirectoryTrustStore(root / "trust")
    store.install(pki.ca_certificate())
    store.install_crl(pki.write_crl().read_bytes())
    return root / "trust"


@pytest.mark.parametrize("store", ["empty", "other CA"])
def test_the_client_library_refuses_a_recording_server_it_cannot_verify(
    streams_site: LocalSite, other_ca_store: Path, tmp_path: Path, store: str
) -> None:
    trust_store = other_ca_store if store == "other CA" else tmp_path / "empty-store"

    async def watch() -> BaseException | None:
        async with SiteClient(streams_site.home) as client:
            # Given a logged-in client that knows where cam1 records, but whose trust store
            # then lacks the site CA
            access = await client.stream_access("cam1")
            client.connection = replace(client.connection, trust_store=str(trust_store))
            # When it asks rs1 for cam1's live stream
            async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(resolver=client.resolver())
            ) as session:
                path = "/api/v1/cameras/cam1/live.mjpeg"
                try:
                    async for _frame in stream_frames(client, access, path, session):
                        return None
                except UntrustedIssuer as exc:
                    return exc
        return None

    refusal = asyncio.run(watch())

    # Then the connection is refused as untrusted, naming rs1, the rule and the fix
    assert isinstance(refusal, UntrustedIssuer), refusal
    assert "rs1" in str(refusal), refusal
    assert "[trust.installed]" in str(refusal), refusal
    assert f"watchkeep trust install --store {trust_store}" in str(refusal), refusal


@pytest.mark.parametrize("store", ["empty", "other CA"])
def test_watchkeep_view_without_the_site_ca_exits_1_with_one_line(
    streams_site: LocalSite, other_ca_store: Path, tmp_path: Path, store: str
) -> None:
    # Given a home that reaches the site but trusts no CA, or another CA
    trust_store = other_ca_store if store == "other CA" else tmp_path / "empty-store"
    home = Home(tmp_path / "home")
    home.root.mkdir()
    replace(SiteConnection.load(streams_site.home), trust_store=str(trust_store)).save(home)

    # When the Smart Client is asked for live video
    ran = subprocess.run(
        [*_watchkeep(), "--home", str(home.root), "view", "cam1", "--frames", "1"],
        capture_output=True,
        text=True,
        timeout=DEADLINE * 2,
        check=False,
    )

    # Then it exits 1 with one line naming the server that failed to verify and the rule
    assert ran.returncode == 1, ran
    assert len(ran.stderr.splitlines()) == 1, ran.stderr
    assert "cannot connect to ms " in ran.stderr, ran.stderr
    assert "[trust.installed]" in ran.stderr, ran.stderr
    assert ran.stdout == ""


def _watchkeep() -> list[str]:
    return [sys.executable, "-m", "watchkeep"]


def _curl(streams_site: LocalSite, *args: str) -> list[str]:
    rs1 = streams_site.servers["rs1"]
    return [
        "curl",
        "--silent",
        "--show-error",
        "--resolve",
        f"{rs1.host}:{rs1.ports['data']}:{rs1.address}",
        *args,
        f"https://{rs1.host}:{rs1.ports['data']}/api/v1/cameras/cam1/live.mjpeg",
    ]


def test_curl_refuses_the_recording_server_without_the_site_ca(
    streams_site: LocalSite, cam1_token: str
) -> None:
    # When curl, trusting only the system's CAs, asks rs1 for cam1's live stream
    ran = subprocess.run(
        _curl(streams_site, "--header", f"Authorization: Bearer {cam1_token}"),
        capture_output=True,
        timeout=DEADLINE,
        check=False,
    )
    # Then it cannot verify the certificate (exit 60) and received nothing
    assert ran.returncode == 60, ran
    assert ran.stdout == b""


def test_curl_with_the_site_ca_gets_the_mjpeg_stream(
    streams_site: LocalSite, ca: Path, cam1_token: str
) -> None:
    # When curl trusts the site CA and asks rs1 for cam1's live stream
    curl = subprocess.Popen(
        _curl(
            streams_site,
            "--no-buffer",
            "--include",
            "--cacert",
            str(ca),
            "--header",
            f"Authorization: Bearer {cam1_token}",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert curl.stdout is not None
    received = b""
    try:
        deadline = time.monotonic() + DEADLINE
        # Three delimiters: two whole parts between them.
        while received.count(b"--watchkeep-frame\r\n") < 3:
            assert time.monotonic() < deadline, received[:500]
            ready, _, _ = select.select([curl.stdout], [], [], 1.0)
            if ready:
                chunk = os.read(curl.stdout.fileno(), 65536)
                assert chunk, f"curl ended: {curl.wait()} {received[:500]!r}"
                received += chunk
    finally:
        curl.kill()
        curl.wait()
        curl.stdout.close()
        assert curl.stderr is not None
        curl.stderr.close()

    # Then it gets a multipart/x-mixed-replace stream of JPEG parts
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert b"Content-Type: multipart/x-mixed-replace; boundary=watchkeep-frame" in head, head
    part_head, _, jpeg = body.split(b"--watchkeep-frame\r\n")[1].partition(b"\r\n\r\n")
    sequence = int(part_head.split(b"X-Sequence: ")[1].split(b"\r\n")[0])
    assert_frame_from("cam1", sequence, jpeg.removesuffix(b"\r\n"))


# -- tokens and roles -----------------------------------------------------------------


def test_an_operator_token_opens_its_own_camera_at_the_recording_server(
    streams_site: LocalSite, ca: Path, operator_cam1_token: str
) -> None:
    # When op1 asks rs1 for cam1, which it may view, with the stream token the management
    # server gave it
    rs1 = streams_site.servers["rs1"]
    path = "/api/v1/cameras/cam1/live.mjpeg"
    with request(rs1, "data", path, ca=ca, token=operator_cam1_token) as r:
        part = read_parts(r, 1)[0]
    # Then it gets cam1's video
    assert_frame_from("cam1", int(part.headers["x-sequence"]), part.jpeg)


@pytest.mark.parametrize(
    "stream",
    ["live.mjpeg", "live.ws", "snapshot.jpg", "playback.mjpeg?from=1700000000&to=1700000060"],
)
def test_an_operator_token_is_forbidden_another_camera_at_the_recording_server(
    streams_site: LocalSite, ca: Path, operator_cam1_token: str, stream: str
) -> None:
    # When op1 asks rs1 for cam2, which it may not view, with its stream token for cam1
    rs1 = streams_site.servers["rs1"]
    path = f"/api/v1/cameras/cam2/{stream}"
    with request(rs1, "data", path, ca=ca, token=operator_cam1_token) as response:
        # Then the answer is 403, naming the rule, without a byte of video
        problem = read_problem(response, 403)
    assert problem["code"] == "auth.camera", problem


def test_an_operator_sees_only_its_cameras_through_the_mobile_server(
    streams_site: LocalSite, ca: Path, operator: SiteConnection
) -> None:
    mobile = streams_site.servers["mobile1"]
    # When op1 logs in at the mobile server (which asks the management server)
    login = {"user": operator.user, "password": Path(operator.password_file).read_text().strip()}
    with request(mobile, "https", "/api/v1/login", ca=ca, method="POST", body=login) as r:
        assert r.status == 200, r.read()
        token = json.loads(r.read())["token"]

    # Then the mobile server lists cam1 only
    with request(mobile, "https", "/api/v1/cameras", ca=ca, token=token) as r:
        assert r.status == 200
        assert [c["name"] for c in json.loads(r.read())] == ["cam1"]

    # And relays cam1's video
    with request(mobile, "https", "/api/v1/cameras/cam1/live.mjpeg", ca=ca, token=token) as r:
        part = read_parts(r, 1)[0]
    assert_frame_from("cam1", int(part.headers["x-sequence"]), part.jpeg)

    # But refuses cam2's, as rs1 would
    for stream in ("live.mjpeg", "snapshot.jpg"):
        path = f"/api/v1/cameras/cam2/{stream}"
        with request(mobile, "https", path, ca=ca, token=token) as response:
            assert read_problem(response, 403)["code"] == "auth.camera"


def test_an_operator_sees_only_its_cameras_at_the_management_server(
    streams_site: LocalSite, ca: Path, operator_token: str
) -> None:
    ms = streams_site.management
    # When op1 lists the cameras and asks for cam2's snapshot at the management server
    with request(ms, "api", "/api/v1/cameras", ca=ca, token=operator_token) as r:
        listed = [c["name"] for c in json.loads(r.read())]
    with request(ms, "api", "/api/v1/cameras/cam2/snapshot.jpg", ca=ca, token=operator_token) as r:
        # Then cam2 does not exist for op1
        read_problem(r, 404)
    assert listed == ["cam1"]
    # And it gets no stream token for cam2 either
    path = "/api/v1/cameras/cam2/stream-token"
    with request(ms, "api", path, ca=ca, token=operator_token, method="POST") as r:
        read_problem(r, 404)


def _forged() -> str:
    """A token just like the management server's, signed with another Ed25519 key."""
    signer = TokenSigner(ed25519.Ed25519PrivateKey.generate())
    return signer.issue("admin", "stream", "rs1", 600, cameras=["cam1"], sid="s")


def _bad_token(site: LocalSite, kind: str) -> str | None:
    """A token rs1 must refuse for cam1."""
    signer = management_signer(site)
    if kind == "missing":
        return None
    if kind == "forged":
        return _forged()
    if kind == "expired":
        return signer.issue("admin", "stream", "rs1", -60, cameras=["cam1"], sid="s")
    if kind == "control scope":
        return signer.issue("ms", "control", "rs1", 600)
    if kind == "log-in token":
        # An administrator's own token: for the management server, not for rs1
        return site.login_token()
    if kind == "for another server":
        # A stream token for cam1 made for another recording server, replayed at rs1
        return signer.issue("admin", "stream", "rs9", 600, cameras=["cam1"], sid="s")
    assert kind == "garbage"
    return "not-a-token"


TOKENS = [
    "missing",
    "forged",
    "expired",
    "control scope",
    "log-in token",
    "for another server",
    "garbage",
]


@pytest.mark.parametrize("kind", TOKENS)
@pytest.mark.parametrize(
    "stream", ["live.mjpeg", "snapshot.jpg", "playback.mjpeg?from=1700000000&to=1700000060"]
)
def test_a_recording_server_gives_no_video_without_a_valid_token(
    streams_site: LocalSite, ca: Path, kind: str, stream: str
) -> None:
    # When a client presents no token, or one that is not a valid user token of this site
    rs1 = streams_site.servers["rs1"]
    token = _bad_token(streams_site, kind)
    with request(rs1, "data", f"/api/v1/cameras/cam1/{stream}", ca=ca, token=token) as response:
        # Then the answer is 401 with a problem document and not a byte of video
        problem = read_problem(response, 401)
    assert problem["code"] == "auth.token", problem


@pytest.mark.parametrize("kind", TOKENS)
def test_a_recording_server_opens_no_websocket_without_a_valid_token(
    streams_site: LocalSite, kind: str
) -> None:
    token = _bad_token(streams_site, kind)

    async def connect() -> aiohttp.WSServerHandshakeError | None:
        async with SiteClient(streams_site.home) as client:
            endpoint = (await client.stream_access("cam1")).endpoint
            url = f"wss://{endpoint.host}:{endpoint.port}/api/v1/cameras/cam1/live.ws"
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(resolver=client.resolver())
            ) as session:
                try:
                    async with session.ws_connect(
                        url, headers=headers, ssl=client_context(client.trust)
                    ):
                        return None
                except aiohttp.WSServerHandshakeError as exc:
                    return exc

    # When a client opens cam1's WebSocket with no valid token
    refused = asyncio.run(connect())

    # Then the handshake is refused with 401: no WebSocket, so no frame
    assert refused is not None, "the WebSocket opened"
    assert refused.status == 401, refused


@pytest.mark.parametrize("kind", TOKENS)
def test_the_mobile_server_gives_no_video_without_a_valid_token(
    streams_site: LocalSite, ca: Path, kind: str
) -> None:
    # When a client asks the mobile server for cam1 with no valid token (a browser puts
    # its token in the query string: that way too)
    mobile = streams_site.servers["mobile1"]
    token = _bad_token(streams_site, kind)
    for path, bearer in [
        ("/api/v1/cameras/cam1/live.mjpeg", token),
        (f"/api/v1/cameras/cam1/live.mjpeg?token={token or ''}", None),
    ]:
        with request(mobile, "https", path, ca=ca, token=bearer) as response:
            # Then the answer is 401 with a problem document and not a byte of video
            assert read_problem(response, 401)["code"] == "auth.token"


def test_a_valid_token_in_the_query_string_opens_the_stream(
    streams_site: LocalSite, ca: Path
) -> None:
    # The refusals above are refusals of the token, not of the query-string route: with a
    # valid token the same request works (at the mobile server and at rs1)
    tokens = {
        "mobile1": streams_site.login_token(via="mobile1"),
        "rs1": streams_site.stream_token("cam1"),
    }
    for server, listener in [("mobile1", "https"), ("rs1", "data")]:
        token = tokens[server]
        path = f"/api/v1/cameras/cam1/live.mjpeg?token={token}"
        with request(streams_site.servers[server], listener, path, ca=ca) as response:
            part = read_parts(response, 1)[0]
        assert_frame_from("cam1", int(part.headers["x-sequence"]), part.jpeg)


def test_the_mobile_server_sends_plain_http_to_https(streams_site: LocalSite) -> None:
    # When a browser asks the encrypted mobile server's plain HTTP port for the web client
    mobile = streams_site.servers["mobile1"]
    with request(mobile, "http", "/index.html?x=1", ca=None) as response:
        # Then it is sent to the same page over HTTPS, under the server's host name
        assert response.status == 301
        location = response.getheader("Location")
    assert location == f"https://{mobile.host}:{mobile.ports['https']}/index.html?x=1"
