"""The log-in throttle on its own (pure: the clock is passed in)."""

from __future__ import annotations

import pytest

from watchkeep.servers._throttle import MAX_KEYS, FamiliarAddresses, LoginThrottle


def test_failures_within_the_allowance_cost_nothing_then_each_doubles_the_wait() -> None:
    throttle = LoginThrottle(3, base_delay=1.0, max_delay=10.0)
    assert [throttle.failed("admin", 0.0) for _ in range(2)] == [0.0, 0.0]
    assert throttle.retry_after("admin", 0.0) == 0.0
    waits = [throttle.failed("admin", 100.0 * n) for n in range(1, 6)]
    assert waits == [1.0, 2.0, 4.0, 8.0, 10.0]  # capped at max_delay
    assert throttle.retry_after("admin", 500.0) == 10.0
    assert throttle.retry_after("admin", 509.5) == pytest.approx(0.5)
    assert throttle.retry_after("other", 500.0) == 0.0


def test_a_success_clears_the_account_and_quiet_keys_are_forgotten() -> None:
    throttle = LoginThrottle(1, forget_after=60.0)
    throttle.failed("admin", 0.0)
    assert throttle.retry_after("admin", 0.5) > 0
    throttle.succeeded("admin")
    assert throttle.retry_after("admin", 0.5) == 0.0
    throttle.failed("10.0.0.1", 0.0)
    assert throttle.failures("10.0.0.1") == 1
    assert throttle.retry_after("10.0.0.1", 61.0) == 0.0
    assert throttle.failures("10.0.0.1") == 0  # forgotten: the next failure starts afresh


def test_invented_names_cannot_grow_the_memory_without_bound() -> None:
    throttle = LoginThrottle(5)
    for n in range(MAX_KEYS + 50):
        throttle.failed(f"user-{n}", float(n))
    assert len(throttle._records) <= MAX_KEYS
    assert throttle.failures(f"user-{MAX_KEYS + 49}") == 1  # the newest are kept


def test_no_allowance_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        LoginThrottle(0)


def test_an_account_is_counted_apart_at_the_addresses_it_logs_in_from() -> None:
    familiar = FamiliarAddresses(keep_for=100.0, per_account=2)
    # Before any log-in, every address is "elsewhere"
    assert familiar.account_key("alice", "10.0.0.1", 0.0) == "alice\nelsewhere"
    familiar.logged_in("alice", "10.0.0.1", 0.0)
    assert familiar.account_key("alice", "10.0.0.1", 50.0) == "alice\nfamiliar"
    assert familiar.account_key("alice", "10.0.0.2", 50.0) == "alice\nelsewhere"
    assert familiar.account_key("bob", "10.0.0.1", 50.0) == "bob\nelsewhere"
    # Familiar for keep_for seconds only
    assert familiar.account_key("alice", "10.0.0.1", 101.0) == "alice\nelsewhere"
    # The most recent per_account addresses are kept
    familiar.logged_in("alice", "10.0.0.2", 1.0)
    familiar.logged_in("alice", "10.0.0.3", 2.0)
    assert familiar.account_key("alice", "10.0.0.1", 3.0) == "alice\nelsewhere"
    assert familiar.account_key("alice", "10.0.0.3", 3.0) == "alice\nfamiliar"
