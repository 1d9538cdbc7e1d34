"""The store's tests run on both databases watchkeep supports: ``database_url`` is a new,
empty database of each (SQLite in the test's directory; PostgreSQL on the run's own
server, see ``postgres`` in tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from watchkeep.localsite import LocalPostgres


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'site.db'}"
    server: LocalPostgres = request.getfixturevalue("postgres")
    return server.create_database()
