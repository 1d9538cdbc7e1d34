"""Opening the database: SQLite by default, any SQLAlchemy URL (PostgreSQL) by choice."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

from watchkeep.errors import StoreError
from watchkeep.store._schema import metadata as inventory_metadata

__all__ = ["open_database"]


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets servers read while the CLI writes; a busy timeout turns brief lock
    # contention between processes into a short wait instead of an error.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def open_database(url: str, metadata: sa.MetaData = inventory_metadata) -> sa.Engine:
    """Open the database at ``url`` and create the tables of ``metadata`` that are missing."""
    try:
        engine = sa.create_engine(url)
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _sqlite_pragmas)
        metadata.create_all(engine)
    except sa.exc.SQLAlchemyError as exc:
        raise StoreError(
            f"cannot open the database {url}: {exc.__class__.__name__}: {exc.args[0] if exc.args else exc}",
            fix="check that --home is writable, or set WATCHKEEP_DATABASE_URL",
        ) from exc
    return engine
