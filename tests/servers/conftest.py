"""Fixtures for the end-to-end server tests (issue 3); helpers are in site_support.py.

A started site costs a few seconds, so each module shares one (module scope; the
encrypted site is shared by every module about encrypted links) and every test leaves it
as it found it. Every server process is stopped in the fixture's teardown,
whatever happened; when a test fails, the tail of every server's log of the sites that are
running is attached to the report.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator, Iterator

import pytest
from site_support import (
    encrypt_everything,
    logs,
    new_site,
    servers_by_name,
    site_status,
    start_together,
    wait_online,
)

from watchkeep.site import ServerRole
from watchkeep.testing import LocalSite

_RUNNING: list[LocalSite] = []


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        for site in _RUNNING:
            report.sections.append((f"server logs ({site.root})", logs(site)))
    return report


@contextlib.contextmanager
def _sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., LocalSite]]:
    made: list[LocalSite] = []

    def make(name: str = "site", **kwargs: object) -> LocalSite:
        site = new_site(tmp_path_factory.mktemp(name), **kwargs)
        made.append(site)
        _RUNNING.append(site)
        return site

    try:
        yield make
    finally:
        for site in made:
            site.stop_all()
            _RUNNING.remove(site)


@pytest.fixture(scope="module")
def site_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., LocalSite]]:
    """Make sites whose processes are all stopped when the module is done."""
    with _sites(tmp_path_factory) as make:
        yield make


@pytest.fixture(scope="session")
def session_site_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., LocalSite]]:
    """Make sites shared by several modules, stopped when the session ends."""
    with _sites(tmp_path_factory) as make:
        yield make


def standard_site(make: Callable[..., LocalSite], name: str) -> LocalSite:
    """A management server, a recording server and a failover server, all registered."""
    site = make(name)
    site.add_server("ms", ServerRole.MANAGEMENT)
    site.add_server("rs1", ServerRole.RECORDING)
    site.add_server("fo1", ServerRole.FAILOVER)
    start_together(site, "ms", "rs1", "fo1")
    site.connect_cli()
    wait_online(site, "rs1", "fo1")
    return site


@pytest.fixture(scope="module")
def plain_site(site_factory: Callable[..., LocalSite]) -> LocalSite:
    """A plaintext site: encryption off everywhere."""
    return standard_site(site_factory, "plain")


@pytest.fixture(scope="session")
def encrypted_site(session_site_factory: Callable[..., LocalSite]) -> LocalSite:
    """A site on which rs1, fo1 and then ms were encrypted through the CLI (shared by the
    modules about encrypted links: each test leaves it encrypted, or `encrypted` repairs it)."""
    site = standard_site(session_site_factory, "encrypted")
    encrypt_everything(site)
    return site


@pytest.fixture
def encrypted(encrypted_site: LocalSite) -> LocalSite:
    """The encrypted site, encrypted again if an earlier test turned encryption off."""
    servers = servers_by_name(site_status(encrypted_site))
    if not all(s["encryption"] for s in servers.values()):
        encrypt_everything(encrypted_site)
    return encrypted_site
