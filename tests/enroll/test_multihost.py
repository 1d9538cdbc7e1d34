"""A site that spans hosts: Linux network namespaces made here, one per host, joined by veth
pairs to a bridge in a namespace of its own, each host with a TEST-NET-1 address
(192.0.2.0/24, inside these namespaces only) and a directory tree of its own.

- the management server's host runs the management server (with the CA home beside it)
  as its own service account; the CA home is unreadable to every other account;
- the recording server's host gets nothing but the token (the test carries that string
  across); `watchkeep join` there makes the key for the recording server's own service
  account, and the recording server registers, records a synthetic camera and serves it
  over TLS;
- a third host, a client, installs the CA with `trust install --from --fingerprint`, and
  `openssl s_client -verify_hostname` there verifies the recording server's chain with it.

Namespaces and service accounts are made by the test and removed afterwards, whatever
happened. Both need root (CI runs as root); where they cannot be made the test is skipped,
saying why.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from watchkeep._home import Home
from watchkeep.localsite import LocalSite, _supervise
from watchkeep.localsite._layout import LocalServer
from watchkeep.pki import SitePKI, fingerprint
from watchkeep.site import ServerRole
from watchkeep.testing import eventually

pytestmark = pytest.mark.slow

NETWORK = "192.0.2"  # TEST-NET-1 (RFC 5737): only ever inside the namespaces below
MS_ADDRESS, RS_ADDRESS, CLIENT_ADDRESS = f"{NETWORK}.2", f"{NETWORK}.3", f"{NETWORK}.30"
DOMAIN = "site.example"


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def _hidden_interpreter() -> tuple[Path, Path] | None:
    """(D, C) when this Python lies below a directory D that other accounts cannot
    traverse (a pyenv under /root, say), C being D's child on the way; else None."""
    path = Path(os.path.realpath(sys.executable))
    for directory in path.parents[::-1]:  # from / down
        if not directory.stat().st_mode & 0o001:
            return directory, directory / path.relative_to(directory).parts[0]
    return None


