"""Fixtures for the doctor tests (issue 5); helpers are in doctor_snapshots.py (pure) and
doctor_sites.py (real sites), the hooks and fixtures shared with the other suites in
tests/conftest.py.

A started site costs a few seconds, so each module that needs one shares it (module scope)
and every test leaves it as it found it. When a test fails, the tail of every running
server's log is attached to the report.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from doctor_sites import FAILOVER_AFTER, add_servers

from watchkeep.site import ServerRole
from watchkeep.testing import LocalSite


@pytest.fixture(scope="module")
def make_site(site_factory: Callable[..., LocalSite]) -> Callable[..., LocalSite]:
    """Start sites whose processes are all stopped when the module is done."""

    def make(name: str, *servers: tuple[str, ServerRole]) -> LocalSite:
        # Made by the factory before starting: a failed start still stops what it started.
        site = site_factory(name, failover_after=FAILOVER_AFTER)
        add_servers(site, servers)
        site.start_all()
        return site

    return make
