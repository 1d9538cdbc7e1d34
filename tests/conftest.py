"""Hooks and fixtures shared by every suite that runs real sites; each suite's own are in
the conftest.py beside its tests, the helpers in `watchkeep.testing`.

Sites come from a site factory (`site_factory`, one per module; `open_sites` opens one
for any other scope): every server process of every site it made is stopped when it
closes, whatever happened. A suite that judges its servers' logs overrides `open_sites`
with an ``after_stop`` check. When a test fails, the tail of every server's log of the
sites still running is attached to its report.

The management-server suite (`ON_BOTH_DATABASES`: tests/servers, tests/security and the
enrollment tests of tests/enroll/test_join.py; tests/store parametrizes its own databases)
runs on SQLite and on PostgreSQL: each of its tests that makes a site (through
`site_factory`, or `site_database`) runs twice, `test_x[sqlite]` and `test_x[postgresql]`.
The parameter is module-scoped: a module runs its tests on SQLite, then on PostgreSQL, and
starts its sites once per database; a site shared by several modules (`encrypted_site`,
`security_site`) is started once per database and kept for the run. A module may pin its
own database (``pytestmark = pytest.mark.parametrize("site_database", ["postgresql"],
indirect=True)``). Every other suite keeps its sites in SQLite. PostgreSQL is `postgres`:
one server per run (per xdist worker), started on first use, a database of its own per
site. `pytest --site-database=sqlite` (or `postgresql`) puts every site of the run on that
one database, the management-server suite's included.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from watchkeep.localsite import LocalPostgres
from watchkeep.testing import LocalSite, can_mount

# How the run is shared among workers, and their figures added up: see parallel_support.py.
pytest_plugins = ["parallel_support"]

_RUNNING: list[LocalSite] = []

DATABASES = ("sqlite", "postgresql")
# The management-server suite, relative to tests/: its sites run on both databases.
ON_BOTH_DATABASES = ("servers", "security", "enroll/test_join.py")
TESTS = Path(__file__).parent


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--site-database",
        choices=DATABASES,
        default=None,
        help="where the management server of every site the tests make keeps it "
        "(postgresql: a database of its own on a PostgreSQL server the run starts); "
        "by default the management-server suite runs on both, every other suite on sqlite",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "site_database" not in metafunc.fixturenames:
        return
    where = metafunc.definition.path.relative_to(TESTS)
    if not any(where.is_relative_to(part) for part in ON_BOTH_DATABASES):
        return
    if any(m.args[0] == "site_database" for m in metafunc.definition.iter_markers("parametrize")):
        return  # the module pinned its own
    chosen = metafunc.config.getoption("--site-database")
    metafunc.parametrize("site_database", [chosen] if chosen else DATABASES, indirect=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[LocalPostgres]:
    """A PostgreSQL server of the run's own (Debian's postgresql-15, on a Unix socket in a
    directory of its own): ``postgres.create_database()`` gives a new database's URL."""
    with LocalPostgres() as server:
        yield server


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        for site in _RUNNING:
            report.sections.append((f"server logs ({site.root})", site.log_tails()))
    return report


@contextlib.contextmanager
def _sites(
    tmp_path_factory: pytest.TempPathFactory,
    database: Callable[[], str | None],
    *,
    after_stop: Callable[[list[LocalSite]], None] | None = None,
) -> Iterator[Callable[..., LocalSite]]:
    made: list[LocalSite] = []

    def make(name: str = "site", **kwargs: Any) -> LocalSite:
        if "database_url" not in kwargs:
            kwargs["database_url"] = database()
        site = LocalSite(tmp_path_factory.mktemp(name), **kwargs)
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
    # Only once every server has stopped: what a server writes on its way out counts too.
    if after_stop is not None:
        after_stop(made)


@pytest.fixture(scope="module")
def site_database(request: pytest.FixtureRequest) -> str:
    """The database the sites of the test keep their site in: ``sqlite`` or ``postgresql``
    (each in turn in the management-server suite)."""
    chosen: str | None = getattr(request, "param", None)
    return chosen or request.config.getoption("--site-database") or "sqlite"


@pytest.fixture(scope="session")
def open_sites(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Callable[..., contextlib.AbstractContextManager[Callable[..., LocalSite]]]:
    """``with open_sites(site_database, after_stop=check) as make:``: ``make(name, **LocalSite
    options)`` gives a site with its CA, its site in ``site_database`` (by default SQLite,
    or the run's `--site-database`); ``check`` sees every site made once all have stopped."""
    # The PostgreSQL server is started before any site that may use it, so that it stops
    # after every one of them (fixtures end in the reverse order of their start).
    server: LocalPostgres | None = None
    if request.config.getoption("--site-database") != "sqlite":
        server = request.getfixturevalue("postgres")

    def database(kind: str | None) -> str | None:
        if (kind or request.config.getoption("--site-database")) != "postgresql":
            return None
        started: LocalPostgres = server or request.getfixturevalue("postgres")
        return started.create_database()

    def open_for(
        kind: str | None = None, **kwargs: Any
    ) -> contextlib.AbstractContextManager[Callable[..., LocalSite]]:
        return _sites(tmp_path_factory, functools.partial(database, kind), **kwargs)

    return open_for


@pytest.fixture(scope="module")
def site_factory(
    open_sites: Callable[..., contextlib.AbstractContextManager[Callable[..., LocalSite]]],
    site_database: str,
) -> Iterator[Callable[..., LocalSite]]:
    """Make sites whose processes are all stopped when the module is done."""
    with open_sites(site_database) as make:
        yield make


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every account may pass through and list, for tests that act as another
    account (pytest's own tmp_path is root's alone, mode 0700, and stops them)."""
    path = Path(tempfile.mkdtemp(prefix="wk-open-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def tmpfs() -> Iterator[Callable[..., Path]]:
    """``tmpfs(directory, size="1m", mode=None)`` mounts a tmpfs there for the test and
    returns the directory; everything mounted is unmounted after the test (and after the
    fixtures that use it). Skips the test where nothing can be mounted (root only)."""
    mounted: list[Path] = []

    def mount(directory: Path, size: str = "1m", mode: str | None = None) -> Path:
        if not can_mount():
            pytest.skip("needs root to mount a tmpfs (run the suite as root)")
        directory.mkdir(parents=True, exist_ok=True)
        options = f"size={size}" + (f",mode={mode}" if mode else "")
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        mounted.append(directory)
        return directory

    yield mount
    for directory in reversed(mounted):
        subprocess.run(["umount", "-l", str(directory)], check=False)
