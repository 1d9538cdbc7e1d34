"""The encrypted site: what changes for the CLI, for openssl, on every listener, and the
order in which encryption may be turned off again.

Given a management server, a recording server and a failover server on which the
administrator enabled encryption on rs1, fo1 and then ms (the `encrypted_site` fixture).
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest
from site_support import (
    call,
    endpoint,
    failover_round_trip,
    leaf_fingerprint,
    new_site,
    s_client,
    served_fingerprint,
    set_encryption,
    trust_of,
)

from watchkeep.client import ApiError, SiteClient, SiteConnection
from watchkeep.errors import HostnameMismatch, UntrustedIssuer
from watchkeep.testing import LocalSite, eventually, servers_by_name
from watchkeep.tls import Endpoint, client_context, speaks_tls


def test_the_cli_now_speaks_https_to_the_management_server(encrypted: LocalSite) -> None:
    # When the administrator asks for the site status
    ran = encrypted.cli("site", "status", "--json")

    # Then it works, over TLS, and the CLI remembers never to fall back to plaintext
    assert ran.returncode == 0, ran.stderr
    servers = servers_by_name(json.loads(ran.stdout))
    assert all(s["encryption"] for s in servers.values())
    assert SiteConnection.load(encrypted.home).encryption is True


def test_openssl_verifies_the_management_server_certificate_and_host_name(
    encrypted: LocalSite,
) -> None:
    # When openssl, verifying chain and host name, connects to the management API
    output = s_client(encrypted.management, "api", encrypted.home.ca_cert)

    # Then the verification succeeds and a session with TLS 1.2 or later is made
    assert output.startswith("exit 0"), output
    assert "Verify return code: 0 (ok)" in output, output
    assert re.search(r"New, TLSv1\.[23], Cipher is", output), output


def test_the_management_server_refuses_tls_1_1(encrypted: LocalSite) -> None:
    # When openssl offers only TLS 1.1 (SECLEVEL=0: OpenSSL 3 would refuse TLS 1.1 itself
    # otherwise, and the test could not fail if the server accepted it)
    output = s_client(
        encrypted.management,
        "api",
        encrypted.home.ca_cert,
        "-tls1_1",
        "-cipher",
        "DEFAULT@SECLEVEL=0",
    )

    # Then no session is made
    assert output.startswith("exit 1"), output
    assert "Cipher is (NONE)" in output, output
    assert "no peer certificate available" in output, output


def test_a_recording_server_data_port_speaks_tls_with_its_own_certificate(
    encrypted: LocalSite,
) -> None:
    rs1 = encrypted.servers["rs1"]

    # When a client connects to rs1's data port
    tls = asyncio.run(speaks_tls(endpoint(rs1, "data", tls=True)))

    # Then the port speaks TLS and serves rs1's certificate
    assert tls is True
    assert served_fingerprint(rs1, "data") == leaf_fingerprint(rs1.chain)
    # and a verified client is answered (401: no token, but an HTTP answer over TLS)
    context = client_context(trust_of(encrypted.home.trust_dir))
    with pytest.raises(ApiError) as answer:
        call(endpoint(rs1, "data", tls=True), "GET", "/api/v1/status", ssl_context=context)
    assert answer.value.status == 401


def test_recording_servers_keep_heartbeating_over_mutual_tls(encrypted: LocalSite) -> None:
    # Given the management server speaks TLS only (a plaintext heartbeat cannot arrive)
    assert asyncio.run(speaks_tls(endpoint(encrypted.management, "api", tls=True))) is True
    before = servers_by_name(encrypted.status())

    # Then rs1 and fo1 stay online, heard again after this moment
    def heard_again() -> bool:
        now = servers_by_name(encrypted.status())
        for name in ("rs1", "fo1"):
            assert now[name]["online"], now[name]
            assert now[name]["encrypted_now"], now[name]
            assert now[name]["last_seen"] > before[name]["last_seen"], now[name]
        return True

    eventually(heard_again, what="rs1 and fo1 heartbeats over TLS")


def test_a_recording_server_cannot_drop_encryption_while_the_management_server_has_it(
    encrypted: LocalSite,
) -> None:
    # When the administrator disables rs1's encryption first
    ran = encrypted.cli("encryption", "disable", "--server", "rs1")

    # Then it is refused, on one line that names the rule and the order to follow
    assert ran.returncode == 1, ran.stdout
    assert len(ran.stderr.splitlines()) == 1, ran.stderr
    assert "site.ms_requires_all_rs" in ran.stderr
    assert "watchkeep encryption disable --server ms" in ran.stderr
    assert servers_by_name(encrypted.status())["rs1"]["encryption"] is True


def test_a_client_of_another_ca_is_told_the_issuer_is_untrusted(
    encrypted: LocalSite, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # Given a client whose trust store holds another site's CA only
    other = new_site(tmp_path_factory.mktemp("other-ca"))
    rs1 = encrypted.servers["rs1"]

    # When it connects to rs1's data port
    with pytest.raises(UntrustedIssuer) as refused:
        call(
            endpoint(rs1, "data", tls=True),
            "GET",
            "/api/v1/status",
            ssl_context=client_context(trust_of(other.home.trust_dir)),
        )

    # Then the error names the issuer it does not trust and the rule
    message = str(refused.value)
    assert "watchkeep Test Site CA" in message
    assert "trust.installed" in message
    assert "rs1" in message


def test_a_client_that_expects_another_host_is_told_the_names_the_certificate_holds(
    encrypted: LocalSite,
) -> None:
    # Given a client that believes rs1's address belongs to fo1.site.test
    rs1 = encrypted.servers["rs1"]
    wrong = Endpoint("fo1", "fo1.site.test", rs1.address, rs1.ports["data"], True)

    # When it connects
    with pytest.raises(HostnameMismatch) as refused:
        call(
            wrong,
            "GET",
            "/api/v1/status",
            ssl_context=client_context(trust_of(encrypted.home.trust_dir)),
        )

    # Then the error lists the names rs1's certificate really holds
    assert refused.value.host == "fo1.site.test"
    assert rs1.host in refused.value.names
    assert rs1.address in refused.value.names
    assert rs1.host in str(refused.value)
    assert "cert.hostname" in str(refused.value)


def test_a_killed_recording_server_is_covered_over_encrypted_links_and_returns(
    encrypted: LocalSite,
) -> None:
    failover_round_trip(encrypted, "cam-encrypted")


def test_encryption_comes_off_in_order_management_server_first(encrypted: LocalSite) -> None:
    rs1 = encrypted.servers["rs1"]

    # When the administrator disables the management server's encryption and, in the same
    # session and at once, asks for the site status
    async def disable_ms() -> dict[str, Any]:
        async with SiteClient(encrypted.home) as client:
            await client.set_encryption("ms", False)
            return await client.status()

    assert servers_by_name(asyncio.run(disable_ms()))["ms"]["encryption"] is False

    # Then this home speaks plaintext to the management server from now on
    assert SiteConnection.load(encrypted.home).encryption is False
    assert asyncio.run(speaks_tls(endpoint(encrypted.management, "api", tls=False))) is False

    # When rs1's encryption is disabled next
    set_encryption(encrypted, "rs1", False)

    # Then rs1's data port speaks plaintext, and both recording servers stay online,
    # heartbeating to the now plaintext management server
    seen = servers_by_name(encrypted.status())

    def back_to_plaintext() -> bool:
        assert asyncio.run(speaks_tls(endpoint(rs1, "data", tls=False))) is False
        servers = servers_by_name(encrypted.status())
        assert servers["rs1"]["encryption"] is False
        for name in ("rs1", "fo1"):
            assert servers[name]["online"], servers[name]
            assert servers[name]["last_seen"] > seen[name]["last_seen"], servers[name]
        return True

    eventually(back_to_plaintext, what="rs1 in plaintext, rs1 and fo1 heard from")
    # (the management server switched as the one that was asked, not as one that follows
    # a change made at another management server of the site)
    assert "at another management server" not in encrypted.log_text("ms")
