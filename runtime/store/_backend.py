"""The store interface: where runs, state history, pause inputs, cache records and
concurrency slots are kept.

A :class:`StoreBackend` is thread-safe and may be shared by several runtimes in one process
(several event loops), as several processes share one SQLite file. It is also the
in-process hub for state-change notifications: whoever changes a run's state (its own
actor, a resume from another thread, a cancel from another loop) notifies everyone who
subscribed to that run.

Backends: ``memory://`` (:mod:`runtime.store._memory`) and ``sqlite:///path``.
"""

from __future__ import annotations

import abc
import threading
from collections import defaultdict
from datetime import datetime
from typing import Any, Callable, Iterable
from uuid import UUID

import attrs

from ..core._models import FlowRun, RunKind, TaskRun
from ..core._rules import SLOTS_RELEASED
from ..core._states import State, StateType

__all__ = ["CacheRecord", "StoreBackend", "StateListener"]

StateListener = Callable[[Any, State[Any]], None]
"""Called with (run, new state) after a state change; must be quick and thread-safe."""


@attrs.frozen
class CacheRecord:
    """A completed result stored under a cache key.

    Attributes:
        key: the cache key.
        state: the Completed state (its data is a persisted result reference).
        expiration: when the record stops being valid, or None for never.
    """

    key: str
    state: State[Any]
    expiration: datetime | None = None


