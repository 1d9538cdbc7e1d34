"""Turning from a management server that does not answer to the site's next one, as the
heartbeats and the calls a mobile server relays for users do at the same time; and which of
two configurations from the management servers is the older."""

from __future__ import annotations

from types import SimpleNamespace

from watchkeep.servers._config import ManagementLink
from watchkeep.servers._linked import config_order, superseded
from watchkeep.servers.mobile import MobileServer


def linked_to_two() -> MobileServer:
    server = MobileServer.__new__(MobileServer)  # the link's state alone, no process
    server.link = ManagementLink(
        "ms1.site.test", "127.0.0.2", 9000, None, others=(("ms2.site.test", "127.0.0.3", 9000),)
    )
    server.site = {
        "ms1": {"role": "management", "host": "ms1.site.test"},
        "ms2": {"role": "management", "host": "ms2.site.test"},
    }
    server.config = SimpleNamespace(name="mobile1")  # type: ignore[assignment]
    server._ms = 1  # speaking to ms2
    return server


def test_two_callers_finding_the_same_server_dead_turn_once() -> None:
    server = linked_to_two()
    # Given the heartbeats and a user's log-in both began at ms2, which died
    began_at = server._ms
    # When both find it dead
    assert server._next_management("connection refused", began_at)
    assert server._next_management("connection refused", began_at)
    # Then the server speaks to ms1, not back to the dead ms2
    assert server._management_endpoint(False).server == "ms1"


def test_a_caller_turns_on_when_the_next_one_is_dead_too() -> None:
    server = linked_to_two()
    assert server._next_management("connection refused", 1)
    assert server._next_management("connection refused", 0)
    assert server._management_endpoint(False).server == "ms2"


def test_a_site_of_one_management_server_has_none_to_turn_to() -> None:
    server = linked_to_two()
    server.link = ManagementLink("ms1.site.test", "127.0.0.2", 9000, None)
    server._ms = 0
    assert not server._next_management("connection refused", 0)


def test_only_a_configuration_of_the_same_process_can_be_older() -> None:
    assert config_order({"config_order": ["a1", 7]}) == ("a1", 7)
    for bad in (None, ["a1"], ["a1", "7"], [1, 7], ["a1", True], "a1:7"):
        assert config_order({"config_order": bad}) is None
    assert superseded(("a1", 6), ("a1", 7))
    assert not superseded(("a1", 7), ("a1", 7))  # the same snapshot: taken again
    assert not superseded(("a1", 8), ("a1", 7))
    assert not superseded(("b2", 1), ("a1", 7))  # another management server, or a restart
    assert not superseded(None, ("a1", 7))
    assert not superseded(("a1", 1), None)
