"""When a schedule fires: the slot times of an interval or a cron trigger.

Pure functions of time, no clock: the schedule actor asks for the slot after a time, or
the last one at or before it. Cron expressions are read by `croniter
<https://pypi.org/project/croniter/>`_ (five fields, minute first; a sixth, for seconds,
is allowed), in the trigger's timezone, so "0 9 * * *" in "Europe/Paris" is 9 o'clock in
Paris all year round. An interval's slots are ``anchor + k * interval`` exactly (times are
counted in whole microseconds), so every process that knows the anchor agrees on them.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs

__all__ = ["Trigger", "check_cron", "check_timezone"]

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)


def _croniter() -> Any:
    # Imported on first use, not with the module: importing croniter runs `file -b` on the
    # interpreter in a subprocess (platform.architecture) and costs ~30 ms, which every
    # `import runtime` would pay, cron schedule or not.
    from croniter import croniter  # type: ignore[import-untyped]

    return croniter


def check_cron(expression: str) -> str:
    """Return ``expression`` if croniter reads it.

    Raises:
        ValueError: it is not a cron expression.
    """
    if not isinstance(expression, str) or not _croniter().is_valid(expression):
        raise ValueError(
            f"cron={expression!r} is not a cron expression: give five fields, minute hour "
            "day-of-month month day-of-week, such as '0 3 * * *' (every day at 03:00)."
        )
    return expression


def check_timezone(name: str | None) -> str | None:
    """Return ``name`` if it is an IANA timezone this system knows (None stays None).

    Raises:
        ValueError: it names no timezone.
    """
    if name is None:
        return None
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ValueError(
            f"timezone={name!r} is not a timezone this system knows: give an IANA name such "
            "as 'Europe/Paris' or 'UTC' (install the tzdata package if none is found)."
        ) from None
    return name


def _micros(value: datetime) -> int:
    return (value - _EPOCH) // _MICROSECOND


def _from_micros(value: int) -> datetime:
    return _EPOCH + value * _MICROSECOND


@attrs.frozen
class Trigger:
    """The slot times of a schedule: every ``interval`` seconds from ``anchor``, or the
    times matching ``cron`` in ``timezone`` (UTC if None). Exactly one of ``interval``
    and ``cron`` is set. Times are timezone-aware; slots are returned in UTC.
    """

    interval: float | None
    cron: str | None
    timezone: str | None
    anchor: datetime

    def __attrs_post_init__(self) -> None:
        if (self.interval is None) == (self.cron is None):
            raise ValueError("a trigger has exactly one of interval and cron")

    def next_after(self, moment: datetime) -> datetime:
        """Return the first slot strictly after ``moment``."""
        if self.interval is not None:
            step = self._step()
            anchor = _micros(self.anchor)
            k = (_micros(moment) - anchor) // step + 1
            return _from_micros(anchor + k * step)
        local = moment.astimezone(self._zone())
        found: datetime = _croniter()(self.cron, local).get_next(datetime)
        return found.astimezone(timezone.utc)

    def last_at_or_before(self, moment: datetime) -> datetime:
        """Return the latest slot at or before ``moment``."""
        if self.interval is not None:
            step = self._step()
            anchor = _micros(self.anchor)
            k = (_micros(moment) - anchor) // step
            return _from_micros(anchor + k * step)
        local = (moment + _MICROSECOND).astimezone(self._zone())
        found: datetime = _croniter()(self.cron, local).get_prev(datetime)
        return found.astimezone(timezone.utc)

    def describe(self) -> str:
        """A short text for logs and tables: ``every 60 s``, ``cron '0 3 * * *' (UTC)``."""
        if self.interval is not None:
            return f"every {self.interval:g} s"
        return f"cron {self.cron!r} ({self.timezone or 'UTC'})"

    def _step(self) -> int:
        assert self.interval is not None
        return max(1, round(self.interval * 1_000_000))

    def _zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone or "UTC")
