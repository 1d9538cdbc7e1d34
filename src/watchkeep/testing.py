"""A whole site on one machine, for tests, benchmarks and `watchkeep demo`.

``LocalSite`` lays out a site under one directory the way an administrator would: a CA
home, a certificate, key, trust store and config file per server (each server on its own
loopback address and host name), and runs each server as its own process. Once it runs,
the site answers its administrator: the management API (``api``, ``status``), waiting
until servers are online or encrypted, turning encryption on through the CLI.

Nothing waits a fixed time: ``eventually`` polls a condition until a generous deadline, so
that a slow machine makes a test slower, never wrong. A wait that gives up fails with
AssertionError saying what the site looked like, as a test's own ``assert`` would.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from watchkeep._home import Home
from watchkeep.pki import KeyType, Role, SitePKI
from watchkeep.site import DEFAULT_PORTS, ServerRole
from watchkeep.trust import DirectoryTrustStore

if TYPE_CHECKING:
    from watchkeep.client import SiteConnection

__all__ = [
    "LocalServer",
    "LocalSite",
    "cameras_by_name",
    "eventually",
    "free_loopback_network",
    "servers_by_name",
]

T = TypeVar("T")

ADMIN_PASSWORD_LENGTH = 24
# Generous: a loaded two-core machine may take several seconds to start a Python process.
DEADLINE = 30.0
LOG_TAIL_LINES = 80


def free_loopback_network() -> str:
    """A random 127.x.y network prefix, so that sites of parallel or successive runs never
    meet on the same addresses and ports."""
    return f"127.{secrets.randbelow(200) + 20}.{secrets.randbelow(250) + 1}"


def eventually(
    check: Callable[[], T | None],
    *,
    timeout: float = DEADLINE,
    interval: float = 0.1,
    what: str = "",
    retry_on: tuple[type[Exception], ...] = (AssertionError,),
) -> T:
    """Call ``check`` until it returns a true value without raising AssertionError (or
    another of ``retry_on``); that value."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            result = check()
        except retry_on as exc:
            last = exc
        else:
            if result:
                return result
            last = result
        if time.monotonic() > deadline:
            # The last value or assertion says what the site looked like when the wait gave up.
            raise AssertionError(f"not within {timeout:.0f} s: {what or check!r}; last: {last}")
        time.sleep(interval)