@dataclass
class Hosts:
    """The namespaces (host name -> namespace) and service accounts of one test run."""

    suffix: str
    namespaces: dict[str, str]
    accounts: dict[str, str]
    scratch: Path | None = None

    def exec(self, host: str, *command: str, user: str | None = None) -> list[str]:
        """``command`` as it runs on ``host`` (as ``user``, if given)."""
        prefix = ["ip", "netns", "exec", self.namespaces[host]]
        if user is None:
            return [*prefix, *command]
        hidden = _hidden_interpreter()
        if hidden is None:
            return [*prefix, "runuser", "-u", user, "--", *command]
        # This Python is out of the account's reach (the machine's own business, not the
        # site's): in a mount namespace of the server's own, the directory that hides it is
        # covered by an empty one that leads to the interpreter only.
        blocked, way = hidden
        assert self.scratch is not None
        script = (
            f"set -e; mount --bind {way} {self.scratch}; "
            f"mount -t tmpfs -o mode=0755 tmpfs {blocked}; mkdir {way}; "
            f"mount --bind {self.scratch} {way}; "
            f'exec runuser -u {user} -- "$@"'
        )
        return [*prefix, "unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                "sh", *command]  # fmt: skip


def _cannot(reason: str) -> None:
    pytest.skip(f"separate hosts cannot be made here: {reason}")


@contextlib.contextmanager
def hosts() -> Iterator[Hosts]:
    """Namespaces ms, rs and client on one bridge, and a service account for each server."""
    if os.geteuid() != 0:
        _cannot("network namespaces and service accounts need root")
    for tool in ("ip", "useradd", "userdel", "runuser", "openssl"):
        if shutil.which(tool) is None:
            _cannot(f"{tool} is not installed")
    suffix = secrets.token_hex(3)
    made = Hosts(suffix, {}, {})
    bridge = f"wkbr{suffix}"
    try:
        ran = _run("ip", "netns", "add", bridge)
        if ran.returncode != 0:
            _cannot(f"ip netns add: {ran.stderr.strip()}")
        made.namespaces["bridge"] = bridge
        steps = [
            ["ip", "-n", bridge, "link", "add", "br0", "type", "bridge"],
            ["ip", "-n", bridge, "link", "set", "br0", "up"],
        ]
        for n, (host, address) in enumerate(
            [("ms", MS_ADDRESS), ("rs", RS_ADDRESS), ("client", CLIENT_ADDRESS)]
        ):
            namespace = f"wk{host}{suffix}"
            ran = _run("ip", "netns", "add", namespace)
            if ran.returncode != 0:
                _cannot(f"ip netns add: {ran.stderr.strip()}")
            made.namespaces[host] = namespace
            inside, outside = f"wkh{n}{suffix}", f"wkb{n}{suffix}"
            steps += [
                [
                    "ip",
                    "link",
                    "add",
                    inside,
                    "netns",
                    namespace,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    outside,
                    "netns",
                    bridge,
                ],
                ["ip", "-n", namespace, "addr", "add", f"{address}/24", "dev", inside],
                ["ip", "-n", namespace, "link", "set", inside, "up"],
                ["ip", "-n", namespace, "link", "set", "lo", "up"],
                ["ip", "-n", bridge, "link", "set", outside, "master", "br0"],
                ["ip", "-n", bridge, "link", "set", outside, "up"],
            ]
        for step in steps:
            ran = _run(*step)
            if ran.returncode != 0:
                _cannot(f"{' '.join(step)}: {ran.stderr.strip()}")
        for server in ("ms", "rs"):
            account = f"wk{server}{suffix}"
            ran = _run("useradd", "--system", "--no-create-home", "--shell",
                       "/usr/sbin/nologin", account)  # fmt: skip
            if ran.returncode != 0:
                _cannot(f"useradd: {ran.stderr.strip()}")
            made.accounts[server] = account
        yield made
    finally:
        for account in made.accounts.values():
            _run("userdel", account)
        for namespace in made.namespaces.values():
            _run("ip", "netns", "del", namespace)


@contextlib.contextmanager
def started(server: LocalServer, command: list[str]) -> Iterator[LocalServer]:
    """``server`` run by ``command`` (on its host, as its account), its output in its log;
    stopped (its whole process group) at the end."""
    assert server.log is not None
    with server.log.open("ab") as log:
        server.log_start = log.tell()
        server.process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"},
            start_new_session=True,
        )
    try:
        _supervise.wait_ready(server, timeout=60)
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.process.pid, signal.SIGTERM)
        try:
            server.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait(timeout=20)


def watchkeep(hosts: Hosts, host: str, home: Path, *args: str, user: str | None = None) -> Any:
    """`watchkeep --home HOME ARGS --json` on ``host``: its decoded output."""
    command = hosts.exec(
        host, sys.executable, "-m", "watchkeep", "--home", str(home), *args, user=user
    )
    ran = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        check=False,
    )
    assert ran.returncode == 0, f"{' '.join(args)}: {ran.stderr}"
    return json.loads(ran.stdout) if "--json" in args else ran.stdout


