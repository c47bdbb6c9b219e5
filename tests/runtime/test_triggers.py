"""Slot times of interval and cron triggers: pure functions of time."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest

from runtime.core._triggers import Trigger, check_cron, check_timezone

T0 = datetime(2026, 1, 5, 12, 0, tzinfo=timezone.utc)


def interval(seconds: float, anchor: datetime = T0) -> Trigger:
    return Trigger(interval=seconds, cron=None, timezone=None, anchor=anchor)


def cron(expression: str, zone: str | None = None) -> Trigger:
    return Trigger(interval=None, cron=expression, timezone=zone, anchor=T0)


class TestInterval:
    def test_slots_are_the_anchor_plus_whole_intervals(self) -> None:
        """The next slot is strictly after the time given; the last one at or before it."""
        every = interval(60)
        assert every.next_after(T0) == T0 + timedelta(seconds=60)
        assert every.next_after(T0 - timedelta(microseconds=1)) == T0
        assert every.next_after(T0 + timedelta(seconds=61)) == T0 + timedelta(seconds=120)
        assert every.last_at_or_before(T0) == T0
        assert every.last_at_or_before(T0 + timedelta(seconds=119)) == T0 + timedelta(seconds=60)
        assert every.last_at_or_before(T0 - timedelta(seconds=1)) == T0 - timedelta(seconds=60)

    def test_fractional_intervals_do_not_drift(self) -> None:
        """Slots are counted in whole microseconds: the 10,000th of 0.1 s is 1000 s on."""
        tenth = interval(0.1)
        assert tenth.last_at_or_before(T0 + timedelta(seconds=1000)) == T0 + timedelta(seconds=1000)
        assert tenth.next_after(T0 + timedelta(seconds=999.95)) == T0 + timedelta(seconds=1000)

    def test_times_in_other_zones_are_the_same_instants(self) -> None:
        """A moment given in another zone is the same instant; slots come back in UTC."""
        paris = timezone(timedelta(hours=1))
        assert interval(3600).next_after(T0.astimezone(paris)) == T0 + timedelta(hours=1)

    def test_describe(self) -> None:
        assert interval(60).describe() == "every 60 s"
        assert interval(0.5).describe() == "every 0.5 s"


class TestCron:
    def test_slots_match_the_expression(self) -> None:
        """Strictly after for the next slot, at or before for the last one."""
        hourly = cron("0 * * * *")
        assert hourly.next_after(T0) == T0 + timedelta(hours=1)
        assert hourly.next_after(T0 - timedelta(seconds=1)) == T0
        assert hourly.last_at_or_before(T0) == T0
        assert hourly.last_at_or_before(T0 - timedelta(microseconds=1)) == T0 - timedelta(hours=1)

    def test_the_expression_is_read_in_its_timezone(self) -> None:
        """9 o'clock in Paris is 08:00 UTC in winter and 07:00 UTC in summer."""
        nine = cron("0 9 * * *", "Europe/Paris")
        assert nine.next_after(T0) == datetime(2026, 1, 6, 8, 0, tzinfo=timezone.utc)
        summer = datetime(2026, 7, 1, tzinfo=timezone.utc)
        assert nine.next_after(summer) == datetime(2026, 7, 1, 7, 0, tzinfo=timezone.utc)
        assert nine.describe() == "cron '0 9 * * *' (Europe/Paris)"
        assert cron("0 9 * * *").describe() == "cron '0 9 * * *' (UTC)"


class TestChecks:
    def test_bad_cron_expressions_are_refused(self) -> None:
        assert check_cron("*/5 * * * *") == "*/5 * * * *"
        for bad in ("every day", "61 * * * *", ""):
            with pytest.raises(ValueError, match=rf"^cron={re.escape(repr(bad))} is not a cron"):
                check_cron(bad)

    def test_unknown_timezones_are_refused(self) -> None:
        assert check_timezone("Europe/Paris") == "Europe/Paris"
        assert check_timezone(None) is None
        with pytest.raises(ValueError, match=r"^timezone='Mars/Olympus' is not a timezone"):
            check_timezone("Mars/Olympus")

    def test_exactly_one_of_interval_and_cron(self) -> None:
        with pytest.raises(ValueError, match="exactly one of interval and cron"):
            Trigger(interval=60, cron="* * * * *", timezone=None, anchor=T0)
