"""Schema migrations (Alembic), for SQLite and PostgreSQL alike.

watchkeep keeps two schemas, each with its migration scripts in ``migrations/NAME/`` and
its own version table, so that both may share one database: ``site`` (the management
server's) and ``inventory`` (the CA's certificates). Policy, the same wherever a database
is opened (a server's start, the CLI, ``watchkeep db upgrade``):

- a new database gets every revision, up to the newest this code knows;
- a database made before migrations existed (its tables, no version table) is the
  baseline revision: it is stamped so, then upgraded like any other;
- an older revision is upgraded in place, under a lock that makes two management servers
  starting together on one PostgreSQL database migrate it once;
- a revision this code does not know was written by a newer watchkeep: refused, and
  nothing is changed.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from watchkeep.errors import StoreError
from watchkeep.store._schema import metadata as inventory_metadata
from watchkeep.store._schema import site_metadata

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

__all__ = ["SCHEMAS", "Schema", "Upgrade", "run_environment", "schema_of", "upgrade"]

log = logging.getLogger("watchkeep.store")
logging.getLogger("alembic").setLevel(logging.WARNING)  # our own lines say what it did


@dataclass(frozen=True)
class Schema:
    name: str
    metadata: sa.MetaData
    marker: str  # a table every database of this schema has had since the baseline
    lock_id: int  # PostgreSQL advisory lock held while migrating

    @property
    def version_table(self) -> str:
        return f"alembic_version_{self.name}"

    @property
    def location(self) -> str:
        return str(resources.files("watchkeep.store") / "migrations" / self.name)

    def config(self) -> Config:
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", self.location)
        config.attributes["schema"] = self
        return config

    def scripts(self) -> ScriptDirectory:
        from alembic.script import ScriptDirectory

        return ScriptDirectory.from_config(self.config())

    def head(self) -> str:
        """The newest revision, read from the scripts without importing Alembic (a database
        already there is the usual case, and every command opens one)."""
        return _revisions(self.name)[0]

    def baseline(self) -> str:
        return _revisions(self.name)[-1]

    def known(self, revision: str) -> bool:
        return revision in _revisions(self.name)


SITE = Schema("site", site_metadata, "servers", 0x77_6B_53_49)
INVENTORY = Schema("inventory", inventory_metadata, "certificates", 0x77_6B_49_4E)
SCHEMAS = {s.name: s for s in (SITE, INVENTORY)}


_REVISION = re.compile(r"^revision = [\"']([^\"']+)[\"']$", re.M)
_DOWN = re.compile(r"^down_revision = (?:[\"']([^\"']+)[\"']|None)$", re.M)


@cache
def _revisions(schema: str) -> tuple[str, ...]:
    """The revisions of ``schema``'s scripts, newest first (one line of history:
    watchkeep's migrations never branch)."""
    parent: dict[str | None, str] = {}
    versions = resources.files("watchkeep.store") / "migrations" / schema / "versions"
    for script in versions.iterdir():
        if script.name.endswith(".py"):
            text = script.read_text()
            revision, down = _REVISION.search(text), _DOWN.search(text)
            if revision is None or down is None:
                raise StoreError(f"migration script {script.name} names no revision")
            parent[down.group(1)] = revision.group(1)
    chain = [parent[None]]
    while chain[-1] in parent:
        chain.append(parent[chain[-1]])
    return tuple(reversed(chain))


def schema_of(metadata: sa.MetaData) -> Schema:
    return next(s for s in SCHEMAS.values() if s.metadata is metadata)


@dataclass(frozen=True)
class Upgrade:
    """What opening a database did to its schema."""

    schema: str
    database: str  # its URL, password masked
    before: str | None  # None: a new database
    after: str
    stamped: bool  # made before migrations: recognised as the baseline

    @property
    def changed(self) -> bool:
        return self.before != self.after

    def as_json(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "database": self.database,
            "from": self.before,
            "to": self.after,
            "stamped_baseline": self.stamped,
            "changed": self.changed,
        }


def current_revision(conn: sa.Connection, schema: Schema) -> str | None:
    """The revision ``conn``'s database is at; None when it has no version table."""
    if not sa.inspect(conn).has_table(schema.version_table):
        return None
    versions = conn.execute(sa.text(f"SELECT version_num FROM {schema.version_table}")).all()  # noqa: S608 (a table name of ours)
    if len(versions) != 1:
        raise StoreError(
            f"the {schema.name} schema's version table {schema.version_table} holds "
            f"{len(versions)} revisions instead of one",
            fix="restore the database from a backup",
        )
    return str(versions[0][0])


def upgrade(engine: sa.Engine, schema: Schema) -> Upgrade:
    """Bring ``engine``'s database to the newest revision of ``schema`` (see the module's
    policy); what it did."""
    from watchkeep.store._engine import unreachable

    try:
        return _upgrade(engine, schema)
    except sa.exc.SQLAlchemyError as exc:
        raise unreachable(engine, exc) from exc


def _upgrade(engine: sa.Engine, schema: Schema) -> Upgrade:
    from watchkeep.store._engine import shown

    head = schema.head()
    with engine.connect() as conn:
        if current_revision(conn, schema) == head:  # the usual case: no lock, no DDL
            return Upgrade(schema.name, shown(engine.url), head, head, False)
    from alembic import command

    with engine.begin() as conn:
        # One migrator at a time, and all of a migration or none of it.
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": schema.lock_id})
        elif conn.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")  # else DDL would commit as it runs
        before = current_revision(conn, schema)
        stamped = before is None and sa.inspect(conn).has_table(schema.marker)
        config = schema.config()
        config.attributes["connection"] = conn
        if stamped:
            before = schema.baseline()
            command.stamp(config, before)
            log.info("%s: %s database made before migrations: stamped", shown(engine.url), before)
        if before is not None and not schema.known(before):
            raise StoreError(
                f"the {schema.name} database {shown(engine.url)} is at schema revision {before}, "
                f"newer than this watchkeep knows (its newest is {head})",
                fix="run the watchkeep release that upgraded it, or restore the database from "
                "before that upgrade",
            )
        if before != head:
            command.upgrade(config, "head")
            log.info(
                "%s: %s schema upgraded from %s to %s",
                shown(engine.url),
                schema.name,
                before or "nothing",
                head,
            )
    return Upgrade(schema.name, shown(engine.url), before, head, stamped)


def run_environment() -> None:
    """The body of every ``migrations/*/env.py``: run the migrations on the connection that
    ``upgrade`` (or an Alembic command given one) holds, in its transaction."""
    from alembic import context

    config = context.config
    schema: Schema = config.attributes["schema"]
    conn: sa.Connection = config.attributes["connection"]
    context.configure(
        connection=conn,
        target_metadata=schema.metadata,
        version_table=schema.version_table,
        # SQLite alters a table by copying it: a later revision's op.batch_alter_table
        # does that, and on PostgreSQL is a plain ALTER TABLE.
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()
