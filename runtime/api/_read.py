"""Reading runs from Python: one flow run, flow runs by flow, state and tags, the task runs
of a flow run, the state history of a run; and the served schedules, for the CLI.

Each function reads the store of the Runtime serving the caller (see
:class:`~runtime.Runtime`: an open Runtime of the event loop, or a ``with Runtime(...)``
block), else the default store. Like the functions of :mod:`runtime.flow_runs`, each
works from sync code and returns an awaitable to async code; the awaitable reads on a
worker thread, so a long listing does not stall the event loop.

This module is the one place the public API reads runs from a store; the CLI uses it too.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any
from uuid import UUID

import attrs

from ..core._exceptions import ObjectNotFound
from ..core._models import FlowRun, RunKind, TaskRun
from ..core._states import STATE_NAMES, State, StateType
from ..core._triggers import Trigger
from ..store._backend import StoreBackend
from ..store._records import SCHEDULE_SERVING, ScheduleRecord, ScheduleSlot
from ._calling import as_run_id, read_sync_or_async
from ._entry import inherited_backend

__all__ = [
    "ScheduleView",
    "StateFilter",
    "parse_state_filter",
    "read_flow_run",
    "read_flow_runs",
    "read_schedules",
    "read_state_history",
    "read_task_run",
    "read_task_runs",
]

StateFilter = tuple[frozenset[StateType], frozenset[str]]
"""State types, and lower-cased state names, a run may be in to match."""


def read_flow_run(flow_run_id: UUID | str) -> Any:
    """Return the flow run with this id, as a :class:`~runtime.FlowRun`.

    Its ``state`` is the current :class:`~runtime.State`; it also carries the flow name,
    parameters, tags, run count, start and end times and ``total_run_time``. (Prefect:
    ``PrefectClient.read_flow_run``.)

    Args:
        flow_run_id: the run's id, a UUID or its text.

    Returns:
        The :class:`~runtime.FlowRun` (from async code: an awaitable of it).

    Raises:
        ObjectNotFound: no flow run has this id.
    """
    return _read(_read_flow_run, as_run_id(flow_run_id))


def read_flow_runs(
    flow_name: str | None = None,
    state: StateType | str | Iterable[StateType | str] | None = None,
    tags: Iterable[str] | None = None,
    limit: int | None = 200,
    *,
    parent_task_run_id: UUID | None = None,
) -> Any:
    """Return flow runs, newest first (by creation time).

    Args:
        flow_name: only runs of the flow with this name (``Flow.name``, e.g.
            ``"my-flow"``).
        state: only runs in this state: a :class:`~runtime.StateType`, a state type's
            name in any case (``"completed"``), a state name (``"Suspended"``,
            ``"Cached"``, ``"TimedOut"``: any case), or several of them.
        tags: only runs that carry every one of these tags.
        limit: at most this many runs (None: all of them).
        parent_task_run_id: only subflow runs called from this task run of their parent.

    Returns:
        A list of :class:`~runtime.FlowRun` (from async code: an awaitable of it).

    Raises:
        ValueError: ``state`` names no state (the message lists the valid ones), or
            ``limit`` is below 1.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be 1 or more (or None for every run), got {limit!r}.")
    wanted = None if state is None else parse_state_filter(state)
    tag_set = frozenset([tags] if isinstance(tags, str) else tags or ())
    return _read(_read_flow_runs, flow_name, wanted, tag_set, limit, parent_task_run_id)


def read_task_run(task_run_id: UUID | str) -> Any:
    """Return the task run with this id, as a :class:`~runtime.TaskRun` (its ``state``,
    ``flow_run_id``, times, ...). (Prefect: ``PrefectClient.read_task_run``.)

    Returns:
        The :class:`~runtime.TaskRun` (from async code: an awaitable of it).

    Raises:
        ObjectNotFound: no task run has this id.
    """
    return _read(_read_task_run, as_run_id(task_run_id, "task run"))


def read_task_runs(flow_run_id: UUID | str | None = None) -> Any:
    """Return the task runs of a flow run, oldest first, as :class:`~runtime.TaskRun`.

    A subflow call shows up as a task run of its parent too (its ``task_key`` is the
    subflow's), as in Prefect. With no flow run id: the task runs that belong to no flow
    run, those queued by ``task.delay()`` (background tasks), oldest first.

    Returns:
        A list of :class:`~runtime.TaskRun` (from async code: an awaitable of it).

    Raises:
        ObjectNotFound: no flow run has this id.
    """
    if flow_run_id is None:
        return _read(_read_background_task_runs)
    return _read(_read_task_runs, as_run_id(flow_run_id))


def read_state_history(run_id: UUID | str) -> Any:
    """Return every state a flow run or task run has been in, oldest first.

    Returns:
        A list of :class:`~runtime.State` (from async code: an awaitable of it).

    Raises:
        ObjectNotFound: no flow run or task run has this id.
    """
    return _read(_read_state_history, as_run_id(run_id, "run"))


@attrs.frozen
class ScheduleView:
    """A served schedule as ``stageflow schedules ls`` shows it.

    Attributes:
        record: the schedule as stored.
        trigger: when it fires, as text (``every 60 s``, ``cron '0 3 * * *' (UTC)``).
        status: ``"serving"`` (a live process serves it), ``"stopped"``, or ``"failed"``;
            a schedule whose serving process died shows ``"stopped"``.
        servers: how many live processes serve it.
        last_slot: its newest claimed slot, or None.
        next_slot: when it fires next, while served; else None.
        last_run: its newest run, or None.
    """

    record: ScheduleRecord
    trigger: str
    status: str
    servers: int
    last_slot: ScheduleSlot | None
    next_slot: datetime | None
    last_run: FlowRun | None


