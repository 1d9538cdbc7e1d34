"""Fixtures for the certificate-authority tests (issue 2); helpers are in pki_support.py.

Most CAs here use ECDSA P-256 keys, which are made in microseconds; the RSA-3072 default
of `ca init` is exercised where the key type matters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pki_support import LoopbackTLSServer, new_site, run_cli, server_context

from watchkeep._home import Home
from watchkeep.pki import KeyType, Role, SitePKI
from watchkeep.store import CertificateRecord

# Where `rsa_site` says its CA and CRL are published (nothing listens there: the tests
# that use it read certificates, they fetch nothing).
PUBLISH_URL = "http://ms.site.example:9080"


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Home:
    """One ECDSA site CA shared by tests that need *a* CA (they name hosts with unique_host)."""
    return new_site(tmp_path_factory.mktemp("site"))


@pytest.fixture(scope="session")
def rsa_site(tmp_path_factory: pytest.TempPathFactory) -> Home:
    """A site CA made by `ca init` with its defaults (RSA-3072, 10 years), publishing its
    certificate and CRL at a management server's publish listener."""
    root = tmp_path_factory.mktemp("rsa-site")
    ran = run_cli(root, "ca", "init", "--name", "Default Site CA", "--publish-url", PUBLISH_URL)
    assert ran.code == 0, ran.err
    return Home(root)


@pytest.fixture(scope="session")
def other_site(tmp_path_factory: pytest.TempPathFactory) -> Home:
    """A second, unrelated CA: one that verifiers of the first site must not trust."""
    return new_site(tmp_path_factory.mktemp("other-site"), name="Other CA")


@pytest.fixture
def home(tmp_path: Path) -> Home:
    """A fresh site with its own CA, for tests that count files or inventory rows."""
    return new_site(tmp_path / "home")


@pytest.fixture
def issue() -> Callable[..., CertificateRecord]:
    """Issue through the API: ``issue(home, role, *hosts, key_type=..., now=..., ...)``."""

    def _issue(
        home: Home,
        role: str,
        *hosts: str,
        key_type: KeyType = KeyType.ECDSA_P256,
        **kwargs: Any,
    ) -> CertificateRecord:
        return SitePKI(home).issue(Role(role), list(hosts), key_type=key_type, **kwargs)

    return _issue


@pytest.fixture
def tls_server() -> Iterator[Callable[..., LoopbackTLSServer]]:
    """Start TLS servers on loopback: ``tls_server(cert_or_chain, key, address)``."""
    servers: list[LoopbackTLSServer] = []

    def start(cert: Path | str, key: Path | str, address: str = "127.0.0.2") -> LoopbackTLSServer:
        server = LoopbackTLSServer(server_context(cert, key), address)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()
