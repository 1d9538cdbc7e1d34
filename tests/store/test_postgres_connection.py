"""How a management server reaches its PostgreSQL database, against a PostgreSQL server of
the test's own: the password from a file, from the standard ~/.pgpass (PGPASSFILE), and
TLS with sslmode=verify-full, the database server's certificate issued by the site CA."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from watchkeep.errors import StoreError
from watchkeep.localsite import LocalPostgres, LocalSite, free_loopback_network
from watchkeep.localsite._postgres import PASSWORD_ROLE
from watchkeep.pki import Role
from watchkeep.store import SiteStore

DB_HOST = "db.site.test"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> LocalSite:
    made = LocalSite(tmp_path_factory.mktemp("site"))
    made.init_ca()
    return made


@pytest.fixture(scope="module")
def database_server(
    site: LocalSite, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LocalPostgres, str]]:
    """A PostgreSQL server on a loopback address of its own, serving TLS with a certificate
    of the site CA for db.site.test; a database the password role owns."""
    address = f"{free_loopback_network()}.2"
    out = tmp_path_factory.mktemp("db-tls")
    record = site.pki.issue(Role.MANAGEMENT, [DB_HOST], ips=[address], out=out)
    assert record.key_path is not None
    with LocalPostgres(tls=(Path(record.chain_path), Path(record.key_path)), address=address) as pg:
        pg.sql(f"CREATE DATABASE tls OWNER {PASSWORD_ROLE}")
        yield pg, address


def password_file(tmp_path: Path, password: str) -> Path:
    path = tmp_path / "db-password"
    path.write_text(password + "\n")
    path.chmod(0o600)
    return path


def test_the_password_comes_from_the_password_file(
    database_server: tuple[LocalPostgres, str], tmp_path: Path
) -> None:
    pg, _ = database_server
    url = pg.url("tls", user=PASSWORD_ROLE)
    SiteStore(url, password_file=password_file(tmp_path, pg.password)).dispose()
    with pytest.raises(StoreError, match="password authentication failed") as refused:
        SiteStore(url, password_file=password_file(tmp_path, "wrong"))
    assert pg.password not in str(refused.value)
    assert "\n" not in str(refused.value)


def test_the_password_comes_from_pgpass(
    database_server: tuple[LocalPostgres, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pg, _ = database_server
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"*:*:*:{PASSWORD_ROLE}:{pg.password}\n")
    pgpass.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(pgpass))
    SiteStore(pg.url("tls", user=PASSWORD_ROLE)).dispose()


def tls_url(address: str, host: str, root: Path) -> str:
    return (
        f"postgresql+psycopg://{PASSWORD_ROLE}@{host}:5432/tls"
        f"?hostaddr={address}&sslmode=verify-full&sslrootcert={root}"
    )


def test_verify_full_accepts_the_database_server_the_site_ca_vouches_for(
    site: LocalSite, database_server: tuple[LocalPostgres, str], tmp_path: Path
) -> None:
    pg, address = database_server
    secret = password_file(tmp_path, pg.password)
    store = SiteStore(tls_url(address, DB_HOST, site.home.ca_cert), password_file=secret)
    with store.db.connect() as conn:
        # The server's own view: this connection is TLS.
        assert conn.exec_driver_sql(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        ).scalar()
    store.dispose()


def test_verify_full_refuses_another_ca_and_another_host_name(
    site: LocalSite, database_server: tuple[LocalPostgres, str], tmp_path: Path
) -> None:
    pg, address = database_server
    secret = password_file(tmp_path, pg.password)
    other_ca = tmp_path / "other-ca.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(tmp_path / "other.key"), "-subj", "/CN=Other CA",
         "-days", "1", "-out", str(other_ca)],
        check=True, capture_output=True,
    )  # fmt: skip
    with pytest.raises(StoreError, match="certificate verify failed"):
        SiteStore(tls_url(address, DB_HOST, other_ca), password_file=secret)
    with pytest.raises(StoreError, match="does not match host name"):
        SiteStore(tls_url(address, "other.site.test", site.home.ca_cert), password_file=secret)
