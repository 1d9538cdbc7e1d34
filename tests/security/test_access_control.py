"""Access control: every route of every server asks for the right credentials.

The routes are not listed by hand: each server's aiohttp application is built in this
process from a copy of its config and its router enumerated, and the table below must
name every route, so that a route added without a rule here fails the test. Then, against
the running site: anonymous callers get 401 everywhere but the few public routes (each
commented), an operator gets 403 on every state-changing management route (encryption,
cameras, users) and the site is unchanged, and no GET route of any server ever serves a
private key (PEM armour or the base64 of any key file of the site).
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web
from security_support import Figures, http_request, json_request, problem_of

from watchkeep.servers import load_config
from watchkeep.servers._publish import Publication
from watchkeep.servers._tokens import TokenSigner
from watchkeep.servers.management import ManagementServer
from watchkeep.servers.mobile import MobileServer
from watchkeep.servers.recording import RecordingServer
from watchkeep.testing import LocalServer, LocalSite, servers_by_name

ANONYMOUS = "anonymous"
# (server, listener, method, route) -> what an anonymous caller gets. Every route of every
# application must be here.
ROUTES: dict[tuple[str, str, str, str], int] = {
    # The management API.
    ("ms", "api", "POST", "/api/v1/login"): 400,  # public: how a token is obtained
    ("ms", "api", "POST", "/api/v1/logout"): 401,
    ("ms", "api", "GET", "/metrics"): 200,  # public: expiry metrics for Prometheus
    # public: the token-verifying key is a public key (recording servers get it by heartbeat)
    ("ms", "api", "GET", "/api/v1/token-key"): 200,
    # public: the site's CA certificates, checked by their fingerprint (trust install --from)
    ("ms", "api", "GET", "/api/v1/ca"): 200,
    # The publish listener (plaintext, GET only): signed documents, public by design.
    ("ms", "publish", "GET", "/ca/{name}.crt"): 404,  # public: CA certificates (no CA "cam1")
    ("ms", "publish", "GET", "/crl/{name}.crl"): 404,  # public: CRLs (no CA "cam1")
    ("ms", "publish", "GET", "/api/v1/ca"): 200,  # public: the same bundle as on the API
    ("ms", "api", "GET", "/api/v1/site/status"): 401,
    ("ms", "api", "GET", "/api/v1/servers"): 401,
    ("ms", "api", "POST", "/api/v1/servers/{name}/encryption"): 401,
    ("ms", "api", "PATCH", "/api/v1/servers/{name}"): 401,
    # Servers register with the site's registration key (and their certificate: mutual TLS)
    ("ms", "api", "POST", "/api/v1/servers/{name}/heartbeat"): 401,
    # A server renews with the certificate it has (mutual TLS, or signed with its key)
    ("ms", "api", "POST", "/api/v1/renewals"): 401,
    # public: the site's CRLs are signed; a server cut off for days needs them first
    ("ms", "api", "GET", "/api/v1/crls"): 200,
    ("ms", "api", "GET", "/api/v1/cameras"): 401,
    ("ms", "api", "POST", "/api/v1/cameras"): 401,
    ("ms", "api", "DELETE", "/api/v1/cameras/{name}"): 401,
    ("ms", "api", "GET", "/api/v1/users"): 401,
    ("ms", "api", "POST", "/api/v1/users"): 401,
    ("ms", "api", "DELETE", "/api/v1/users/{name}"): 401,
    ("ms", "api", "GET", "/api/v1/cameras/{name}/snapshot.jpg"): 401,
    ("ms", "api", "POST", "/api/v1/cameras/{name}/stream-token"): 401,
    # Enrollment tokens: administrators make, list and withdraw them
    ("ms", "api", "POST", "/api/v1/enrollments"): 401,
    ("ms", "api", "GET", "/api/v1/enrollments"): 401,
    ("ms", "api", "DELETE", "/api/v1/enrollments/{name}"): 401,
    # public: a joining server's credential is its one-time token (this body has none)
    ("ms", "api", "POST", "/api/v1/join"): 400,
    # The management client: its page and files are public (they hold no data: every
    # call they make presents the user's token), the API it added is not.
    ("ms", "api", "GET", "/"): 200,
    ("ms", "api", "GET", "/web/{name}"): 404,  # no file "cam1"
    # public: the video module and hls.js both web clients load (servers/_webshared.py)
    ("ms", "api", "GET", "/web/video.js"): 200,
    ("ms", "api", "GET", "/vendor/hls.light.min.js"): 200,
    ("ms", "api", "GET", "/api/v1/site/breaches"): 401,
    ("ms", "api", "GET", "/api/v1/certificates"): 401,
    ("ms", "api", "POST", "/api/v1/certificates/{name}/revoke"): 401,
    ("ms", "api", "GET", "/api/v1/ca/details"): 401,
    ("ms", "api", "GET", "/api/v1/doctor"): 401,
    ("ms", "api", "PATCH", "/api/v1/cameras/{name}"): 401,
    ("ms", "api", "PATCH", "/api/v1/users/{name}"): 401,
    # The recording server's data streams.
    ("rs1", "data", "GET", "/api/v1/status"): 401,
    ("rs1", "data", "GET", "/metrics"): 200,  # public: expiry metrics
    ("rs1", "data", "GET", "/api/v1/cameras/{name}/live.mjpeg"): 401,
    ("rs1", "data", "GET", "/api/v1/cameras/{name}/live.ws"): 401,
    ("rs1", "data", "GET", "/api/v1/cameras/{name}/snapshot.jpg"): 401,
    ("rs1", "data", "GET", "/api/v1/cameras/{name}/playback.mjpeg"): 401,
    ("rs1", "data", "GET", "/api/v1/cameras/{name}/playback.m3u8"): 401,
    ("rs1", "data", "GET", "/api/v1/cameras/{name}/recordings/{file}"): 401,
    # The recording server's control link (mutual TLS, then a control token).
    ("rs1", "control", "POST", "/control/v1/config"): 401,
    ("rs1", "control", "GET", "/control/v1/status"): 401,
    # The mobile server.
    ("mobile1", "https", "GET", "/"): 200,  # public: the web client's page
    ("mobile1", "https", "GET", "/index.html"): 200,  # the same page
    ("mobile1", "https", "GET", "/healthz"): 200,  # public: liveness
    ("mobile1", "https", "GET", "/metrics"): 200,  # public: expiry metrics
    ("mobile1", "https", "POST", "/api/v1/login"): 400,  # public: relayed to the MS
    ("mobile1", "https", "POST", "/api/v1/logout"): 401,  # relayed to the MS with the token
    ("mobile1", "https", "GET", "/api/v1/cameras"): 401,
    ("mobile1", "https", "GET", "/api/v1/cameras/{name}/live.mjpeg"): 401,
    ("mobile1", "https", "GET", "/api/v1/cameras/{name}/snapshot.jpg"): 401,
    ("mobile1", "https", "GET", "/api/v1/cameras/{name}/live.ws"): 401,
    ("mobile1", "https", "GET", "/api/v1/cameras/{name}/playback.m3u8"): 401,
    ("mobile1", "https", "GET", "/api/v1/cameras/{name}/recordings/{file}"): 401,
    # public: the video module and hls.js, as the management server serves them
    ("mobile1", "https", "GET", "/web/video.js"): 200,
    ("mobile1", "https", "GET", "/vendor/hls.light.min.js"): 200,
}
# State-changing management routes: administrators only.
ADMIN_ONLY = [
    ("POST", "/api/v1/servers/ms/encryption", {"enabled": False}),
    ("POST", "/api/v1/servers/rs1/encryption", {"enabled": False}),
    ("POST", "/api/v1/servers/mobile1/encryption", {"enabled": False}),
    (
        "POST",
        "/api/v1/cameras",
        {"name": "cam-evil", "recording_server": "rs1", "source": {"kind": "synthetic"}},
    ),
    ("DELETE", "/api/v1/cameras/cam1", None),
    ("POST", "/api/v1/users", {"name": "op2", "password": "op2-password", "role": "administrator"}),
    ("DELETE", "/api/v1/users/admin", None),
    ("PATCH", "/api/v1/servers/rs1", {"address": "127.0.0.99"}),
    (
        "POST",
        "/api/v1/enrollments",
        {"name": "evil", "role": "recording", "host": "evil.site.test"},
    ),
    ("DELETE", "/api/v1/enrollments/rs1", None),
    ("POST", "/api/v1/certificates/management-ms.site.test/revoke", {"reason": "superseded"}),
    ("PATCH", "/api/v1/cameras/cam1", {"recording_server": "rs1"}),
    ("PATCH", "/api/v1/users/admin", {"role": "operator"}),
]


def routes_of(app: web.Application) -> set[tuple[str, str]]:
    found = set()
    for route in app.router.routes():
        if route.method == "HEAD":
            continue  # aiohttp adds HEAD beside every GET
        found.add((route.method, route.resource.canonical if route.resource else ""))
    return found


@pytest.fixture(scope="module")
def applications(security_site: LocalSite, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[tuple[str, str], web.Application]]:  # fmt: skip
    """Each server's applications, built in this process from a copy of its config (its
    data directory a scratch one), never started."""
    built: dict[tuple[str, str], web.Application] = {}
    scratch = tmp_path_factory.mktemp("apps")
    for name, kind in (
        ("ms", ManagementServer),
        ("rs1", RecordingServer),
        ("mobile1", MobileServer),
    ):
        config = scratch / name / "server.toml"
        config.parent.mkdir()
        shutil.copy(security_site.servers[name].config, config)
        server: Any = kind(load_config(config))
        if name == "ms":
            built[name, "api"] = server.app
            built[name, "publish"] = Publication(server.config.ca_home, None).application()
            management = server
        elif name == "rs1":
            built[name, "data"] = server.data_app
            built[name, "control"] = server.control_app
        else:
            built[name, "https"] = server.app
    yield built
    management.store.dispose()


def test_the_rules_name_every_route_of_every_server(
    applications: dict[tuple[str, str], web.Application],
) -> None:
    for (name, listener), app in applications.items():
        enumerated = routes_of(app)
        ruled = {(m, r) for (n, li, m, r) in ROUTES if (n, li) == (name, listener)}
        assert enumerated == ruled, (
            f"{name}/{listener}: unruled {enumerated - ruled}, gone {ruled - enumerated}"
        )


def concrete(route: str) -> str:
    return route.replace("{name}", "cam1")


@pytest.mark.parametrize("rule", list(ROUTES), ids=lambda r: f"{r[0]}-{r[2]}-{r[3]}")
def test_anonymous_callers_get_401_except_on_public_routes(
    security_site: LocalSite, figures: Figures, rule: tuple[str, str, str, str]
) -> None:
    name, listener, method, route = rule
    server = security_site.servers[name]
    path = concrete(route)
    if route.endswith("/heartbeat"):
        path = route.replace("{name}", "intruder")
    body = None
    if method == "POST":
        body = (
            {"role": "recording", "host": "intruder.site.test", "address": "127.0.0.9", "ports": {}}
            if route.endswith("/heartbeat")
            else {}
        )
    client_cert = (
        (security_site.management.chain, security_site.management.key)
        if listener == "control"
        else None
    )
    ca = None if listener == "publish" else security_site.home.ca_cert  # always plaintext
    status, headers, reply = http_request(
        server, listener, path, ca=ca, method=method,
        body=json.dumps(body).encode() if body is not None else None, client_cert=client_cert,
    )  # fmt: skip
    figures.hostile("anonymous call")
    assert status == ROUTES[rule], (rule, status, reply[:300])
    if status >= 400:
        problem_of(status, headers, reply)


@pytest.fixture(scope="module")
def operator_token(security_site: LocalSite) -> str:
    password = "operator-password-5678"
    security_site.api(
        "POST",
        "/api/v1/users",
        {"name": "op1", "password": password, "role": "operator"},
    )
    status, _, reply = json_request(
        security_site.management, "api", "/api/v1/login", {"user": "op1", "password": password},
        ca=security_site.home.ca_cert,
    )  # fmt: skip
    assert status == 200, reply
    token: str = json.loads(reply)["token"]
    return token


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ONLY)
def test_an_operator_gets_403_on_every_state_changing_route_and_nothing_changes(
    security_site: LocalSite, figures: Figures, operator_token: str, method: str, path: str,
    body: Any,
) -> None:  # fmt: skip
    before = security_site.status()
    tokens_before = security_site.api("GET", "/api/v1/enrollments")
    status, headers, reply = http_request(
        security_site.management, "api", path, ca=security_site.home.ca_cert, method=method,
        body=json.dumps(body).encode() if body is not None else None, token=operator_token,
    )  # fmt: skip
    figures.hostile("operator on an administrator route")
    assert status == 403, reply[:300]
    assert problem_of(status, headers, reply)["code"] == "auth.role"
    after = security_site.status()
    assert [(s["name"], s["encryption"]) for s in after["servers"]] == [
        (s["name"], s["encryption"]) for s in before["servers"]
    ]
    assert after["cameras"] == before["cameras"]
    assert security_site.api("GET", "/api/v1/enrollments") == tokens_before


def test_an_operator_may_read_what_it_is_allowed_to(
    security_site: LocalSite, operator_token: str
) -> None:
    status, _, reply = http_request(
        security_site.management, "api", "/api/v1/site/status", ca=security_site.home.ca_cert,
        token=operator_token,
    )  # fmt: skip
    assert status == 200, reply[:300]
    assert all(s["encryption"] for s in servers_by_name(json.loads(reply)).values())


# -- private keys are never served ------------------------------------------------------------


def key_fingerprints(site: LocalSite) -> dict[str, list[str]]:
    """Distinctive pieces of every private key file of the site (servers', CA's, token keys).

    A PKCS#8 EC key holds its public key too, and a piece of it may line up with the base64
    of a certificate that carries the same public key: such pieces are public, and left out."""
    public = "".join(
        "".join(line for line in path.read_text(errors="replace").splitlines())
        for path in site.root.rglob("*.pem")
        if "CERTIFICATE" in path.read_text(errors="replace")
    )
    found = {}
    for path in [
        *site.root.rglob("*.key"),
        *site.root.rglob("token.key"),
        *site.root.rglob("*key*.pem"),
    ]:
        text = path.read_text(errors="replace")
        if "PRIVATE KEY" not in text:
            continue
        body = "".join(line for line in text.splitlines() if not line.startswith("-----"))
        pieces = [body[i : i + 32] for i in range(0, max(len(body) - 32, 1), 64)]
        found[str(path)] = [p for p in pieces if p not in public]
    return found


def get_bounded(
    server: LocalServer, listener: str, path: str, site: LocalSite, **kwargs: Any
) -> bytes:
    """A GET whose answer may be an endless stream: its first 256 KiB."""
    context = ssl.create_default_context(cafile=str(site.home.ca_cert))
    if "client_cert" in kwargs:
        context.load_cert_chain(*map(str, kwargs["client_cert"]))
    sock = socket.create_connection((server.address, server.ports[listener]), timeout=10)
    if listener != "publish":  # the publish listener is always plaintext
        sock = context.wrap_socket(sock, server_hostname=server.host)
    with sock as tls:
        headers = f"GET {path} HTTP/1.0\r\nHost: {server.host}\r\n"
        if kwargs.get("token"):
            headers += f"Authorization: Bearer {kwargs['token']}\r\n"
        tls.sendall((headers + "\r\n").encode())
        received = b""
        try:
            while len(received) < 256 * 1024 and (chunk := tls.recv(65536)):
                received += chunk
        except (TimeoutError, ConnectionResetError, ssl.SSLError):
            pass
    return received


def test_no_get_route_of_any_server_serves_a_private_key(
    security_site: LocalSite, figures: Figures, operator_token: str
) -> None:
    pieces = key_fingerprints(security_site)
    assert len(pieces) >= 5, pieces.keys()  # the CA's, three servers', the token key at least
    ms = security_site.management
    # Each server with the best token it accepts: an administrator's log-in token at the
    # management server and the mobile server, a stream token at rs1, a control token on
    # its control link.
    tokens = {
        ("ms", "api"): security_site.login_token(),
        ("ms", "publish"): security_site.login_token(),
        ("mobile1", "https"): security_site.login_token(via="mobile1"),
        ("rs1", "data"): security_site.stream_token("cam1"),
        ("rs1", "control"): TokenSigner.load_or_create(ms.directory / "data" / "token.key").issue(
            "ms", "control", "rs1", 60
        ),
    }
    checked = 0
    for name, listener, method, route in ROUTES:
        if method != "GET":
            continue
        server = security_site.servers[name]
        extra: dict[str, Any] = {"token": tokens[name, listener]}
        if listener == "control":
            extra["client_cert"] = (ms.chain, ms.key)
        path = concrete(route)
        if route.endswith("playback.mjpeg"):
            path += "?from=0&to=86400"
        for token in (extra["token"], operator_token, None):
            answer = get_bounded(server, listener, path, security_site, **{**extra, "token": token})
            assert answer.startswith(b"HTTP/1."), (path, answer[:100])
            assert b"PRIVATE KEY" not in answer, (name, path)
            for key_file, fragments in pieces.items():
                leaked = [f for f in fragments if f.encode() in answer]
                assert not leaked, f"{name} {path} served pieces of {key_file}"
            checked += 1
    figures.notes.append(f"private-key scan: {checked} GET answers checked, none with key material")