class StoreBackend(abc.ABC):
    """Where runs and their history live. Every method is thread-safe.

    ``lock`` serialises state changes across every orchestrator sharing this backend: an
    orchestrator holds it while it reads a run's current state, applies the rules and
    records the outcome.
    """

    url: str
    shared_across_processes: bool = False
    """Whether other processes may change this store (so running flows poll it for cancels)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._listeners: dict[Any, list[StateListener]] = defaultdict(list)
        self._listeners_lock = threading.Lock()
        self._closed = False

    # -- runs --------------------------------------------------------------------------

    @abc.abstractmethod
    def add_flow_run(self, run: FlowRun) -> None:
        """Record a new flow run (with its current state, if any)."""

    @abc.abstractmethod
    def add_task_run(self, run: TaskRun) -> None:
        """Record a new task run (with its current state, if any)."""

    @abc.abstractmethod
    def read_flow_run(self, run_id: UUID) -> FlowRun:
        """Return the flow run with this id.

        Raises:
            ObjectNotFound: no flow run has this id.
        """

    @abc.abstractmethod
    def read_task_run(self, run_id: UUID) -> TaskRun:
        """Return the task run with this id.

        Raises:
            ObjectNotFound: no task run has this id.
        """

    def read_run(self, kind: RunKind, run_id: UUID) -> FlowRun | TaskRun:
        """Return the flow run or task run with this id."""
        return self.read_flow_run(run_id) if kind == "flow" else self.read_task_run(run_id)

    @abc.abstractmethod
    def find_task_run(self, flow_run_id: UUID, task_key: str, dynamic_key: str) -> TaskRun | None:
        """Return the task run of ``flow_run_id`` with this task key and dynamic key, if any."""

    @abc.abstractmethod
    def read_flow_runs(
        self,
        *,
        state_types: Iterable[StateType] | None = None,
        flow_name: str | None = None,
        parent_task_run_id: UUID | None = None,
        limit: int | None = None,
    ) -> list[FlowRun]:
        """Return flow runs, newest first, filtered by state type, flow name and parent."""

    @abc.abstractmethod
    def read_task_runs(self, *, flow_run_id: UUID | None = None) -> list[TaskRun]:
        """Return task runs (of one flow run, if given), oldest first."""

    @abc.abstractmethod
    def record_state(self, kind: RunKind, run: FlowRun | TaskRun, state: State[Any]) -> None:
        """Persist ``state`` as the new current state of ``run`` (already applied to it)."""

    @abc.abstractmethod
    def update_run(self, kind: RunKind, run: FlowRun | TaskRun) -> None:
        """Persist changed fields of ``run`` (its name, its policy, ...)."""

    @abc.abstractmethod
    def read_state_history(self, kind: RunKind, run_id: UUID) -> list[State[Any]]:
        """Return every state the run has been in, oldest first."""

    # -- pause inputs -----------------------------------------------------------------

    @abc.abstractmethod
    def write_run_input(self, flow_run_id: UUID, key: str, value: str) -> None:
        """Store a JSON-encoded run input under ``key`` for the flow run."""

    @abc.abstractmethod
    def read_run_input(self, flow_run_id: UUID, key: str) -> str | None:
        """Return the JSON-encoded run input stored under ``key``, if any."""

    # -- cache records ----------------------------------------------------------------

    @abc.abstractmethod
    def write_cache_record(self, record: CacheRecord) -> None:
        """Store (or replace) the cache record for ``record.key``."""

    @abc.abstractmethod
    def read_cache_record(self, key: str) -> CacheRecord | None:
        """Return the cache record for ``key``, if any (expired or not)."""

    @abc.abstractmethod
    def delete_cache_record(self, key: str) -> None:
        """Remove the cache record for ``key``, if any."""

    # -- concurrency limits -----------------------------------------------------------

    @abc.abstractmethod
    def set_concurrency_limit(self, tag: str, limit: int | None) -> None:
        """Allow at most ``limit`` task runs tagged ``tag`` to run at once (None removes it)."""

    @abc.abstractmethod
    def read_concurrency_limits(self) -> dict[str, tuple[int, list[UUID]]]:
        """Return ``{tag: (limit, holders)}`` for every limit."""

    @abc.abstractmethod
    def acquire_slots(self, tags: Iterable[str], holder: UUID) -> bool:
        """Take one slot of every limited tag for ``holder``, all or none; return success."""

    @abc.abstractmethod
    def release_slots(self, holder: UUID) -> None:
        """Give back every slot ``holder`` took."""

    # -- notifications ----------------------------------------------------------------

    def subscribe(self, run_id: Any, listener: StateListener) -> Callable[[], None]:
        """Call ``listener(run, state)`` after each state change of ``run_id``.

        ``run_id=None`` subscribes to every run. Returns a function that unsubscribes.
        """
        with self._listeners_lock:
            self._listeners[run_id].append(listener)

        def unsubscribe() -> None:
            with self._listeners_lock:
                listeners = self._listeners.get(run_id)
                if listeners and listener in listeners:
                    listeners.remove(listener)
                    if not listeners:
                        del self._listeners[run_id]

        return unsubscribe

    def notify(self, run: FlowRun | TaskRun, state: State[Any]) -> None:
        """Tell the subscribers of ``run`` (and of every run) about its new state."""
        listeners = self._listeners
        run_id = run.id
        # Most runs have no subscriber: check without the lock first (a membership test
        # is atomic, and a listener added meanwhile could as well have come after us).
        if run_id not in listeners and None not in listeners:
            return
        with self._listeners_lock:
            targets = [*listeners.get(run_id, ()), *listeners.get(None, ())]
        for listener in targets:
            listener(run, state)

    def notify_slots_released(self) -> None:
        """Wake the task runs of this process waiting for a concurrency slot (they
        subscribed to ``runtime.core._rules.SLOTS_RELEASED``)."""
        listeners = self._listeners
        if not listeners:
            return
        with self._listeners_lock:
            targets = list(listeners.get(SLOTS_RELEASED, ()))
        for listener in targets:
            listener(None, None)

    # -- durability -------------------------------------------------------------------

    def has_pending_writes(self) -> bool:
        """Whether writes are waiting for :meth:`commit`. Backends that write at once: never."""
        return False

    def commit(self) -> None:
        """Make every write so far durable. Backends that write at once do nothing."""

    def sync_external(self) -> None:
        """Pick up changes other processes made (a no-op for process-local backends)."""

    def close(self) -> None:
        """Release the backend's resources; further use raises ``StoreClosed``."""
        self._closed = True

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed
