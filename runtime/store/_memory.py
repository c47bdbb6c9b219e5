"""``memory://``: a store that keeps everything in this process's memory.

It holds the snapshots and states it is given (so a state's in-process data stays
readable) and nothing else; writes are checked and applied under one short lock, the
store's transaction. Everything is gone when the process exits.

**Bounded history.** A long-lived process must not grow without bound: once more than
``max_runs`` top-level flow runs (and, separately, task runs outside any flow run) are
stored, the oldest *finished* ones are forgotten, with everything they own (task runs,
subflow runs, states, pause inputs). Runs that have not finished are never forgotten.
``memory://?max_runs=N`` sets the bound (default :data:`DEFAULT_MAX_RUNS`); ``max_runs=0``
keeps everything.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from datetime import datetime
from typing import Any, Iterable
from uuid import UUID

import attrs

from ..core._exceptions import ObjectNotFound, StoreClosed
from ..core._models import FlowRun, RunKind, TaskRun
from ..core._states import State, StateType
from ._backend import CacheRecord, Run, RunInputWrite, StaleRun, StoreBackend
from ._records import ProcessLease, ScheduleRecord, ScheduleSlot

__all__ = ["DEFAULT_MAX_RUNS", "MemoryStore"]

DEFAULT_MAX_RUNS = 10_000
"""How many finished top-level flow runs (and standalone task runs) ``memory://`` keeps."""


