"""The orchestrator actor: the only code that creates a run record or changes its state.

Run actors (and the resume, cancel and reaping commands) send it messages:
:class:`CreateRun`, :class:`ProposeState` (a run id and a frozen state), :class:`UpdateRun`
and :class:`ReadRun`. For a proposal it takes the run's current snapshot, looks up what
the rules need (the parent run's state, cache records, concurrency slots), asks
:func:`runtime.core._rules.decide`, makes the run's next snapshot and writes it to the
store *checked against the version it decided on*. If another writer got there first
(another orchestrator of this process, another process), the store says so
(:class:`~runtime.store._backend.StaleRun`) with the run as it is now, and the
orchestrator decides again on that. The reply, a :class:`Transition`, carries the decision
and the run's new immutable snapshot.

The orchestrator remembers the snapshots of the runs it is driving (created here, not yet
finished), so deciding on them costs no store read; that memory is only a cache, since
every write is checked.

Its ``receive`` is synchronous, so a proposal from a task on the orchestrator's own loop is
dispatched directly, without a scheduler round trip.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Literal
from uuid import UUID

import attrs

from actors import Actor, Clock

from ..core import _states as S
from ..core._exceptions import ObjectNotFound, StoreError
from ..core._models import FlowRun, RunKind, TaskRun, evolve
from ..core._rules import Abort, Accept, Reject, RuleContext, Wait, decide
from ..core._states import State, StateType, replace, replace_details
from ..store._backend import Run, RunInputWrite, StaleRun, StoreBackend
from ._owners import owner_gone, process_owner

__all__ = [
    "CreateRun",
    "EndTaskRunsOf",
    "Orchestrator",
    "ProposeState",
    "ReadRun",
    "Transition",
    "UpdateRun",
]

Status = Literal["ACCEPT", "REJECT", "WAIT", "ABORT"]

MAX_CONFLICTS = 20
"""How many times in a row a write may find its run changed before the orchestrator gives up."""

_MICROSECOND = timedelta(microseconds=1)
_PENDING = StateType.PENDING
_RUNNING = StateType.RUNNING
_COMPLETED = StateType.COMPLETED


@attrs.frozen
class CreateRun:
    """Record ``run`` (a snapshot the store has not seen, version 0) in its first ``state``;
    with ``then``, propose that state for it at once (a task run created Pending and
    started: one message, not two) and answer that proposal."""

    kind: RunKind
    run: Run
    state: State[Any]
    then: State[Any] | None = None


@attrs.frozen
class ProposeState:
    """Propose ``state`` for the run ``run_id``.

    Attributes:
        kind: "flow" or "task".
        run_id: the run.
        state: the proposed state.
        force: apply it without the rules (re-running a finished run; never for a crash).
        required_types: the proposal holds only if the run is in one of these state types
            (checked with the write, so of two resumers one wins).
        run_input: a pause input to write with the state (it lands only if the state does).
    """

    kind: RunKind
    run_id: UUID
    state: State[Any]
    force: bool = False
    required_types: frozenset[StateType] | None = None
    run_input: RunInputWrite | None = None


@attrs.frozen
class UpdateRun:
    """Change fields of a run other than its state (its name, owner, policy...)."""

    kind: RunKind
    run_id: UUID
    changes: dict[str, Any]


@attrs.frozen
class EndTaskRunsOf:
    """End in ``state`` the task runs of the flow run ``flow_run_id`` that this
    orchestrator still drives and that are not final: the flow run has ended and no engine
    of this process drives them any more (a signal stopped theirs outside its crash
    handling). The answer is how many were ended."""

    flow_run_id: UUID
    state: State[Any]


@attrs.frozen
class ReadRun:
    """Answer the run's current snapshot (the one this orchestrator decides on)."""

    kind: RunKind
    run_id: UUID


@attrs.frozen
class Transition:
    """The orchestrator's answer to a proposal.

    Attributes:
        status: ACCEPT, REJECT, WAIT or ABORT.
        state: the run's state after the decision.
        run: the run's snapshot after the decision.
        reason: why, for REJECT, WAIT and ABORT.
        delay: for WAIT, seconds before proposing again.
        watch: for WAIT, a run id whose next state change is worth waking up for.
    """

    status: Status
    state: State[Any]
    run: Any
    reason: str = ""
    delay: float = 0.0
    watch: Any = None


