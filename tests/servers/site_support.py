"""Helpers for the end-to-end server tests (issue 3); fixtures are in conftest.py beside it.

Every site here is a `watchkeep.testing.LocalSite`: a CA, and per server a certificate,
key, trust store and config, each server on its own 127.x.y.z address and host name,
run as its own process. Tests talk to the servers the way their peers do: through
`watchkeep.client.call_json` (the one place where connection failures are translated),
raw `ssl` sockets where the connection itself is the subject, and `openssl` as the
independent judge.

What any site's tests need (waiting with `eventually`, the management API as the
administrator, waiting until servers are online or encrypted) is in `watchkeep.testing`;
this module holds what only these tests use.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import ssl
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from watchkeep.client import call_json, open_session
from watchkeep.pki import fingerprint
from watchkeep.servers._tokens import TokenSigner, config_digest
from watchkeep.testing import LocalServer, LocalSite, cameras_by_name, eventually, servers_by_name
from watchkeep.tls import Endpoint, ServerIdentity, TrustMaterial

# Generous: a loaded 2-core machine may take several seconds to start a Python process.
DEADLINE = 30.0


# -- laying out and running ---------------------------------------------------------------


def new_site(root: Path, **kwargs: Any) -> LocalSite:
    site = LocalSite(root, **kwargs)
    site.init_ca()
    return site


def wait_exit(site: LocalSite, name: str, timeout: float = DEADLINE) -> int:
    """Wait for a server process to end by itself; its exit status."""
    process = site.servers[name].process
    assert process is not None, f"{name} was not started"
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"{name} still runs after {timeout:.0f} s:\n{site.log_text(name)}"
        ) from None


def config_tls_paths(server: LocalServer) -> dict[str, Path]:
    """The [tls] files a server's config file points to, resolved as the server does."""
    raw = tomllib.loads(server.config.read_text())
    base = server.config.parent.resolve()
    return {k: (base / v).resolve() for k, v in raw.get("tls", {}).items()}


# -- the CLI, as an administrator ---------------------------------------------------------


def cli_json(site: LocalSite, *args: str) -> Any:
    ran = site.cli(*args, "--json")
    assert ran.returncode == 0, f"watchkeep {' '.join(args)}: {ran.stderr}"
    return json.loads(ran.stdout)


def set_encryption(site: LocalSite, server: str, enabled: bool) -> None:
    ran = site.cli("encryption", "enable" if enabled else "disable", "--server", server)
    assert ran.returncode == 0, f"encryption {enabled} on {server}: {ran.stderr}"


# -- talking to servers as their peers do -------------------------------------------------


def identity_of(server: LocalServer, *, as_host: str | None = None) -> ServerIdentity:
    """The certificate and key a server presents (``as_host``: claiming another name)."""
    return ServerIdentity(
        server=server.name,
        host=as_host or server.host,
        chain=server.chain,
        key=server.key,
        needs_client_auth=True,
    )


def trust_of(directory: Path) -> TrustMaterial:
    return TrustMaterial.load(directory)


def endpoint(server: LocalServer, listener: str, *, tls: bool, host: str | None = None) -> Endpoint:
    return Endpoint(server.name, host or server.host, server.address, server.ports[listener], tls)


def call(
    target: Endpoint,
    method: str,
    path: str,
    *,
    ssl_context: ssl.SSLContext | None = None,
    body: Any = None,
    token: str | None = None,
) -> Any:
    """One JSON request through the client library: a decoded body, or the watchkeep
    error it translated (ApiError for an answer, ConnectionFailed for the connection)."""

    async def go() -> Any:
        async with open_session({target.host: target.address}, timeout=5) as session:
            return await call_json(
                session, target, method, path, ssl_context=ssl_context, body=body, token=token
            )

    return asyncio.run(go())


def raw_response(
    target: Endpoint,
    method: str,
    path: str,
    *,
    ssl_context: ssl.SSLContext | None,
    body: Any = None,
) -> tuple[int, str, Any]:
    """Status, content type and JSON body of one request (for checking the wire format)."""

    async def go() -> tuple[int, str, Any]:
        scheme = "https" if target.tls else "http"
        async with (
            open_session({target.host: target.address}, timeout=5) as session,
            session.request(
                method,
                f"{scheme}://{target.host}:{target.port}{path}",
                json=body,
                ssl=ssl_context if ssl_context is not None else False,
            ) as response,
        ):
            return response.status, response.content_type, await response.json(content_type=None)

    return asyncio.run(go())


def heartbeat_body(
    server: LocalServer, site: LocalSite, *, registration_key: str | None = None
) -> dict[str, Any]:
    """A heartbeat like RecordingServer.heartbeat_body(), with a readiness that is *not*
    ready: if a refusal under test ever disappeared, the management server would still
    not record this made-up heartbeat over the real server's row on an encrypted site."""
    key = registration_key or site.registration_key_file.read_text().strip()
    return {
        "role": server.role.value,
        "host": server.host,
        "address": server.address,
        "ports": server.ports,
        "readiness": {"certificate": None, "trusted_ca_fingerprints": [], "problems": []},
        "encrypted_now": True,
        "registration_key": key,
    }


