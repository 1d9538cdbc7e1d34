"""`watchkeep encryption enable` refuses while a server is not ready, and says who.

Given a site whose recording server rs1 is prepared, whose failover server fo1 holds a
certificate but does not trust the site CA (trust.installed), and whose recording server
rs2 has no certificate at all; all of them run and are registered, in plaintext.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from watchkeep.site import ServerRole
from watchkeep.testing import LocalSite, eventually, servers_by_name


@pytest.fixture(scope="module")
def unready_site(site_factory: Callable[..., LocalSite]) -> LocalSite:
    site = site_factory("unready")
    site.add_server("ms", ServerRole.MANAGEMENT)
    site.add_server("rs1", ServerRole.RECORDING)
    site.add_server("fo1", ServerRole.FAILOVER, trust=False)
    site.add_server("rs2", ServerRole.RECORDING, certificate=False)
    site.start_together("ms", "rs1", "fo1", "rs2")
    site.connect_cli()
    site.wait_online("rs1", "fo1", "rs2")
    return site


def refusal(site: LocalSite, server: str) -> str:
    """The one stderr line of a refused `encryption enable --server SERVER`."""
    ran = site.cli("encryption", "enable", "--server", server)
    assert ran.returncode == 1, f"not refused (exit {ran.returncode}): {ran.stdout}{ran.stderr}"
    lines = ran.stderr.splitlines()
    assert len(lines) == 1, ran.stderr
    return lines[0]


def assert_nothing_changed(site: LocalSite) -> None:
    servers = servers_by_name(site.status())
    assert {n: s["encryption"] for n, s in servers.items()} == dict.fromkeys(servers, False)


def test_the_management_server_refuses_encryption_and_names_every_server_not_ready(
    unready_site: LocalSite,
) -> None:
    # When the administrator enables the management server's encryption
    line = refusal(unready_site, "ms")

    # Then the refusal names the rule and every recording and failover server not ready
    assert "site.ms_requires_all_rs" in line
    for name in ("rs1", "fo1", "rs2"):
        assert f"{name}:" in line, f"{name} missing from: {line}"
    assert "trust.installed" in line or "site.failover_prepared" in line
    assert "fix:" in line
    # and nothing was half done
    assert_nothing_changed(unready_site)


def test_a_recording_server_refuses_encryption_while_its_failover_server_is_unprepared(
    unready_site: LocalSite,
) -> None:
    # When the administrator enables rs1's encryption (rs1 itself is ready)
    line = refusal(unready_site, "rs1")

    # Then it is refused because fo1, which stands in for rs1, does not trust the CA
    assert "site.failover_prepared" in line or "trust.installed" in line
    assert "fo1:" in line
    assert_nothing_changed(unready_site)


def test_a_server_without_a_certificate_refuses_encryption(unready_site: LocalSite) -> None:
    # When the administrator enables encryption on rs2, which has no certificate
    line = refusal(unready_site, "rs2")

    # Then the refusal says so, for rs2
    assert "rs2:" in line
    assert "certificate" in line
    assert_nothing_changed(unready_site)


def test_the_refusals_are_lifted_once_the_failover_server_trusts_the_ca(
    unready_site: LocalSite,
) -> None:
    # Given fo1's trust store receives the site CA and its CRL
    fo1 = unready_site.servers["fo1"]
    unready_site.trust(fo1)

    # Then fo1 reports itself ready without a restart, and rs1's encryption is allowed
    def fo1_ready() -> bool:
        fo = servers_by_name(unready_site.status())["fo1"]
        assert fo["problems"] == [], fo["problems"]
        return True

    eventually(fo1_ready, what="fo1 ready after trust install")
    ran = unready_site.cli("encryption", "enable", "--server", "rs1")
    assert ran.returncode == 0, ran.stderr