def read_schedules() -> Any:
    """Return the schedules the store knows (served now or before), by name, as
    :class:`ScheduleView`: each one's status, slots and newest run.

    Returns:
        A list of :class:`ScheduleView` (from async code: an awaitable of it).
    """
    return _read(_read_schedules)


def parse_state_filter(state: StateType | str | Iterable[StateType | str]) -> StateFilter:
    """Return the state types and (lower-cased) state names that ``state`` names.

    Raises:
        ValueError: a value is neither a state type nor a state name; the message lists
            the valid ones.
    """
    values = [state] if isinstance(state, (str, StateType)) else list(state)
    names = {name.lower(): name for name in STATE_NAMES}
    types: set[StateType] = set()
    matched: set[str] = set()
    unknown = []
    for value in values:
        text = str(value).strip()
        if text.upper() in StateType.__members__:
            types.add(StateType(text.upper()))
        elif text.lower() in names:
            matched.add(text.lower())
        else:
            unknown.append(text)
    if unknown or not values:
        shown = ", ".join(repr(value) for value in unknown) or "nothing"
        raise ValueError(
            f"Unknown state {shown}: use a state type ({', '.join(t.value for t in StateType)}, "
            f"in any case) or a state name ({', '.join(STATE_NAMES)})."
        )
    return frozenset(types), frozenset(matched)


# -- the reads -------------------------------------------------------------------------


def _read(fn: Any, *args: Any) -> Any:
    # The store is chosen here, on the caller's thread and context, before any thread hop.
    return read_sync_or_async(fn, inherited_backend()[0], *args)


def _read_flow_run(backend: StoreBackend, flow_run_id: UUID) -> FlowRun:
    backend.sync_external()
    return backend.read_flow_run(flow_run_id)


def _read_flow_runs(
    backend: StoreBackend,
    flow_name: str | None,
    state: StateFilter | None,
    tags: frozenset[str],
    limit: int | None,
    parent_task_run_id: UUID | None,
) -> list[FlowRun]:
    backend.sync_external()
    types, names = state if state is not None else (frozenset(), frozenset())
    if not names and not tags:  # the store filters and limits by itself
        return backend.read_flow_runs(
            state_types=types or None,
            flow_name=flow_name,
            parent_task_run_id=parent_task_run_id,
            limit=limit,
        )
    runs = [
        run
        for run in backend.read_flow_runs(
            flow_name=flow_name, parent_task_run_id=parent_task_run_id
        )
        if (state is None or run.state_type in types or (run.state_name or "").lower() in names)
        and tags.issubset(run.tags)
    ]
    return runs if limit is None else runs[:limit]


def _read_task_run(backend: StoreBackend, task_run_id: UUID) -> TaskRun:
    backend.sync_external()
    return backend.read_task_run(task_run_id)


def _read_task_runs(backend: StoreBackend, flow_run_id: UUID) -> list[TaskRun]:
    backend.sync_external()
    backend.read_flow_run(flow_run_id)  # raises ObjectNotFound for an unknown id
    return backend.read_task_runs(flow_run_id=flow_run_id)


def _read_background_task_runs(backend: StoreBackend) -> list[TaskRun]:
    backend.sync_external()
    return [run for run in backend.read_task_runs() if run.flow_run_id is None]


def _read_state_history(backend: StoreBackend, run_id: UUID) -> list[State[Any]]:
    backend.sync_external()
    kinds: tuple[RunKind, ...] = ("flow", "task")
    for kind in kinds:
        try:
            backend.read_run(kind, run_id)
        except ObjectNotFound:
            continue
        return backend.read_state_history(kind, run_id)
    raise ObjectNotFound(f"No flow run or task run has the id {run_id}.")


def _read_schedules(backend: StoreBackend) -> list[ScheduleView]:
    backend.sync_external()
    now = datetime.now(timezone.utc)
    servers: dict[str, int] = {}
    for lease in backend.read_leases():
        if lease.expires > now:
            for name in lease.serving:
                servers[name] = servers.get(name, 0) + 1
    views = []
    for record in backend.read_schedules():
        tag = f"schedule:{record.name}"
        last_slot = next(iter(backend.read_schedule_slots(record.name, limit=1)), None)
        runs = backend.read_flow_runs(flow_name=record.flow_name)
        last_run = next((run for run in runs if tag in run.tags), None)
        # A memory store has no leases: a schedule it shows as serving is served here.
        serving = record.status == SCHEDULE_SERVING and (
            servers.get(record.name, 0) > 0 or not backend.shared_across_processes
        )
        status = (
            "serving"
            if serving
            else "stopped"
            if record.status == SCHEDULE_SERVING
            else record.status
        )
        trigger = Trigger(record.interval, record.cron, record.timezone, record.anchor)
        views.append(
            ScheduleView(
                record=record,
                trigger=trigger.describe(),
                status=status,
                servers=servers.get(record.name, 0),
                last_slot=last_slot,
                next_slot=trigger.next_after(now) if serving else None,
                last_run=last_run,
            )
        )
    return views
