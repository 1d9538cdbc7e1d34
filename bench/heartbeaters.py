"""Simulated recording servers for bench.ms_scale: one process speaks for many.

    python -m bench.heartbeaters SPEC.json   (writes its result where the spec says)

Each simulated server speaks the real protocol as a recording server does: its own
certificate and key (issued by the site CA) presented on a TLS connection of its own to the
management server (mutual TLS), a heartbeat a second (``POST
/api/v1/servers/NAME/heartbeat``, the body a recording server sends: role, host, address,
ports, readiness, its renewal report, the digest of the configuration it was last given),
and the configuration of each answer taken (its digest sent back next time). Some renew
their certificate meanwhile (``POST /api/v1/renewals``: a new key, a CSR, the proof signed
with the current key) and go on with the new one, on a new connection.

The load generator must cost far less than the server it measures (they share the
machine), so the connection is kept open from one heartbeat to the next (HTTP/1.1
keep-alive: a handshake at the start, and again only if the server closes it), a body is
encoded again only when what it says changes, and HTTP is written and read here
(Content-Length bodies, which is what the management server sends) on uvloop, not through
a general client.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import ssl
import sys
import time
from pathlib import Path
from typing import Any

from bench._common import new_event_loop

CALL_TIMEOUT = 30.0  # seconds for a heartbeat (or renewal) before it counts as failed
BODY_REFRESH = 60.0  # seconds: the readiness (its days left) is said again this often


class _Failed(Exception):
    """A call answered with something other than a whole HTTP response."""


async def _call(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes, body: bytes
) -> tuple[int, bytes, bool]:
    """One request on a kept-alive connection: its status, body, and whether the server
    keeps the connection open."""
    writer.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
    response = await reader.readuntil(b"\r\n\r\n")
    lines = response.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise _Failed(f"not an HTTP response: {lines[0][:80]!r}")
    length, keep = None, True
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection" and value.strip().lower() == b"close":
            keep = False
    if length is None:
        raise _Failed("an answer without Content-Length")
    return int(parts[1]), await reader.readexactly(length), keep


class _Server:
    """One simulated recording server."""

    def __init__(self, spec: dict[str, Any], server: dict[str, Any], stats: _Stats) -> None:
        self.spec = spec
        self.server = server
        self.stats = stats
        self.chain, self.key = Path(server["chain"]), Path(server["key"])
        self.digest = ""
        self.renewal: dict[str, Any] = {"serial": None, "renewals": 0, "failures": 0}
        self._context: ssl.SSLContext | None = None
        self._body: tuple[float, str, bytes] | None = None  # (made at, digest, body)
        self._connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        ms = spec["ms"]
        self._head = (
            f"POST /api/v1/servers/{server['name']}/heartbeat HTTP/1.1\r\n"
            f"Host: {ms['host']}:{ms['port']}\r\nContent-Type: application/json\r\n"
        ).encode()

    def context(self) -> ssl.SSLContext:
        if self._context is None:
            context = ssl.create_default_context(cafile=self.spec["ca"])
            context.load_cert_chain(self.chain, self.key)
            self._context = context
        return self._context

    async def connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._connection is None:
            ms = self.spec["ms"]
            self._connection = await asyncio.open_connection(
                ms["address"], ms["port"], ssl=self.context(), server_hostname=ms["host"]
            )
            self.stats.handshakes += 1
        return self._connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection[1].transport.abort()
            self._connection = None

    def body(self) -> bytes:
        now = time.time()
        if self._body is None or self._body[1] != self.digest or now - self._body[0] > BODY_REFRESH:
            self._body = (now, self.digest, json.dumps(self._heartbeat()).encode())
        return self._body[2]

    def _heartbeat(self) -> dict[str, Any]:
        from cryptography import x509

        from watchkeep.servers._base import certificate_status
        from watchkeep.site import Readiness

        leaf = x509.load_pem_x509_certificate(self.chain.read_bytes())
        self.renewal["serial"] = format(leaf.serial_number, "x")
        status = certificate_status(leaf)
        now = dt.datetime.now(dt.UTC)
        return {
            "role": "recording",
            "host": self.server["host"],
            "address": self.server["address"],
            "ports": {"data": 7563, "control": 9001},
            "readiness": Readiness(status, (self.spec["ca_fingerprint"],)).as_json(now),
            "encrypted_now": True,
            "registration_key": self.spec["registration_key"],
            "config_digest": self.digest,
            "camera_problems": {},
            "renewal": self.renewal,
        }

    async def heartbeat(self) -> None:
        stats = self.stats
        sent = time.time()
        started = time.perf_counter()
        try:
            reader, writer = await asyncio.wait_for(self.connection(), CALL_TIMEOUT)
            status, body, keep = await asyncio.wait_for(
                _call(reader, writer, self._head, self.body()), CALL_TIMEOUT
            )
        except (OSError, ssl.SSLError, TimeoutError, asyncio.IncompleteReadError, _Failed,
                ValueError) as exc:  # fmt: skip
            stats.error(type(exc).__name__)
            self.close()
            return
        elapsed = time.perf_counter() - started
        if not keep:
            stats.closed += 1
            self.close()
        if status != 200:
            try:
                answer = json.loads(body)
                stats.error(f"HTTP {status}: {answer.get('title')}")
            except ValueError:
                stats.error(f"HTTP {status}")
            return
        answer = json.loads(body)
        if answer.get("unchanged") is not True:
            stats.full_answers += 1
            stats.full_bytes += len(body)
        self.digest = str(answer.get("config_digest") or "")
        stats.registered.setdefault(self.server["name"], sent + elapsed)
        stats.latencies.append((sent, elapsed))

    async def renew(self) -> None:
        """Renew this server's certificate through the management server, as a recording
        server does (servers._renewal), and go on with the new one."""
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        from watchkeep.pki import load_private_key
        from watchkeep.servers._renewal import renewal_request

        stats = self.stats
        leaf = x509.load_pem_x509_certificate(self.chain.read_bytes())
        new_key = ec.generate_private_key(ec.SECP256R1())
        request = renewal_request(leaf, load_private_key(self.key), new_key,
                                  audience=self.spec["ms"]["host"],
                                  now=dt.datetime.now(dt.UTC))  # fmt: skip
        ms = self.spec["ms"]
        head = (
            f"POST /api/v1/renewals HTTP/1.1\r\nHost: {ms['host']}:{ms['port']}\r\n"
            "Content-Type: application/json\r\n"
        ).encode()
        started = time.perf_counter()
        try:
            reader, writer = await asyncio.wait_for(self.connection(), CALL_TIMEOUT)
            status, body, _keep = await asyncio.wait_for(
                _call(reader, writer, head, json.dumps(request).encode()), CALL_TIMEOUT
            )
            chain = str(json.loads(body).get("chain", "")) if status == 200 else ""
        except (OSError, ssl.SSLError, TimeoutError, asyncio.IncompleteReadError, _Failed,
                ValueError) as exc:  # fmt: skip
            stats.error(f"renewal {type(exc).__name__}")
            self.close()
            return
        new = x509.load_pem_x509_certificates(chain.encode()) if chain else []
        mine = new_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if (
            not new
            or new[0]
            .public_key()
            .public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            != mine
        ):
            stats.error(f"renewal HTTP {status}")
            self.renewal["failures"] += 1
            return
        stats.renewals.append(time.perf_counter() - started)
        self.key = self.key.with_name(self.key.name + ".renewed")
        self.chain = self.chain.with_name(self.chain.name + ".renewed")
        pem = new_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self.key.write_bytes(pem)
        self.chain.write_text(chain)
        self.renewal["renewals"] += 1
        self.renewal["last_renewed_at"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        # The next heartbeat presents the new certificate, on a new connection.
        self._context = self._body = None
        self.close()


class _Stats:
    def __init__(self) -> None:
        self.registered: dict[str, float] = {}
        self.latencies: list[tuple[float, float]] = []  # (sent at, seconds)
        self.renewals: list[float] = []  # seconds each
        self.errors: dict[str, int] = {}
        self.handshakes = 0
        self.closed = 0  # connections the management server closed after an answer
        self.full_answers = 0  # answers that carried the whole configuration
        self.full_bytes = 0

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


async def _simulate(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the servers of ``spec`` until ``spec["until"]`` (epoch seconds); what they saw."""
    stats = _Stats()
    servers = [_Server(spec, s, stats) for s in spec["servers"]]
    renew_at = {int(k): float(v) for k, v in spec.get("renew_at", {}).items()}
    count = len(servers)
    spread = float(spec.get("spread", 1.0))  # seconds over which its servers start
    started = time.time()

    async def one(index: int, server: _Server) -> None:
        await asyncio.sleep(spread * index / max(count, 1))
        renewal = renew_at.get(index)
        while time.time() < spec["until"]:
            sent = time.time()
            await server.heartbeat()
            if renewal is not None and time.time() >= renewal:
                renewal = None
                await server.renew()
            await asyncio.sleep(max(0.0, 1.0 - (time.time() - sent)))
        server.close()

    await asyncio.gather(*(one(i, s) for i, s in enumerate(servers)))
    return {
        "registered": stats.registered,
        "latencies": stats.latencies,
        "renewals": stats.renewals,
        "errors": stats.errors,
        "handshakes": stats.handshakes,
        "closed": stats.closed,
        "full_answers": stats.full_answers,
        "full_bytes": stats.full_bytes,
        "started": started,
    }


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    if spec.get("cpus"):
        os.sched_setaffinity(0, spec["cpus"])
    loop = new_event_loop()
    try:
        result = loop.run_until_complete(_simulate(spec))
    finally:
        loop.close()
    Path(spec["out"]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
