"""A plaintext site: registration, the `site status --json` contract, failover, and the
client-side errors of a plaintext port.

Given a management server, a recording server and a failover server started as processes
on their own loopback addresses, with encryption off everywhere.
"""

from __future__ import annotations

import asyncio
import ctypes
import datetime as dt
import re
import signal
import socket
import ssl
import struct
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from site_support import (
    call,
    cli_json,
    control_token,
    endpoint,
    failover_round_trip,
    openssl_fingerprint,
    trust_of,
)

from watchkeep.client import SiteClient
from watchkeep.errors import ApiError, PeerRefused, TlsToPlaintextPort
from watchkeep.localsite._layout import LocalServer
from watchkeep.testing import LocalSite, eventually, servers_by_name
from watchkeep.tls import Endpoint, client_context

pytestmark = pytest.mark.slow

HEX64 = set("0123456789abcdef")


def test_site_status_json_lists_every_server_and_camera_as_documented(
    plain_site: LocalSite,
) -> None:
    # When the administrator asks for the site status as JSON
    status = cli_json(plain_site, "site", "status")

    # Then it holds the servers and cameras, each server with the documented fields
    assert set(status) >= {"servers", "cameras"}
    assert isinstance(status["cameras"], list)
    servers = servers_by_name(status)
    assert set(servers) == {"ms", "rs1", "fo1"}
    expected_ports = {"ms": {"api"}, "rs1": {"data", "control"}, "fo1": {"data", "control"}}
    roles = {"ms": "management", "rs1": "recording", "fo1": "failover"}
    now = dt.datetime.now(dt.UTC)
    for name, server in servers.items():
        local = plain_site.servers[name]
        assert server["role"] == roles[name]
        assert server["host"] == local.host == f"{name}.site.test"
        assert server["address"] == local.address
        assert set(server["ports"]) == expected_ports[name]
        assert server["ports"] == local.ports
        assert all(isinstance(p, int) for p in server["ports"].values())
        assert server["encryption"] is False
        assert server["online"] is True
        cert = server["certificate"]
        assert len(cert["sha256_fingerprint"]) == 64
        assert set(cert["sha256_fingerprint"]) <= HEX64
        not_after = dt.datetime.strptime(cert["not_after"], "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=dt.UTC
        )
        # LocalSite issues 90-day certificates, as `cert issue` does by default
        assert dt.timedelta(days=89) < not_after - now <= dt.timedelta(days=90)
        assert isinstance(cert["days_left"], int | float)
        assert cert["days_left"] == pytest.approx(
            (not_after - now).total_seconds() / 86400, abs=0.1
        )


def test_site_status_fingerprints_are_those_openssl_computes(plain_site: LocalSite) -> None:
    # When the administrator asks for the site status
    servers = servers_by_name(cli_json(plain_site, "site", "status"))

    # Then each fingerprint is the certificate's as openssl, an independent judge, sees it
    for name, local in plain_site.servers.items():
        assert servers[name]["certificate"]["sha256_fingerprint"] == openssl_fingerprint(
            local.chain
        )


def test_a_killed_recording_server_is_covered_by_the_failover_server_and_returns(
    plain_site: LocalSite,
) -> None:
    failover_round_trip(plain_site, "cam-plain")


def test_tls_to_a_plaintext_data_port_is_told_apart_from_other_failures(
    plain_site: LocalSite,
) -> None:
    # Given rs1's data port, plaintext while rs1's encryption is off
    rs1 = plain_site.servers["rs1"]
    context = client_context(trust_of(plain_site.home.trust_dir))

    # When a client speaks TLS to it
    with pytest.raises(TlsToPlaintextPort) as refused:
        call(endpoint(rs1, "data", tls=True), "GET", "/api/v1/status", ssl_context=context)

    # Then the error names the server and the fix, not an OpenSSL reason alone
    message = str(refused.value)
    assert "rs1" in message
    assert "plaintext" in message
    assert "watchkeep encryption enable --server rs1" in message
    assert isinstance(refused.value.__cause__, Exception)
    assert not isinstance(refused.value, ssl.SSLError)


