"""Migrations: a database made by release 0.1.0 (no version table; made at test time by
that release's own schema code, release_0_1/schema.py) is recognised and upgraded in place
with its rows kept; one at a revision newer than the code is refused, by the store, by
`watchkeep db upgrade` and by a management server at start, in one line."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from release_0_1 import schema as release_0_1

from watchkeep.errors import StoreError
from watchkeep.localsite import LocalSite
from watchkeep.site import ServerRole
from watchkeep.store import SCHEMAS, Inventory, SiteStore, open_database

NOW = dt.datetime(2026, 12, 2, 6, 0, tzinfo=dt.UTC)


def made_by_release_0_1(url: str) -> None:
    """A site database and an inventory as release 0.1.0 made them, with rows."""
    engine = sa.create_engine(url)
    release_0_1.site_metadata.create_all(engine)
    release_0_1.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.insert(release_0_1.settings).values(key="ms_encryption", value=True))
        conn.execute(
            sa.insert(release_0_1.users).values(
                name="ann", role="administrator", password_hash="h", cameras=None
            )
        )
        conn.execute(
            sa.insert(release_0_1.cameras).values(
                name="cam1", recording_server="rs1", source={"kind": "synthetic"}
            )
        )
        conn.execute(
            sa.insert(release_0_1.servers).values(
                name="rs1",
                role="recording",
                host="rs1.site.test",
                address="127.0.0.2",
                ports={"data": 7563},
                encryption=True,
                encrypted_now=True,
                last_seen=NOW,
                extra={},
            )
        )
    engine.dispose()


def version(url: str, schema: str) -> list[str]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text(f"SELECT version_num FROM alembic_version_{schema}")).all()  # noqa: S608
    engine.dispose()
    return [r[0] for r in rows]


def test_a_database_made_by_the_previous_release_is_upgraded_in_place(database_url: str) -> None:
    # Given the site and the inventory in one database made by release 0.1.0
    made_by_release_0_1(database_url)
    # When this release opens them
    store = SiteStore(database_url)
    inventory = Inventory(open_database(database_url))
    # Then each is at this release's newest revision, its rows kept
    assert version(database_url, "site") == [SCHEMAS["site"].head()]
    assert version(database_url, "inventory") == [SCHEMAS["inventory"].head()]
    assert store.setting("ms_encryption", False) is True
    assert store.user("ann") is not None
    assert [c.name for c in store.cameras()] == ["cam1"]
    (rs1,) = store.servers(now=NOW, offline_after=dt.timedelta(seconds=5))
    assert rs1.encryption
    assert rs1.online
    assert inventory.all() == []
    store.dispose()
    inventory.engine.dispose()


def test_the_revisions_alembic_finds_are_those_the_store_reads() -> None:
    # The store reads the newest revision without importing Alembic: the two must agree.
    for schema in SCHEMAS.values():
        scripts = schema.scripts()
        assert schema.head() == scripts.get_current_head()
        assert [s.revision for s in scripts.walk_revisions()][-1] == schema.baseline()


def written_by_a_newer_release(url: str) -> None:
    SiteStore(url).dispose()
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version_site SET version_num = '0999_future'"))
    engine.dispose()


def test_a_schema_newer_than_the_code_is_refused_and_left_as_it_is(database_url: str) -> None:
    written_by_a_newer_release(database_url)
    with pytest.raises(StoreError) as refused:
        SiteStore(database_url)
    message = str(refused.value)
    assert "0999_future" in message
    assert "newer than this watchkeep" in message
    assert "\n" not in message
    assert refused.value.fix
    assert version(database_url, "site") == ["0999_future"]


def watchkeep(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "watchkeep", *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def management_config(tmp_path: Path, database_url: str) -> Path:
    """The config file of a management server laid out (not started) on ``database_url``."""
    site = LocalSite(tmp_path / "site", database_url=database_url)
    site.init_ca()
    return site.add_server("ms", ServerRole.MANAGEMENT).config


# The commands below run as processes (a second each): on one database each, the other
# being covered in process above.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_db_upgrade_recognises_a_release_0_1_site_then_finds_it_current(
    tmp_path: Path, database_url: str
) -> None:
    # Given a management server whose site database release 0.1.0 made
    config = management_config(tmp_path, database_url)
    made_by_release_0_1(database_url)
    # When the administrator upgrades it ahead of the server's start, twice
    first = watchkeep("db", "upgrade", "--config", str(config), "--json")
    second = watchkeep("db", "upgrade", "--config", str(config), "--json")
    # Then the first recognises the baseline, the second finds nothing to do
    assert first.returncode == 0, first.stderr
    done = json.loads(first.stdout)
    assert done["stamped_baseline"] is True
    assert done["to"] == SCHEMAS["site"].head()
    assert json.loads(second.stdout)["changed"] is False
    # ...and the password of a URL is never printed
    assert sa.make_url(database_url).password is None or "***" in done["database"]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_management_server_refuses_to_start_on_a_newer_schema(
    tmp_path: Path, database_url: str
) -> None:
    config = management_config(tmp_path, database_url)
    written_by_a_newer_release(database_url)
    started = watchkeep("server", "run", "management", "--config", str(config))
    assert started.returncode == 1
    (line,) = started.stderr.strip().splitlines()
    assert "0999_future" in line
    assert "newer than this watchkeep" in line
    refused = watchkeep("db", "upgrade", "--config", str(config))
    assert refused.returncode == 1
    assert "0999_future" in refused.stderr


def test_the_inventory_of_a_release_0_1_home_is_upgraded_by_db_upgrade(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    made_by_release_0_1(f"sqlite:///{home / 'watchkeep.db'}")
    upgraded = watchkeep("--home", str(home), "db", "upgrade", "--json")
    assert upgraded.returncode == 0, upgraded.stderr
    assert json.loads(upgraded.stdout)["schema"] == "inventory"
    assert version(f"sqlite:///{home / 'watchkeep.db'}", "inventory") == [
        SCHEMAS["inventory"].head()
    ]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_the_demo_refuses_a_database_that_holds_a_site(tmp_path: Path, database_url: str) -> None:
    made_by_release_0_1(database_url)  # a site with a registered server
    refused = watchkeep("demo", "--home", str(tmp_path / "demo"), "--database-url", database_url)
    assert refused.returncode == 2
    (line,) = refused.stderr.strip().splitlines()
    assert "already holds a site" in line
    assert not (tmp_path / "demo").exists()  # nothing was built


def test_pending_tokens_of_the_hash_era_are_withdrawn_and_used_ones_kept(database_url: str) -> None:
    # Given a site database at revision 0003, when the management server kept a hash of each
    # token's secret, with one token pending and one used
    from alembic import command

    schema = SCHEMAS["site"]
    config = schema.config()
    engine = sa.create_engine(database_url)
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0003_enrollments")
        for name, status in (("rs8", "pending"), ("rs9", "used")):
            conn.execute(
                sa.text(
                    "INSERT INTO enrollments (id, name, role, host, ips, secret_hash, created_at,"
                    " expires_at, status) VALUES (:id, :name, 'recording', :host, '[]', :hash,"
                    " :now, :later, :status)"
                ),
                {"id": name * 8, "name": name, "host": f"{name}.site.test", "hash": name * 20,
                 "now": NOW, "later": NOW + dt.timedelta(days=7), "status": status},
            )  # fmt: skip
    engine.dispose()
    # When the store opens it (the upgrade a management server makes at start)
    store = SiteStore(database_url)
    store.dispose()
    # Then the pending token is withdrawn (a join can no longer prove it), the used one kept
    engine = sa.create_engine(database_url)
    with engine.connect() as conn:
        rows = dict(conn.execute(sa.text("SELECT name, status FROM enrollments")).all())
        columns = {c["name"] for c in sa.inspect(conn).get_columns("enrollments")}
    engine.dispose()
    assert rows == {"rs8": "withdrawn", "rs9": "used"}
    assert "join_key" in columns
    assert "secret_hash" not in columns
    assert version(database_url, "site") == [schema.head()]