def servers_by_name(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The servers of a site status (``LocalSite.status``), keyed by name."""
    return {s["name"]: s for s in status["servers"]}


def cameras_by_name(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The cameras of a site status (``LocalSite.status``), keyed by name."""
    return {c["name"]: c for c in status["cameras"]}


@dataclass
class LocalServer:
    name: str
    role: ServerRole
    host: str
    address: str
    ports: dict[str, int]
    directory: Path
    config: Path
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    log_start: int = 0  # bytes of its log written before it was last started

    @property
    def tls_dir(self) -> Path:
        return self.directory / "tls"

    @property
    def trust_dir(self) -> Path:
        return self.directory / "trust"

    @property
    def cert_role(self) -> Role:
        return Role(self.role.value)

    @property
    def chain(self) -> Path:
        return self.tls_dir / f"{self.role.value}-{self.host}.chain.pem"

    @property
    def key(self) -> Path:
        return self.tls_dir / f"{self.role.value}-{self.host}.key"


class LocalSite:
    def __init__(
        self,
        root: Path,
        *,
        network: str | None = None,
        domain: str = "site.test",
        key_type: KeyType = KeyType.ECDSA_P256,
        failover_after: float = 3.0,
        heartbeat_interval: float = 0.5,
        renew_check_interval: float = 1.0,
        auto_renew: bool = True,
    ) -> None:
        self.root = root
        self.network = network or free_loopback_network()
        self.domain = domain
        self.key_type = key_type
        self.failover_after = failover_after
        self.heartbeat_interval = heartbeat_interval
        self.renew_check_interval = renew_check_interval
        self.auto_renew = auto_renew
        # The administrator's home (CA, inventory, CLI connection) is the root itself, so
        # that `watchkeep --home ROOT ...` describes the site; each server lives below it.
        self.home = Home(root)
        self.servers: dict[str, LocalServer] = {}
        self._next_host = 2
        self.password_file = root / "admin-password"
        self.registration_key_file = root / "registration-key"
        self.pki = SitePKI(self.home)

    # -- laying out ----------------------------------------------------------------------

    def init_ca(self, name: str = "watchkeep Test Site CA") -> None:
        self.home.ensure()
        self.pki.init_ca(name, key_type=KeyType.ECDSA_P256)
        self.password_file.write_text(secrets.token_urlsafe(ADMIN_PASSWORD_LENGTH) + "\n")
        self.password_file.chmod(0o600)
        self.registration_key_file.write_text(secrets.token_urlsafe(24) + "\n")
        self.registration_key_file.chmod(0o600)
        DirectoryTrustStore(self.home.trust_dir).install(self.pki.ca_certificate())
        self.refresh_crl(self.home.trust_dir)

    def refresh_crl(self, trust_dir: Path) -> None:
        DirectoryTrustStore(trust_dir).install_crl(self.home.crl.read_bytes())

    def add_server(
        self,
        name: str,
        role: ServerRole,
        *,
        certificate: bool = True,
        trust: bool = True,
        ports: dict[str, int] | None = None,
    ) -> LocalServer:
        address = f"{self.network}.{self._next_host}"
        self._next_host += 1
        host = f"{name}.{self.domain}"
        directory = self.root / "servers" / name
        directory.mkdir(parents=True, exist_ok=True)
        server = LocalServer(
            name=name,
            role=role,
            host=host,
            address=address,
            ports=dict(ports or DEFAULT_PORTS[role]),
            directory=directory,
            config=directory / "server.toml",
            log=directory / "server.log",
        )
        self.servers[name] = server
        if certificate:
            self.issue(server)
        if trust:
            self.trust(server)
        self.write_config(server)
        return server

    def issue(self, server: LocalServer, **kwargs: Any) -> None:
        self.pki.issue(
            server.cert_role,
            [server.host],
            ips=[server.address],
            key_type=self.key_type,
            out=server.tls_dir,
            replace=True,
            **kwargs,
        )

    def trust(self, server: LocalServer) -> None:
        DirectoryTrustStore(server.trust_dir).install(self.pki.ca_certificate())
        self.refresh_crl(server.trust_dir)

    @property
    def management(self) -> LocalServer:
        return next(s for s in self.servers.values() if s.role is ServerRole.MANAGEMENT)

    def write_config(self, server: LocalServer) -> None:
        lines = [
            "[server]",
            f'name = "{server.name}"',
            f'role = "{server.role.value}"',
            f'host = "{server.host}"',
            f'address = "{server.address}"',
            'data_dir = "data"',
            f"heartbeat_interval = {self.heartbeat_interval}",
            "",
            "[ports]",
            *[f"{k} = {v}" for k, v in server.ports.items()],
            "",
            "[tls]",
            f'certificate = "{server.chain}"',
            f'key = "{server.key}"',
            f'trust_store = "{server.trust_dir}"',
            "",
        ]
        if server.role is ServerRole.MANAGEMENT:
            lines += [
                "[site]",
                f'admin_password_file = "{self.password_file}"',
                f'registration_key_file = "{self.registration_key_file}"',
                f"failover_after = {self.failover_after}",
                # The site root is the CA home: the management server renews with it.
                *([f'ca_home = "{self.home.root}"'] if self.auto_renew else []),
                f"renew_check_interval = {self.renew_check_interval}",
                "",
            ]
        else:
            ms = self.management
            lines += [
                "[management]",
                f'host = "{ms.host}"',
                f'address = "{ms.address}"',
                f"port = {ms.ports['api']}",
                f'registration_key_file = "{self.registration_key_file}"',
                "",
            ]
        for table, values in server.extra.items():
            lines.append(f"[{table}]")
            lines += [f"{k} = {_toml(v)}" for k, v in values.items()]
            lines.append("")
        server.config.write_text("\n".join(lines))

    # -- running -------------------------------------------------------------------------

    def start(self, name: str, *, wait: bool = True) -> LocalServer:
        """Start a server as its own process.

        Call it from a thread that lives as long as the server should: Linux ends the
        server (SIGTERM) when the thread that started it ends, so that no server outlives
        the program running the site."""
        server = self.servers[name]
        assert server.log is not None
        log = server.log.open("ab")
        server.log_start = log.tell()
        role = "recording" if server.role.records else server.role.value
        server.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "watchkeep",
                "server",
                "run",
                role,
                "--config",
                str(server.config),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            # A session of its own: Ctrl-C in a terminal signals the foreground process
            # group, and must reach only the program running the site (`watchkeep demo`,
            # a test run), which stops the servers in order; servers that stopped by
            # themselves meanwhile would make it fail on its way out.
            start_new_session=True,
            # And if that program dies without stopping them (kill -9), they go with it.
            preexec_fn=_die_with_parent,
        )
        log.close()
        if wait:
            self.wait_ready(server)
        return server

    def start_together(self, *names: str) -> None:
        """Start the servers as parallel processes, then wait until each has started."""
        for name in names:
            self.start(name, wait=False)
        for name in names:
            self.wait_ready(self.servers[name])

    def wait_ready(self, server: LocalServer, timeout: float = 20.0) -> None:
        """Wait until the server says it has started (its log's "ready" line). A recording
        server never configured by the management server opens its listeners only with
        its first configuration (wait_online waits for those)."""
        ready = f"{server.name}: {server.role.value} server ready"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if server.process is not None and server.process.poll() is not None:
                raise RuntimeError(
                    f"{server.name} exited with status {server.process.returncode}:\n{self.log_text(server.name)}"
                )
            if (
                server.log is not None
                and ready.encode() in server.log.read_bytes()[server.log_start :]
            ):
                return
            time.sleep(0.05)
        raise TimeoutError(f"{server.name} did not start:\n{self.log_text(server.name)}")

    def start_all(self) -> dict[str, Any]:
        """Start every server, connect the CLI and wait until all have registered; the status."""
        self.start_together(*self.servers)
        self.connect_cli()
        others = [n for n, s in self.servers.items() if s.role is not ServerRole.MANAGEMENT]
        return self.wait_online(*others)

    def wait_listening(self, server: LocalServer, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        port = next(iter(server.ports.values()))
        while time.monotonic() < deadline:
            if server.process is not None and server.process.poll() is not None:
                raise RuntimeError(
                    f"{server.name} exited with status {server.process.returncode}:\n{self.log_text(server.name)}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection((server.address, port), 0.2),
            ):
                return
            time.sleep(0.05)
        raise TimeoutError(
            f"{server.name} did not listen on {server.address}:{port}:\n{self.log_text(server.name)}"
        )

    def log_text(self, name: str) -> str:
        log = self.servers[name].log
        return log.read_text(errors="replace") if log and log.exists() else ""

    def log_tails(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` of every server's log, each under a header naming the file."""
        parts = []
        for name, server in self.servers.items():
            tail = self.log_text(name).splitlines()[-lines:]
            parts.append(f"----- {name} ({server.log}) -----\n" + "\n".join(tail))
        return "\n".join(parts)

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        server = self.servers[name]
        process = server.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        server.process = None
        return process.returncode

    def kill(self, name: str) -> None:
        self.stop(name, signal.SIGKILL)

    def stop_all(self) -> None:
        # Clients of the management server first, so none of them logs its disappearance.
        for name in reversed(list(self.servers)):
            self.stop(name)

    def connect_cli(self) -> None:
        """Write the CLI's site.json for the admin home (as `watchkeep site connect` would)."""
        from watchkeep.client import SiteConnection

        ms = self.management
        SiteConnection(
            name=ms.name,
            host=ms.host,
            address=ms.address,
            port=ms.ports["api"],
            encryption=False,
            user="admin",
            password_file=str(self.password_file),
            trust_store=str(self.home.trust_dir),
        ).save(self.home)

    def cli(
        self, *args: str, check: bool = False, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "watchkeep", "--home", str(self.home.root), *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )

    # -- the administrator (once `connect_cli` wrote the connection) ---------------------

    def api(self, method: str, path: str, body: Any = None) -> Any:
        """One call to the management API, logged in as the administrator; the decoded answer."""
        from watchkeep.client import SiteClient

        async def call() -> Any:
            async with SiteClient(self.home) as client:
                return await client.call(method, path, body)

        return asyncio.run(call())

    def status(self) -> dict[str, Any]:
        """The site status as the management server reports it (`watchkeep site status`)."""
        status: dict[str, Any] = self.api("GET", "/api/v1/site/status")
        return status

    def login_token(
        self, connection: SiteConnection | None = None, *, via: str | None = None
    ) -> str:
        """A bearer token from the management server's log-in (the administrator's by
        default), for the management server, and for the mobile server ``via`` too."""
        from watchkeep.client import SiteClient

        async def log_in() -> str:
            async with SiteClient(self.home, connection) as client:
                if via is not None:
                    reply = await client.call(
                        "POST",
                        "/api/v1/login",
                        {
                            "user": client.connection.user,
                            "password": client.connection.password(),
                            "audience": via,
                        },
                        auth=False,
                    )
                    return str(reply["token"])
                if client.token is None:
                    raise AssertionError("the log-in answered no token")
                return client.token

        return asyncio.run(log_in())

    def stream_token(self, camera: str, connection: SiteConnection | None = None) -> str:
        """A stream token for ``camera`` at the server that records it now (the
        administrator's by default), as a viewer gets it from the management server."""
        from watchkeep.client import SiteClient

        async def ask() -> str:
            async with SiteClient(self.home, connection) as client:
                return (await client.stream_access(camera)).token

        return asyncio.run(ask())

    def wait_online(self, *names: str, timeout: float = DEADLINE) -> dict[str, Any]:
        """Wait until the management server lists every named server online; the status."""

        def check() -> dict[str, Any]:
            status = self.status()
            servers = servers_by_name(status)
            missing = [n for n in names if not servers.get(n, {}).get("online")]
            if missing:
                raise AssertionError(f"not online: {missing}")
            return status

        try:
            status = eventually(check, timeout=timeout, what=f"{', '.join(names)} online")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.log_tails()}") from None
        # A server opens its listeners with the configuration its registration brought
        for name in names:
            self.wait_listening(self.servers[name])
        return status

    def encrypt(self, *names: str) -> None:
        """Turn encryption on with the CLI, in the order given; return once each speaks TLS."""
        for name in names:
            ran = self.cli("encryption", "enable", "--server", name)
            if ran.returncode != 0:
                raise AssertionError(f"watchkeep encryption enable --server {name}: {ran.stderr}")
        self.wait_encrypted(*names)

    def encrypt_everything(self) -> None:
        """`encrypt` every running server in the order the site's rules ask: management last."""
        clients = [
            name
            for name, server in self.servers.items()
            if server.role is not ServerRole.MANAGEMENT and server.process is not None
        ]
        self.encrypt(*clients, self.management.name)

    def wait_encrypted(self, *names: str) -> None:
        """Wait until the management server lists every named server encrypted, on TLS, online."""

        def settled() -> bool:
            servers = servers_by_name(self.status())
            for name in names:
                s = servers[name]
                if (s["encryption"], s["encrypted_now"], s["online"]) != (True, True, True):
                    raise AssertionError(s)
            return True

        eventually(settled, what=f"{', '.join(names)} encrypted and online")
        if self.management.name not in names:
            return
        # A recording or failover server turns its control listener to TLS only when its
        # next heartbeat meets the management server's TLS port, a moment after the status
        # above says every server is encrypted: wait for that too, or the next caller meets
        # a plaintext control port.
        for server in self.servers.values():
            if "control" in server.ports and server.process is not None:
                eventually(
                    functools.partial(speaks_tls, server.address, server.ports["control"]),
                    what=f"{server.name}'s control listener speaking TLS",
                )


def can_mount() -> bool:
    """Whether this process may mount file systems (root, with mount(8)): the tests that
    need a small or separate file system mount a tmpfs."""
    return os.geteuid() == 0 and shutil.which("mount") is not None


def speaks_tls(address: str, port: int) -> bool:
    """True if ``address:port`` answers a TLS ClientHello with a TLS handshake, else an
    AssertionError (for `eventually`). Nothing is verified, and no client certificate is
    sent: a listener that requires one refuses only after the client's side is done."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((address, port), timeout=5) as sock,
            context.wrap_socket(sock),
        ):
            return True
    except OSError as exc:  # ssl.SSLError too; a listener being restarted refuses
        raise AssertionError(f"{address}:{port} does not speak TLS yet: {exc}") from exc


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to send SIGTERM when the parent dies."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
