"""Fixtures for the end-to-end server tests (issue 3); helpers are in site_support.py, the
hooks and fixtures shared with the other suites in tests/conftest.py.

A started site costs a few seconds, so each module shares one (module scope; the
encrypted site is shared by every module about encrypted links) and every test leaves it
as it found it. Every module runs with its sites on SQLite, then on PostgreSQL (one
encrypted site per database; see tests/conftest.py). Every server process is stopped in
the fixture's teardown, whatever happened; when a test fails, the tail of every server's
log of the sites that are running is attached to the report.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pytest

from watchkeep.site import ServerRole
from watchkeep.testing import LocalSite, servers_by_name


def standard_site(make: Callable[..., LocalSite], name: str) -> LocalSite:
    """A management server, a recording server and a failover server, all registered."""
    site = make(name)
    site.add_server("ms", ServerRole.MANAGEMENT)
    site.add_server("rs1", ServerRole.RECORDING)
    site.add_server("fo1", ServerRole.FAILOVER)
    site.start_all()
    return site


@pytest.fixture(scope="module")
def plain_site(site_factory: Callable[..., LocalSite]) -> LocalSite:
    """A plaintext site: encryption off everywhere."""
    return standard_site(site_factory, "plain")


@pytest.fixture(scope="session")
def encrypted_sites(
    open_sites: Callable[..., contextlib.AbstractContextManager[Callable[..., LocalSite]]],
) -> Iterator[Callable[[str], LocalSite]]:
    """``encrypted_sites(database)``: a site on which rs1, fo1 and then ms were encrypted
    through the CLI, one per site database, started on first use and kept for the run."""
    made: dict[str, LocalSite] = {}
    with contextlib.ExitStack() as stack:

        def site_on(database: str) -> LocalSite:
            if database not in made:
                site = standard_site(stack.enter_context(open_sites(database)), "encrypted")
                site.encrypt_everything()
                made[database] = site
            return made[database]

        yield site_on


@pytest.fixture(scope="module")
def encrypted_site(encrypted_sites: Callable[[str], LocalSite], site_database: str) -> LocalSite:
    """The encrypted site on the module's database (shared by the modules about encrypted
    links: each test leaves it encrypted, or `encrypted` repairs it)."""
    return encrypted_sites(site_database)


@pytest.fixture
def encrypted(encrypted_site: LocalSite) -> LocalSite:
    """The encrypted site, encrypted again if an earlier test turned encryption off."""
    servers = servers_by_name(encrypted_site.status())
    if not all(s["encryption"] for s in servers.values()):
        encrypted_site.encrypt_everything()
    return encrypted_site
