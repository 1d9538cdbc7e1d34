"""Fetching the site CA by its fingerprint (`trust install --from URL --fingerprint HEX`):
only the certificate with that fingerprint is taken, whatever else the answer holds.

A plain `http.server` on loopback plays the management server, answering what each test
chooses; the end-to-end runs against a real management server are in
tests/servers/test_publication.py.
"""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives import serialization
from pki_support import new_site

from watchkeep.errors import ConnectionFailed, TrustError, UsageError
from watchkeep.pki import SitePKI, fingerprint
from watchkeep.trust import fetch_ca_by_fingerprint, normalise_fingerprint


class Answer:
    """What the loopback server answers, and the paths it was asked for."""

    def __init__(self) -> None:
        self.body = b""
        self.paths: list[str] = []


@pytest.fixture
def served() -> Iterator[tuple[str, Answer]]:
    """(base URL, the answer to set) of a loopback HTTP server answering GET with it."""
    answer = Answer()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            answer.paths.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/pem-certificate-chain")
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            self.wfile.write(answer.body)

        def log_message(self, *_args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", answer
    finally:
        server.shutdown()
        server.server_close()


def pem(site: SitePKI) -> bytes:
    return site.ca_certificate().public_bytes(serialization.Encoding.PEM)


def test_only_the_ca_with_the_fingerprint_is_taken_from_a_bundle(
    served: tuple[str, Answer], tmp_path_factory: pytest.TempPathFactory
) -> None:
    # Given a bundle of two CAs (a rotation), each asked for by its fingerprint
    old = SitePKI(new_site(tmp_path_factory.mktemp("old"), name="Old CA"))
    new = SitePKI(new_site(tmp_path_factory.mktemp("new"), name="New CA"))
    url, answer = served
    answer.body = pem(old) + pem(new)
    for site in (old, new):
        wanted = fingerprint(site.ca_certificate())
        assert fetch_ca_by_fingerprint(url, wanted) == site.ca_certificate()
    assert answer.paths == ["/api/v1/ca", "/api/v1/ca"]

    # When neither has the fingerprint given, both served fingerprints are named
    with pytest.raises(TrustError) as refused:
        fetch_ca_by_fingerprint(url, "cd" * 32)
    message = str(refused.value)
    assert fingerprint(old.ca_certificate()) in message
    assert fingerprint(new.ca_certificate()) in message
    assert "cd" * 32 in message


@pytest.mark.parametrize("body", [b"", b"<html>captive portal</html>", b"-----BEGIN CERT"])
def test_an_answer_without_a_certificate_is_a_connection_failure(
    served: tuple[str, Answer], body: bytes
) -> None:
    url, answer = served
    answer.body = body
    with pytest.raises(ConnectionFailed, match="holds no PEM certificate"):
        fetch_ca_by_fingerprint(url, "ab" * 32)


def test_nothing_listening_is_a_connection_failure() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ConnectionFailed) as failed:
        fetch_ca_by_fingerprint(f"https://127.0.0.1:{port}", "ab" * 32)
    assert failed.value.fix


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("AB:" * 31 + "AB", True),
        ("ab" * 32, True),
        ("ab" * 31, False),  # too short
        ("zz" * 32, False),  # not hex
        ("", False),
    ],
)
def test_fingerprints_are_64_hex_digits_with_or_without_colons(text: str, ok: bool) -> None:
    if ok:
        assert normalise_fingerprint(text) == "ab" * 32
    else:
        with pytest.raises(UsageError):
            normalise_fingerprint(text)


@pytest.mark.parametrize("url", ["ftp://ms.site.example", "ms.site.example:9000", "https://"])
def test_the_source_is_an_http_or_https_url(url: str) -> None:
    with pytest.raises(UsageError):
        fetch_ca_by_fingerprint(url, "ab" * 32)
