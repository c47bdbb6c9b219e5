"""``memory://``: a store that keeps everything in this process's memory.

The run records it holds are the very objects the engine works on, so recording a state
costs nothing beyond indexing. Everything is gone when the process exits.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Iterable
from uuid import UUID

from ..core._exceptions import ObjectNotFound, StoreClosed
from ..core._models import FlowRun, RunKind, TaskRun
from ..core._states import State, StateType
from ._backend import CacheRecord, StoreBackend

__all__ = ["MemoryStore"]


class MemoryStore(StoreBackend):
    """An in-process store; see the module docstring."""

    def __init__(self, url: str = "memory://") -> None:
        super().__init__()
        self.url = url
        self._flow_runs: OrderedDict[UUID, FlowRun] = OrderedDict()
        self._task_runs: dict[UUID, TaskRun] = {}
        self._task_keys: dict[tuple[UUID | None, str, str], TaskRun] = {}
        self._inputs: dict[tuple[UUID, str], str] = {}
        self._cache: dict[str, CacheRecord] = {}
        self._limits: dict[str, int] = {}
        self._holders: dict[str, list[UUID]] = {}

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed(f"The store {self.url!r} is closed; open a new Runtime to use it.")

    # -- runs --------------------------------------------------------------------------

    def add_flow_run(self, run: FlowRun) -> None:
        self._check_open()
        self._flow_runs[run.id] = run

    def add_task_run(self, run: TaskRun) -> None:
        self._check_open()
        self._task_runs[run.id] = run
        self._task_keys[(run.flow_run_id, run.task_key, run.dynamic_key)] = run

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
        return self._task_keys.get((flow_run_id, task_key, dynamic_key))

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
        found = []
        for run in reversed(list(self._flow_runs.values())):
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
        runs = list(self._task_runs.values())
        if flow_run_id is not None:
            runs = [run for run in runs if run.flow_run_id == flow_run_id]
        return runs

    def record_state(self, kind: RunKind, run: FlowRun | TaskRun, state: State[Any]) -> None:
        self._check_open()

    def update_run(self, kind: RunKind, run: FlowRun | TaskRun) -> None:
        self._check_open()

    def read_state_history(self, kind: RunKind, run_id: UUID) -> list[State[Any]]:
        return list(self.read_run(kind, run_id).state_history)

    # -- pause inputs -----------------------------------------------------------------

    def write_run_input(self, flow_run_id: UUID, key: str, value: str) -> None:
        self._check_open()
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
        with self.lock:
            if limit is None:
                self._limits.pop(tag, None)
            else:
                self._limits[tag] = limit
                self._holders.setdefault(tag, [])

    def read_concurrency_limits(self) -> dict[str, tuple[int, list[UUID]]]:
        self._check_open()
        with self.lock:
            return {tag: (n, list(self._holders.get(tag, []))) for tag, n in self._limits.items()}

    def acquire_slots(self, tags: Iterable[str], holder: UUID) -> bool:
        self._check_open()
        with self.lock:
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
        with self.lock:
            for holders in self._holders.values():
                if holder in holders:
                    holders.remove(holder)
