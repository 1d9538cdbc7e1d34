"""Revoked tokens: a log-out ends a session, a new password, new rights or the user's
removal end all of the user's sessions, everywhere.

Given the running encrypted site and a user with tokens, when a session logs out (through
the mobile server) or an administrator sets the user's password or rights again or removes
the user, then the revoked tokens get 401 `auth.token` ("revoked") at the management
server at once, and at the recording server and the mobile server as soon as their
configuration arrives, and the live streams they had opened end; a token issued afterwards
works, other sessions and other users' tokens are untouched, and a long-running client
logs in again by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import time
from dataclasses import dataclass, replace
from typing import Any

from security_support import Figures, connect, http_request, json_request

from watchkeep.client import SiteClient, SiteConnection
from watchkeep.testing import LocalSite, eventually

CAMERA = "cam1"  # recorded by rs1 (the security site)


@dataclass(frozen=True)
class Session:
    """One log-in: its token (for the management server and mobile1) and the stream token
    for CAMERA at rs1 the management server gave it."""

    token: str
    stream: str


def log_in(site: LocalSite, user: str, password: str) -> Session:
    status, _, reply = json_request(
        site.management, "api", "/api/v1/login",
        {"user": user, "password": password, "audience": "mobile1"}, ca=site.home.ca_cert,
    )  # fmt: skip
    assert status == 200, reply[:300]
    token: str = json.loads(reply)["token"]
    status, _, reply = http_request(
        site.management, "api", f"/api/v1/cameras/{CAMERA}/stream-token", ca=site.home.ca_cert,
        token=token, method="POST",
    )  # fmt: skip
    assert status == 200, reply[:300]
    return Session(token, json.loads(reply)["token"])


def answers(site: LocalSite, session: Session) -> dict[str, tuple[int, Any]]:
    """What the MS, rs1 and mobile1 answer a read with ``session``: (status, problem code)."""
    calls = {
        "ms": (site.management, "api", "/api/v1/cameras", session.token),
        "rs1": (
            site.servers["rs1"],
            "data",
            f"/api/v1/cameras/{CAMERA}/snapshot.jpg",
            session.stream,
        ),
        "mobile1": (site.servers["mobile1"], "https", "/api/v1/cameras", session.token),
    }
    seen = {}
    for name, (server, listener, path, token) in calls.items():
        status, headers, body = http_request(
            server, listener, path, ca=site.home.ca_cert, token=token
        )
        code = None
        if headers.get("content-type", "").startswith("application/problem+json"):
            document = json.loads(body)
            code = (document.get("code"), "revoked" in document.get("detail", ""))
        seen[name] = (status, code)
    return seen


def open_live(site: LocalSite, server: str, listener: str, session: Session) -> socket.socket:
    """A live MJPEG stream of CAMERA, its first bytes read: it is flowing."""
    target = site.servers[server]
    token = session.stream if listener == "data" else session.token
    sock = connect(target, listener, ca=site.home.ca_cert)
    sock.sendall(
        f"GET /api/v1/cameras/{CAMERA}/live.mjpeg HTTP/1.1\r\nHost: {target.host}\r\n"
        f"Authorization: Bearer {token}\r\n\r\n".encode()
    )
    head = sock.recv(65536)
    assert head.startswith(b"HTTP/1.1 200 "), head[:300]
    return sock


def ended_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server ends the stream within ``seconds`` (reading what still comes)."""
    deadline = time.monotonic() + seconds
    sock.settimeout(1.0)
    while time.monotonic() < deadline:
        try:
            if not sock.recv(1 << 20):
                return True
        except TimeoutError:
            continue
        except (ConnectionResetError, ssl.SSLError):
            return True
    return False


SERVED = {name: (200, None) for name in ("ms", "rs1", "mobile1")}
REVOKED = {name: (401, ("auth.token", True)) for name in ("ms", "rs1", "mobile1")}


def add_user(site: LocalSite, name: str, password: str) -> None:
    site.api(
        "POST",
        "/api/v1/users",
        {"name": name, "password": password, "role": "operator", "cameras": [CAMERA]},
    )


def new_user(site: LocalSite, name: str) -> Session:
    """An operator ``name`` (password ``NAME-password-1234``, cam1 only); its first token."""
    add_user(site, name, f"{name}-password-1234")
    return log_in(site, name, f"{name}-password-1234")


def refused_everywhere(site: LocalSite, *sessions: Session) -> bool:
    for session in sessions:
        assert answers(site, session) == REVOKED
    return True


