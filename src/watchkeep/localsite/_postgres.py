"""``LocalPostgres``: a PostgreSQL server of its own, for the tests and the benchmarks.

It runs Debian's PostgreSQL (``/usr/lib/postgresql/15/bin``, or ``WATCHKEEP_PG_BIN``) on a
cluster made in a new directory, listening on a Unix socket in that directory (and, when
asked, on one loopback address over TLS). PostgreSQL refuses to run as root: run as root,
the cluster belongs to the ``postgres`` system account and every command runs as that
account (``runuser``). Local connections are trusted, except for the password role
``PASSWORD_ROLE``, which must log in with its password (SCRAM): what a site's config would
hold. Every failure is a ``LocalSiteError``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import quote

from watchkeep.errors import LocalSiteError

__all__ = ["PASSWORD_ROLE", "LocalPostgres", "postgres_bin"]

PASSWORD_ROLE = "wk_password"  # noqa: S105 (a role name; its password is made at start)
_PORT = 5432  # on a socket of its own, and on a loopback address of its own with TLS


def postgres_bin() -> Path | None:
    """Where PostgreSQL's server programs are, or None when it is not installed."""
    found = Path(os.environ.get("WATCHKEEP_PG_BIN", "/usr/lib/postgresql/15/bin"))
    return found if (found / "pg_ctl").exists() else None


class LocalPostgres:
    def __init__(
        self,
        *,
        tls: tuple[Path, Path] | None = None,
        address: str | None = None,
        durable: bool = False,
    ):
        """``tls``: (certificate chain, key) served on ``address`` (loopback), port 5432;
        ``durable``: every commit reaches the disk (fsync), as in production, for the
        benchmarks (the tests' throw-away clusters skip it)."""
        binaries = postgres_bin()
        if binaries is None:
            raise LocalSiteError(
                "PostgreSQL is not installed (no pg_ctl in /usr/lib/postgresql/15/bin)",
                fix="apt-get install postgresql-15 (requirements/debian.txt), or set "
                "WATCHKEEP_PG_BIN to its bin directory",
            )
        self.bin = binaries
        self.account = "postgres" if os.geteuid() == 0 else None
        self.root = Path(tempfile.mkdtemp(prefix="wk-pg-", dir="/tmp"))
        self.root.chmod(0o755)  # the socket is reached through it by every account
        self.data = self.root / "data"
        self.socket_dir = self.root
        self.tls = tls
        self.address = address
        self.password = secrets.token_urlsafe(18)
        self.durable = durable
        self._databases = 0
        if self.account is not None:
            entry = pwd.getpwnam(self.account)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)

    # -- running it ----------------------------------------------------------------------

    def _run(self, *argv: str, stdin: str | None = None) -> str:
        command = list(argv)
        if self.account is not None:
            command = ["runuser", "-u", self.account, "--", *command]
        result = subprocess.run(
            command, input=stdin, capture_output=True, text=True, check=False, timeout=120
        )
        if result.returncode != 0:
            raise LocalSiteError(
                f"PostgreSQL in {self.root}: {' '.join(argv[:2])} failed: "
                f"{(result.stderr or result.stdout).strip().splitlines()[-1:]}",
                fix=f"read {self.root / 'log'}",
            )
        return result.stdout

    def start(self) -> LocalPostgres:
        password_file = self.root / "initdb-password"
        password_file.write_text("unused\n")
        if self.account is not None:
            shutil.chown(password_file, self.account)
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--no-sync",
            "--pwfile",
            str(password_file),
        )
        password_file.unlink()
        hba = [f"local all {PASSWORD_ROLE} scram-sha-256", "local all all trust"]
        settings = [
            f"unix_socket_directories = '{self.socket_dir}'",
            f"listen_addresses = '{self.address or ''}'",
            f"port = {_PORT}",
            f"fsync = {'on' if self.durable else 'off'}",
            "max_connections = 200",
            "shared_buffers = 32MB",
        ]
        if self.tls is not None:
            chain, key = (self._owned_copy(p) for p in self.tls)
            settings += ["ssl = on", f"ssl_cert_file = '{chain}'", f"ssl_key_file = '{key}'"]
            hba.append("hostssl all all 127.0.0.0/8 scram-sha-256")  # TLS only, password only
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\n".join(settings) + "\n")
        (self.data / "pg_hba.conf").write_text("\n".join(hba) + "\n")
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"), "-w",
            "start",
        )  # fmt: skip
        self.sql(f"CREATE ROLE {PASSWORD_ROLE} LOGIN PASSWORD '{self.password}'")
        return self

    def _owned_copy(self, path: Path) -> Path:
        """A copy of ``path`` PostgreSQL's account may read, and no one else."""
        copy = self.root / f"tls-{path.name}"
        copy.write_bytes(path.read_bytes())
        copy.chmod(0o600)
        if self.account is not None:
            shutil.chown(copy, self.account)
        return copy

    def stop(self) -> None:
        with contextlib.suppress(LocalSiteError, subprocess.TimeoutExpired):
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what it serves ------------------------------------------------------------------

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run ``statement`` as the superuser with psql; its unaligned output."""
        return self._run(
            str(self.bin / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
            "-h", str(self.socket_dir), "-p", str(_PORT), "-U", "postgres", "-d", database,
            "-c", statement,
        )  # fmt: skip

    def create_database(self, name: str | None = None, *, owner: str = "postgres") -> str:
        """A new database (owned by ``owner``); its URL over the socket, as superuser."""
        self._databases += 1
        name = name or f"site{self._databases}"
        self.sql(f'CREATE DATABASE "{name}" OWNER {owner}')
        return self.url(name)

    def url(self, database: str, *, user: str = "postgres") -> str:
        """The SQLAlchemy URL of ``database`` on the Unix socket."""
        return (
            f"postgresql+psycopg://{user}@/{quote(database)}"
            f"?host={quote(str(self.socket_dir))}&port={_PORT}"
        )
