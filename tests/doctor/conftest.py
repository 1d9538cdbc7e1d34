"""Fixtures for the doctor tests (issue 5); helpers are in doctor_snapshots.py (pure) and
doctor_sites.py (real sites).

A started site costs a few seconds, so each module that needs one shares it (module scope)
and every test leaves it as it found it. When a test fails, the tail of every running
server's log is attached to the report.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator

import pytest
from doctor_sites import lay_out, logs, start_site

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


@pytest.fixture(scope="module")
def make_site(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., LocalSite]]:
    """Start sites whose processes are all stopped when the module is done."""
    made: list[LocalSite] = []

    def make(name: str, *servers: tuple[str, ServerRole]) -> LocalSite:
        site = lay_out(tmp_path_factory.mktemp(name), servers)
        made.append(site)  # before starting: a failed start still stops what it started
        _RUNNING.append(site)
        start_site(site)
        return site

    try:
        yield make
    finally:
        for site in made:
            site.stop_all()
            _RUNNING.remove(site)