def test_a_new_password_revokes_the_users_tokens_everywhere(
    security_site: LocalSite, figures: Figures
) -> None:
    stolen = new_user(security_site, "revokee")
    bystander = log_in(security_site, "admin", security_site.password_file.read_text().strip())
    assert answers(security_site, stolen) == SERVED
    # and the thief watches cam1 live, at rs1 and through the mobile server
    streams = [
        open_live(security_site, "rs1", "data", stolen),
        open_live(security_site, "mobile1", "https", stolen),
    ]

    # When an administrator sets a new password (the token was stolen, say)
    add_user(security_site, "revokee", "second-password-1234")

    # Then the old token is refused by every server, the MS at once
    assert answers(security_site, stolen)["ms"] == REVOKED["ms"]
    # (and the management server makes no stream token of it any more)
    status, _, _ = http_request(
        security_site.management, "api", f"/api/v1/cameras/{CAMERA}/stream-token",
        ca=security_site.home.ca_cert, token=stolen.token, method="POST",
    )  # fmt: skip
    assert status == 401
    eventually(
        lambda: refused_everywhere(security_site, stolen), what="the old token refused everywhere"
    )
    # and the streams it had opened end
    try:
        assert all(ended_within(sock, 10.0) for sock in streams)
    finally:
        for sock in streams:
            with contextlib.suppress(OSError):
                sock.close()
    figures.hostile("revoked token")
    # And a token from the new password works, as do other users' tokens
    fresh = log_in(security_site, "revokee", "second-password-1234")
    assert answers(security_site, fresh) == SERVED
    assert answers(security_site, bystander) == SERVED


def test_logging_out_ends_that_session_only(security_site: LocalSite, figures: Figures) -> None:
    phone = new_user(security_site, "leaver")
    laptop = log_in(security_site, "leaver", "leaver-password-1234")
    assert answers(security_site, phone) == SERVED

    # When the user logs out through the mobile server, with the phone's token
    status, _, body = http_request(
        security_site.servers["mobile1"],
        "https",
        "/api/v1/logout",
        ca=security_site.home.ca_cert,
        token=phone.token,
        method="POST",
    )
    assert status == 204, body[:300]

    # Then the phone's session is over, everywhere
    eventually(lambda: refused_everywhere(security_site, phone), what="the phone's token refused")
    figures.hostile("token used after its session logged out")
    # and logging out with it again is refused; the laptop's session goes on
    status, _, _ = http_request(
        security_site.management,
        "api",
        "/api/v1/logout",
        ca=security_site.home.ca_cert,
        token=phone.token,
        method="POST",
    )
    assert status == 401
    assert answers(security_site, laptop) == SERVED


def test_a_long_running_client_logs_in_again_when_its_token_is_revoked(
    security_site: LocalSite,
) -> None:
    # Given a client (as the CLI and the demo use) logged in as an operator
    new_user(security_site, "watcher")
    password_file = security_site.root / "watcher-password"
    password_file.write_text("watcher-password-1234\n")
    connection = replace(
        SiteConnection.load(security_site.home), user="watcher", password_file=str(password_file)
    )

    async def run() -> None:
        async with SiteClient(security_site.home, connection) as client:
            first = client.token
            assert (await client.status())["servers"]
            # When the operator's tokens are revoked (an administrator sets its password
            # again), then the next call logs in again by itself and is answered
            await asyncio.to_thread(add_user, security_site, "watcher", "watcher-password-1234")
            assert (await client.status())["servers"]
            assert client.token != first

    asyncio.run(run())


def test_a_removed_user_can_no_longer_log_in_and_its_tokens_are_revoked(
    security_site: LocalSite, figures: Figures
) -> None:
    token = new_user(security_site, "goner")
    admin = security_site.login_token()
    ms, ca = security_site.management, security_site.home.ca_cert

    def users() -> dict[str, Any]:
        status, _, reply = http_request(ms, "api", "/api/v1/users", ca=ca, token=admin)
        assert status == 200, reply[:300]
        return {u["name"]: u for u in json.loads(reply)}

    # The administrator sees the user (never a password hash); an operator may not look
    assert users()["goner"] == {"name": "goner", "role": "operator", "cameras": [CAMERA]}
    status, _, _ = http_request(ms, "api", "/api/v1/users", ca=ca, token=token.token)
    assert status == 403

    # When the administrator removes the user
    status, _, reply = http_request(
        ms, "api", "/api/v1/users/goner", ca=ca, token=admin, method="DELETE"
    )
    assert status == 204, reply[:300]

    # Then its tokens are refused everywhere, and its password no longer logs in
    eventually(lambda: refused_everywhere(security_site, token), what="goner's token refused")
    figures.hostile("token of a removed user")
    status, _, reply = json_request(
        ms, "api", "/api/v1/login", {"user": "goner", "password": "goner-password-1234"}, ca=ca
    )
    assert (status, json.loads(reply)["code"]) == (401, "auth.login")
    assert "goner" not in users()
    status, _, _ = http_request(
        ms, "api", "/api/v1/users/goner", ca=ca, token=admin, method="DELETE"
    )
    assert status == 404


def test_the_last_administrator_cannot_be_removed(security_site: LocalSite) -> None:
    ms, ca = security_site.management, security_site.home.ca_cert
    admin = log_in(security_site, "admin", security_site.password_file.read_text().strip())
    status, _, reply = http_request(ms, "api", "/api/v1/users", ca=ca, token=admin.token)
    administrators = [u["name"] for u in json.loads(reply) if u["role"] == "administrator"]
    assert administrators == ["admin"], administrators
    status, _, reply = http_request(
        ms, "api", "/api/v1/users/admin", ca=ca, token=admin.token, method="DELETE"
    )
    assert (status, json.loads(reply)["code"]) == (409, "auth.last_administrator")
    assert json.loads(reply)["fix"]
    assert answers(security_site, admin) == SERVED
