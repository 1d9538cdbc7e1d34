"""A server of the site turned against the others: tokens captured where they were presented,
certificates and registration keys used to speak for another server (issue: an operator's
request yielding an administrator token, one server's certificate taking another's place).

Given an encrypted site of its own (ms, rs1 recording cam1, rs2 recording cam2 whose URL holds
a password, mobile1), attacked as the attack found it: by a compromised recording server that
holds its own valid certificate and key and the site's registration key, from outside the
servers, with the standard library's HTTP client over `ssl`.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from security_support import (
    Figures,
    add_camera,
    encrypt,
    http_request,
    json_request,
    log_lines,
    problem_of,
)

from watchkeep.site import ServerRole
from watchkeep.testing import DEADLINE, LocalServer, LocalSite, eventually, servers_by_name

SECRET = "S3cretCamPass"


@pytest.fixture(scope="module")
def site(open_sites: Any, site_database: str) -> Iterator[LocalSite]:
    with open_sites(site_database) as make:
        site = make("impersonation")
        for name, role in [
            ("ms", ServerRole.MANAGEMENT),
            ("rs1", ServerRole.RECORDING),
            ("rs2", ServerRole.RECORDING),
            ("mobile1", ServerRole.MOBILE),
        ]:
            site.add_server(name, role)
        site.start_all()
        add_camera(site, "cam1", "rs1")
        add_camera(site, "cam2", "rs2")
        # A camera whose URL holds its password (it cannot be reached: that is not the point)
        site.api(
            "POST",
            "/api/v1/cameras",
            {
                "name": "door",
                "recording_server": "rs1",
                "source": {"kind": "rtsp", "url": f"rtsp://vms:{SECRET}@{site.network}.9:554/s2"},
            },
        )
        encrypt(site, "rs1", "rs2", "mobile1", "ms")
        site.api(
            "POST",
            "/api/v1/users",
            {
                "name": "op1",
                "password": "op1-password-1234",
                "role": "operator",
                "cameras": ["cam2"],
            },
        )
        yield site


def ca(site: LocalSite) -> Path:
    return site.home.ca_cert


def claims_of(token: str) -> dict[str, Any]:
    body = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    return claims


def log_in(site: LocalSite, user: str, password: str) -> str:
    status, _, reply = json_request(
        site.management, "api", "/api/v1/login", {"user": user, "password": password}, ca=ca(site)
    )
    assert status == 200, reply[:300]
    token: str = json.loads(reply)["token"]
    return token


def heartbeat_as(
    site: LocalSite, name: str, body: dict[str, Any], cert: LocalServer | None
) -> tuple[int, dict[str, str], bytes]:
    """A heartbeat for ``name`` over TLS, presenting ``cert``'s certificate (or none), with
    the site's registration key and the readiness ``name`` reports (ready to encrypt)."""
    key = site.registration_key_file.read_text().strip()
    reported = servers_by_name(site.status())[name]
    readiness = {
        "certificate": reported["certificate"],
        "trusted_ca_fingerprints": reported["trusted_ca_fingerprints"],
        "problems": [],
    }
    return json_request(
        site.management, "api", f"/api/v1/servers/{name}/heartbeat",
        {"registration_key": key, "readiness": readiness, **body}, ca=ca(site),
        client_cert=(cert.chain, cert.key) if cert else None,
    )  # fmt: skip


class CompromisedServer:
    """Whatever listens on a recording server's data port with that server's own
    certificate and key (the server is compromised): records the requests it gets and
    answers each with a picture of its own."""

    def __init__(self, server: LocalServer) -> None:
        self.requests: list[bytes] = []
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(server.chain, server.key)
        listening = socket.create_server((server.address, server.ports["data"]))
        listening.settimeout(DEADLINE)
        self._listening = listening
        self._context = context
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self._listening.accept()
        except OSError:
            return
        with self._context.wrap_socket(conn, server_side=True) as tls:
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = tls.recv(65536)
                if not chunk:
                    break
                request += chunk
            self.requests.append(request)
            picture = b"\xff\xd8\xff\xd9"
            tls.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n\r\n%s" % (len(picture), picture)
            )

    def close(self) -> None:
        self._listening.close()
        self._thread.join(DEADLINE)


