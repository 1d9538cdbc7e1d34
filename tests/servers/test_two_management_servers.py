"""Two management servers for one site, on one PostgreSQL database (issue 17).

Given ms1 and ms2 on one database, a recording server, a failover server and a mobile
server that know both, and an administrator whose CLI knows both: while a client keeps changing the configuration
and logging in, and the recording server heartbeats, each management server in turn is
killed with SIGKILL (no orderly stop) and started again. Every change a management server
accepted is kept and reaches the recording server, the camera it records never stops, the
client carries on at the other management server, and failover is decided by one of them
only (the one holding the database's advisory lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from site_support import call, endpoint, served_fingerprint, set_encryption

from watchkeep._clock import TEST_CLOCK_ENV, set_test_clock
from watchkeep.client import SiteClient, SiteConnection
from watchkeep.errors import ConnectionFailed
from watchkeep.servers._tokens import TokenSigner
from watchkeep.servers.management._sessions import TOKEN_KEY_SETTING
from watchkeep.site import ServerRole
from watchkeep.store import SiteStore
from watchkeep.testing import LocalSite, cameras_by_name, eventually, servers_by_name

CHANGES = 40  # configuration changes made under load, bounded
LOAD_DEADLINE = 120.0  # seconds the load may take at most, whatever happens

# Two management servers share a site only on PostgreSQL.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.parametrize("site_database", ["postgresql"], indirect=True),
]


@pytest.fixture(scope="module")
def clock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The site's test clock (``WATCHKEEP_TEST_CLOCK``), at the real time until moved."""
    path = tmp_path_factory.mktemp("clock") / "clock"
    set_test_clock(path, dt.timedelta(0))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(TEST_CLOCK_ENV, str(path))
        yield path


@pytest.fixture(scope="module")
def site(site_factory: Callable[..., LocalSite], clock: Path) -> LocalSite:
    made = site_factory("two-ms")
    made.add_server("ms1", ServerRole.MANAGEMENT)
    made.add_server("ms2", ServerRole.MANAGEMENT)
    made.add_server("rs1", ServerRole.RECORDING)
    made.add_server("fo1", ServerRole.FAILOVER)
    made.add_server("mobile1", ServerRole.MOBILE)
    made.start_all()
    return made


def control_token(site: LocalSite, server: str = "rs1") -> str:
    """A control-link token for ``server`` signed with the key both management servers
    share (the first to start put its own in the database)."""
    assert site.database_url is not None
    store = SiteStore(site.database_url)
    try:
        signer = TokenSigner.from_pem(str(store.setting(TOKEN_KEY_SETTING, "")).encode())
    finally:
        store.dispose()
    return signer.issue("ms1", "control", server, 60)


def rs1_status(site: LocalSite) -> dict[str, Any]:
    status: dict[str, Any] = call(
        endpoint(site.servers["rs1"], "control", tls=False),
        "GET",
        "/control/v1/status",
        token=control_token(site),
    )
    return status


def status_at(site: LocalSite, name: str) -> dict[str, Any]:
    """The site status as management server ``name`` alone answers it."""
    ms = site.servers[name]
    connection = replace(SiteConnection.load(site.home), name=ms.name, host=ms.host,
                         address=ms.address, port=ms.ports["api"], others=[])  # fmt: skip

    async def ask() -> dict[str, Any]:
        async with SiteClient(site.home, connection) as client:
            return await client.status()

    return asyncio.run(ask())


def leaders(site: LocalSite) -> list[str]:
    """The management servers whose log says they lead, in order of taking the lead."""
    found = []
    for name in ("ms1", "ms2"):
        for line in site.log_text(name).splitlines():
            if "leads the site's failover and renewals" in line:
                found.append((line[:23], name))
    return [name for _, name in sorted(found)]


class Load:
    """A client changing the configuration (one new camera a call) and logging in again
    every few changes, in a thread, until CHANGES are accepted or the deadline passes."""

    def __init__(self, site: LocalSite) -> None:
        self.site = site
        self.accepted: list[str] = []
        self.logins = 0
        self.failures: list[str] = []
        self.slowest = 0.0  # seconds: the longest a change took, a failover included
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        deadline = time.monotonic() + LOAD_DEADLINE
        n = 0
        while len(self.accepted) < CHANGES and time.monotonic() < deadline:
            async with SiteClient(self.site.home) as client:  # a log-in
                self.logins += 1
                for _ in range(5):
                    name = f"load{n:03d}"
                    n += 1
                    started = time.monotonic()
                    try:
                        await client.call(
                            "POST",
                            "/api/v1/cameras",
                            {
                                "name": name,
                                "recording_server": "rs1",
                                "source": {"kind": "synthetic", "fps": 2},
                            },
                        )
                    except ConnectionFailed as exc:  # neither answered: counted, not hidden
                        self.failures.append(f"{name}: {exc}")
                        continue
                    self.slowest = max(self.slowest, time.monotonic() - started)
                    self.accepted.append(name)
                    await asyncio.sleep(0.1)


