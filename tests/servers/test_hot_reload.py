"""Certificate hot reload: a renewed certificate reaches new connections without a
restart, open connections carry on, SIGHUP reloads at once, and broken files are refused
while the working certificate stays in service.

Given the encrypted site; rs1's certificate is renewed in place, where its config file
points (the CA writes renewals where the certificate was installed).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from site_support import (
    cli_json,
    config_tls_paths,
    http_exchange,
    identity_of,
    open_tls_connection,
    served_fingerprint,
)

from watchkeep._files import atomic_write
from watchkeep.pki import Role, certificate_name
from watchkeep.testing import LocalServer, LocalSite, eventually, servers_by_name


def renew_in_place(site: LocalSite, server: LocalServer) -> dict[str, Any]:
    """`watchkeep cert renew NAME`, checking it rewrote the files the server's config names."""
    name = certificate_name(Role(server.role.value), server.host)
    renewed: dict[str, Any] = cli_json(site, "cert", "renew", name)
    paths = config_tls_paths(server)
    assert Path(renewed["chain_path"]) == paths["certificate"]
    assert Path(renewed["key_path"]) == paths["key"]
    return renewed


def serves(site: LocalSite, server: LocalServer, fingerprint: str) -> bool:
    """Both of rs1's listeners hand ``fingerprint`` to a new connection (the control port
    to the management server's certificate, the only one it lets in)."""
    assert served_fingerprint(server, "data") == fingerprint
    ms = identity_of(site.management)
    assert served_fingerprint(server, "control", identity=ms) == fingerprint
    return True


def test_a_renewed_certificate_reaches_new_connections_while_an_open_one_continues(
    encrypted: LocalSite,
) -> None:
    rs1 = encrypted.servers["rs1"]
    old = served_fingerprint(rs1, "data")

    # Given an open keep-alive TLS connection to rs1's data port, answered once
    with open_tls_connection(rs1, "data", encrypted.home.ca_cert) as connection:
        assert http_exchange(connection, rs1.host, "/api/v1/status") == 401

        # When rs1's certificate is renewed in place
        renewed = renew_in_place(encrypted, rs1)
        assert renewed["sha256_fingerprint"] != old

        # Then new connections are served the new certificate, on both listeners
        eventually(
            lambda: serves(encrypted, rs1, renewed["sha256_fingerprint"]),
            what="rs1 serving its renewed certificate",
        )
        # and the connection opened before still answers
        assert http_exchange(connection, rs1.host, "/api/v1/status") == 401

    # and the management server learns the new certificate from rs1's heartbeats
    def reported() -> bool:
        cert = servers_by_name(encrypted.status())["rs1"]["certificate"]
        assert cert["sha256_fingerprint"] == renewed["sha256_fingerprint"], cert
        return True

    eventually(reported, what="site status showing rs1's renewed certificate")


def test_sighup_reloads_the_certificate_at_once(encrypted: LocalSite) -> None:
    rs1 = encrypted.servers["rs1"]
    paths = config_tls_paths(rs1)
    times = {p: p.stat() for p in (paths["certificate"], paths["key"])}

    # Given rs1's certificate renewed in place with the files' times put back at once, so
    # that the file watch (every 2 s, by modification time) does not see the change
    record = encrypted.pki.renew(certificate_name(Role(rs1.role.value), rs1.host))
    for path, st in times.items():
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert Path(record.chain_path) == paths["certificate"]

    # When rs1 gets SIGHUP
    assert rs1.process is not None
    rs1.process.send_signal(signal.SIGHUP)

    # Then it serves the new certificate on both listeners
    eventually(
        lambda: serves(encrypted, rs1, record.sha256_fingerprint),
        what="rs1 serving its renewed certificate after SIGHUP",
    )


def test_a_broken_certificate_file_is_refused_and_the_working_one_kept(
    encrypted: LocalSite,
) -> None:
    rs1 = encrypted.servers["rs1"]
    chain = config_tls_paths(rs1)["certificate"]
    good = chain.read_bytes()
    before = served_fingerprint(rs1, "data")
    log_start = len(encrypted.log_text("rs1"))

    # When the certificate file is replaced by garbage
    atomic_write(chain, b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n")
    try:
        # Then rs1 says, on one line naming the file, that it keeps the working certificate
        def complained() -> str:
            new = encrypted.log_text("rs1")[log_start:]
            lines = [line for line in new.splitlines() if "keeping the certificate in use" in line]
            assert lines, new
            return lines[0]

        line = eventually(complained, what="rs1 logging the broken certificate file")
        assert str(chain) in line
        # and goes on serving the working certificate to new connections
        assert serves(encrypted, rs1, before)
    finally:
        atomic_write(chain, good)