class MemoryStore(StoreBackend):
    """An in-process store; see the module docstring.

    Args:
        url: the URL it was opened with, for messages.
        max_runs: how many top-level flow runs, and how many task runs outside any flow
            run, to keep at most; the oldest finished ones go first. 0 keeps everything.

    Raises:
        ValueError: ``max_runs`` is negative.
    """

    def __init__(self, url: str = "memory://", *, max_runs: int = DEFAULT_MAX_RUNS) -> None:
        super().__init__()
        if max_runs < 0:
            raise ValueError(f"max_runs must be >= 0 (0 keeps every run), got {max_runs!r}.")
        self.url = url
        self.max_runs = max_runs
        self._lock = threading.Lock()
        self._flow_runs: dict[UUID, FlowRun] = {}
        self._task_runs: dict[UUID, TaskRun] = {}
        self._history: dict[UUID, list[State[Any]]] = {}
        self._tasks_of: dict[UUID | None, list[UUID]] = {}
        self._flows_of: dict[UUID, list[UUID]] = {}  # parent task run id -> subflow runs
        self._task_keys: dict[tuple[UUID | None, str, str], UUID] = {}
        self._top_level: OrderedDict[UUID, None] = OrderedDict()  # flow runs, oldest first
        self._inputs: dict[tuple[UUID, str], str] = {}
        self._cache: dict[str, CacheRecord] = {}
        self._limits: dict[str, int] = {}
        self._holders: dict[str, list[UUID]] = {}
        self._schedules: dict[str, ScheduleRecord] = {}
        self._slots: dict[str, dict[datetime, ScheduleSlot]] = {}
        self._leases: dict[str, ProcessLease] = {}

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed(f"The store {self.url!r} is closed; open a new Runtime to use it.")

    # -- runs --------------------------------------------------------------------------

    def create_run(self, kind: RunKind, run: Run) -> None:
        self._check_open()
        with self._lock:
            if run.id in self._flow_runs or run.id in self._task_runs:
                raise ValueError(f"A run with id {run.id} exists already in {self.url}.")
            self._history[run.id] = [] if run.state is None else [run.state]
            if kind == "flow":
                assert isinstance(run, FlowRun)
                self._flow_runs[run.id] = run
                if run.parent_task_run_id is None:
                    self._top_level[run.id] = None
                    self._forget_old(self._top_level, self._forget_flow_run)
                else:
                    self._flows_of.setdefault(run.parent_task_run_id, []).append(run.id)
            else:
                assert isinstance(run, TaskRun)
                self._task_runs[run.id] = run
                self._tasks_of.setdefault(run.flow_run_id, []).append(run.id)
                self._task_keys[(run.flow_run_id, run.task_key, run.dynamic_key)] = run.id
                if run.flow_run_id is None:
                    standalone = self._tasks_of[None]
                    if self.max_runs and len(standalone) > self.max_runs:
                        self._forget_standalone_tasks(standalone)

    def write_run(
        self,
        kind: RunKind,
        run: Run,
        *,
        state: State[Any] | None = None,
        run_input: RunInputWrite | None = None,
        fields_changed: bool = True,
    ) -> None:
        self._check_open()
        runs: dict[UUID, Any] = self._flow_runs if kind == "flow" else self._task_runs
        with self._lock:
            stored = runs.get(run.id)
            if stored is None:
                raise ObjectNotFound(f"{kind.title()} run {run.id} not found in {self.url}.")
            if stored.version != run.version - 1:
                raise StaleRun(stored)
            runs[run.id] = run
            if state is not None:
                self._history[run.id].append(state)
            if run_input is not None:
                self._inputs[(run.id, run_input.key)] = run_input.value

    def read_flow_run(self, run_id: UUID) -> FlowRun:
        self._check_open()
        try:
            return self._flow_runs[run_id]
        except KeyError:
            raise ObjectNotFound(f"Flow run {run_id} not found in {self.url}.") from None

    def read_task_run(self, run_id: UUID) -> TaskRun:
        self._check_open()
        try:
            return self._task_runs[run_id]
        except KeyError:
            raise ObjectNotFound(f"Task run {run_id} not found in {self.url}.") from None

    def find_task_run(self, flow_run_id: UUID, task_key: str, dynamic_key: str) -> TaskRun | None:
        self._check_open()
        with self._lock:
            run_id = self._task_keys.get((flow_run_id, task_key, dynamic_key))
            return None if run_id is None else self._task_runs.get(run_id)

    def read_flow_runs(
        self,
        *,
        state_types: Iterable[StateType] | None = None,
        flow_name: str | None = None,
        parent_task_run_id: UUID | None = None,
        limit: int | None = None,
    ) -> list[FlowRun]:
        self._check_open()
        types = None if state_types is None else frozenset(state_types)
        found: list[FlowRun] = []
        if limit is not None and limit <= 0:
            return found
        with self._lock:
            candidates = list(self._flow_runs.values())
        for run in reversed(candidates):
            if types is not None and run.state_type not in types:
                continue
            if flow_name is not None and run.flow_name != flow_name:
                continue
            if parent_task_run_id is not None and run.parent_task_run_id != parent_task_run_id:
                continue
            found.append(run)
            if limit is not None and len(found) >= limit:
                break
        return found

    def read_task_runs(self, *, flow_run_id: UUID | None = None) -> list[TaskRun]:
        self._check_open()
        with self._lock:
            if flow_run_id is None:
                return list(self._task_runs.values())
            return [self._task_runs[i] for i in self._tasks_of.get(flow_run_id, ())]

    def read_state_history(self, kind: RunKind, run_id: UUID) -> list[State[Any]]:
        self.read_run(kind, run_id)  # ObjectNotFound for a run of the other kind
        with self._lock:
            return list(self._history.get(run_id, ()))

    # -- forgetting old runs (self._lock held) ----------------------------------------

    def _forget_old(self, order: OrderedDict[UUID, None], forget: Any) -> None:
        excess = len(order) - self.max_runs if self.max_runs else 0
        for run_id in list(order) if excess > 0 else ():
            if excess <= 0:
                break
            if self._finished(self._flow_runs.get(run_id)):
                forget(run_id)
                del order[run_id]
                excess -= 1

    @staticmethod
    def _finished(run: Run | None) -> bool:
        return run is None or (run.state is not None and run.state.is_final())

    def _forget_flow_run(self, flow_run_id: UUID) -> None:
        self._flow_runs.pop(flow_run_id, None)
        self._history.pop(flow_run_id, None)
        for key in [key for key in self._inputs if key[0] == flow_run_id]:
            del self._inputs[key]
        for task_run_id in self._tasks_of.pop(flow_run_id, ()):
            self._forget_task_run(task_run_id)

    def _forget_task_run(self, task_run_id: UUID) -> None:
        task_run = self._task_runs.pop(task_run_id, None)
        self._history.pop(task_run_id, None)
        if task_run is not None:
            key = (task_run.flow_run_id, task_run.task_key, task_run.dynamic_key)
            if self._task_keys.get(key) == task_run_id:
                del self._task_keys[key]
        for subflow_id in self._flows_of.pop(task_run_id, ()):
            self._forget_flow_run(subflow_id)

    def _forget_standalone_tasks(self, standalone: list[UUID]) -> None:
        excess = len(standalone) - self.max_runs
        kept = []
        for run_id in standalone:
            if excess > 0 and self._finished(self._task_runs.get(run_id)):
                self._forget_task_run(run_id)
                excess -= 1
            else:
                kept.append(run_id)
        standalone[:] = kept

    # -- pause inputs -----------------------------------------------------------------

    def write_run_input(self, flow_run_id: UUID, key: str, value: str) -> None:
        self._check_open()
        with self._lock:
            self._inputs[(flow_run_id, key)] = value

    def read_run_input(self, flow_run_id: UUID, key: str) -> str | None:
        self._check_open()
        return self._inputs.get((flow_run_id, key))

    # -- cache records ----------------------------------------------------------------

    def write_cache_record(self, record: CacheRecord) -> None:
        self._check_open()
        self._cache[record.key] = record

    def read_cache_record(self, key: str) -> CacheRecord | None:
        self._check_open()
        return self._cache.get(key)

    def delete_cache_record(self, key: str) -> None:
        self._check_open()
        self._cache.pop(key, None)

    # -- concurrency limits -----------------------------------------------------------

    def set_concurrency_limit(self, tag: str, limit: int | None) -> None:
        self._check_open()
        with self._lock:
            if limit is None:
                self._limits.pop(tag, None)
            else:
                self._limits[tag] = limit
                self._holders.setdefault(tag, [])

    def read_concurrency_limits(self) -> dict[str, tuple[int, list[UUID]]]:
        self._check_open()
        with self._lock:
            return {tag: (n, list(self._holders.get(tag, []))) for tag, n in self._limits.items()}

    def acquire_slots(self, tags: Iterable[str], holder: UUID) -> bool:
        self._check_open()
        with self._lock:
            limited = [tag for tag in tags if tag in self._limits]
            for tag in limited:
                holders = self._holders[tag]
                if holder not in holders and len(holders) >= self._limits[tag]:
                    return False
            for tag in limited:
                if holder not in self._holders[tag]:
                    self._holders[tag].append(holder)
            return True

    def release_slots(self, holder: UUID) -> None:
        with self._lock:
            for holders in self._holders.values():
                if holder in holders:
                    holders.remove(holder)

    # -- schedules ----------------------------------------------------------------------

    def register_schedule(self, record: ScheduleRecord) -> ScheduleRecord:
        self._check_open()
        with self._lock:
            stored = self._schedules.get(record.name)
            if stored is not None and stored.same_trigger(record):
                record = attrs.evolve(record, anchor=stored.anchor, created=stored.created)
            self._schedules[record.name] = record
            return record

    def read_schedules(self) -> list[ScheduleRecord]:
        self._check_open()
        with self._lock:
            return [self._schedules[name] for name in sorted(self._schedules)]

    def read_schedule(self, name: str) -> ScheduleRecord | None:
        self._check_open()
        return self._schedules.get(name)

    def set_schedule_status(
        self, name: str, status: str, message: str | None, updated: datetime
    ) -> None:
        self._check_open()
        with self._lock:
            stored = self._schedules.get(name)
            if stored is not None:
                self._schedules[name] = attrs.evolve(
                    stored, status=status, message=message, updated=updated
                )

    def claim_schedule_slot(self, slot: ScheduleSlot) -> bool:
        self._check_open()
        with self._lock:
            claimed = self._slots.setdefault(slot.schedule, {})
            if slot.slot in claimed:
                return False
            claimed[slot.slot] = slot
            return True

    def read_schedule_slots(self, schedule: str, limit: int | None = None) -> list[ScheduleSlot]:
        self._check_open()
        with self._lock:
            slots = sorted(self._slots.get(schedule, {}).values(), key=_slot_time, reverse=True)
        return slots if limit is None else slots[: max(0, limit)]

    # -- process leases -----------------------------------------------------------------

    def renew_lease(self, lease: ProcessLease) -> None:
        self._check_open()
        with self._lock:
            self._leases[lease.owner] = lease

    def read_leases(self) -> list[ProcessLease]:
        self._check_open()
        with self._lock:
            return sorted(self._leases.values(), key=lambda lease: lease.started)

    def read_lease(self, owner: str) -> ProcessLease | None:
        self._check_open()
        return self._leases.get(owner)

    def release_lease(self, owner: str, *, expires: datetime | None = None) -> bool:
        with self._lock:
            stored = self._leases.get(owner)
            if stored is None or (expires is not None and stored.expires != expires):
                return False
            del self._leases[owner]
            return True


def _slot_time(slot: ScheduleSlot) -> datetime:
    return slot.slot
