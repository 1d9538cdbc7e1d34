"""``LocalSite``: a whole site on one machine, laid out and run as an administrator would.

It lays out a site under one directory: a CA home, and per server a certificate, key,
trust store and config file (each server on its own loopback address and host name), and
runs each server as its own process. Once it runs, the site answers its administrator: the
management API (``api``, ``status``), waiting until servers are online or encrypted,
turning encryption on through the CLI. Every failure is a watchkeep error.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from watchkeep._home import Home
from watchkeep.errors import SiteCommandFailed, SiteNotReady
from watchkeep.localsite import _supervise
from watchkeep.localsite._config import dumps_toml, server_document
from watchkeep.localsite._layout import LocalServer
from watchkeep.localsite._supervise import DEADLINE, START_DEADLINE, wait_until
from watchkeep.pki import KeyType, SitePKI
from watchkeep.site import DEFAULT_PORTS, ServerRole
from watchkeep.trust import DirectoryTrustStore

if TYPE_CHECKING:
    from watchkeep.client import SiteConnection

__all__ = ["LocalSite", "free_loopback_network", "servers_by_name"]

ADMIN_PASSWORD_LENGTH = 24
LOG_TAIL_LINES = 80


def free_loopback_network() -> str:
    """A random 127.x.y network prefix, so that sites of parallel or successive runs never
    meet on the same addresses and ports."""
    return f"127.{secrets.randbelow(200) + 20}.{secrets.randbelow(250) + 1}"


def servers_by_name(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The servers of a site status (``LocalSite.status``), keyed by name."""
    return {s["name"]: s for s in status["servers"]}


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
        database_url: str | None = None,
    ) -> None:
        """``database_url``: the management server's site database (default: SQLite in
        its data directory)."""
        self.root = root
        self.network = network or free_loopback_network()
        self.domain = domain
        self.key_type = key_type
        self.failover_after = failover_after
        self.heartbeat_interval = heartbeat_interval
        self.renew_check_interval = renew_check_interval
        self.auto_renew = auto_renew
        self.database_url = database_url
        # The administrator's home (CA, inventory, CLI connection) is the root itself, so
        # that `watchkeep --home ROOT ...` describes the site; each server lives below it.
        self.home = Home(root)
        self.servers: dict[str, LocalServer] = {}
        self._next_host = 2
        self.password_file = root / "admin-password"
        self.registration_key_file = root / "registration-key"
        self.pki = SitePKI(self.home)

    # -- laying out ----------------------------------------------------------------------

    def init_ca(
        self, name: str = "watchkeep Test Site CA", key_type: KeyType = KeyType.ECDSA_P256
    ) -> None:
        self.home.ensure()
        self.pki.init_ca(name, key_type=key_type)
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
        server = LocalServer.laid_out(
            self.home,
            name,
            role,
            f"{name}.{self.domain}",
            address,
            dict(ports or DEFAULT_PORTS[role]),
        )
        server.directory.mkdir(parents=True, exist_ok=True)
        self.servers[name] = server
        if certificate:
            self.issue(server)
        if trust:
            self.trust(server)
        self.write_config(server)
        return server

    def join_server(
        self, name: str, role: ServerRole, *, service_account: str | None = None
    ) -> LocalServer:
        """Add a server the way a new machine joins a site: the administrator makes a
        one-time token (the management server must run and the CLI be connected), and
        `watchkeep join` on the "machine" (a home of the server's own, below
        ``machines/NAME``) makes its key, gets its certificate and writes its config. Nothing
        of it is written by the site: only the token goes across."""
        address = f"{self.network}.{self._next_host}"
        self._next_host += 1
        host = f"{name}.{self.domain}"
        made = self.api(
            "POST",
            "/api/v1/enrollments",
            {"name": name, "role": role.value, "host": host, "ips": [address], "ttl": "10m"},
        )
        machine = Home(self.root / "machines" / name)
        command = ["join", made["token"], "--json"]
        if service_account is not None:
            command += ["--service-account", service_account]
        ran = subprocess.run(
            [sys.executable, "-m", "watchkeep", "--home", str(machine.root), *command],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if ran.returncode != 0:
            raise SiteCommandFailed(f"watchkeep join (for {name})", ran.stderr.strip())
        server = LocalServer.laid_out(machine, name, role, host, address, dict(DEFAULT_PORTS[role]))
        self.servers[name] = server
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
        return self.managements[0]

    @property
    def managements(self) -> list[LocalServer]:
        """The site's management servers (several share a PostgreSQL database)."""
        return [s for s in self.servers.values() if s.role is ServerRole.MANAGEMENT]

    def write_config(self, server: LocalServer) -> None:
        """Write the server's config file from the site's settings and ``server.extra``."""
        server.config.write_text(dumps_toml(server_document(self, server)))

    # -- running -------------------------------------------------------------------------

    def start(self, name: str, *, wait: bool = True) -> LocalServer:
        """Start a server as its own process; with ``wait``, return once it has started.

        Call it from a thread that lives as long as the server should: Linux ends the
        server (SIGTERM) when the thread that started it ends, so that no server outlives
        the program running the site."""
        server = self.servers[name]
        server.process = _supervise.start_process(server)
        if wait:
            self.wait_ready(server)
        return server

    def start_together(self, *names: str) -> None:
        """Start the servers as parallel processes, then wait until each has started."""
        for name in names:
            self.start(name, wait=False)
        for name in names:
            self.wait_ready(self.servers[name])

    def wait_ready(self, server: LocalServer, timeout: float = START_DEADLINE) -> None:
        """Wait until the server says it has started (its log's "ready" line). A recording
        server never configured by the management server opens its listeners only with
        its first configuration (wait_online waits for those)."""
        _supervise.wait_ready(server, timeout)

    def start_all(self) -> dict[str, Any]:
        """Start every server, connect the CLI and wait until all have registered; the status."""
        self.start_together(*self.servers)
        self.connect_cli()
        others = [n for n, s in self.servers.items() if s.role is not ServerRole.MANAGEMENT]
        return self.wait_online(*others)

    def wait_listening(self, server: LocalServer, timeout: float = START_DEADLINE) -> None:
        _supervise.wait_listening(server, timeout)

    def log_text(self, name: str) -> str:
        return _supervise.log_text(self.servers[name])

    def log_tails(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` of every server's log, each under a header naming the file."""
        parts = []
        for name, server in self.servers.items():
            tail = self.log_text(name).splitlines()[-lines:]
            parts.append(f"----- {name} ({server.log}) -----\n" + "\n".join(tail))
        return "\n".join(parts)

    @property
    def logs(self) -> str:
        """Where the servers' logs are, for a message."""
        return str(self.home.servers_dir / "*" / "server.log")

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        server = self.servers[name]
        process = server.process
        if process is None:
            return None
        status = _supervise.stop_process(process, sig, timeout)
        server.process = None
        return status

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
            others=[
                {"name": m.name, "host": m.host, "address": m.address, "port": m.ports["api"]}
                for m in self.managements[1:]
            ],
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
                    raise SiteCommandFailed(
                        f"log-in as {client.connection.user} at {self.management.name}",
                        "the management server answered no token",
                        fix=f"read its log {self.management.log}",
                    )
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
        """Wait until the management server lists every named server online, and each
        listens; the status."""
        missing: list[str] = list(names)

        def online() -> dict[str, Any] | None:
            status = self.status()
            servers = servers_by_name(status)
            missing[:] = [n for n in names if not servers.get(n, {}).get("online")]
            return None if missing else status

        try:
            status = wait_until(
                online,
                what=f"{', '.join(names)} online",
                logs=self.logs,
                timeout=timeout,
                last=lambda: f"not online: {', '.join(missing)}",
            )
        except SiteNotReady as exc:
            exc.add_note(self.log_tails())
            raise
        # A server opens its listeners with the configuration its registration brought
        for name in names:
            self.wait_listening(self.servers[name])
        return status

    def encrypt(self, *names: str) -> None:
        """Turn encryption on with the CLI, in the order given; return once each speaks TLS."""
        for name in names:
            ran = self.cli("encryption", "enable", "--server", name)
            if ran.returncode != 0:
                raise SiteCommandFailed(f"watchkeep encryption enable --server {name}", ran.stderr)
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
        unsettled: list[dict[str, Any]] = []

        def settled() -> bool:
            servers = servers_by_name(self.status())
            unsettled[:] = [
                servers[n]
                for n in names
                if (servers[n]["encryption"], servers[n]["encrypted_now"], servers[n]["online"])
                != (True, True, True)
            ]
            return not unsettled

        wait_until(
            settled,
            what=f"{', '.join(names)} encrypted and online",
            logs=self.logs,
            last=lambda: unsettled,
        )
        if self.management.name not in names:
            return
        # A recording or failover server turns its control listener to TLS only when its
        # next heartbeat meets the management server's TLS port, a moment after the status
        # above says every server is encrypted: wait for that too, or the next caller meets
        # a plaintext control port.
        for server in self.servers.values():
            if "control" in server.ports and server.process is not None:
                wait_until(
                    functools.partial(
                        _supervise.speaks_tls, server.address, server.ports["control"]
                    ),
                    what=f"{server.name}'s control listener speaking TLS",
                    logs=str(server.log),
                )
