"""The orchestrator actor: the only place where a run's state changes.

Run actors (and the resume/cancel commands) *propose* states with :class:`ProposeState`;
the orchestrator looks up what the rules need (the parent run's state, cache records,
concurrency slots), asks :func:`runtime.core._rules.decide`, applies the outcome to the run
record, writes the store and notifies subscribers. Its ``receive`` is synchronous, so a
proposal from a task on the orchestrator's own loop is dispatched directly, without a
scheduler round trip. The store backend's lock makes the decide-and-apply step atomic
across every orchestrator that shares the backend.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

import attrs

from actors import Actor, Clock

from ..core import _states as S
from ..core._exceptions import ObjectNotFound
from ..core._models import FlowRun, RunKind, TaskRun
from ..core._rules import Abort, Accept, Reject, RuleContext, Wait, decide
from ..core._states import State
from ..store._backend import StoreBackend

__all__ = [
    "CreateRun",
    "Orchestrator",
    "ProposeState",
    "UpdateRun",
    "Transition",
]

Status = Literal["ACCEPT", "REJECT", "WAIT", "ABORT"]


@attrs.frozen
class CreateRun:
    """Record a new run in ``state`` (normally Pending)."""

    kind: RunKind
    run: FlowRun | TaskRun
    state: State[Any]


@attrs.frozen
class ProposeState:
    """Propose ``state`` for ``run``; ``force`` skips the rules."""

    kind: RunKind
    run: FlowRun | TaskRun
    state: State[Any]
    force: bool = False


@attrs.frozen
class UpdateRun:
    """Change fields of a run that are not its state (its name, owner, policy...)."""

    kind: RunKind
    run: FlowRun | TaskRun
    changes: dict[str, Any]


@attrs.frozen
class Transition:
    """The orchestrator's answer to a proposal.

    Attributes:
        status: ACCEPT, REJECT, WAIT or ABORT.
        state: the run's state after the decision.
        reason: why, for REJECT, WAIT and ABORT.
        delay: for WAIT, seconds before proposing again.
        watch: for WAIT, a run id whose next state change is worth waking up for.
    """

    status: Status
    state: State[Any]
    reason: str = ""
    delay: float = 0.0
    watch: Any = None


def _as_datetime(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, timezone.utc)


def _field_setter(*models: type[Any]) -> Any:
    """Return ``setattr``, or for models that neither validate assignments nor are frozen,
    a setter doing what pydantic's ``__setattr__`` does for a plain field (store the value,
    mark the field set) without its per-call dispatch: :meth:`Orchestrator._apply` sets a
    dozen fields per task run."""
    if any(
        m.model_config.get("validate_assignment") or m.model_config.get("frozen") for m in models
    ):
        return setattr

    def set_field(model: Any, name: str, value: Any) -> None:
        model.__dict__[name] = value
        model.__pydantic_fields_set__.add(name)

    return set_field


_set = _field_setter(FlowRun, TaskRun, State, S.StateDetails)


class Orchestrator(Actor):
    """Applies orchestration rules to proposed states; see the module docstring."""

    mailbox_size = 10_000

    def __init__(self, backend: StoreBackend, clock: Clock) -> None:
        self._backend = backend
        self._clock = clock
        self._random = random.Random()

    def receive(self, message: Any) -> Any:
        """Handle a :class:`CreateRun`, :class:`ProposeState` or :class:`UpdateRun`."""
        kind = type(message)
        if kind is ProposeState:
            return self.propose(message.kind, message.run, message.state, force=message.force)
        if kind is CreateRun:
            return self.create(message.kind, message.run, message.state)
        if kind is UpdateRun:
            with self._backend.lock:
                for field, value in message.changes.items():
                    setattr(message.run, field, value)
                self._backend.update_run(message.kind, message.run)
            return None
        raise TypeError(f"The orchestrator does not understand {message!r}.")

    # -- the work ---------------------------------------------------------------------

    def create(self, kind: RunKind, run: FlowRun | TaskRun, state: State[Any]) -> State[Any]:
        """Record a new run in its first state."""
        backend = self._backend
        with backend.lock:
            self._apply(kind, run, state, record=False)
            if kind == "flow":
                backend.add_flow_run(run)  # type: ignore[arg-type]
            else:
                backend.add_task_run(run)  # type: ignore[arg-type]
        backend.notify(run, state)
        return state

    def propose(
        self, kind: RunKind, run: FlowRun | TaskRun, proposed: State[Any], *, force: bool = False
    ) -> Transition:
        """Decide on ``proposed`` for ``run`` and apply the outcome."""
        backend = self._backend
        with backend.lock:
            ctx = self._rule_context(kind, run, proposed, force)
            decision = decide(run.state, proposed, ctx)
            decision_type = type(decision)
            if decision_type is Accept:
                applied: State[Any] | None = self._apply(kind, run, proposed)
                transition = Transition("ACCEPT", proposed)
            elif decision_type is Reject:
                assert isinstance(decision, Reject)
                applied = None
                if decision.state is not None:
                    applied = self._apply(kind, run, decision.state)
                transition = Transition("REJECT", run.state, decision.reason)  # type: ignore[arg-type]
            elif decision_type is Wait:
                assert isinstance(decision, Wait)
                applied = None
                if decision.state is not None and (
                    run.state is None or run.state.name != decision.state.name
                ):
                    applied = self._apply(kind, run, decision.state)
                transition = Transition(
                    "WAIT",
                    run.state,
                    decision.reason,
                    decision.delay,
                    decision.watch,  # type: ignore[arg-type]
                )
            else:
                assert isinstance(decision, Abort)
                applied = None
                transition = Transition("ABORT", run.state, decision.reason)  # type: ignore[arg-type]
            cascaded = self._cascade(kind, run, applied) if applied is not None else ()
        if applied is not None:
            backend.notify(run, applied)
            for other, state in cascaded:
                backend.notify(other, state)
        return transition

    def _rule_context(
        self, kind: RunKind, run: FlowRun | TaskRun, proposed: State[Any], force: bool
    ) -> RuleContext:
        now = _as_datetime(self._clock.now())
        if force:
            return RuleContext(kind=kind, now=now, force=True)
        parent_id = None
        parent_state = None
        if kind == "task":
            parent_id = run.flow_run_id  # type: ignore[union-attr]
            policy = run.empirical_policy
            retry_delays = tuple(policy.retry_delay)  # type: ignore[union-attr]
            jitter = policy.retry_jitter_factor  # type: ignore[union-attr]
            pause_keys: frozenset[str] = frozenset()
            has_parent_run = parent_id is not None
        else:
            flow_run: FlowRun = run  # type: ignore[assignment]
            policy = flow_run.empirical_policy
            retry_delays = (policy.retry_delay,)
            jitter = None
            pause_keys = frozenset(policy.pause_keys)
            has_parent_run = flow_run.parent_task_run_id is not None
            if has_parent_run:
                parent_id = self._parent_flow_run_id(flow_run)
        if parent_id is not None and proposed.is_running():
            try:
                parent_state = self._backend.read_flow_run(parent_id).state
            except ObjectNotFound:
                parent_state = None
        cached_state = None
        slot_wait = None
        if kind == "task" and proposed.is_running():
            cached_state = self._cached_state(run, proposed)  # type: ignore[arg-type]
            if cached_state is None and run.tags:
                slot_wait = self._slot_wait(run)  # type: ignore[arg-type]
        return RuleContext(
            kind=kind,
            now=now,
            run_count=run.run_count,
            retries=policy.retries,
            retry_delays=retry_delays,
            retry_jitter_factor=jitter,
            jitter_sample=self._random.random(),
            parent_state=parent_state,
            parent_id=parent_id,
            cached_state=cached_state,
            slot_wait=slot_wait,
            pause_keys=pause_keys,
            has_parent_run=has_parent_run,
        )

    def _parent_flow_run_id(self, flow_run: FlowRun) -> Any:
        try:
            parent_task = self._backend.read_task_run(flow_run.parent_task_run_id)  # type: ignore[arg-type]
        except ObjectNotFound:
            return None
        return parent_task.flow_run_id

    def _cached_state(self, run: TaskRun, proposed: State[Any]) -> State[Any] | None:
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
            state_details=cached.state_details.model_copy(
                update={"task_run_id": None, "flow_run_id": None}
            ),
        )

    def _slot_wait(self, run: TaskRun) -> float | None:
        if self._backend.acquire_slots(run.tags, run.id):
            return None
        return 1.0

    def _apply(
        self, kind: RunKind, run: FlowRun | TaskRun, state: State[Any], *, record: bool = True
    ) -> State[Any]:
        details = state.state_details
        if kind == "flow":
            _set(details, "flow_run_id", run.id)
        else:
            _set(details, "task_run_id", run.id)
            _set(details, "flow_run_id", run.flow_run_id)  # type: ignore[union-attr]
        previous = run.state
        if previous is not None:
            if state.timestamp <= previous.timestamp:
                _set(state, "timestamp", previous.timestamp + timedelta(microseconds=1))
            if previous.is_running():
                _set(
                    run,
                    "total_run_time",
                    run.total_run_time + (state.timestamp - previous.timestamp),
                )
        if state.is_running():
            _set(run, "run_count", run.run_count + 1)
            if run.start_time is None:
                _set(run, "start_time", state.timestamp)
        elif state.is_final():
            _set(run, "end_time", state.timestamp)
            if kind == "task" and run.tags:
                self._backend.release_slots(run.id)
                self._backend.notify_slots_released()
        if state.is_scheduled():
            _set(run, "expected_start_time", details.scheduled_time)
        elif kind == "flow" and state.is_paused() and details.pause_key is not None:
            policy = run.empirical_policy  # type: ignore[union-attr]
            if details.pause_key not in policy.pause_keys:
                policy.pause_keys.append(details.pause_key)
                if record:
                    self._backend.update_run(kind, run)
        _set(run, "state", state)
        run.state_history.append(state)
        if record:
            self._backend.record_state(kind, run, state)
        return state

    def _cascade(
        self, kind: RunKind, run: FlowRun | TaskRun, state: State[Any]
    ) -> list[tuple[FlowRun | TaskRun, State[Any]]]:
        """Apply what follows from ``run`` entering ``state``; return every (run, state)
        changed on the way, to notify.

        - A subflow's state is mirrored onto the task run that stands for it in the parent.
        - A flow run that is being cancelled cancels its unfinished task runs, and asks its
          running subflows to cancel (their own engines finish them).
        """
        if kind != "flow":
            return []
        flow_run: FlowRun = run  # type: ignore[assignment]
        changed: list[tuple[FlowRun | TaskRun, State[Any]]] = []
        if flow_run.parent_task_run_id is not None:
            try:
                parent_task = self._backend.read_task_run(flow_run.parent_task_run_id)
            except ObjectNotFound:
                parent_task = None
            if parent_task is not None:
                mirror = State(
                    type=state.type,
                    name=state.name,
                    message=state.message,
                    data=state.data,
                    state_details=state.state_details.model_copy(
                        update={
                            "child_flow_run_id": flow_run.id,
                            "flow_run_id": None,
                            "task_run_id": None,
                        }
                    ),
                )
                changed.append((parent_task, self._apply("task", parent_task, mirror)))
        if state.is_cancelling() or state.is_cancelled():
            for task_run in self._backend.read_task_runs(flow_run_id=flow_run.id):
                current = task_run.state
                if current is None or current.is_final():
                    continue
                child_id = current.state_details.child_flow_run_id
                if child_id is None:
                    cancelled = S.Cancelled(message="The parent flow run was cancelled.")
                    changed.append((task_run, self._apply("task", task_run, cancelled)))
                    continue
                try:
                    child = self._backend.read_flow_run(child_id)
                except ObjectNotFound:
                    continue
                if (
                    child.state is not None
                    and not child.state.is_final()
                    and not child.state.is_cancelling()
                ):
                    cancelling = S.Cancelling(message="The parent flow run is being cancelled.")
                    changed.append((child, self._apply("flow", child, cancelling)))
                    changed.extend(self._cascade("flow", child, cancelling))
        return changed
