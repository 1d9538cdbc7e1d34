"""Fixtures for the end-to-end data stream tests (issue 4); helpers are in stream_support.py,
the hooks and fixtures shared with the other suites in tests/conftest.py.

A started site costs seconds, so the modules that only watch share one encrypted site
(session scope, `streams_site`); the modules that kill, replace or impersonate servers
build their own. Every server process is stopped in the fixtures' teardown, whatever
happened, and a traceback in a server log fails the teardown; when a test fails,
the tail of every running site's server logs is attached to its report.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from stream_support import add_camera, add_user, connection_as, proc_cmdlines

from watchkeep.client import SiteConnection
from watchkeep.site import ServerRole
from watchkeep.testing import LocalSite

SiteFactory = Callable[..., LocalSite]
OpenSites = Callable[..., contextlib.AbstractContextManager[SiteFactory]]


@pytest.fixture(scope="session")
def open_sites(open_sites: OpenSites) -> OpenSites:
    """The shared `open_sites` (tests/conftest.py), with the server logs judged at the end."""
    return functools.partial(open_sites, after_stop=_no_log_alarms)


def _no_log_alarms(made: list[LocalSite]) -> None:
    # Viewers come and go, break off and vanish, servers die and others take their place:
    # none of it may cost a server a traceback, or go on writing to a connection that is
    # gone (asyncio then logs "socket.send() raised exception." for every write).
    noisy = [
        f"{site.root.name}/{name}: {line}"
        for site in made
        for name in site.servers
        for line in _LOG_ALARMS
        if line in site.log_text(name)
    ]
    assert not noisy, f"found in the server logs: {noisy}\n" + "\n".join(
        site.log_tails() for site in made
    )


_LOG_ALARMS = ("Traceback", "socket.send() raised exception.")


@pytest.fixture(scope="session")
def streams_site(open_sites: OpenSites) -> Iterator[LocalSite]:
    """A management server, a recording server recording cam1 and cam2, and a mobile
    server, encrypted everywhere through the CLI (recording and mobile servers first).

    Shared by the modules that watch and play back: no test may stop, restart or
    reconfigure a server of it.
    """
    with open_sites() as make:
        site = make("streams")
        site.add_server("ms", ServerRole.MANAGEMENT)
        rs1 = site.add_server("rs1", ServerRole.RECORDING)
        # Its recorder's writer runs in a process of its own: every playback here reads
        # what that process wrote (the writer thread is the default elsewhere).
        rs1.extra["recording"] = {"writer": "process"}
        site.write_config(rs1)
        site.add_server("mobile1", ServerRole.MOBILE)
        site.start_all()
        assert rs1.process is not None
        writers = [
            pid
            for pid, line in proc_cmdlines().items()
            if "watchkeep.media._writer" in line and f" {rs1.process.pid}" in line
        ]
        assert len(writers) == 1, "rs1 runs no writer process"
        add_camera(site, "cam1", "rs1")
        add_camera(site, "cam2", "rs1")
        site.encrypt("rs1", "mobile1", "ms")
        yield site


@pytest.fixture(scope="session")
def operator(streams_site: LocalSite) -> SiteConnection:
    """How user `op1`, an operator who may view cam1 only, logs in to the streams site."""
    password_file = add_user(streams_site, "op1", "operator", ["cam1"])
    return connection_as(streams_site, "op1", password_file)


@pytest.fixture
def admin_token(streams_site: LocalSite) -> str:
    """A fresh administrator's token (tokens expire: none is kept across tests)."""
    return streams_site.login_token()


@pytest.fixture
def operator_token(streams_site: LocalSite, operator: SiteConnection) -> str:
    return streams_site.login_token(operator)


@pytest.fixture
def cam1_token(streams_site: LocalSite) -> str:
    """A fresh administrator's stream token for cam1 (good at rs1 only)."""
    return streams_site.stream_token("cam1")


@pytest.fixture
def operator_cam1_token(streams_site: LocalSite, operator: SiteConnection) -> str:
    """The operator's stream token for cam1, the one camera it may view."""
    return streams_site.stream_token("cam1", operator)


@pytest.fixture(scope="session")
def ca(streams_site: LocalSite) -> Path:
    return streams_site.home.ca_cert