def test_a_port_where_nothing_listens_is_reported_as_refused(plain_site: LocalSite) -> None:
    # Given an address of the site's network where no server runs
    rs1 = plain_site.servers["rs1"]
    nowhere = Endpoint(
        "rs9", "rs9.site.test", f"{plain_site.network}.250", rs1.ports["data"], False
    )

    # When a client connects there
    with pytest.raises(PeerRefused) as refused:
        call(nowhere, "GET", "/api/v1/status")

    # Then it is told that nothing listens, and where it tried
    assert "connection refused" in str(refused.value)
    assert "rs9" in str(refused.value)


def config_pushes(site: LocalSite, metric: str = "watchkeep_config_pushes_total") -> int:
    """The management server's count of configuration pushes (its Prometheus metrics)."""
    ms = site.management
    url = f"http://{ms.address}:{ms.ports['api']}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    (line,) = [x for x in text.splitlines() if x.startswith(f"{metric} ")]
    return int(line.split()[1])


def test_cameras_added_together_reach_the_recording_server_in_a_few_pushes(
    plain_site: LocalSite,
) -> None:
    names = [f"bulk{n:02d}" for n in range(30)]
    before = config_pushes(plain_site)

    async def add_all() -> None:
        async with SiteClient(plain_site.home) as client:
            await asyncio.gather(
                *(
                    client.call(
                        "POST",
                        "/api/v1/cameras",
                        {"name": n, "recording_server": "rs1", "source": {"kind": "synthetic"}},
                    )
                    for n in names
                )
            )

    asyncio.run(add_all())
    try:
        # Every camera reaches rs1, in far fewer pushes than cameras (each push carries
        # the whole configuration; calls that came while one ran share the next)
        def running() -> bool:
            # (its status as the management server reads it: every camera)
            status = call(endpoint(plain_site.servers["rs1"], "control", tls=False), "GET",
                          "/control/v1/status", token=control_token(plain_site))  # fmt: skip
            assert set(names) <= {c["name"] for c in status["cameras"]}
            return True

        eventually(running, what="rs1 running the 30 cameras")

        def settled() -> bool:
            # No push still asked for and not made
            return config_pushes(plain_site, "watchkeep_config_pushes_pending") == 0

        eventually(settled, what="the pushes to settle")
        pushes = config_pushes(plain_site) - before
        assert 1 <= pushes <= 10, pushes
    finally:
        for n in names:
            plain_site.api("DELETE", f"/api/v1/cameras/{n}")


def test_users_are_managed_from_the_command_line(plain_site: LocalSite, tmp_path: Path) -> None:
    password = tmp_path / "pw"
    password.write_text("night-shift-password\n")
    added = cli_json(
        plain_site, "user", "add", "night shift", "--password-file", str(password),
        "--camera", "cam1", "--camera", "cam2",
    )  # fmt: skip
    assert added == {"name": "night shift", "role": "operator", "cameras": ["cam1", "cam2"]}
    listed = {u["name"]: u for u in cli_json(plain_site, "user", "list")}
    assert listed["night shift"] == added
    assert listed["admin"]["role"] == "administrator"
    assert all(set(u) == {"name", "role", "cameras"} for u in listed.values())
    text = plain_site.cli("user", "list")
    assert "night shift  operator       cam1,cam2" in text.stdout, text.stdout

    assert cli_json(plain_site, "user", "remove", "night shift") == {"removed": "night shift"}
    assert "night shift" not in {u["name"] for u in cli_json(plain_site, "user", "list")}
    # Removing it again, or the last administrator, is refused in one line with the fix
    for name, words in (("night shift", "no user"), ("admin", "only administrator")):
        ran = plain_site.cli("user", "remove", name)
        assert ran.returncode == 1, ran
        lines = ran.stderr.strip().splitlines()
        assert len(lines) == 1, ran.stderr
        assert words in lines[0], lines[0]
        assert "fix:" in lines[0], lines[0]
    # A password file that cannot be read is a usage error, before anything is sent
    ran = plain_site.cli("user", "add", "x", "--password-file", str(tmp_path / "missing"))
    assert ran.returncode == 2, ran
    assert "cannot read the password file" in ran.stderr, ran.stderr


def test_a_server_logs_what_each_of_its_tasks_awaits_on_sigusr1(plain_site: LocalSite) -> None:
    # Given a running recording server
    process = plain_site.servers["rs1"].process
    assert process is not None
    # When it is sent SIGUSR1
    process.send_signal(signal.SIGUSR1)
    # Then its log lists its tasks, the heartbeat loop among them, each with where it waits
    eventually(lambda: "tasks (SIGUSR1)" in plain_site.log_text("rs1"), what="the task list")
    listed = plain_site.log_text("rs1").split("tasks (SIGUSR1)")[-1]
    assert "heartbeat_loop (_linked.py:" in listed
    assert process.poll() is None  # and it goes on running