def test_a_recording_server_on_its_own_host_joins_with_only_a_token(tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        net = stack.enter_context(hosts())
        # Each host's own directory tree, reachable by the service accounts (pytest's
        # tmp_path is root's alone)
        top = Path(tempfile.mkdtemp(prefix="wk-hosts-"))
        stack.callback(shutil.rmtree, top, ignore_errors=True)
        top.chmod(0o755)
        net.scratch = top / "interpreter"
        net.scratch.mkdir()
        ms_root, rs_root, client_root = top / "ms-host", top / "rs-host", top / "client-host"

        # Given the CA and the management server on their host, run by its own account
        # that alone can read the CA home
        site = LocalSite(ms_root, network=NETWORK, domain=DOMAIN)
        site.init_ca("watchkeep Multi-host Test CA")
        ms = site.add_server("ms", ServerRole.MANAGEMENT)
        assert ms.address == MS_ADDRESS
        site.connect_cli()
        ms_account = net.accounts["ms"]
        _run("chown", "-R", f"{ms_account}:{ms_account}", str(ms_root))
        ms_root.chmod(0o700)
        stack.enter_context(
            started(
                ms,
                net.exec(
                    "ms",
                    sys.executable,
                    "-m",
                    "watchkeep",
                    "server",
                    "run",
                    "management",
                    "--config",
                    str(ms.config),
                    user=ms_account,
                ),
            )
        )
        admin = ms_root  # the administrator works on the management server's host
        watchkeep(net, "ms", admin, "encryption", "enable", "--server", "ms", "--json")
        ca_fingerprint = fingerprint(SitePKI(Home(ms_root)).ca_certificate())

        # When the administrator makes a token there, and only that string goes to the
        # recording server's host
        made = watchkeep(
            net, "ms", admin, "enroll", "create", "--name", "rs9", "--role", "recording",
            "--host", f"rs9.{DOMAIN}", "--ip", RS_ADDRESS, "--json",
        )  # fmt: skip
        token = made["token"]
        rs_root.mkdir(mode=0o755)
        rs_account = net.accounts["rs"]
        joined = watchkeep(
            net, "rs", rs_root, "join", token, "--service-account", rs_account, "--json"
        )

        # Then the key was made there for the recording server's account, which cannot read
        # the CA home
        config = Path(joined["config"])
        key = next((config.parent / "tls").glob("*.key"))
        stat = key.stat()
        assert stat.st_mode & 0o777 == 0o600
        assert stat.st_uid == int(_run("id", "-u", rs_account).stdout)
        denied = subprocess.run(
            ["runuser", "-u", rs_account, "--", "cat", str(Home(ms_root).ca_key)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert denied.returncode != 0
        assert "Permission denied" in denied.stderr
        assert joined["encrypted_link"] is True
        assert joined["command"].startswith(f"runuser -u {rs_account} -- watchkeep server run")

        # And the recording server, started as its account on its host, registers (mutual
        # TLS with the certificate it joined with), records a camera and serves it encrypted
        rs9 = LocalServer.laid_out(
            Home(rs_root), "rs9", ServerRole.RECORDING, f"rs9.{DOMAIN}", RS_ADDRESS,
            {"data": 7563, "control": 9001},
        )  # fmt: skip
        stack.enter_context(
            started(
                rs9,
                net.exec(
                    "rs",
                    sys.executable,
                    "-m",
                    "watchkeep",
                    "server",
                    "run",
                    "recording",
                    "--config",
                    str(config),
                    user=rs_account,
                ),
            )
        )

        def rs9_online() -> dict[str, Any] | None:
            status = watchkeep(net, "ms", admin, "site", "status", "--json")
            found = {s["name"]: s for s in status["servers"]}.get("rs9")
            return found if found and found["online"] and found["encrypted_now"] else None

        rs9_status = eventually(rs9_online, timeout=90, interval=0.5)
        assert rs9_status["address"] == RS_ADDRESS
        watchkeep(net, "ms", admin, "camera", "add", "cam9", "--recording-server", "rs9",
                  "--synthetic", "320x180@5", "--frame-bytes", "8000", "--json")  # fmt: skip
        data = config.parent / "data"
        eventually(lambda: any(p.is_file() and p.stat().st_size for p in data.rglob("*")),
                   timeout=60, interval=0.5, what="rs9 recording cam9")  # fmt: skip

        # And a client on a third host trusts the CA by its fingerprint alone, and openssl
        # verifies the recording server's chain and host name with it
        client_trust = client_root / "trust"
        watchkeep(
            net, "client", client_root, "trust", "install", "--from",
            f"https://{MS_ADDRESS}:9000", "--fingerprint", ca_fingerprint,
            "--store", str(client_trust),
        )  # fmt: skip
        ca_file = next(client_trust.glob("watchkeep-*.pem"))
        handshake = subprocess.run(
            net.exec(
                "client", "openssl", "s_client", "-connect", f"{RS_ADDRESS}:7563",
                "-servername", f"rs9.{DOMAIN}", "-verify_hostname", f"rs9.{DOMAIN}",
                "-CAfile", str(ca_file), "-verify_return_error", "-brief",
            ),
            input="", capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert handshake.returncode == 0, handshake.stderr
        assert "Verification: OK" in handshake.stderr
        assert f"rs9.{DOMAIN}" in handshake.stderr
