"""The management server's site database: servers, cameras, users and settings. Every SQL
statement of the management server is here; its jobs (servers/management/) speak in the
site model's terms (watchkeep.site)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa

from watchkeep.site import Camera, Readiness, Server, ServerRole
from watchkeep.store._engine import (
    commit_without_waiting_for_disk,
    insert_absent,
    open_database,
    try_session_lock,
    upsert,
)
from watchkeep.store._schema import (
    cameras,
    management_servers,
    servers,
    settings,
    site_metadata,
    users,
)

__all__ = ["SiteStore", "User"]


@dataclass(frozen=True)
class User:
    name: str
    role: str  # administrator | operator
    password_hash: str
    cameras: list[str] | None  # None: every camera


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _server(
    row: sa.Row[Any], now: dt.datetime, offline_after: dt.timedelta, readiness: bool = True
) -> Server:
    m = row._mapping
    last_seen = _utc(m["last_seen"])
    return Server(
        name=m["name"],
        role=ServerRole(m["role"]),
        host=m["host"],
        address=m["address"],
        ports=dict(m["ports"]),
        encryption=bool(m["encryption"]),
        online=last_seen is not None and now - last_seen <= offline_after,
        last_seen=last_seen,
        readiness=Readiness.from_json(m["readiness"]) if readiness and m["readiness"] else None,
        encrypted_now=bool(m["encrypted_now"]),
        covering=m["covering"],
    )


# settings key: a new random value whenever anything any server is told changes (servers
# of the site, cameras, settings): a management server rebuilds what it tells servers only
# when it differs from the value it last built with, and a heartbeat reads one row.
VERSION_SETTING = "site_version"


# Built once: a heartbeat reads a setting and a server, and building the statement cost as
# much as running it.
_SETTING = sa.select(settings.c.value).where(settings.c.key == sa.bindparam("key"))
_SERVER = sa.select(servers).where(servers.c.name == sa.bindparam("name"))
_SEEN = (
    sa.update(servers)
    .where(servers.c.name == sa.bindparam("b_name"))
    .values(
        last_seen=sa.bindparam("last_seen"),
        readiness=sa.bindparam("readiness", type_=sa.JSON),
        encrypted_now=sa.bindparam("encrypted_now"),
    )
)

_SEEN_AT = (
    sa.update(servers)
    .where(servers.c.name == sa.bindparam("b_name"))
    .values(last_seen=sa.bindparam("last_seen"), encrypted_now=sa.bindparam("encrypted_now"))
)


class SiteStore:
    def __init__(self, url: str, *, password_file: Path | None = None) -> None:
        self.db = open_database(url, site_metadata, password_file=password_file)
        # Changes made through this store (this process): what it knows changed at once,
        # before reading the site version would tell it.
        self.changes = 0

    @property
    def local(self) -> bool:
        """Whether the database is a file of this machine (SQLite), not a server's."""
        return self.db.dialect.name == "sqlite"

    def _changed(self, conn: sa.Connection, *, at_once: bool = True) -> None:
        """A new site version; ``at_once``: this process's own readers know it without
        reading the version (not for a server registering: servers learn of a newcomer
        a moment later, and a thousand registering would otherwise rebuild what every
        server is told a thousand times)."""
        upsert(conn, settings, {"key": VERSION_SETTING}, {"value": uuid.uuid4().hex})
        if at_once:
            self.changes += 1

    def dispose(self) -> None:
        self.db.dispose()

    # -- settings ------------------------------------------------------------------------

    def setting(self, key: str, default: Any) -> Any:
        with self.db.connect() as conn:
            row = conn.execute(_SETTING, {"key": key}).first()
        return row[0] if row else default

    def set_setting(self, key: str, value: Any) -> None:
        with self.db.begin() as conn:
            upsert(conn, settings, {"key": key}, {"value": value})
            self._changed(conn)

    def site_version(self) -> str:
        """Changes (to a new random value) with every change of what servers are told."""
        return str(self.setting(VERSION_SETTING, ""))

    def adopt_setting(self, key: str, value: Any) -> Any:
        """The setting ``key``, set to ``value`` first if it has none: what every management
        server of the site then uses (the first to write it decides)."""
        with self.db.begin() as conn:
            insert_absent(conn, settings, {"key": key, "value": value})
            self._changed(conn)
            return conn.execute(
                sa.select(settings.c.value).where(settings.c.key == key)
            ).scalar_one()

    # -- the management servers ------------------------------------------------------------

    def announce_management(self, server: Server, *, now: dt.datetime) -> None:
        """``server`` (a management server) runs now, at its host and address."""
        with self.db.begin() as conn:
            known = conn.execute(
                sa.select(
                    management_servers.c.host,
                    management_servers.c.address,
                    management_servers.c.ports,
                    management_servers.c.encryption,
                ).where(management_servers.c.name == server.name)
            ).first()
            if known is None or tuple(known) != (
                server.host,
                server.address,
                server.ports,
                server.encryption,
            ):
                self._changed(conn)  # the site map every server is given
            upsert(
                conn,
                management_servers,
                {"name": server.name},
                {
                    "host": server.host,
                    "address": server.address,
                    "ports": server.ports,
                    "encryption": server.encryption,
                    "last_seen": now,
                },
            )

    def management_servers(self, *, now: dt.datetime, offline_after: dt.timedelta) -> list[Server]:
        """Every management server that ever ran on this database, by name."""
        with self.db.connect() as conn:
            rows = conn.execute(sa.select(management_servers).order_by(management_servers.c.name))
            return [
                Server(
                    name=r.name,
                    role=ServerRole.MANAGEMENT,
                    host=r.host,
                    address=r.address,
                    ports=dict(r.ports),
                    encryption=bool(r.encryption),
                    online=now - _utc(r.last_seen) <= offline_after,  # type: ignore[operator]
                    last_seen=_utc(r.last_seen),
                )
                for r in rows
            ]

    def leadership(self, lock_id: int) -> sa.Connection | None:
        """A connection that holds the site-wide lock ``lock_id`` (close it to let go), or
        None while another management server holds it."""
        conn = self.db.connect()
        try:
            if try_session_lock(conn, lock_id):
                conn.commit()  # the lock outlives the transaction that took it
                return conn
        except BaseException:
            conn.close()
            raise
        conn.close()
        return None

    # -- servers -------------------------------------------------------------------------

    def servers(
        self, *, now: dt.datetime, offline_after: dt.timedelta, readiness: bool = True
    ) -> list[Server]:
        """The registered servers, by name; online when heard from within ``offline_after``;
        without their readiness unless asked (parsing it is most of the cost)."""
        with self.db.connect() as conn:
            rows = conn.execute(sa.select(servers).order_by(servers.c.name))
            return [_server(row, now, offline_after, readiness) for row in rows]

    def server_with_host(
        self, host: str, *, now: dt.datetime, offline_after: dt.timedelta
    ) -> Server | None:
        """The registered server whose host is ``host``, if any."""
        with self.db.connect() as conn:
            row = conn.execute(sa.select(servers).where(servers.c.host == host).limit(1)).first()
        return _server(row, now, offline_after, readiness=False) if row is not None else None

    def online(self, *, now: dt.datetime, offline_after: dt.timedelta) -> frozenset[str]:
        """The names of the servers heard from within ``offline_after`` (names only: what
        the failover plan watches every second)."""
        with self.db.connect() as conn:
            rows = conn.execute(
                sa.select(servers.c.name).where(servers.c.last_seen >= now - offline_after)
            )
            return frozenset(r[0] for r in rows)

    def server(self, name: str, *, now: dt.datetime, offline_after: dt.timedelta) -> Server | None:
        """The registered server ``name``, or None (one row: a heartbeat's read)."""
        with self.db.connect() as conn:
            row = conn.execute(_SERVER, {"name": name}).first()
        return _server(row, now, offline_after) if row is not None else None

    def record_heartbeat(
        self, server: Server, *, now: dt.datetime, new: bool, changed: bool = False
    ) -> None:
        """Register ``server`` (``new``) or record what its heartbeat says of it now;
        ``changed``: what other servers are told of it changed (its ports, say)."""
        values = {
            "role": server.role.value,
            "host": server.host,
            "address": server.address,
            "ports": server.ports,
            "encryption": server.encryption,
            "encrypted_now": server.encrypted_now,
            "last_seen": now,
            "readiness": server.readiness.as_json(now) if server.readiness else None,
        }
        with self.db.begin() as conn:
            commit_without_waiting_for_disk(conn)  # said again with its next heartbeat
            if new or changed:
                self._changed(conn, at_once=changed)
            if new:
                conn.execute(sa.insert(servers).values(name=server.name, extra={}, **values))
            else:
                conn.execute(
                    sa.update(servers).where(servers.c.name == server.name).values(**values)
                )

    def record_seen(
        self,
        seen: Mapping[str, tuple[dt.datetime, Readiness | None, bool]],
        *,
        readiness_unchanged: Collection[str] = (),
    ) -> None:
        """What the heartbeats of registered servers said (server -> when, readiness,
        encrypted now), in one transaction: what an administrator sets (encryption, host)
        is not written back, nor the readiness of the servers in ``readiness_unchanged``
        (as last written)."""
        if not seen:
            return
        written = [
            {
                "b_name": name,
                "last_seen": when,
                "readiness": readiness.as_json(when) if readiness else None,
                "encrypted_now": encrypted_now,
            }
            for name, (when, readiness, encrypted_now) in seen.items()
            if name not in readiness_unchanged
        ]
        kept = [
            {"b_name": name, "last_seen": when, "encrypted_now": encrypted_now}
            for name, (when, _readiness, encrypted_now) in seen.items()
            if name in readiness_unchanged
        ]
        with self.db.begin() as conn:
            commit_without_waiting_for_disk(conn)  # said again with the next heartbeats
            if written:
                conn.execute(_SEEN, written)
            if kept:
                conn.execute(_SEEN_AT, kept)

    def set_server_encryption(self, name: str, enabled: bool) -> None:
        with self.db.begin() as conn:
            conn.execute(
                sa.update(servers).where(servers.c.name == name).values(encryption=enabled)
            )
            self._changed(conn)

    def move_server(self, name: str, host: str, address: str) -> None:
        """A registered server's new host and address (offline until it is heard there)."""
        with self.db.begin() as conn:
            conn.execute(
                sa.update(servers)
                .where(servers.c.name == name)
                .values(host=host, address=address, last_seen=None)
            )
            self._changed(conn)

    def apply_failover(
        self, covering: dict[str, str | None], cameras_to: dict[str, str | None]
    ) -> None:
        """Failover servers' new charges, and the servers cameras record on now."""
        if not covering and not cameras_to:
            return
        with self.db.begin() as conn:
            self._changed(conn)
            for failover, target in covering.items():
                conn.execute(
                    sa.update(servers).where(servers.c.name == failover).values(covering=target)
                )
            for camera, server in cameras_to.items():
                conn.execute(
                    sa.update(cameras).where(cameras.c.name == camera).values(current_server=server)
                )

    # -- cameras -------------------------------------------------------------------------

    def cameras(self) -> list[Camera]:
        with self.db.connect() as conn:
            return [
                Camera(r.name, r.recording_server, dict(r.source), r.current_server)
                for r in conn.execute(sa.select(cameras).order_by(cameras.c.name))
            ]

    def put_camera(self, name: str, recording_server: str, source: dict[str, Any]) -> None:
        """Add camera ``name``, or replace the one of that name."""
        with self.db.begin() as conn:
            upsert(
                conn,
                cameras,
                {"name": name},
                {"recording_server": recording_server, "current_server": None, "source": source},
            )
            self._changed(conn)

    def delete_camera(self, name: str) -> bool:
        """Remove camera ``name``; whether there was one."""
        with self.db.begin() as conn:
            self._changed(conn)
            return bool(conn.execute(sa.delete(cameras).where(cameras.c.name == name)).rowcount)

    # -- users ---------------------------------------------------------------------------

    def user(self, name: str) -> User | None:
        with self.db.connect() as conn:
            row = conn.execute(sa.select(users).where(users.c.name == name)).first()
        return User(row.name, row.role, row.password_hash, row.cameras) if row else None

    def users(self) -> list[User]:
        with self.db.connect() as conn:
            rows = conn.execute(sa.select(users).order_by(users.c.name)).all()
        return [User(r.name, r.role, r.password_hash, r.cameras) for r in rows]

    def has_users(self) -> bool:
        with self.db.connect() as conn:
            return conn.execute(sa.select(users.c.name).limit(1)).first() is not None

    def put_user(self, user: User) -> bool:
        """Add ``user``, or replace the one of that name; whether it existed."""
        with self.db.begin() as conn:
            existed = conn.execute(sa.select(users.c.name).where(users.c.name == user.name)).first()
            upsert(
                conn,
                users,
                {"name": user.name},
                {"role": user.role, "password_hash": user.password_hash, "cameras": user.cameras},
            )
        return existed is not None

    def delete_user(self, name: str) -> Literal["deleted", "missing", "last administrator"]:
        """Remove user ``name``, unless there is none or it is the site's only
        administrator (nobody could change the site again)."""
        with self.db.begin() as conn:
            row = conn.execute(sa.select(users).where(users.c.name == name)).first()
            if row is None:
                return "missing"
            others = conn.execute(
                sa.select(sa.func.count())
                .select_from(users)
                .where(users.c.role == "administrator", users.c.name != name)
            ).scalar_one()
            if row.role == "administrator" and not others:
                return "last administrator"
            conn.execute(sa.delete(users).where(users.c.name == name))
        return "deleted"
