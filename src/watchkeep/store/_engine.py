"""Opening a database by URL: SQLite by default, PostgreSQL (``postgresql+psycopg://``) by
choice, and the few statements whose SQL differs between the two (an upsert, a lock that
only one process holds), written here once.

A PostgreSQL URL carries no password in a config file: ``password_file`` supplies it, or
libpq finds it the standard way (``PGPASSWORD``, ``~/.pgpass`` / ``PGPASSFILE``); libpq's
other settings pass through the URL's query (``sslmode=verify-full&sslrootcert=FILE``).
Every database is brought to the schema this code knows as it is opened (see
``_migrations``): a database made by an older release is upgraded in place, one made by a
newer release is refused."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite

from watchkeep.errors import StoreError
from watchkeep.store._schema import metadata as inventory_metadata

__all__ = [
    "create_engine",
    "insert_absent",
    "open_database",
    "shown",
    "try_session_lock",
    "unreachable",
    "upsert",
]


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets servers read while the CLI writes; a busy timeout turns brief lock
    # contention between processes into a short wait instead of an error.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def shown(url: str | sa.URL) -> str:
    """``url`` as it may be printed: its password, if any, masked."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "(an unreadable database URL)"


def _url(url: str, password_file: Path | None) -> sa.URL:
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise StoreError(
            f"database URL {url.split('@')[-1]!r} is not a URL: {exc}",
            fix="write e.g. postgresql+psycopg://watchkeep@db.example/watchkeep or sqlite:///FILE",
        ) from None
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")  # the driver watchkeep ships
    if password_file is not None:
        try:
            password = password_file.read_text().strip()
        except OSError as exc:
            raise StoreError(
                f"cannot read the database password file {password_file}: {exc.strerror}",
                fix=f"create {password_file}, readable by the server's account only",
            ) from None
        parsed = parsed.set(password=password)
    return parsed


def create_engine(url: str, *, password_file: Path | None = None) -> sa.Engine:
    """An engine for ``url`` (nothing is connected or created yet)."""
    parsed = _url(url, password_file)
    try:
        if parsed.get_backend_name() == "sqlite":
            engine = sa.create_engine(parsed)
            event.listen(engine, "connect", _sqlite_pragmas)
            return engine
        # A database server restarts or fails over: a pooled connection it dropped is
        # noticed before use, not by the request that draws it.
        return sa.create_engine(parsed, pool_pre_ping=True, pool_size=8, max_overflow=8)
    except (sa.exc.SQLAlchemyError, ImportError) as exc:
        raise StoreError(
            f"cannot use the database {shown(parsed)}: {exc}",
            fix="use sqlite:///FILE or postgresql+psycopg://USER@HOST/DATABASE",
        ) from None


def open_database(
    url: str, metadata: sa.MetaData = inventory_metadata, *, password_file: Path | None = None
) -> sa.Engine:
    """Open the database at ``url`` and bring the tables of ``metadata`` to this code's
    schema (creating them in a new database)."""
    from watchkeep.store._migrations import schema_of, upgrade

    engine = create_engine(url, password_file=password_file)
    try:
        upgrade(engine, schema_of(metadata))
    except StoreError:
        engine.dispose()
        raise
    return engine


def unreachable(engine: sa.Engine, exc: sa.exc.SQLAlchemyError) -> StoreError:
    """The watchkeep error for a database that cannot be opened or used."""
    cause = getattr(exc, "orig", None) or exc
    reason = " ".join(str(cause).split()) or cause.__class__.__name__
    if engine.dialect.name == "sqlite":
        fix = "check that --home is writable, or set WATCHKEEP_DATABASE_URL"
    else:
        fix = (
            "check the URL, that the database server runs and accepts this user "
            "(password: [site] database_password_file, PGPASSWORD or ~/.pgpass), and the "
            "sslmode/sslrootcert it asks for"
        )
    return StoreError(f"cannot open the database {shown(engine.url)}: {reason[:300]}", fix=fix)


def upsert(
    conn: sa.Connection, table: sa.Table, key: Mapping[str, Any], values: Mapping[str, Any]
) -> None:
    """Insert the row ``key`` + ``values``, or set ``values`` on the row of ``key``: one
    statement, so two writers of the same row never collide."""
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    statement = insert(table).values(**key, **values)
    conn.execute(
        statement.on_conflict_do_update(
            index_elements=list(key), set_={k: statement.excluded[k] for k in values}
        )
    )


def insert_absent(conn: sa.Connection, table: sa.Table, row: Mapping[str, Any]) -> None:
    """Insert ``row`` unless a row of its primary key is there (then nothing): the first of
    two writers wins, neither fails."""
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    conn.execute(insert(table).values(**row).on_conflict_do_nothing())


def commit_without_waiting_for_disk(conn: sa.Connection) -> None:
    """Let the transaction under way on ``conn`` commit without waiting for the disk
    (PostgreSQL's synchronous_commit, for this transaction only): for what servers say
    again within a second (heartbeats, registrations), which a crash of the database
    server would lose a fraction of a second of, each said again by the next heartbeat.
    Other sessions see it at its commit as always. SQLite's WAL (synchronous=NORMAL)
    already commits so."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")


def try_session_lock(conn: sa.Connection, lock_id: int) -> bool:
    """Take the lock ``lock_id`` for as long as ``conn`` lives, unless another connection
    holds it. PostgreSQL's session advisory lock: the database releases it when the
    holder's connection ends, a killed process included. SQLite has one management server
    per site (the database is a file of its machine): it always holds the lock."""
    if conn.dialect.name != "postgresql":
        return True
    taken = conn.execute(sa.text("SELECT pg_try_advisory_lock(:id)"), {"id": lock_id})
    return bool(taken.scalar_one())
