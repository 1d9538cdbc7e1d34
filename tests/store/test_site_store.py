"""Every statement of the management server's site database, on SQLite and on PostgreSQL:
what one method writes, the others read back the same on both."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from watchkeep.site import Readiness, Server, ServerRole
from watchkeep.store import SiteStore, User, site_metadata

NOW = dt.datetime(2026, 12, 2, 6, 0, tzinfo=dt.UTC)
MINUTE = dt.timedelta(minutes=1)


def server(name: str, **changes: object) -> Server:
    fields: dict[str, object] = {
        "name": name,
        "role": ServerRole.RECORDING,
        "host": f"{name}.site.test",
        "address": "127.0.0.2",
        "ports": {"data": 7563, "control": 9001},
    }
    fields.update(changes)
    return Server(**fields)  # type: ignore[arg-type]


@pytest.fixture
def store(database_url: str) -> SiteStore:
    made = SiteStore(database_url)
    yield made  # type: ignore[misc]
    made.dispose()


def test_the_migrated_schema_is_the_one_the_code_declares(store: SiteStore) -> None:
    # Given a database made by the migrations, When Alembic compares it with the tables
    # the code reads and writes, Then nothing differs (no revision forgotten).
    with store.db.connect() as conn:
        context = MigrationContext.configure(
            conn,
            opts={"include_name": lambda name, *_: not (name or "").startswith("alembic_version")},
        )
        differences = compare_metadata(context, site_metadata)
    assert differences == []


def test_settings_are_replaced_whole_and_keep_their_json(store: SiteStore) -> None:
    assert store.setting("token_revocations", {"none": True}) == {"none": True}
    store.set_setting("token_revocations", {"users": {"ann": 1.5}, "tokens": []})
    store.set_setting("token_revocations", {"users": {}, "tokens": ["j1"]})
    store.set_setting("ms_encryption", True)
    assert store.setting("token_revocations", None) == {"users": {}, "tokens": ["j1"]}
    assert store.setting("ms_encryption", False) is True


def test_servers_register_heartbeat_move_and_go_offline(store: SiteStore) -> None:
    readiness = Readiness.from_json({"listening": True})
    store.record_heartbeat(server("rs1", readiness=readiness), now=NOW, new=True)
    store.record_heartbeat(server("fo1", role=ServerRole.FAILOVER), now=NOW - 10 * MINUTE, new=True)
    store.record_heartbeat(server("rs1", encrypted_now=True), now=NOW + MINUTE, new=False)
    store.set_server_encryption("rs1", True)
    store.apply_failover({"fo1": "rs1"}, {})

    found = {s.name: s for s in store.servers(now=NOW + MINUTE, offline_after=MINUTE)}
    assert list(found) == ["fo1", "rs1"]
    assert found["rs1"].online
    assert found["rs1"].encryption
    assert found["rs1"].encrypted_now
    assert found["rs1"].last_seen == NOW + MINUTE
    assert found["rs1"].ports == {"data": 7563, "control": 9001}
    assert not found["fo1"].online
    assert found["fo1"].covering == "rs1"

    store.move_server("rs1", "rs1-new.site.test", "127.0.0.9")
    moved = store.servers(now=NOW + MINUTE, offline_after=MINUTE)[1]
    assert (moved.host, moved.address, moved.online) == ("rs1-new.site.test", "127.0.0.9", False)


def test_heartbeats_recorded_together_leave_what_an_administrator_set(store: SiteStore) -> None:
    store.record_heartbeat(server("rs1"), now=NOW, new=True)
    store.record_heartbeat(server("rs2"), now=NOW, new=True)
    store.set_server_encryption("rs1", True)
    readiness = Readiness.from_json({"certificate": None, "trusted_ca_fingerprints": ["ab"]})
    store.record_seen({"rs1": (NOW + MINUTE, readiness, True), "rs2": (NOW + MINUTE, None, False)})
    rs1, rs2 = store.servers(now=NOW + MINUTE, offline_after=MINUTE)
    assert rs1.encryption  # not written back by the heartbeat
    assert rs1.encrypted_now
    assert rs1.last_seen == NOW + MINUTE
    assert rs1.readiness == readiness
    assert rs2.online
    assert rs2.readiness is None
    # A heartbeat whose readiness says what was last written: written without it.
    store.record_seen(
        {"rs1": (NOW + 2 * MINUTE, None, False), "rs2": (NOW + 2 * MINUTE, readiness, True)},
        readiness_unchanged={"rs1"},
    )
    rs1, rs2 = store.servers(now=NOW + 2 * MINUTE, offline_after=MINUTE)
    assert (rs1.last_seen, rs1.readiness, rs1.encrypted_now) == (NOW + 2 * MINUTE, readiness, False)
    assert (rs2.last_seen, rs2.readiness, rs2.encrypted_now) == (NOW + 2 * MINUTE, readiness, True)


def test_every_change_servers_are_told_of_renews_the_site_version(store: SiteStore) -> None:
    seen = {store.site_version()}
    changes = [
        lambda: store.record_heartbeat(server("rs1"), now=NOW, new=True),
        lambda: store.put_camera("cam1", "rs1", {}),
        lambda: store.apply_failover({"fo1": "rs1"}, {"cam1": "fo1"}),
        lambda: store.set_server_encryption("rs1", True),
        lambda: store.move_server("rs1", "rs1b.site.test", "127.0.0.3"),
        lambda: store.set_setting("ms_encryption", True),
        lambda: store.delete_camera("cam1"),
    ]
    for change in changes:
        change()
        assert store.site_version() not in seen
        seen.add(store.site_version())
    # A heartbeat that changes nothing servers are told keeps it
    version = store.site_version()
    store.record_seen({"rs1": (NOW, None, True)})
    store.apply_failover({}, {})
    assert store.site_version() == version


def test_cameras_are_added_replaced_moved_and_deleted(store: SiteStore) -> None:
    store.put_camera("cam1", "rs1", {"kind": "synthetic", "fps": 5})
    store.put_camera("cam2", "rs1", {"kind": "mjpeg", "url": "http://u:p@cam/"})
    store.apply_failover({}, {"cam1": "fo1"})
    assert store.cameras()[0].current_server == "fo1"
    # Replacing a camera sends it home: a new source is recorded where it belongs.
    store.put_camera("cam1", "rs2", {"kind": "synthetic", "fps": 10})
    cam1, cam2 = store.cameras()
    assert (cam1.recording_server, cam1.source["fps"], cam1.current_server) == ("rs2", 10, None)
    assert cam2.source["url"] == "http://u:p@cam/"
    assert store.delete_camera("cam2")
    assert not store.delete_camera("cam2")
    assert [c.name for c in store.cameras()] == ["cam1"]


def test_users_are_replaced_and_the_last_administrator_is_kept(store: SiteStore) -> None:
    assert not store.has_users()
    assert store.put_user(User("ann", "administrator", "h1", None)) is False
    assert store.put_user(User("bob", "operator", "h2", ["cam1"])) is False
    assert store.put_user(User("bob", "operator", "h3", ["cam1", "cam2"])) is True
    assert store.user("bob") == User("bob", "operator", "h3", ["cam1", "cam2"])
    assert store.user("ann") == User("ann", "administrator", "h1", None)
    assert store.delete_user("ann") == "last administrator"
    assert store.delete_user("carl") == "missing"
    assert store.delete_user("bob") == "deleted"
    assert [u.name for u in store.users()] == ["ann"]


def test_two_writers_of_one_setting_never_collide(database_url: str) -> None:
    # Given two stores on one database (two management servers), When both write the same
    # new settings at once, many times, Then no write fails and the last one stays.
    stores = [SiteStore(database_url), SiteStore(database_url)]
    failures: list[BaseException] = []

    def write(store: SiteStore, who: int) -> None:
        try:
            for i in range(40):
                store.set_setting(f"key{i}", {"who": who})
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=write, args=(s, n)) for n, s in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert failures == []
    assert {stores[0].setting(f"key{i}", None)["who"] for i in range(40)} <= {0, 1}
    for store in stores:
        store.dispose()


def test_a_database_url_that_cannot_be_used_is_one_line_naming_it(database_url: str) -> None:
    url = sa.make_url(database_url)
    if url.get_backend_name() == "sqlite":
        bad = "sqlite:////nonexistent-dir/site.db"
    else:
        bad = url.set(database="no_such_database").render_as_string(hide_password=False)
    with pytest.raises(Exception, match=r"cannot open the database .*") as caught:
        SiteStore(bad)
    assert "\n" not in str(caught.value)
    assert caught.value.fix  # type: ignore[attr-defined]