def test_either_management_server_may_die_and_nothing_it_accepted_is_lost(
    site: LocalSite,
) -> None:
    # Given a camera recording on rs1, and both management servers answering
    site.api("POST", "/api/v1/cameras", {"name": "steady", "recording_server": "rs1",
                                         "source": {"kind": "synthetic", "fps": 5}})  # fmt: skip
    frames: list[int] = []

    def recording() -> int:
        steady = {c["name"]: c for c in rs1_status(site)["cameras"]}.get("steady")
        assert steady is not None
        assert steady["frames"] > 0
        frames.append(steady["frames"])
        return int(steady["frames"])

    eventually(recording, what="rs1 recording camera steady")
    rs1_pid = site.servers["rs1"].process.pid  # type: ignore[union-attr]
    assert len(leaders(site)) == 1  # one of the two leads; the other waits

    # When a client changes the configuration and logs in, over and over, while ms1 and
    # then ms2 are killed without a word and started again
    load = Load(site)
    load.thread.start()
    for victim in ("ms1", "ms2"):
        accepted_before = len(load.accepted)
        eventually(lambda n=accepted_before: len(load.accepted) >= n + 5 or None,  # type: ignore[misc]
                   what="changes accepted before the kill")  # fmt: skip
        site.kill(victim)
        # The client carries on at the other one: more changes are accepted meanwhile
        accepted_at_kill = len(load.accepted)
        eventually(lambda n=accepted_at_kill: len(load.accepted) >= n + 5 or None,  # type: ignore[misc]
                   what=f"changes accepted with {victim} dead")  # fmt: skip
        recording()
        site.start(victim)
    load.thread.join(timeout=LOAD_DEADLINE + 30)

    # Then every accepted change is in the site, at both management servers...
    assert load.failures == []
    assert len(load.accepted) >= CHANGES
    site.wait_online("rs1", "fo1")
    for answering in ("ms1", "ms2"):
        assert set(load.accepted) <= set(cameras_by_name(status_at(site, answering))), answering

    # ...and reaches the recording server, which never stopped recording: the same
    # process, the camera's frame counter never reset, never handed to the failover server
    def running_everything() -> bool:
        names = {c["name"] for c in rs1_status(site)["cameras"]}
        assert set(load.accepted) <= names
        return True

    eventually(running_everything, what="rs1 running every accepted camera")
    recording()
    assert site.servers["rs1"].process.pid == rs1_pid  # type: ignore[union-attr]
    assert frames == sorted(frames), frames
    assert cameras_by_name(site.status())["steady"]["recording_server"] == "rs1"
    assert "steady" not in {c["name"] for c in call(
        endpoint(site.servers["fo1"], "control", tls=False), "GET", "/control/v1/status",
        token=control_token(site, "fo1"))["cameras"]}  # fmt: skip
    # Log-ins at one were honoured by the other, and each lead was taken once at a time
    assert load.logins >= CHANGES // 5
    print(f"slowest change across a kill: {load.slowest:.2f} s; leads: {leaders(site)}")


def test_the_failover_server_still_covers_a_dead_recording_server(site: LocalSite) -> None:
    # Given ms1 dead (ms2 leads, or takes the lead)
    site.kill("ms1")
    try:
        # When rs1 dies, Then fo1 takes its cameras: the leader decided it
        site.kill("rs1")

        def covered() -> bool:
            status = site.status()
            assert servers_by_name(status)["fo1"]["covering"] == "rs1"
            return True

        eventually(covered, what="fo1 covering rs1")
        site.start("rs1")
        site.wait_online("rs1")
    finally:
        site.start("ms1")