def test_a_token_captured_by_a_compromised_recording_server_is_worthless_elsewhere(
    site: LocalSite, figures: Figures
) -> None:
    # Given rs2 compromised: its process replaced by the attacker's, with rs2's own
    # certificate and key, on rs2's address and port
    rs1, rs2, ms = site.servers["rs1"], site.servers["rs2"], site.management
    site.kill("rs2")
    try:
        attacker = CompromisedServer(rs2)
        try:
            # When an operator asks the management server for cam2's snapshot, and the
            # management server fetches it from "rs2"
            operator = log_in(site, "op1", "op1-password-1234")
            status, _, _ = http_request(
                ms, "api", "/api/v1/cameras/cam2/snapshot.jpg", ca=ca(site), token=operator
            )
            assert status == 200
        finally:
            attacker.close()
        head = attacker.requests[0].decode()
        captured = next(
            line.split("Bearer ", 1)[1].strip()
            for line in head.split("\r\n")
            if line.lower().startswith("authorization:")
        )

        # Then the token it captured carries no role, and names rs2 and cam2 alone
        claims = claims_of(captured)
        assert "role" not in claims, claims
        assert (claims["aud"], claims["cameras"], claims["scope"]) == (["rs2"], ["cam2"], "stream")

        # And replayed, it is refused by the management server (no administrator is made,
        # nothing is read) and by every other server
        replays = [
            (ms, "api", "POST", "/api/v1/users"),
            (ms, "api", "GET", "/api/v1/site/status"),
            (ms, "api", "POST", "/api/v1/cameras/cam2/stream-token"),
            (rs1, "data", "GET", "/api/v1/cameras/cam1/snapshot.jpg"),
            (rs1, "data", "GET", "/api/v1/status"),
            (site.servers["mobile1"], "https", "GET", "/api/v1/cameras"),
        ]
        evil = {"name": "mallory", "password": "mallory-password", "role": "administrator"}
        for server, listener, method, path in replays:
            status, headers, reply = http_request(
                server, listener, path, ca=ca(site), token=captured, method=method,
                body=json.dumps(evil).encode() if method == "POST" else None,
            )  # fmt: skip
            assert status == 401, (server.name, path, status, reply[:300])
            assert problem_of(status, headers, reply)["code"] == "auth.token"
            figures.hostile("token replayed at another server")
        users = {u["name"] for u in site.api("GET", "/api/v1/users")}
        assert "mallory" not in users
    finally:
        site.start("rs2")
        site.wait_online("rs2")


def test_a_stream_token_opens_its_camera_at_its_server_only(
    site: LocalSite, figures: Figures
) -> None:
    rs1, rs2 = site.servers["rs1"], site.servers["rs2"]
    # Given the administrator's stream token for cam1 (at rs1)
    token = site.stream_token("cam1")
    assert claims_of(token)["aud"] == ["rs1"]
    # Then it opens cam1 at rs1, and nothing else anywhere
    status, _, _ = http_request(rs1, "data", "/api/v1/cameras/cam1/snapshot.jpg", ca=ca(site),
                                token=token)  # fmt: skip
    assert status == 200
    status, headers, reply = http_request(
        rs1, "data", "/api/v1/cameras/door/snapshot.jpg", ca=ca(site), token=token
    )
    assert (status, problem_of(status, headers, reply)["code"]) == (403, "auth.camera")
    status, _, _ = http_request(rs2, "data", "/api/v1/cameras/cam2/snapshot.jpg", ca=ca(site),
                                token=token)  # fmt: skip
    assert status == 401
    # and a log-in token opens no camera at a recording server
    status, _, _ = http_request(rs1, "data", "/api/v1/cameras/cam1/snapshot.jpg", ca=ca(site),
                                token=site.login_token())  # fmt: skip
    assert status == 401
    figures.hostile("token at a server it does not name", 3)