def only_to(tap: socket.socket, address: int, port: int) -> None:
    """A classic BPF filter on a packet socket: IPv4, to ``address``, TCP, to ``port``."""
    drop = 10
    program = [  # (code, jump if true, jump if false, k); jumps count from the next one
        (0x28, 0, 0, 12),  # ldh [12]: the EtherType
        (0x15, 0, drop - 2, 0x0800),  # IPv4, or drop
        (0x20, 0, 0, 30),  # ld [30]: the destination address
        (0x15, 0, drop - 4, address),
        (0x30, 0, 0, 23),  # ldb [23]: the protocol
        (0x15, 0, drop - 6, socket.IPPROTO_TCP),
        (0xB1, 0, 0, 14),  # ldxb 4*([14]&0xf): the IP header's length
        (0x48, 0, 0, 16),  # ldh [x+16]: the destination port
        (0x15, 0, drop - 9, port),
        (0x06, 0, 0, 0x40000),  # keep the packet
        (0x06, 0, 0, 0),  # drop it
    ]
    code = b"".join(struct.pack("HBBI", *insn) for insn in program)
    buffer = ctypes.create_string_buffer(code)
    fprog = struct.pack("HL", len(program), ctypes.addressof(buffer))
    tap.setsockopt(socket.SOL_SOCKET, 26, fprog)  # SO_ATTACH_FILTER


def captured_control_token(rs1: LocalServer, trigger: Callable[[], None]) -> str:
    """The token of a configuration push to ``rs1``, read off the loopback interface while
    ``trigger`` makes the management server push (as anyone on a plaintext network can)."""
    try:
        tap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))
    except PermissionError:
        pytest.skip("reading packets off the loopback interface needs root (CI runs as root)")
    with tap:
        to_rs1 = socket.inet_aton(rs1.address)
        # Only rs1's control port, filtered in the kernel: the other tests' video on the
        # loopback interface would fill the socket's buffer before the push came.
        only_to(tap, int.from_bytes(to_rs1, "big"), rs1.ports["control"])
        tap.bind(("lo", 0))
        tap.settimeout(0.5)
        trigger()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                frame = tap.recv(65535)
            except TimeoutError:
                continue
            # (loopback frames: 14 bytes of link header, then IPv4; its destination at 16)
            if frame[14 + 16 : 14 + 20] != to_rs1 or b"POST /control/v1/config" not in frame:
                continue
            found = re.search(rb"Authorization: Bearer ([A-Za-z0-9_.-]+)\r\n", frame)
            if found:
                return found.group(1).decode()
    raise AssertionError("no configuration push to rs1 was seen on the loopback interface")


def test_a_control_token_seen_on_a_plaintext_link_pushes_no_other_configuration(
    plain_site: LocalSite,
) -> None:
    rs1 = plain_site.servers["rs1"]

    def cameras() -> set[str]:
        status = call(endpoint(rs1, "control", tls=False), "GET", "/control/v1/status",
                      token=control_token(plain_site))  # fmt: skip
        return {c["name"] for c in status["cameras"]}

    # Given the token of a push seen on the plaintext control link (a camera was added)
    seen = captured_control_token(
        rs1,
        lambda: plain_site.api("POST", "/api/v1/cameras", {"name": "seen-cam",
                               "recording_server": "rs1", "source": {"kind": "synthetic"}}),
    )  # fmt: skip
    try:
        eventually(lambda: "seen-cam" in cameras(), what="rs1 recording seen-cam")
        running = cameras()
        # When someone sends rs1 a configuration of their own with it: no cameras at all
        with pytest.raises(ApiError) as refused:
            call(endpoint(rs1, "control", tls=False), "POST", "/control/v1/config",
                 body={"cameras": [], "config_order": ["x", 1 << 40]}, token=seen)  # fmt: skip
        # Then rs1 refuses it, and records what it did
        assert refused.value.status == 403
        assert refused.value.code == "auth.token"
        assert "another configuration" in refused.value.document["detail"]
        assert cameras() == running
        assert "made for another configuration" in plain_site.log_text("rs1")
    finally:
        plain_site.api("DELETE", "/api/v1/cameras/seen-cam")
