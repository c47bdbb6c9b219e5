"""What a store keeps for long-running pipelines: schedules, the slots they fired, and the
leases of the processes that run flows.

Immutable rows, like the run snapshots: the store takes and returns them and keeps no
object anyone changes. Times are timezone-aware UTC datetimes, at microsecond precision.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import attrs

__all__ = [
    "SCHEDULE_FAILED",
    "SCHEDULE_SERVING",
    "SCHEDULE_STOPPED",
    "ProcessLease",
    "ScheduleRecord",
    "ScheduleSlot",
]

SCHEDULE_SERVING = "serving"
"""A schedule's status while a ``serve`` runs it."""
SCHEDULE_STOPPED = "stopped"
"""A schedule's status once the last ``serve`` running it stopped."""
SCHEDULE_FAILED = "failed"
"""A schedule's status once its runs crashed more often than its restart policy allows."""


@attrs.frozen
class ScheduleRecord:
    """A served schedule: when to run which flow, how, and how it is doing.

    Attributes:
        name: unique in the store; processes serving a schedule of one name share its slots.
        flow_name: the flow's name (``Flow.name``).
        entrypoint: ``"/path/file.py:qualname"`` of the flow, or None.
        interval: seconds between slots (an interval schedule), or None.
        cron: a cron expression (a cron schedule), or None.
        timezone: an IANA zone name the cron expression (and the interval's anchor) is
            read in, or None for UTC.
        anchor: when the schedule was first registered with this trigger; an interval
            schedule's slots are ``anchor + k * interval``.
        parameters: the flow's parameters, JSON-compatible.
        tags: tags of every run the schedule fires.
        overlap: ``"skip"``, ``"queue"`` or ``"allow"``.
        catchup: ``"latest"``, ``"all"`` or ``"none"``.
        restart: the restart type of its crashed runs: ``"permanent"``, ``"transient"``
            or ``"temporary"``.
        status: :data:`SCHEDULE_SERVING`, :data:`SCHEDULE_STOPPED` or :data:`SCHEDULE_FAILED`.
        message: why it is in that status (a failure's cause), or None.
        created: when it was first registered with this trigger.
        updated: when it was last registered or changed status.
    """

    name: str
    flow_name: str
    entrypoint: str | None
    interval: float | None
    cron: str | None
    timezone: str | None
    anchor: datetime
    parameters: dict[str, Any] = attrs.field(factory=dict, hash=False)
    tags: tuple[str, ...] = ()
    overlap: str = "skip"
    catchup: str = "latest"
    restart: str = "permanent"
    status: str = SCHEDULE_SERVING
    message: str | None = None
    created: datetime | None = None
    updated: datetime | None = None

    def same_trigger(self, other: ScheduleRecord) -> bool:
        """Whether ``other`` fires at the same times (same interval, cron and timezone)."""
        return (self.interval, self.cron, self.timezone) == (
            other.interval,
            other.cron,
            other.timezone,
        )


@attrs.frozen
class ScheduleSlot:
    """A slot of a schedule, claimed by the process that fired (or skipped) it.

    Attributes:
        schedule: the schedule's name.
        slot: the slot's time.
        claimer: the owner token of the claiming process (``host:pid:start:nonce``).
        claimed: when it was claimed.
        fired: True if a run was started for it, False if the slot was skipped (the
            schedule's previous run was still running).
    """

    schedule: str
    slot: datetime
    claimer: str
    claimed: datetime
    fired: bool = True


@attrs.frozen
class ProcessLease:
    """A process's heartbeat in a store: while it is renewed, the process is alive.

    Attributes:
        owner: the process's owner token, the one its flow runs record as ``owner``.
        host: its host name.
        pid: its process id.
        started: when it first took the lease.
        renewed: when it last renewed it (its own clock).
        expires: when, unless renewed, the process counts as gone and its runs crashed.
        serving: the names of the schedules it serves.
    """

    owner: str
    host: str
    pid: int
    started: datetime
    renewed: datetime
    expires: datetime
    serving: tuple[str, ...] = ()