def test_another_servers_certificate_cannot_speak_for_a_registered_server(
    site: LocalSite, figures: Figures
) -> None:
    rs1, rs2 = site.servers["rs1"], site.servers["rs2"]
    before = servers_by_name(site.status())["rs1"]
    # When rs2's certificate heartbeats for rs1, naming rs2's host (as its certificate
    # does) and an address of the attacker's
    status, headers, reply = heartbeat_as(
        site, "rs1",
        {"role": "recording", "host": rs2.host, "address": f"{site.network}.250",
         "ports": rs1.ports},
        cert=rs2,
    )  # fmt: skip
    # Then it is refused, and nothing of rs1's configuration is in the answer
    assert status in (403, 409), reply[:300]
    assert SECRET.encode() not in reply
    assert problem_of(status, headers, reply)["server"] == "rs1"
    # And with rs1's own host in the body, rs2's certificate is refused as not rs1's
    status, headers, reply = heartbeat_as(
        site, "rs1",
        {"role": "recording", "host": rs1.host, "address": rs1.address, "ports": rs1.ports},
        cert=rs2,
    )  # fmt: skip
    assert (status, problem_of(status, headers, reply)["code"]) == (403, "cert.hostname")
    assert SECRET.encode() not in reply
    # And rs1 is where it was, and the attempts are logged as security events naming both
    after = servers_by_name(site.status())["rs1"]
    assert (after["host"], after["address"], after["role"]) == (
        before["host"],
        before["address"],
        "recording",
    )
    lines = log_lines(site, "ms", "security:")
    assert any(rs2.host in line and "rs1" in line for line in lines), lines
    figures.hostile("another server's certificate", 2)


def test_a_heartbeat_cannot_change_a_servers_role_or_read_camera_passwords(
    site: LocalSite, figures: Figures
) -> None:
    rs1 = site.servers["rs1"]
    # When a heartbeat for rs1 claims to be a mobile server, with the registration key
    # and no certificate at all
    status, headers, reply = heartbeat_as(
        site, "rs1",
        {"role": "mobile", "host": "attacker.example", "address": f"{site.network}.250",
         "ports": {"http": 1, "https": 2}},
        cert=None,
    )  # fmt: skip
    # Then it is refused, without a camera source in the answer
    assert status in (401, 403, 409), reply[:300]
    assert SECRET.encode() not in reply
    problem_of(status, headers, reply)
    # And rs1 is still rs1
    after = servers_by_name(site.status())["rs1"]
    assert (after["role"], after["host"]) == ("recording", rs1.host)
    figures.hostile("heartbeat claiming another role")


def test_a_mobile_server_is_told_where_cameras_are_never_their_sources(site: LocalSite) -> None:
    mobile1 = site.servers["mobile1"]
    # When mobile1 heartbeats with its own certificate
    status, _, reply = heartbeat_as(
        site, "mobile1",
        {"role": "mobile", "host": mobile1.host, "address": mobile1.address,
         "ports": mobile1.ports},
        cert=mobile1,
    )  # fmt: skip
    assert status == 200, reply[:300]
    config = json.loads(reply)
    # Then it learns which server records each camera, but no camera's source
    assert config["cameras"] == []
    assert {c["name"] for c in config["site_cameras"]} == {"cam1", "cam2", "door"}
    assert SECRET.encode() not in reply
    assert b"rtsp://" not in reply


