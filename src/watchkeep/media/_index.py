"""The recordings index: one row per segment file, in SQLite through SQLAlchemy Core.

The index is derived data: every row can be rebuilt from the segment files, and is, by
the repair that runs when a recorder opens. It records only what has been made durable
(a row is written after its segment was fsynced), so it never promises a frame the disk
does not hold.
"""

from __future__ import annotations

import functools
import sqlite3
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

from watchkeep.errors import RecordingError
from watchkeep.media._errors import RecordingDiskFull

__all__ = ["delete_rows", "index_error", "metadata", "open_index", "segments", "update_rows"]

metadata = sa.MetaData()

segments = sa.Table(
    "media_segments",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("camera", sa.String(64), nullable=False),
    sa.Column("path", sa.Text, nullable=False, unique=True),  # relative to the recordings root
    sa.Column("start", sa.Double, nullable=False),  # earliest frame, UTC seconds
    sa.Column("end", sa.Double, nullable=False),  # latest frame, UTC seconds (inclusive)
    sa.Column("frames", sa.Integer, nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False),  # size of the file, headers included
    # True while a recorder appends to the segment: only such rows, and files with no row,
    # can disagree with their file after a crash, so only they are scanned on open.
    sa.Column("open", sa.Boolean, nullable=False),
    sa.Index("media_segments_camera_start", "camera", "start"),
    sa.Index("media_segments_end", "end"),
)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: playback reads while the recorder writes. A commit reaches the OS at once, so a
    # killed process loses nothing committed; after a power cut the repair re-derives rows.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def open_index(path: Path) -> sa.Engine:
    """Open (creating if needed) the index database at ``path``."""
    engine = sa.create_engine(f"sqlite:///{path}")
    event.listen(engine, "connect", _sqlite_pragmas)
    try:
        metadata.create_all(engine)
    except sa.exc.SQLAlchemyError as exc:
        engine.dispose()
        raise index_error(exc, str(path)) from exc
    return engine


def index_error(exc: sa.exc.SQLAlchemyError, path: str) -> RecordingError:
    """The watchkeep error for a failure of the index database."""
    original = getattr(exc, "orig", None)
    if isinstance(original, sqlite3.Error) and (
        getattr(original, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
        or "full" in str(original)
    ):
        return RecordingDiskFull(None, path)
    reason = str(original) if original is not None else str(exc)
    return RecordingError(
        None,
        f"the recordings index failed: {reason}",
        path=path,
        fix="check that the index file is writable and not used by another recorder",
    )


# Rows of the index updated by one statement (six parameters each, far below SQLite's
# limit of 32,766 since 3.32).
_ROWS_PER_UPDATE = 500
_COLUMNS = ("start", "end", "frames", "bytes", "open")
_UPDATE_FROM = sqlite3.sqlite_version_info >= (3, 33)


def update_rows(conn: sa.Connection, rows: list[dict[str, object]]) -> None:
    """Update the index rows (``row``: the id; the other keys: the columns) of a flush.

    SQLite releases the GIL for every statement it steps, and the writer thread then waits
    for the event loop to give it back: one UPDATE per segment (450 at 450 cameras, every
    second) took the flush up to 0.85 s. One ``UPDATE ... FROM (VALUES ...)`` per 500 rows
    is one step (SQLite 3.33 and later; before, the rows go one by one).
    """
    if not _UPDATE_FROM:
        statement = (
            segments.update()
            .where(segments.c.id == sa.bindparam("row"))
            .values({column: sa.bindparam(column) for column in _COLUMNS})
        )
        for row in rows:
            conn.execute(statement, row)
        return
    for start in range(0, len(rows), _ROWS_PER_UPDATE):
        chunk = rows[start : start + _ROWS_PER_UPDATE]
        parameters: list[object] = []
        for row in chunk:
            parameters += (row["row"], row["start"], row["end"], row["frames"], row["bytes"])
            parameters.append(1 if row["open"] else 0)
        conn.exec_driver_sql(_update_sql(len(chunk)), tuple(parameters))


@functools.lru_cache(maxsize=8)
def _update_sql(rows: int) -> str:
    # Only placeholders and this module's own table name go into the text.
    values = ", ".join(["(?, ?, ?, ?, ?, ?)"] * rows)
    table = segments.name
    return (
        f'WITH v(id, start, "end", frames, bytes, open) AS (VALUES {values}) '  # noqa: S608
        f'UPDATE {table} SET start = v.start, "end" = v."end", frames = v.frames, '
        f"bytes = v.bytes, open = v.open FROM v WHERE {table}.id = v.id"
    )


def delete_rows(conn: sa.Connection, ids: list[int]) -> None:
    """Delete these segments' rows, a few hundred at a time (SQLite bounds the number of
    parameters of one statement)."""
    for start in range(0, len(ids), 500):
        conn.execute(segments.delete().where(segments.c.id.in_(ids[start : start + 500])))