def test_the_mobile_server_logs_users_in_at_the_other_management_server(
    site: LocalSite,
) -> None:
    mobile = endpoint(site.servers["mobile1"], "http", tls=False)
    login = {"user": "admin", "password": site.password_file.read_text().strip()}
    # Given the mobile server logging users in (at whichever management server it speaks to)
    assert call(mobile, "POST", "/api/v1/login", body=login)["role"] == "administrator"
    for victim in ("ms1", "ms2"):
        # When that management server or the other is killed
        site.kill(victim)
        try:
            # Then a user still logs in through the mobile server, at the one alive, and
            # the token it gives is honoured for the user's cameras and log-out
            token = call(mobile, "POST", "/api/v1/login", body=login)["token"]
            assert isinstance(call(mobile, "GET", "/api/v1/cameras", token=token), list)
            call(mobile, "POST", "/api/v1/logout", token=token)
        finally:
            site.start(victim)
    assert "turning to" in site.log_text("mobile1")


def test_site_connect_learns_every_management_server(site: LocalSite) -> None:
    ms1 = site.servers["ms1"]
    connected = site.cli("site", "connect", "--host", ms1.host, "--address", ms1.address,
                         "--password-file", str(site.password_file), "--json")  # fmt: skip
    assert connected.returncode == 0, connected.stderr
    assert json.loads(connected.stdout)["other_management_servers"] == ["ms2"]
    saved = SiteConnection.load(site.home)
    assert [(o["host"], o["address"]) for o in saved.others] == [
        (site.servers["ms2"].host, site.servers["ms2"].address)
    ]


def speaks_tls(site: LocalSite, name: str) -> bool:
    try:
        served_fingerprint(site.servers[name], "api")
    except (ssl.SSLError, ConnectionError):
        return False
    return True


def test_management_encryption_set_at_one_is_followed_by_the_other(site: LocalSite) -> None:
    # Given every other server encrypted, ms1 and ms2 in plaintext
    site.encrypt("rs1", "fo1", "mobile1")
    assert not speaks_tls(site, "ms2")
    try:
        # When an administrator turns management-server encryption on at ms1
        set_encryption(site, "ms1", True)
        # Then ms2 speaks TLS too, within seconds, without a restart, and says why
        eventually(lambda: speaks_tls(site, "ms1") and speaks_tls(site, "ms2"),
                   what="ms1 and ms2 on TLS")  # fmt: skip
        assert "turned on at another management server" in site.log_text("ms2")
        site.wait_online("rs1", "fo1", "mobile1")
        # ... and back, when it is turned off there
        set_encryption(site, "ms1", False)
        eventually(lambda: not speaks_tls(site, "ms1") and not speaks_tls(site, "ms2"),
                   what="ms1 and ms2 back to plaintext")  # fmt: skip
    finally:
        site.cli("encryption", "disable", "--server", "ms1")  # off already, unless it failed
        for name in ("rs1", "fo1", "mobile1"):
            set_encryption(site, name, False)


def test_both_management_servers_and_their_servers_renew_where_the_ca_is(
    site: LocalSite, clock: Path
) -> None:
    # Given ms1 holding the site's CA and ms2 none, and rs1 speaking to ms2 since ms1 was
    # killed (it stays there once ms1 is back)
    site.kill("ms1")
    eventually(lambda: "turning to ms2" in site.log_text("rs1"), what="rs1 turning to ms2")
    site.start("ms1")
    renewing = ("ms1", "ms2", "rs1")
    before = {name: leaf_serial(site, name) for name in renewing}

    # When 70 days pass (90-day certificates are renewed at about two thirds of their life);
    # time goes on meanwhile, an hour every 2 s, past any back-off
    offset = dt.timedelta(days=70)
    for _ in range(30):
        set_test_clock(clock, offset)
        with contextlib.suppress(AssertionError):
            eventually(lambda: all(leaf_serial(site, n) != before[n] for n in renewing),
                       what="renewals", timeout=2)  # fmt: skip
            break
        offset += dt.timedelta(hours=1)

    # Then each renewed: ms2 and rs1 at ms1, the one that holds the CA, asked in turn
    assert {n: leaf_serial(site, n) != before[n] for n in renewing} == dict.fromkeys(
        renewing, True
    ), site.log_tails()
    signed = [line for line in site.log_text("ms1").splitlines() if ": renewed " in line]
    for name in ("ms2", "rs1"):
        assert any(f"serial {before[name]:x} ->" in line for line in signed), (name, signed)


def leaf_serial(site: LocalSite, name: str) -> int:
    chain = site.servers[name].chain.read_bytes()
    return x509.load_pem_x509_certificates(chain)[0].serial_number
