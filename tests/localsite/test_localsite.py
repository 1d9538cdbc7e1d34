"""The local site's own parts (watchkeep.localsite): the config it writes reads back as it
was meant, through the servers' own loader; its layout is the one the doctor finds; a
server that cannot start is a watchkeep error of one line with its fix, not a traceback.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from watchkeep.errors import ServerExited, SiteNotReady, WatchkeepError
from watchkeep.localsite import LocalSite, dumps_toml, wait_until
from watchkeep.servers import load_config
from watchkeep.site import ServerRole

ROLES = [
    ("ms", ServerRole.MANAGEMENT),
    ("rs1", ServerRole.RECORDING),
    ("fo1", ServerRole.FAILOVER),
    ("mobile1", ServerRole.MOBILE),
]


@pytest.fixture(scope="module")
def laid_out(site_factory: Callable[..., LocalSite]) -> LocalSite:
    """A site laid out (certificates, trust stores, configs), never started."""
    site = site_factory("layout", heartbeat_interval=0.25, failover_after=4.0)
    for name, role in ROLES:
        site.add_server(name, role)
    return site


@pytest.mark.parametrize(("name", "role"), ROLES)
def test_each_config_reads_back_through_the_servers_loader(
    laid_out: LocalSite, name: str, role: ServerRole
) -> None:
    server = laid_out.servers[name]
    config = load_config(server.config)
    assert (config.name, config.role, config.host, config.address) == (
        name,
        role,
        server.host,
        server.address,
    )
    assert config.ports == server.ports
    assert (config.certificate, config.key, config.trust_store) == (
        server.chain,
        server.key,
        server.trust_dir,
    )
    assert config.data_dir == server.data_dir
    assert config.heartbeat_interval == 0.25
    ms = laid_out.management
    if role is ServerRole.MANAGEMENT:
        assert config.management is None
        assert config.failover_after == 4.0
        assert config.ca_home == laid_out.home.root
        assert config.admin_password == laid_out.password_file.read_text().strip()
        assert config.registration_key == laid_out.registration_key_file.read_text().strip()
    else:
        assert config.management is not None
        assert (config.management.host, config.management.address, config.management.port) == (
            ms.host,
            ms.address,
            ms.ports["api"],
        )
        assert config.management.registration_key == (
            laid_out.registration_key_file.read_text().strip()
        )


def test_extra_tables_add_to_the_config_and_to_the_sites_own_tables(laid_out: LocalSite) -> None:
    rs1 = laid_out.servers["rs1"]
    rs1.extra = {"server": {"max_connections": 4096}, "recording": {"max_bytes": 1024**3}}
    try:
        laid_out.write_config(rs1)
        config = load_config(rs1.config)
        assert config.listener_limits.max_connections == 4096
        assert config.name == "rs1"  # the site's own keys of that table are still there
        assert config.extra["recording"] == {"max_bytes": 1024**3}
    finally:
        rs1.extra = {}
        laid_out.write_config(rs1)


def test_the_home_lists_the_configs_the_site_laid_out(laid_out: LocalSite) -> None:
    assert laid_out.home.server_configs() == sorted(s.config for s in laid_out.servers.values())
    for name, server in laid_out.servers.items():
        assert server.directory == laid_out.home.server_dir(name)
        assert server.config == laid_out.home.server_config(name)


toml_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)))
toml_scalar = st.one_of(
    toml_text,
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
)
toml_value = st.one_of(toml_scalar, st.lists(toml_scalar, max_size=4))
toml_table = st.dictionaries(toml_text, toml_value, max_size=4)


@given(st.dictionaries(toml_text, toml_table, max_size=3))
def test_any_document_of_config_values_reads_back_as_it_was(
    document: dict[str, dict[str, Any]],
) -> None:
    assert tomllib.loads(dumps_toml(document)) == document


def test_values_a_config_cannot_hold_are_refused_not_written() -> None:
    assert tomllib.loads(dumps_toml({"t": {"inf": math.inf, "path": Path("/a b")}})) == {
        "t": {"inf": math.inf, "path": "/a b"}
    }
    with pytest.raises(TypeError, match="config value"):
        dumps_toml({"t": {"when": object()}})


def test_a_server_that_cannot_start_is_one_line_with_its_fix(laid_out: LocalSite) -> None:
    mobile1 = laid_out.servers["mobile1"]
    # Given a config the server refuses (no certificate where it says there is one)
    mobile1.chain.rename(mobile1.chain.with_suffix(".gone"))
    try:
        # When it is started and awaited, then it is a watchkeep error naming the server,
        # its exit status, the last thing it said and where its log is.
        with pytest.raises(ServerExited) as caught:
            laid_out.start("mobile1")
    finally:
        laid_out.stop("mobile1")
        mobile1.chain.with_suffix(".gone").rename(mobile1.chain)
    error = caught.value
    assert isinstance(error, WatchkeepError)
    assert error.server == "mobile1"
    assert error.status != 0
    message = str(error)
    assert "\n" not in message
    assert message.startswith("server mobile1 exited with status"), message
    assert f"fix: read its log {mobile1.log}" in message, message
    assert error.last_line is not None
    assert error.last_line in laid_out.log_text("mobile1")


def test_a_wait_that_gives_up_says_what_it_waited_for_and_saw_last() -> None:
    seen = iter(range(1000))
    with pytest.raises(SiteNotReady) as caught:
        wait_until(lambda: None, what="rs9 online", logs="/x/rs9.log", timeout=0.2,
                   interval=0.01, last=lambda: f"offline\nfor {next(seen)} checks")  # fmt: skip
    message = str(caught.value)
    assert message.startswith("local site not ready within 0 s: rs9 online (last seen: offline for")
    assert message.endswith("fix: read the servers' logs (/x/rs9.log) for what held them up")
    assert "\n" not in message
