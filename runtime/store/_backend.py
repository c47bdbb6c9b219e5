"""The store contract: where runs, state history, pause inputs, cache records,
concurrency slots, schedules and process leases are kept.

A store takes and returns *rows*: immutable run snapshots (:class:`~runtime.FlowRun`,
:class:`~runtime.TaskRun`) and states. It never hands out an object that someone else
changes, and it keeps no object the engine changes.

**Writes are checked.** Every run carries ``version``, the number of times the store has
written it. :meth:`StoreBackend.write_run` is a compare-and-set: it writes the new
snapshot only if the stored run's version is still the one the writer read (the version
its decision was made on), and raises :class:`StaleRun` otherwise, carrying the run as it
is now; the orchestrator then decides again on that. So a decision holds across threads,
event loops and processes: of two resumers, one wins; a cancel and a completion cannot
both land. A backend makes the check and the write one transaction (a lock-protected
step in memory, ``BEGIN IMMEDIATE`` in SQLite, ``SELECT ... FOR UPDATE`` or the same
version check in a server database).

**Who writes a run.** Any process may write a flow run (a cancel, a resume, a reaper).
A task run has one writing process at a time, the one running it (its flow run's
process, or the worker that claimed it): other processes change a task run only through
its flow run (a cancel) or once its process is gone. A backend may rely on this to batch
task-run writes (the SQLite store checks their versions in memory and writes them in
groups).

**Pipelines.** Schedules, the slots they fired and process leases
(:mod:`runtime.store._records`) are rows like runs. Each method says what must be atomic:
a slot is claimed by exactly one of any number of processes (a unique key), a schedule's
registration keeps its anchor when its trigger is unchanged, a reaper removes a lease only
if it is still the expired one it read. Times are timezone-aware UTC datetimes; a backend
keeps them to the microsecond.

**Notifications.** A backend is also the in-process hub for state changes: the
orchestrator calls :meth:`StoreBackend.notify` after each write it commits, and a backend
shared with other processes reports their changes from :meth:`StoreBackend.sync_external`.
Subscribers get the run's snapshot and its new state.

Backends: ``memory://`` (:mod:`runtime.store._memory`) and ``sqlite:///path``
(:mod:`runtime.store._sqlite`); a server database implements the same methods.
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
from ._records import ProcessLease, ScheduleRecord, ScheduleSlot

__all__ = ["CacheRecord", "RunInputWrite", "StaleRun", "StateListener", "StoreBackend"]

Run = FlowRun | TaskRun

StateListener = Callable[[Any, State[Any]], None]
"""Called with (run snapshot, new state) after a state change; must be quick and
thread-safe. Listeners of :data:`~runtime.core._rules.SLOTS_RELEASED` get (None, None)."""


class StaleRun(Exception):
    """Raised by :meth:`StoreBackend.write_run` when the run changed since it was read.

    Attributes:
        current: the run as it is in the store now.
    """

    def __init__(self, current: Run) -> None:
        super().__init__(
            f"{type(current).__name__} {current.id} changed in the store since it was read "
            f"(it is at version {current.version}, in state {current.state})."
        )
        self.current = current


@attrs.frozen
class RunInputWrite:
    """A pause input written in the same transaction as a run's state (a resume's input
    lands only if its resume does)."""

    key: str
    value: str


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
    """Where runs and their history live; see the module docstring. Every method is
    thread-safe."""

    url: str
    shared_across_processes: bool = False
    """Whether other processes may change this store (so running flows poll it for cancels)."""

    def __init__(self) -> None:
        self._listeners: dict[Any, list[StateListener]] = defaultdict(list)
        self._listeners_lock = threading.Lock()
        self._closed = False

    # -- runs --------------------------------------------------------------------------

    @abc.abstractmethod
    def create_run(self, kind: RunKind, run: Run) -> None:
        """Record a new run, with its first state (``run.state``) as its history.

        ``run.version`` must be 1: the store has written it once.

        Raises:
            ValueError: a run with this id exists already.
            StoreClosed: the store is closed.
        """

    @abc.abstractmethod
    def write_run(
        self,
        kind: RunKind,
        run: Run,
        *,
        state: State[Any] | None = None,
        run_input: RunInputWrite | None = None,
        fields_changed: bool = True,
    ) -> None:
        """Replace the stored run with ``run`` if its version is still ``run.version - 1``.

        Args:
            kind: "flow" or "task".
            run: the run's new snapshot; its version is one more than the one read.
            state: a new state to append to the run's history (``run.state`` then).
            run_input: a pause input of the flow run to write with it.
            fields_changed: whether fields other than the state and its timings changed
                (a name, a policy); False lets a backend write less.

        Raises:
            StaleRun: the stored version is not ``run.version - 1``; nothing was written.
            ObjectNotFound: no such run.
            StoreClosed: the store is closed.
        """

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

    def read_run(self, kind: RunKind, run_id: UUID) -> Run:
        """Return the flow run or task run with this id.

        Raises:
            ObjectNotFound: no such run.
        """
        return self.read_flow_run(run_id) if kind == "flow" else self.read_task_run(run_id)

    @abc.abstractmethod
    def find_task_run(self, flow_run_id: UUID, task_key: str, dynamic_key: str) -> TaskRun | None:
        """Return the newest task run of ``flow_run_id`` with this task key and dynamic key."""

    @abc.abstractmethod
    def read_flow_runs(
        self,
        *,
        state_types: Iterable[StateType] | None = None,
        flow_name: str | None = None,
        parent_task_run_id: UUID | None = None,
        limit: int | None = None,
    ) -> list[FlowRun]:
        """Return flow runs, newest first, filtered by state type, flow name and parent;
        at most ``limit`` of them (``limit=0``: none)."""

    @abc.abstractmethod
    def read_task_runs(self, *, flow_run_id: UUID | None = None) -> list[TaskRun]:
        """Return task runs (of one flow run, if given), oldest first."""

    @abc.abstractmethod
    def read_state_history(self, kind: RunKind, run_id: UUID) -> list[State[Any]]:
        """Return every state the run has been in, oldest first.

        Raises:
            ObjectNotFound: no such run.
        """

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
        """Take one slot of every limited tag for ``holder``, all or none; return success.
        Taking slots ``holder`` already holds succeeds and takes nothing more."""

    @abc.abstractmethod
    def release_slots(self, holder: UUID) -> None:
        """Give back every slot ``holder`` took (never fails, even once closed)."""

    # -- schedules ----------------------------------------------------------------------

    @abc.abstractmethod
    def register_schedule(self, record: ScheduleRecord) -> ScheduleRecord:
        """Store ``record`` under its name and return the schedule as it is stored now.

        One transaction: if a schedule of that name exists with the same trigger
        (:meth:`ScheduleRecord.same_trigger`), it keeps its ``anchor`` and ``created``
        (so processes that start serving it at different times agree on its slots) and
        takes every other field from ``record``; otherwise ``record`` is stored as given.
        Of two processes registering one schedule at once, both get the anchor of the
        first (read and written under one lock, or ``INSERT ... ON CONFLICT`` in a
        server database).

        Raises:
            StoreClosed: the store is closed.
        """

    @abc.abstractmethod
    def read_schedules(self) -> list[ScheduleRecord]:
        """Return every schedule, by name.

        Raises:
            StoreClosed: the store is closed.
        """

    @abc.abstractmethod
    def read_schedule(self, name: str) -> ScheduleRecord | None:
        """Return the schedule called ``name``, if any.

        Raises:
            StoreClosed: the store is closed.
        """

    @abc.abstractmethod
    def set_schedule_status(
        self, name: str, status: str, message: str | None, updated: datetime
    ) -> None:
        """Set a schedule's ``status``, ``message`` and ``updated`` (a plain update, last
        writer wins; nothing happens if there is no such schedule).

        Raises:
            StoreClosed: the store is closed.
        """

    @abc.abstractmethod
    def claim_schedule_slot(self, slot: ScheduleSlot) -> bool:
        """Record ``slot`` unless its (schedule, slot time) was claimed before; return
        whether this call recorded it.

        An insert into a unique key, in one transaction: of any number of claimers of one
        slot, in any processes, exactly one gets True, and a slot claimed once is never
        claimed again (a restarted ``serve`` does not fire it twice).

        Raises:
            StoreClosed: the store is closed.
        """

    @abc.abstractmethod
    def read_schedule_slots(self, schedule: str, limit: int | None = None) -> list[ScheduleSlot]:
        """Return the claimed slots of ``schedule``, newest slot first; at most ``limit``.

        Raises:
            StoreClosed: the store is closed.
        """

    # -- process leases -----------------------------------------------------------------

    @abc.abstractmethod
    def renew_lease(self, lease: ProcessLease) -> None:
        """Store ``lease``, replacing the lease of ``lease.owner`` if there is one (an
        upsert in one statement; it never fails because the lease exists or is gone).

        Raises:
            StoreClosed: the store is closed.
        """

    @abc.abstractmethod
    def read_leases(self) -> list[ProcessLease]:
        """Return every process lease, expired or not, oldest ``started`` first.

        Raises:
            StoreClosed: the store is closed.
        """

    @abc.abstractmethod
    def read_lease(self, owner: str) -> ProcessLease | None:
        """Return the lease of ``owner``, if any.

        Raises:
            StoreClosed: the store is closed.
        """

    @abc.abstractmethod
    def release_lease(self, owner: str, *, expires: datetime | None = None) -> bool:
        """Remove the lease of ``owner``; return whether one was removed.

        With ``expires``, only if the stored lease still expires at that time, checked
        and deleted in one transaction (like :meth:`write_run`): a reaper removes the
        expired lease it read, never one its process renewed meanwhile. Never fails,
        even once the store is closed (a process releases its lease as it exits).
        """

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

    def has_listeners(self, run_id: Any) -> bool:
        """Whether anyone listens to ``run_id``'s changes (or to every run's)."""
        listeners = self._listeners
        return run_id in listeners or None in listeners

    def notify(self, run: Run, state: State[Any]) -> None:
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
        if SLOTS_RELEASED not in listeners:
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
        """Notify subscribers of the state changes other processes made since the last
        call (a no-op for process-local backends)."""

    def close(self) -> None:
        """Release the backend's resources; further use raises ``StoreClosed``."""
        self._closed = True

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed
