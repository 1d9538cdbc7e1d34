"""The recordings index: one row per segment file, in SQLite through SQLAlchemy Core.

The index is derived data: every row can be rebuilt from the segment files, and is, by
the repair that runs when a recorder opens. It records only what has been made durable
(a row is written after its segment was fsynced), so it never promises a frame the disk
does not hold.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

from watchkeep.errors import RecordingError
from watchkeep.media._errors import RecordingDiskFull

__all__ = ["index_error", "metadata", "open_index", "segments"]

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
