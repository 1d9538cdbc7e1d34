"""Fixtures for the security and reliability tests (issue 7); helpers are in
security_support.py, the threat model and the figures of the last run in SECURITY.md.

A started site costs seconds on two cores, so the modules that only probe (TLS scans,
hostile input, access control) share one encrypted site (session scope, `security_site`);
the modules that kill servers or fill their disks build their own. Every server process is
stopped in the fixtures' teardown, whatever happened; a traceback in any server log fails
the teardown (hostile input must never cost a server one). The run's figures (endpoints
scanned, hostile inputs tried, faults injected, crashes, bytes of recording lost) are
written to bench/results/security.json and printed at the end of the run.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest
from security_support import (
    HANDSHAKE_TIMEOUT,
    IDLE_TIMEOUT,
    MOBILE_MAX_CONNECTIONS,
    Figures,
    add_camera,
    build_site,
    encrypt,
    logs,
    set_server_options,
    tracebacks,
)

from watchkeep.site import ServerRole
from watchkeep.testing import LocalSite

REPO = Path(__file__).resolve().parents[2]
FIGURES_FILE = REPO / "bench" / "results" / "security.json"
FIGURES = Figures()
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


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not (FIGURES.endpoints_scanned or FIGURES.hostile_inputs or FIGURES.faults_injected):
        return
    terminalreporter.section("security figures (bench/results/security.json)")
    terminalreporter.write_line(json.dumps(FIGURES.as_json(), indent=1))


@pytest.fixture(scope="session")
def figures() -> Iterator[Figures]:
    yield FIGURES
    FIGURES_FILE.parent.mkdir(parents=True, exist_ok=True)
    FIGURES_FILE.write_text(json.dumps(FIGURES.as_json(), indent=1) + "\n")


@contextlib.contextmanager
def _sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], LocalSite]]:
    made: list[LocalSite] = []

    def make(name: str) -> LocalSite:
        site = LocalSite(tmp_path_factory.mktemp(name))
        made.append(site)
        _RUNNING.append(site)
        site.init_ca()
        return site

    try:
        yield make
    finally:
        for site in made:
            site.stop_all()
            _RUNNING.remove(site)
    found = [f"{site.root.name}/{name}" for site in made for name in tracebacks(site)]
    FIGURES.crashes += len(found)
    assert not found, f"tracebacks in the logs of {found}:\n" + "\n".join(
        logs(site) for site in made
    )


@pytest.fixture(scope="module")
def site_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], LocalSite]]:
    """Make sites whose processes are all stopped when the module is done."""
    with _sites(tmp_path_factory) as make:
        yield make


@pytest.fixture(scope="session")
def session_site_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[[str], LocalSite]]:
    """Make sites shared by several modules, stopped when the session ends."""
    with _sites(tmp_path_factory) as make:
        yield make


@pytest.fixture(scope="session")
def security_site(session_site_factory: Callable[[str], LocalSite]) -> LocalSite:
    """A management server, a recording server recording cam1 and a mobile server, each
    encrypted through the client library (the intermediate TLS policy, ECDSA P-256 certificates).

    Shared by the modules that probe and attack: no test may stop, restart or
    reconfigure a server of it, and each leaves it serving.
    """
    site = session_site_factory("secure")
    servers = [
        ("ms", ServerRole.MANAGEMENT),
        ("rs1", ServerRole.RECORDING),
        ("mobile1", ServerRole.MOBILE),
    ]
    for name, role in servers:
        site.add_server(name, role)
    limits = {"handshake_timeout": HANDSHAKE_TIMEOUT, "idle_timeout": IDLE_TIMEOUT}
    for name in ("ms", "rs1"):
        set_server_options(site.servers[name], **limits)
    set_server_options(site.servers["mobile1"], max_connections=MOBILE_MAX_CONNECTIONS, **limits)
    build_site(site, servers)
    add_camera(site, "cam1", "rs1")
    encrypt(site, "rs1", "mobile1", "ms")
    return site
