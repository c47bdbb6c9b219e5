"""Schedules: a flow, when to run it, and what to do when runs overlap, are missed or crash.

:meth:`Flow.to_schedule <runtime.Flow.to_schedule>` builds a :class:`Schedule`;
``serve``/``aserve`` (:mod:`runtime.api._serve`) run it. Both models are pydantic, frozen,
and check their options when built, with messages that say what to give instead.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from actors import Backoff
from actors import Restart as ChildRestart

from ..core._options import check_name
from ..core._triggers import check_cron, check_timezone

__all__ = [
    "Catchup",
    "Overlap",
    "Restart",
    "Schedule",
    "make_schedule",
    "schedule_tag",
    "slot_tag",
    "tagged_schedule",
    "tagged_slot",
]

Overlap = Literal["skip", "queue", "allow"]
"""What a slot does while the schedule's previous run still runs: ``skip`` it (no run),
``queue`` a run after the previous one, or ``allow`` runs side by side."""

Catchup = Literal["latest", "all", "none"]
"""What a schedule does about the slots it missed while nothing served it: one run for
the ``latest`` of them, a run for ``all`` of them (oldest first, one after another
unless the overlap is ``allow``: ``skip`` does not skip them), or ``none``."""

_SCHEDULE_TAG = "schedule:"
_SLOT_TAG = "slot:"


def schedule_tag(name: str) -> str:
    """The tag of every run of the schedule ``name``: ``schedule:<name>``."""
    return f"{_SCHEDULE_TAG}{name}"


def slot_tag(slot: datetime) -> str:
    """The tag of the run fired for ``slot``: ``slot:`` and its ISO time in UTC."""
    return f"{_SLOT_TAG}{slot.astimezone(timezone.utc).isoformat()}"


def tagged_schedule(run: Any) -> str | None:
    """The name of the schedule that fired ``run`` (from its tags), or None."""
    for tag in run.tags:
        if tag.startswith(_SCHEDULE_TAG):
            return str(tag[len(_SCHEDULE_TAG) :])
    return None


def tagged_slot(run: Any) -> datetime | None:
    """The slot ``run`` was fired for (from its tags), or None."""
    for tag in run.tags:
        if tag.startswith(_SLOT_TAG):
            return datetime.fromisoformat(tag[len(_SLOT_TAG) :])
    return None


_OVERLAPS = ("skip", "queue", "allow")
_CATCHUPS = ("latest", "all", "none")


class Restart(BaseModel):
    """How the crashed runs of a served flow are restarted: an OTP supervisor's policy.

    A run *crashes* when an exception escapes the engine (a ``BaseException`` from the
    body, a dying worker thread, a store write that failed), not when it ends Failed:
    failures are the flow's own business (``retries``). A restarted run runs again under
    the same id, reusing the task results it completed (persist them to reuse them across
    processes), like ``stageflow runs resume``.

    Attributes:
        type: ``"permanent"`` or ``"transient"``: a crashed run is restarted (a run that
            finished, in any state, exited normally, so for runs the two are the same, as
            the kernel's types are for a child that never exits normally);
            ``"temporary"``: never restarted, and not recovered by a later ``serve``.
        max_restarts: restarts allowed within ``period`` seconds, across the schedule's
            runs; one more stops the schedule (its status becomes ``failed``), while the
            other schedules go on.
        period: the length, in seconds, of the restart-intensity window.
        backoff: ``(min_seconds, max_seconds)`` or ``(min_seconds, max_seconds, jitter)``:
            the n-th restart of a run waits ``min(max, min * 2**n) * (1 + random() *
            jitter)`` seconds (jitter 0.2 when not given); None restarts at once.

    Raises:
        pydantic.ValidationError: (a ``ValueError``) an option is out of range.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["permanent", "transient", "temporary"] = "permanent"
    max_restarts: int = Field(default=3, ge=0)
    period: float = Field(default=60.0, gt=0)
    backoff: tuple[float, float] | tuple[float, float, float] | None = None

    @field_validator("backoff")
    @classmethod
    def _check_backoff(
        cls, value: tuple[float, ...] | None
    ) -> tuple[float, float] | tuple[float, float, float] | None:
        if value is not None:
            Backoff(*value)  # raises ValueError, naming the field that is wrong
        return value  # type: ignore[return-value]

    def child_restart(self) -> ChildRestart:
        """The kernel restart type of a run's actor (see :attr:`type`)."""
        return ChildRestart.TEMPORARY if self.type == "temporary" else ChildRestart.TRANSIENT

    def kernel_backoff(self) -> Backoff | None:
        """The kernel's :class:`~actors.Backoff` for :attr:`backoff`, or None."""
        return None if self.backoff is None else Backoff(*self.backoff)


class Schedule(BaseModel):
    """A flow to run on a schedule, as ``flow.to_schedule(...)`` returns it and
    ``serve(*schedules)`` / ``await aserve(*schedules)`` take it.

    Attributes:
        name: the schedule's name, unique in the store (the flow's name by default).
            Every process serving a schedule of this name shares its slots.
        flow: the flow to run.
        interval: seconds between runs (exclusive with ``cron``).
        cron: a cron expression (exclusive with ``interval``), read by croniter.
        timezone: the IANA timezone the cron expression is read in (UTC if None).
        parameters: the flow's parameters for every run.
        tags: tags of every run, besides ``schedule:<name>`` and ``slot:<time>``.
        overlap: see :data:`Overlap`.
        catchup: see :data:`Catchup`.
        restart: see :class:`Restart`.

    Raises:
        pydantic.ValidationError: (a ``ValueError``) the options do not make a schedule.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    name: str
    flow: Any = Field(repr=False)
    interval: float | None = None
    cron: str | None = None
    timezone: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    tags: tuple[str, ...] = ()
    overlap: Overlap = "skip"
    catchup: Catchup = "latest"
    restart: Restart = Field(default_factory=lambda: Restart())

    @model_validator(mode="after")
    def _check(self) -> Schedule:
        _check_trigger(self.flow.name, self.interval, self.cron)
        check_timezone(self.timezone)
        return self


def _check_trigger(flow_name: str, interval: float | None, cron: str | None) -> None:
    if (interval is None) == (cron is None):
        raise ValueError(
            f"A schedule of flow {flow_name!r} needs exactly one of interval= (seconds "
            f"between runs) and cron= (an expression such as '0 3 * * *'), not "
            f"{'both' if interval is not None else 'neither'}."
        )
    if interval is not None and not interval > 0:
        raise ValueError(f"interval must be a positive number of seconds, got {interval!r}.")
    if cron is not None:
        check_cron(cron)


def make_schedule(
    flow: Any,
    name: str | None,
    *,
    interval: float | timedelta | None,
    cron: str | None,
    parameters: dict[str, Any] | None,
    tags: list[str] | tuple[str, ...] | None,
    timezone: str | None,
    overlap: str,
    catchup: str,
    restart: Restart | None,
) -> Schedule:
    """Check the options of ``flow.to_schedule(...)`` and return the :class:`Schedule`.

    Raises:
        ValueError: an option is invalid (the message says which, and what to give).
        TypeError: ``restart`` is not a :class:`Restart`.
        ParameterBindError: ``parameters`` do not fit the flow's signature.
    """
    seconds = interval.total_seconds() if isinstance(interval, timedelta) else interval
    if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float))):
        raise ValueError(f"interval must be a number of seconds or a timedelta, got {interval!r}.")
    _check_trigger(flow.name, seconds, cron)
    if overlap not in _OVERLAPS:
        raise ValueError(
            f"overlap must be one of {', '.join(map(repr, _OVERLAPS))}; got {overlap!r}."
        )
    if catchup not in _CATCHUPS:
        raise ValueError(
            f"catchup must be one of {', '.join(map(repr, _CATCHUPS))}; got {catchup!r}."
        )
    if restart is not None and not isinstance(restart, Restart):
        raise TypeError(
            f"restart must be a runtime.Restart, such as Restart(type='transient', "
            f"max_restarts=3, period=60); got {restart!r}."
        )
    bound = flow.signature.bind((), dict(parameters or {}))  # fails now, not at a slot
    return Schedule(
        name=check_name(name or flow.name, "schedule"),
        flow=flow,
        interval=None if seconds is None else float(seconds),
        cron=cron,
        timezone=check_timezone(timezone),
        parameters=bound,
        tags=tuple(tags or ()),
        overlap=overlap,  # type: ignore[arg-type]
        catchup=catchup,  # type: ignore[arg-type]
        restart=restart or Restart(),
    )