def test_a_mobile_server_without_its_certificate_is_refused(site: LocalSite) -> None:
    mobile1 = site.servers["mobile1"]
    status, headers, reply = heartbeat_as(
        site, "mobile1",
        {"role": "mobile", "host": mobile1.host, "address": mobile1.address,
         "ports": mobile1.ports},
        cert=None,
    )  # fmt: skip
    assert (status, problem_of(status, headers, reply)["code"]) == (401, "cert.chain")


def test_only_an_administrator_moves_a_server(site: LocalSite, figures: Figures) -> None:
    rs2 = site.servers["rs2"]
    moved = f"{site.network}.77"
    # When rs2's own certificate heartbeats from another address
    status, headers, reply = heartbeat_as(
        site, "rs2",
        {"role": "recording", "host": rs2.host, "address": moved, "ports": rs2.ports},
        cert=rs2,
    )  # fmt: skip
    # Then the move is refused, with the command an administrator runs
    problem = problem_of(status, headers, reply)
    assert (status, problem["code"]) == (409, "auth.registration")
    assert "watchkeep server update rs2" in problem["fix"]
    figures.hostile("heartbeat moving a server")
    # And `watchkeep server update` (an administrator) records the move
    ran = site.cli("server", "update", "rs2", "--address", moved, "--json")
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["address"] == moved
    try:
        status, _, reply = heartbeat_as(
            site, "rs2",
            {"role": "recording", "host": rs2.host, "address": moved, "ports": rs2.ports},
            cert=rs2,
        )  # fmt: skip
        assert status == 200, reply[:300]
        assert servers_by_name(site.status())["rs2"]["address"] == moved
    finally:
        ran = site.cli("server", "update", "rs2", "--address", rs2.address)
        assert ran.returncode == 0, ran.stderr
        site.wait_online("rs2")


def test_a_new_recording_server_of_an_encrypted_site_never_answers_in_plaintext(
    site: LocalSite,
) -> None:
    # Given a new recording server with its certificate, started on the encrypted site
    rs3 = site.add_server("rs3", ServerRole.RECORDING)
    answered_plain: list[str] = []

    def probe() -> bool:
        """Whether rs3's data port answers TLS now; plaintext answers are recorded."""
        try:
            with socket.create_connection((rs3.address, rs3.ports["data"]), timeout=2) as sock:
                sock.sendall(b"GET /api/v1/status HTTP/1.0\r\n\r\n")
                head = sock.recv(64)
        except OSError:
            return False
        if head.startswith(b"HTTP/"):
            answered_plain.append(head.decode(errors="replace"))
            return False
        return True  # a TLS listener answers plaintext with an alert or closes

    site.start("rs3", wait=False)
    try:
        # When its data port is probed in plaintext from the moment it starts until it
        # serves TLS (bounded: DEADLINE)
        eventually(lambda: probe() or None, what="rs3 serving TLS", interval=0.02)
        # Then it never answered in plaintext
        assert not answered_plain, answered_plain
        site.wait_online("rs3")
    finally:
        site.stop("rs3")


def test_an_operator_reads_only_what_it_is_given(site: LocalSite) -> None:
    ms, rs1 = site.management, site.servers["rs1"]
    operator = log_in(site, "op1", "op1-password-1234")  # cam2 only, recorded by rs2
    # The management server lists op1 itself and the server that records cam2, no other
    for path in ("/api/v1/servers", "/api/v1/site/status"):
        status, _, reply = http_request(ms, "api", path, ca=ca(site), token=operator)
        assert status == 200, reply[:300]
        answer = json.loads(reply)
        listed = answer if isinstance(answer, list) else answer["servers"]
        assert {s["name"] for s in listed} == {"ms", "rs2"}, (path, listed)
    # And a recording server's status shows the cameras the token opens, no other
    status, _, reply = http_request(
        rs1, "data", "/api/v1/status", ca=ca(site), token=site.stream_token("cam1")
    )
    assert status == 200, reply[:300]
    assert [c["name"] for c in json.loads(reply)["cameras"]] == ["cam1"]
