"""Fixtures for the security and reliability tests (issue 7); helpers are in
security_support.py, the hooks and fixtures shared with the other suites in
tests/conftest.py, the threat model and the figures of the last run in SECURITY.md.

A started site costs seconds on two cores, so the modules that only probe (TLS scans,
hostile input, access control) share one encrypted site (`security_site`, one per site
database, kept for the run); the modules that kill servers or fill their disks build their
own. Every module runs with its sites on SQLite, then on PostgreSQL (tests/conftest.py).
Every server process is stopped in the fixtures' teardown, whatever happened; a traceback
in any server log fails the teardown (hostile input must never cost a server one). The
run's figures (endpoints scanned, hostile inputs tried, faults injected, crashes, bytes of
recording lost; those of both databases) are written to bench/results/security.json and
printed at the end of the run.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from security_support import (
    HANDSHAKE_TIMEOUT,
    IDLE_TIMEOUT,
    MOBILE_MAX_CONNECTIONS,
    Figures,
    add_camera,
    encrypt,
    set_server_options,
    tracebacks,
)

from parallel_support import RunFigures, report_figures
from watchkeep.site import ServerRole
from watchkeep.testing import LocalSite

REPO = Path(__file__).resolve().parents[2]
FIGURES_FILE = REPO / "bench" / "results" / "security.json"
FIGURES = Figures()
FIGURES_TITLE = "security figures (bench/results/security.json)"

SiteFactory = Callable[..., LocalSite]
OpenSites = Callable[..., contextlib.AbstractContextManager[SiteFactory]]


_FIGURES_TAKEN = pytest.StashKey[bool]()


@pytest.fixture(scope="session")
def figures(request: pytest.FixtureRequest) -> Figures:
    request.config.stash[_FIGURES_TAKEN] = True
    return FIGURES


def pytest_sessionfinish(session: pytest.Session) -> None:
    # (on a worker, the controller adds them to those of the other workers)
    if session.config.stash.get(_FIGURES_TAKEN, False):
        report_figures(session.config, RunFigures(FIGURES_FILE, FIGURES_TITLE, FIGURES.as_json()))


@pytest.fixture(scope="session")
def open_sites(open_sites: OpenSites) -> OpenSites:
    """The shared `open_sites` (tests/conftest.py), with the server logs judged at the end."""
    return functools.partial(open_sites, after_stop=_no_tracebacks)


def _no_tracebacks(made: list[LocalSite]) -> None:
    found = [f"{site.root.name}/{name}" for site in made for name in tracebacks(site)]
    FIGURES.crashes += len(found)
    assert not found, f"tracebacks in the logs of {found}:\n" + "\n".join(
        site.log_tails() for site in made
    )


PUBLISH_PORT = 9080


@pytest.fixture(scope="module")
def security_site(security_sites: Callable[[str], LocalSite], site_database: str) -> LocalSite:
    """A management server, a recording server recording cam1 and a mobile server, each
    encrypted through the client library (the intermediate TLS policy, ECDSA P-256
    certificates), its site on the module's database.

    Shared by the modules that probe and attack: no test may stop, restart or
    reconfigure a server of it, and each leaves it serving.
    """
    return security_sites(site_database)


@pytest.fixture(scope="session")
def security_sites(open_sites: OpenSites) -> Iterator[Callable[[str], LocalSite]]:
    """``security_sites(database)``: the `security_site` of each site database, started on
    first use and kept for the run."""
    made: dict[str, LocalSite] = {}
    with contextlib.ExitStack() as stack:

        def site_on(database: str) -> LocalSite:
            if database not in made:
                made[database] = _security_site(stack.enter_context(open_sites(database)))
            return made[database]

        yield site_on


def _security_site(make: SiteFactory) -> LocalSite:
    site = make("secure")
    # The management server (the first server: .2) publishes the CA and its CRL over
    # plain HTTP, and every certificate names them (CRL distribution point, AIA).
    site.pki.set_publish_url(f"http://{site.network}.2:{PUBLISH_PORT}")
    ports: dict[str, dict[str, int] | None] = {"ms": {"api": 9000, "publish": PUBLISH_PORT}}
    servers = [
        ("ms", ServerRole.MANAGEMENT),
        ("rs1", ServerRole.RECORDING),
        ("mobile1", ServerRole.MOBILE),
    ]
    for name, role in servers:
        site.add_server(name, role, ports=ports.get(name))
    limits = {"handshake_timeout": HANDSHAKE_TIMEOUT, "idle_timeout": IDLE_TIMEOUT}
    for name in ("ms", "rs1"):
        set_server_options(site.servers[name], **limits)
    set_server_options(site.servers["mobile1"], max_connections=MOBILE_MAX_CONNECTIONS, **limits)
    site.start_all()
    add_camera(site, "cam1", "rs1")
    encrypt(site, "rs1", "mobile1", "ms")
    return site
