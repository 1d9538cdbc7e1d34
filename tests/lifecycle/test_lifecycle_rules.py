"""Expiry warnings and renewal timing, with a test clock (pure: time is a parameter)."""

from __future__ import annotations

import datetime as dt
import logging

import pytest

from watchkeep.pki._lifecycle import (
    crossed_thresholds,
    parse_warn_days,
    renewal_time,
    warning_level,
)
from watchkeep.servers._expiry import ExpiryWatch, WatchedCertificate, metrics_text

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def cert(days: int = 90, serial: str = "abc") -> WatchedCertificate:
    return WatchedCertificate(
        "server", "rs1", "recording", "rs1.site.test", serial, T0, T0 + dt.timedelta(days=days)
    )


@pytest.mark.parametrize(
    ("days_left", "level"),
    [(60, None), (30, 30), (29.5, 30), (14, 14), (10, 14), (7, 7), (0.5, 7), (-1, 0)],
)
def test_warning_level_is_the_smallest_threshold_inside(
    days_left: float, level: int | None
) -> None:
    not_after = T0 + dt.timedelta(days=90)
    now = not_after - dt.timedelta(days=days_left)
    assert warning_level(not_after, now) == level


def test_each_threshold_is_announced_once_as_the_clock_moves(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a 90-day certificate and a watch with the default 30/14/7 thresholds
    watch = ExpiryWatch()
    c = cert()
    said: list[str] = []
    caplog.set_level(logging.WARNING, logger="watchkeep.expiry")
    # When the test clock walks day by day past expiry
    for day in range(0, 95):
        said += watch.check([c], T0 + dt.timedelta(days=day, hours=1))
    # Then exactly four lines: 30, 14, 7 days, and expired, in that order
    assert len(said) == 4
    assert "under 30 days" in said[0]
    assert "under 14 days" in said[1]
    assert "under 7 days" in said[2]
    assert "EXPIRED" in said[3]
    assert all("[cert.expiry_warning]" in s for s in said[:3])
    assert "[cert.validity]" in said[3]
    assert len([r for r in caplog.records if r.name == "watchkeep.expiry"]) == 4


def test_the_fix_for_the_servers_own_certificate_is_the_one_given() -> None:
    # Given a server's own certificate, a CA certificate and one the CA issued, all 10 days
    # from expiry, and a fix for the server's own (a server that renews itself)
    own = cert()
    ca = WatchedCertificate("ca", "rs1", "ca", "CN=CA", "ca1", T0, T0 + dt.timedelta(days=90))
    issued = WatchedCertificate(
        "issued", "mobile-m.test", "mobile", "m.test", "i1", T0, T0 + dt.timedelta(days=90)
    )
    # When the watch checks them
    said = ExpiryWatch().check(
        [own, ca, issued], T0 + dt.timedelta(days=80), own_fix="it renews itself: see X"
    )
    # Then the server's own lines give that fix; the others keep theirs
    by_serial = {
        c.serial: [x for x in said if f"(serial {c.serial}," in x] for c in (own, ca, issued)
    }
    assert [x.rpartition("fix: ")[2] for x in by_serial["abc"]] == ["it renews itself: see X"] * 2
    assert by_serial["ca1"][-1].endswith("fix: watchkeep cert renew --all --within 14d")
    assert (
        "fix: watchkeep cert renew mobile-m.test (and install the new files" in by_serial["i1"][-1]
    )


def test_announcements_survive_a_restart() -> None:
    watch = ExpiryWatch()
    c = cert()
    assert watch.check([c], T0 + dt.timedelta(days=70))  # under 30
    restarted = ExpiryWatch(announced=watch.announced)
    assert restarted.check([c], T0 + dt.timedelta(days=71)) == []


def test_configurable_thresholds() -> None:
    assert parse_warn_days(["7", 60, 30]) == (60, 30, 7)
    with pytest.raises(ValueError, match="at least 1"):
        parse_warn_days([0])
    said = crossed_thresholds(T0 + dt.timedelta(days=50), T0, [], (60, 30))
    assert said == [60]


def test_renewal_at_two_thirds_with_bounded_stable_jitter() -> None:
    not_after = T0 + dt.timedelta(days=90)
    times = [renewal_time(T0, not_after, serial=f"{i:x}") for i in range(200)]
    # 2/3 of 90 days is day 60; the jitter moves it by at most 5 % of 90 days = 4.5 days.
    assert all(T0 + dt.timedelta(days=55.5) <= t <= T0 + dt.timedelta(days=64.5) for t in times)
    assert len(set(times)) > 150  # spread out, not one minute for the whole site
    assert renewal_time(T0, not_after, serial="42") == renewal_time(T0, not_after, serial="42")
    with pytest.raises(ValueError, match="fraction"):
        renewal_time(T0, not_after, serial="1", renew_at=1.5)


def test_metrics_text_has_the_documented_names_and_labels() -> None:
    text = metrics_text([cert(serial="ff01")], T0 + dt.timedelta(days=80))
    assert "# TYPE watchkeep_certificate_not_after_timestamp_seconds gauge" in text
    line = next(x for x in text.splitlines() if x.startswith("watchkeep_certificate_days_left{"))
    assert 'server="rs1"' in line
    assert 'role="recording"' in line
    assert 'host="rs1.site.test"' in line
    assert 'serial="ff01"' in line
    assert line.endswith(" 10.000")
