"""The TLS probe against real listeners on loopback: what must be refused is tried, and a
listener that accepts it is caught; every probe is bounded in time.

Listeners: watchkeep's own server context (the policy under test is the real one),
`openssl s_server` accepting everything (the independent bad example), and small asyncio
servers for the odd cases (TLS 1.0 with a required client certificate, plaintext, silence).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tool_support import free_port, openssl_s_server
from watchkeep._home import Home
from watchkeep.doctor import ProbeResult, ProbeTarget, probe_endpoint, probe_endpoints, tls_targets
from watchkeep.pki import KeyType, Role, SitePKI
from watchkeep.tls import ServerIdentity, TlsPolicy, server_context
from watchkeep.tls._policy import INTERMEDIATE_CIPHERS
from watchkeep.trust import DirectoryTrustStore

HOST = "probe.site.test"
ADDRESS = "127.0.0.1"


class Material:
    def __init__(self, root: Path) -> None:
        self.home = Home(root)
        pki = SitePKI(self.home)
        pki.init_ca("Probe Test CA", key_type=KeyType.ECDSA_P256)
        record = pki.issue(Role.RECORDING, [HOST], key_type=KeyType.ECDSA_P256, out=root / "tls")
        self.chain = Path(record.chain_path)
        self.key = Path(str(record.key_path))
        self.ca = self.home.ca_cert
        self.trust = root / "trust"
        DirectoryTrustStore(self.trust).install(pki.ca_certificate())


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> Material:
    return Material(tmp_path_factory.mktemp("probe"))


def target(port: int) -> ProbeTarget:
    return ProbeTarget("x", "data", HOST, ADDRESS, port)


@contextlib.asynccontextmanager
async def serving(
    context: ssl.SSLContext | None, *, answer: bytes | None = None
) -> AsyncIterator[int]:
    """An asyncio server on a free port: TLS with ``context`` (None: plaintext), answering
    ``answer`` to whatever it reads (None: silence)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await reader.read(1024)
            if answer is not None:
                writer.write(answer)
                await writer.drain()
            else:
                await asyncio.sleep(30)
        writer.close()

    server = await asyncio.start_server(
        handle, ADDRESS, 0, ssl=context, ssl_handshake_timeout=5 if context else None
    )
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


def probe_with(
    context: ssl.SSLContext | None, *, answer: bytes | None = b"", timeout: float = 5.0
) -> ProbeResult:
    async def go() -> ProbeResult:
        async with serving(context, answer=answer) as port:
            return await probe_endpoint(target(port), timeout=timeout)

    return asyncio.run(go())


def test_a_watchkeep_listener_refuses_every_forbidden_handshake(material: Material) -> None:
    # Given a listener with watchkeep's own server context (intermediate policy)
    identity = ServerIdentity("x", HOST, material.chain, material.key)
    context = server_context(identity, TlsPolicy.INTERMEDIATE)

    # When the doctor probes it
    result = probe_with(context)

    # Then it sees the complete chain over TLS 1.3 and nothing forbidden is accepted
    assert result.error is None
    assert result.version == "TLSv1.3"
    assert [c.subject.rfc4514_string() for c in result.chain] == [
        f"CN={HOST}",
        "CN=Probe Test CA",
    ]
    assert result.weak_accepted == ()


def test_a_listener_that_accepts_tls_1_0_behind_a_required_client_certificate(
    material: Material,
) -> None:
    # Given a listener that allows TLS 1.0 and old suites but requires a client certificate
    # (as a recording server's control link does): the doctor has none to present
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with pytest.warns(DeprecationWarning, match="TLSv1"):
        context.minimum_version = ssl.TLSVersion.TLSv1
    context.set_ciphers("ALL:@SECLEVEL=0")
    context.load_cert_chain(material.chain, material.key)
    context.load_verify_locations(cafile=str(material.ca))
    context.verify_mode = ssl.CERT_REQUIRED

    # When the doctor probes it
    result = probe_with(context)

    # Then the server agreeing to TLS 1.0, 1.1 and a weak suite counts, though every one
    # of those handshakes then fails for want of a client certificate
    assert [w.split(" (")[0] for w in result.weak_accepted] == [
        "TLSv1.0",
        "TLSv1.1",
        "TLSv1.2 with a weak suite",
    ]


@pytest.fixture
def openssl_anything(material: Material) -> Iterator[int]:
    """`openssl s_server` accepting TLS 1.0-1.3 and every suite, serving leaf only."""
    port = free_port(ADDRESS)
    with openssl_s_server(
        ADDRESS, port, material.chain, material.key, "-cipher", "ALL:@SECLEVEL=0"
    ):
        yield port


def test_openssl_accepting_everything_is_caught(openssl_anything: int) -> None:
    result = asyncio.run(probe_endpoint(target(openssl_anything)))
    assert result.error is None
    assert [w.split(" (")[0] for w in result.weak_accepted] == [
        "TLSv1.0",
        "TLSv1.1",
        "TLSv1.2 with a weak suite",
    ]
    # The weak suite is named as negotiated, and is none of the intermediate ones
    weak_suite = result.weak_accepted[2].split(" (")[1].rstrip(")")
    assert weak_suite
    assert weak_suite not in INTERMEDIATE_CIPHERS.split(":")
    # Without -cert_chain, openssl serves the leaf alone: an incomplete chain
    assert len(result.chain) == 1


def test_a_plaintext_listener_is_told_apart() -> None:
    result = probe_with(None, answer=b"HTTP/1.1 400 Bad Request\r\n\r\n")
    assert result.plaintext
    assert result.chain == ()


def test_a_closed_port() -> None:
    result = asyncio.run(probe_endpoint(target(free_port(ADDRESS)), timeout=2))
    assert result.error == "connection refused (nothing listens there)"
    assert not result.plaintext


def test_a_silent_listener_is_given_up_on_in_time() -> None:
    # Given listeners that accept connections and never answer
    async def go() -> tuple[list[ProbeResult], float]:
        async with serving(None, answer=None) as a, serving(None, answer=None) as b:
            start = time.monotonic()
            results = await probe_endpoints([target(a), target(b)], timeout=0.5)
            return results, time.monotonic() - start

    results, elapsed = asyncio.run(go())

    # Then each probe ends at its timeout, and the probes run side by side
    assert [r.error for r in results] == ["no answer in time", "no answer in time"]
    assert elapsed < 2.0


def test_the_listeners_to_probe_follow_the_status_contract() -> None:
    status = {
        "servers": [
            {
                "name": "ms",
                "role": "management",
                "host": "ms.t",
                "address": "127.0.0.2",
                "ports": {"api": 9000},
                "encryption": True,
            },
            {
                "name": "rs1",
                "role": "recording",
                "host": "rs1.t",
                "address": "127.0.0.3",
                "ports": {"data": 7563, "control": 9001},
                "encryption": False,
            },
            {
                "name": "mob",
                "role": "mobile",
                "host": "mob.t",
                "address": "127.0.0.4",
                "ports": {"http": 8081, "https": 8082},
                "encryption": True,
            },
        ]
    }
    # The control link carries the management link: TLS when the management server's
    # encryption is on, whatever the recording server's; `http` is always plaintext.
    assert [(t.server, t.listener) for t in tls_targets(status)] == [
        ("ms", "api"),
        ("rs1", "control"),
        ("mob", "https"),
    ]