def control_token(
    site: LocalSite, server: str = "rs1", ttl: float = 60, *, config: Any = None
) -> str:
    """A control-link token for ``server``, signed with the management server's own key,
    as it pushes (``config``: the configuration it pushes, whose digest it carries)."""
    ms = site.management
    signer = TokenSigner.load_or_create(ms.directory / "data" / "token.key")
    claims = {} if config is None else {"body": config_digest(config)}
    return signer.issue(ms.name, "control", server, ttl, **claims)


# -- certificates on the wire -------------------------------------------------------------


def leaf_fingerprint(chain: Path) -> str:
    return fingerprint(x509.load_pem_x509_certificates(chain.read_bytes())[0])


def served_fingerprint(
    server: LocalServer, listener: str, *, identity: ServerIdentity | None = None
) -> str:
    """The SHA-256 fingerprint of the certificate a new TLS connection is served."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if identity is not None:
        context.load_cert_chain(identity.chain, identity.key)
    with (
        socket.create_connection((server.address, server.ports[listener]), timeout=5) as sock,
        context.wrap_socket(sock, server_hostname=server.host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).fingerprint(hashes.SHA256()).hex()


@contextlib.contextmanager
def open_tls_connection(
    server: LocalServer, listener: str, ca_file: Path
) -> Iterator[ssl.SSLSocket]:
    """A verified TLS connection to a listener, kept open by the caller."""
    context = ssl.create_default_context(cafile=str(ca_file))
    context.hostname_checks_common_name = False
    sock = socket.create_connection((server.address, server.ports[listener]), timeout=10)
    tls = context.wrap_socket(sock, server_hostname=server.host)
    try:
        yield tls
    finally:
        tls.close()


_STATUS_LINE = re.compile(rb"^HTTP/1\.1 (\d{3}) ")


def http_exchange(tls: ssl.SSLSocket, host: str, path: str) -> int:
    """Send one keep-alive HTTP/1.1 GET on an open connection; the status of the answer."""
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive\r\n\r\n"
    tls.sendall(request.encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = tls.recv(65536)
        assert chunk, f"the connection closed before an answer; got {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    match = _STATUS_LINE.match(head)
    assert match, f"not an HTTP answer: {head[:200]!r}"
    length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    assert length, f"the answer has no Content-Length: {head!r}"
    remaining = int(length.group(1)) - len(rest)
    while remaining > 0:  # read the whole body, so the next answer starts clean
        chunk = tls.recv(remaining)
        assert chunk, "the connection closed inside an answer"
        remaining -= len(chunk)
    return int(match.group(1))


# -- openssl, the independent judge -------------------------------------------------------


def openssl(*args: str | Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", *map(str, args)],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )


def openssl_fingerprint(cert: Path) -> str:
    """`openssl x509 -fingerprint -sha256` of the first certificate in ``cert``, normalised."""
    ran = openssl("x509", "-in", cert, "-noout", "-fingerprint", "-sha256")
    assert ran.returncode == 0, ran.stderr
    return ran.stdout.strip().split("=", 1)[1].replace(":", "").lower()


def s_client(server: LocalServer, listener: str, ca_file: Path, *options: str) -> str:
    """`openssl s_client` against a listener, verifying like a careful client; its output."""
    ran = openssl(
        "s_client",
        "-connect",
        f"{server.address}:{server.ports[listener]}",
        "-servername",
        server.host,
        "-CAfile",
        ca_file,
        "-verify_hostname",
        server.host,
        "-verify_return_error",
        *options,
    )
    return f"exit {ran.returncode}\n{ran.stdout}\n{ran.stderr}"


def failover_round_trip(site: LocalSite, camera: str) -> None:
    """Kill rs1 with a camera, see fo1 take the camera over, restart rs1, see it return.

    Leaves the site as found: rs1 running and online, the camera deleted.
    """
    # Given a camera assigned to rs1 through the management API
    site.api(
        "POST",
        "/api/v1/cameras",
        {"name": camera, "recording_server": "rs1", "source": {"kind": "synthetic"}},
    )
    try:
        assert cameras_by_name(site.status())[camera]["recording_server"] == "rs1"

        # When rs1 dies without a word (no orderly stop, no last heartbeat)
        site.kill("rs1")

        # Then the management server moves the camera to fo1, which covers rs1
        def taken_over() -> dict[str, Any]:
            status = site.status()
            assert cameras_by_name(status)[camera]["recording_server"] == "fo1"
            servers = servers_by_name(status)
            assert servers["fo1"]["covering"] == "rs1"
            assert not servers["rs1"]["online"]
            return status

        eventually(taken_over, what=f"fo1 records {camera} for rs1")

        # When rs1 comes back
        site.start("rs1")

        # Then the camera goes back to rs1 and fo1 stands by again
        def given_back() -> bool:
            status = site.status()
            assert cameras_by_name(status)[camera]["recording_server"] == "rs1"
            servers = servers_by_name(status)
            assert servers["fo1"]["covering"] is None
            assert servers["rs1"]["online"]
            return True

        eventually(given_back, what=f"{camera} back on rs1")
    finally:
        if site.servers["rs1"].process is None:
            site.start("rs1")
        site.api("DELETE", f"/api/v1/cameras/{camera}")