def _may_write_task_runs(backend: StoreBackend, flow_run: FlowRun) -> bool:
    """Whether this process may write ``flow_run``'s task runs: it runs the flow run, or
    the process that did is gone (or the run has no recorded owner). Gone: its pid on this
    host no longer runs, or its lease, still valid when the run was recorded, has expired
    (:func:`~runtime.orchestration._owners.owner_gone`: one lease read, on this rare path
    only), as the liveness reaper judges it before it writes such task runs Crashed."""
    owner = flow_run.owner
    return (
        owner is None
        or owner == process_owner()
        or owner_gone(backend, owner, flow_run.created)
    )


def _as_datetime(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, timezone.utc)


class Orchestrator(Actor):
    """Applies orchestration rules to proposed states; see the module docstring."""

    mailbox_size = 10_000
    dispatch_from_threads = True  # receive touches the store and the clock, nothing loop-bound

    def __init__(
        self,
        backend: StoreBackend,
        clock: Clock,
        on_first_flow_run: Callable[[], None] | None = None,
    ) -> None:
        self._backend = backend
        self._clock = clock
        self._random = random.Random()
        self._live: dict[UUID, Run] = {}
        # Called once, when this process first runs a flow run here (creates one, or takes
        # one over): the runtime starts keeping the process's lease in the store then.
        self._on_first_flow_run = on_first_flow_run

    def receive(self, message: Any) -> Any:
        """Handle a :class:`CreateRun`, :class:`ProposeState`, :class:`UpdateRun`,
        :class:`EndTaskRunsOf` or :class:`ReadRun`.

        Raises:
            ObjectNotFound: the run does not exist.
            StoreError: the run kept changing under the orchestrator's writes.
            TypeError: any other message.
        """
        kind = type(message)
        if kind is ProposeState:
            return self.propose(message)
        if kind is CreateRun:
            existing = self._live.get(message.run.id)
            if existing is not None:
                # Created already: its engine did not take the answer (a signal or an
                # interruption raised into its thread just after the ask) and asks again.
                # Recording it twice would fail the store's batch of writes.
                transition = Transition("ACCEPT", existing.state, existing)  # type: ignore[arg-type]
            else:
                transition = self.create(message.kind, message.run, message.state)
            if message.then is None:
                return transition
            return self.propose(ProposeState(message.kind, message.run.id, message.then))
        if kind is UpdateRun:
            return self.update(message.kind, message.run_id, message.changes)
        if kind is EndTaskRunsOf:
            return self.end_task_runs_of(message.flow_run_id, message.state)
        if kind is ReadRun:
            return self._current(message.kind, message.run_id)
        raise TypeError(f"The orchestrator does not understand {message!r}.")

    # -- the work ---------------------------------------------------------------------

    def create(self, kind: RunKind, run: Run, state: State[Any]) -> Transition:
        """Record a new run in its first state."""
        if kind == "flow" and self._on_first_flow_run is not None:
            self._first_flow_run()
        new, stamped, _ = self._apply(kind, run, state)
        self._backend.create_run(kind, new)
        self._remember(new)
        self._backend.notify(new, stamped)
        return Transition("ACCEPT", stamped, new)

    def end_task_runs_of(self, flow_run_id: UUID, state: State[Any]) -> int:
        """See :class:`EndTaskRunsOf`."""
        orphans = [
            run.id
            for run in list(self._live.values())
            if isinstance(run, TaskRun)
            and run.flow_run_id == flow_run_id
            and (run.state is None or not run.state.is_final())
        ]
        for run_id in orphans:
            self.propose(ProposeState("task", run_id, state))
        return len(orphans)

    def update(self, kind: RunKind, run_id: UUID, changes: dict[str, Any]) -> Run:
        """Change fields of a run other than its state; return its new snapshot."""
        if "owner" in changes and self._on_first_flow_run is not None:
            self._first_flow_run()
        for _ in range(MAX_CONFLICTS):
            run = self._current(kind, run_id)
            new = evolve(run, **changes, version=run.version + 1)
            try:
                self._backend.write_run(kind, new)
            except StaleRun as stale:
                self._refresh(stale.current)
                continue
            self._remember(new)
            return new
        raise self._too_many_conflicts(kind, run_id)

    def propose(self, message: ProposeState) -> Transition:
        """Decide on a proposed state, record the outcome and answer it."""
        kind = message.kind
        proposed = message.state
        for _ in range(MAX_CONFLICTS):
            run = self._current(kind, message.run_id)
            if self._plainly_accepted(kind, run, message):
                try:
                    run, _ = self._write(kind, run, proposed)
                except StaleRun as stale:
                    self._refresh(stale.current)
                    continue
                return Transition("ACCEPT", run.state, run)  # type: ignore[arg-type]
            ctx = self._rule_context(kind, run, message)
            decision = decide(run.state, proposed, ctx)
            decision_type = type(decision)
            target: State[Any] | None
            if decision_type is Accept:
                target = proposed
            elif decision_type is Reject or decision_type is Wait:
                target = decision.state  # type: ignore[union-attr]
                if (
                    decision_type is Wait
                    and target is not None
                    and run.state is not None
                    and run.state.name == target.name
                ):
                    target = None  # waiting again: nothing new to record
            else:
                target = None
            if target is not None:
                try:
                    run, target = self._write(kind, run, target, message.run_input)
                except StaleRun as stale:
                    self._refresh(stale.current)
                    continue
            elif run.id in self._live:
                # Nothing written, so nothing checked: make sure the decision was made on
                # the run as it is (another process may have changed it), else decide again.
                stored = self._backend.read_run(kind, run.id)
                if stored.version != run.version:
                    self._refresh(stored)
                    continue
            if kind == "task" and ctx.slot_wait is None and proposed.is_running():
                self._release_unused_slots(run)
            return self._transition(decision, run)
        raise self._too_many_conflicts(kind, message.run_id)

    @staticmethod
    def _transition(decision: Any, run: Run) -> Transition:
        state: State[Any] = run.state  # type: ignore[assignment]
        decision_type = type(decision)
        if decision_type is Accept:
            return Transition("ACCEPT", state, run)
        if decision_type is Reject:
            return Transition("REJECT", state, run, decision.reason)
        if decision_type is Wait:
            return Transition("WAIT", state, run, decision.reason, decision.delay, decision.watch)
        assert isinstance(decision, Abort)
        return Transition("ABORT", state, run, decision.reason)

    def _write(
        self, kind: RunKind, run: Run, state: State[Any], run_input: RunInputWrite | None = None
    ) -> tuple[Run, State[Any]]:
        """Record ``state`` as the run's next state (checked against ``run.version``); then
        notify and apply what follows from it. Return the new snapshot and the state as
        recorded.

        Raises:
            StaleRun: the run changed since ``run`` was read; nothing was written.
        """
        new, stamped, fields_changed = self._apply(kind, run, state)
        backend = self._backend
        backend.write_run(
            kind, new, state=stamped, run_input=run_input, fields_changed=fields_changed
        )
        self._remember(new)
        if kind == "task" and stamped.is_final() and new.tags:
            backend.release_slots(new.id)
            backend.notify_slots_released()
        backend.notify(new, stamped)
        if kind == "flow":
            self._cascade(new, stamped)  # type: ignore[arg-type]
        return new, stamped

    def _write_other(self, kind: RunKind, run_id: UUID, state: State[Any]) -> None:
        """Record ``state`` for another run than the one proposed for (a cascade), unless
        that run is finished by now."""
        for _ in range(MAX_CONFLICTS):
            try:
                run = self._current(kind, run_id)
            except ObjectNotFound:
                return
            if run.state is not None and run.state.is_final():
                return
            try:
                self._write(kind, run, state)
            except StaleRun as stale:
                self._refresh(stale.current)
                continue
            return
        raise self._too_many_conflicts(kind, run_id)

    def _first_flow_run(self) -> None:
        callback, self._on_first_flow_run = self._on_first_flow_run, None
        assert callback is not None
        callback()

    # -- snapshots --------------------------------------------------------------------

    def _current(self, kind: RunKind, run_id: UUID) -> Run:
        run = self._live.get(run_id)
        if run is None:
            run = self._backend.read_run(kind, run_id)
        return run

    def _remember(self, run: Run) -> None:
        """Keep deciding on ``run`` from memory while this orchestrator drives it."""
        state = run.state
        if state is not None and (
            state.is_final() or (state.is_paused() and state.state_details.pause_reschedule)
        ):
            self._live.pop(run.id, None)  # finished, or its engine has left (suspended)
        else:
            self._live[run.id] = run

    def _refresh(self, current: Run) -> None:
        if current.id in self._live:
            self._remember(current)

    def _too_many_conflicts(self, kind: RunKind, run_id: UUID) -> StoreError:
        self._live.pop(run_id, None)
        return StoreError(
            f"The {kind} run {run_id} changed in the store {MAX_CONFLICTS} times while the "
            "orchestrator was deciding on it; another process keeps writing it. Try again."
        )

    # -- deciding ---------------------------------------------------------------------

    def _plainly_accepted(self, kind: RunKind, run: Run, message: ProposeState) -> bool:
        """Whether :func:`~runtime.core._rules.decide` would accept this proposal without
        needing anything looked up: the hot path of every run, decided without building a
        rule context. It covers a run finishing Completed from Running, and a run starting
        from Pending with nothing that could hold it back (no tag limits, no cache key, a
        top-level flow run or a parent flow run this orchestrator knows to be running).
        ``test_orchestrator.py`` checks that these answers are ``decide``'s."""
        current = run.state
        if current is None or message.force or message.required_types is not None:
            return False
        proposed = message.state
        if proposed.type is _COMPLETED:
            return current.type is _RUNNING
        if proposed.type is not _RUNNING or current.type is not _PENDING:
            return False
        if kind == "flow":
            return run.parent_task_run_id is None  # type: ignore[union-attr]
        if run.tags or proposed.state_details.cache_key is not None:
            return False
        parent_id = run.flow_run_id  # type: ignore[union-attr]
        if parent_id is None:
            return True
        parent = self._live.get(parent_id)
        return parent is not None and parent.state is not None and parent.state.type is _RUNNING

    def _rule_context(self, kind: RunKind, run: Run, message: ProposeState) -> RuleContext:
        now = _as_datetime(self._clock.now())
        proposed = message.state
        if message.force:
            return RuleContext(
                kind=kind, now=now, force=True, required_types=message.required_types
            )
        parent_id = None
        parent_state = None
        if kind == "task":
            task_run: TaskRun = run  # type: ignore[assignment]
            parent_id = task_run.flow_run_id
            task_policy = task_run.empirical_policy
            retries = task_policy.retries
            retry_delays = task_policy.retry_delay
            jitter = task_policy.retry_jitter_factor
            pause_keys: frozenset[str] = frozenset()
            has_parent_run = parent_id is not None
        else:
            flow_run: FlowRun = run  # type: ignore[assignment]
            flow_policy = flow_run.empirical_policy
            retries = flow_policy.retries
            retry_delays = (flow_policy.retry_delay,)
            jitter = None
            pause_keys = frozenset(flow_policy.pause_keys)
            has_parent_run = flow_run.parent_task_run_id is not None
            if has_parent_run:
                parent_id = self._parent_flow_run_id(flow_run)
        if parent_id is not None and proposed.is_running():
            try:
                parent_state = self._current("flow", parent_id).state
            except ObjectNotFound:
                parent_state = None
        cached_state = None
        slot_wait = None
        if kind == "task" and proposed.is_running():
            cached_state = self._cached_state(proposed)
            if cached_state is None and run.tags:
                slot_wait = self._slot_wait(run)  # type: ignore[arg-type]
        return RuleContext(
            kind=kind,
            now=now,
            run_count=run.run_count,
            retries=retries,
            retry_delays=retry_delays,
            retry_jitter_factor=jitter,
            jitter_sample=self._random.random(),
            parent_state=parent_state,
            parent_id=parent_id,
            cached_state=cached_state,
            slot_wait=slot_wait,
            pause_keys=pause_keys,
            has_parent_run=has_parent_run,
            required_types=message.required_types,
        )

    def _parent_flow_run_id(self, flow_run: FlowRun) -> Any:
        try:
            parent_task = self._current("task", flow_run.parent_task_run_id)  # type: ignore[arg-type]
        except ObjectNotFound:
            return None
        return parent_task.flow_run_id  # type: ignore[union-attr]

    def _cached_state(self, proposed: State[Any]) -> State[Any] | None:
        key = proposed.state_details.cache_key
        if key is None or proposed.state_details.refresh_cache:
            return None
        record = self._backend.read_cache_record(key)
        if record is None:
            return None
        now = _as_datetime(self._clock.now())
        if record.expiration is not None and record.expiration < now:
            return None
        cached = record.state
        return S.Completed(
            name="Cached",
            message=cached.message,
            data=cached.data,
            state_details=replace_details(cached.state_details, task_run_id=None, flow_run_id=None),
        )

    def _slot_wait(self, run: TaskRun) -> float | None:
        if self._backend.acquire_slots(run.tags, run.id):
            return None
        return 1.0

    def _release_unused_slots(self, run: Run) -> None:
        """Give back the slots a Running proposal took if the run is not running after all
        (the parent is paused, say)."""
        if run.tags and (run.state is None or not run.state.is_running()):
            self._backend.release_slots(run.id)

    # -- applying ---------------------------------------------------------------------

    def _apply(self, kind: RunKind, run: Run, state: State[Any]) -> tuple[Run, State[Any], bool]:
        """Return the run's next snapshot in ``state``, the state as recorded (stamped
        with the run's ids, its timestamp after the previous one's) and whether fields
        other than the state and its timings changed."""
        details = state.state_details
        if kind == "flow":
            if details.flow_run_id != run.id:
                details = replace_details(details, flow_run_id=run.id)
        else:
            flow_run_id = run.flow_run_id  # type: ignore[union-attr]
            if details.task_run_id != run.id or details.flow_run_id != flow_run_id:
                details = replace_details(details, task_run_id=run.id, flow_run_id=flow_run_id)
        previous = run.state
        timestamp = state.timestamp
        if previous is not None and timestamp <= previous.timestamp:
            timestamp = previous.timestamp + _MICROSECOND
        if details is not state.state_details or timestamp is not state.timestamp:
            state = replace(state, state_details=details, timestamp=timestamp)
        changes: dict[str, Any] = {"state": state, "version": run.version + 1}
        if previous is not None and previous.is_running():
            changes["total_run_time"] = run.total_run_time + (timestamp - previous.timestamp)
        if state.is_running():
            changes["run_count"] = run.run_count + 1
            if run.start_time is None:
                changes["start_time"] = timestamp
        elif state.is_final():
            changes["end_time"] = timestamp
        fields_changed = False
        if state.is_scheduled():
            changes["expected_start_time"] = details.scheduled_time
        elif kind == "flow" and state.is_paused() and details.pause_key is not None:
            policy = run.empirical_policy  # type: ignore[union-attr]
            if details.pause_key not in policy.pause_keys:
                changes["empirical_policy"] = policy.model_copy(
                    update={"pause_keys": (*policy.pause_keys, details.pause_key)}
                )
                fields_changed = True
        return evolve(run, **changes), state, fields_changed

    def _cascade(self, flow_run: FlowRun, state: State[Any]) -> None:
        """Apply what follows from a flow run entering ``state``.

        - A subflow's state is mirrored onto the task run that stands for it in the parent.
        - A flow run that is being cancelled cancels its unfinished task runs, and asks its
          running subflows to cancel (their own engines finish them). Only the process that
          runs the flow run (or any process, once that one is gone) writes its task runs,
          as the store contract says: a cancel from elsewhere reaches them through the flow
          run's own engine, whose orchestrator cascades when it records Cancelled.
        """
        if flow_run.parent_task_run_id is not None:
            mirror = S.State(
                type=state.type,
                name=state.name,
                message=state.message,
                data=state.data,
                state_details=replace_details(
                    state.state_details,
                    child_flow_run_id=flow_run.id,
                    flow_run_id=None,
                    task_run_id=None,
                ),
            )
            self._write_other("task", flow_run.parent_task_run_id, mirror)
        if (state.is_cancelling() or state.is_cancelled()) and _may_write_task_runs(self._backend, flow_run):
            for task_run in self._backend.read_task_runs(flow_run_id=flow_run.id):
                task_run = self._live.get(task_run.id, task_run)  # type: ignore[assignment]
                current = task_run.state
                if current is None or current.is_final():
                    continue
                child_id = current.state_details.child_flow_run_id
                if child_id is None:
                    cancelled = S.Cancelled(message="The parent flow run was cancelled.")
                    self._write_other("task", task_run.id, cancelled)
                    continue
                try:
                    child = self._current("flow", child_id)
                except ObjectNotFound:
                    continue
                if (
                    child.state is not None
                    and not child.state.is_final()
                    and not child.state.is_cancelling()
                ):
                    cancelling = S.Cancelling(message="The parent flow run is being cancelled.")
                    self._write_other("flow", child_id, cancelling)
