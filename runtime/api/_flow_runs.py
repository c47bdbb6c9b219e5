"""Controlling flow runs: pause, suspend, resume, cancel, wait.

Each function works from sync and async code. Inside a flow or task, an async flow/task
awaits them and a sync one calls them plainly; outside any run, they return an awaitable
when called from a running event loop and block otherwise.

- :func:`pause_flow_run` blocks the flow body until :func:`resume_flow_run` (from another
  thread, coroutine or process) or until its timeout, which fails the run.
- :func:`suspend_flow_run` makes the flow leave its body now; resuming runs the body again
  from the top, reusing every task result that was already completed (and persisted, for
  a resume from another process), and the suspend call then returns instead of
  suspending again.
- :func:`cancel_flow_run` asks a run to cancel; :func:`wait_for_flow_run` waits for a final
  state.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any
from uuid import UUID

from ..core import _states as S
from ..core._exceptions import (
    CancelledRun,
    FlowPauseTimeout,
    FlowRunWaitTimeout,
    InvalidRunInput,
    NotPausedError,
    Pause,
)
from ..core._input import input_model, keyset_for, schema_json, unwrap
from ..core._models import FlowRun
from ..core._states import State, StateDetails, StateType
from ..engine._context import FlowRunContext, TaskRunContext
from ..engine._logging import get_run_logger
from ..orchestration._orchestrator import ProposeState, Transition
from ..orchestration._ownership import (
    ORPHAN_MESSAGE,
    active_flow_runs,
    is_orphan,
    owner_gone,
    reap_flow_run,
)
from ..orchestration._waiting import wait_for_state_change
from ..store._backend import RunInputWrite
from ._calling import as_run_id, run_sync_or_async
from ._entry import runtime_scope
from ._registry import register_run_flow
from ._rerun import NO_INPUT, rerun_flow_run, run_resumed_flow_run
from ._run_input import validated_input, waiting_models

__all__ = [
    "cancel_flow_run",
    "pause_flow_run",
    "resume_flow_run",
    "suspend_flow_run",
    "wait_for_flow_run",
]

# -- pause and suspend ---------------------------------------------------------------------


def pause_flow_run(
    wait_for_input: Any = None,
    timeout: float = 3600,
    poll_interval: float = 10,
    key: str | None = None,
) -> Any:
    """Block the current flow run until it is resumed; return the resumer's input.

    Task runs that already started go on; no new task run starts while paused. Inside one
    process the resume is noticed at once; ``poll_interval`` bounds how long a resume from
    another process takes to be noticed.

    Args:
        wait_for_input: a :class:`~runtime.input.RunInput` subclass or any type pydantic
            validates; the validated input is returned.
        timeout: seconds to wait; then the run is Failed ("never resumed").
        poll_interval: seconds between checks for a resume made by another process.
        key: identifies this pause; a pause whose key already fired is skipped. Defaults
            to the number of pauses this run has made so far.

    Raises:
        RuntimeError: called outside a flow run, or inside a task run.
        FlowPauseTimeout: the run was not resumed in time (it is now Failed).
    """
    ctx = _pausing_context("paused")
    return run_sync_or_async(_pause, ctx, wait_for_input, timeout, poll_interval, key, False)


def suspend_flow_run(
    wait_for_input: Any = None,
    flow_run_id: UUID | None = None,
    timeout: float | None = 3600,
    key: str | None = None,
) -> Any:
    """Suspend the current flow run: its body stops here and the flow call returns.

    ``resume_flow_run`` (or ``stageflow runs resume ID``) later runs the body again from
    the top, in that process; completed task runs are reused rather than run again, and
    this call then returns the resumer's input instead of suspending again.

    Args:
        wait_for_input: as for :func:`pause_flow_run`.
        flow_run_id: suspend another (not running here) flow run instead of this one.
        timeout: seconds the run may stay suspended before a resume fails it.
        key: identifies this suspension (default: its position among this run's pauses).

    Raises:
        RuntimeError: called inside a task run, or outside a flow run without an id, or
            for a subflow.
    """
    if flow_run_id is not None:
        return run_sync_or_async(_suspend_other, flow_run_id, timeout, key)
    ctx = _pausing_context("suspended")
    return run_sync_or_async(_pause, ctx, wait_for_input, timeout, 10, key, True)


def _pausing_context(verb: str) -> FlowRunContext:
    if TaskRunContext.get() is not None:
        raise RuntimeError(
            f"Cannot {verb[:-2] if verb.endswith('ed') else verb} task runs: only a flow run can be {verb}."
        )
    ctx = FlowRunContext.get()
    if ctx is None:
        raise RuntimeError(f"Flow runs can only be {verb} from within a flow run.")
    return ctx


async def _pause(
    ctx: FlowRunContext,
    wait_for_input: Any,
    timeout: float | None,
    poll_interval: float,
    key: str | None,
    suspend: bool,
) -> Any:
    ctx.observed_pauses += 1
    pause_key = key or str(ctx.observed_pauses)
    model = input_model(wait_for_input) if wait_for_input is not None else None
    flow_run_id = ctx.flow_run.id
    logger = get_run_logger()
    async with runtime_scope() as runtime:
        backend = runtime.backend
        assert backend is not None
        make = S.Suspended if suspend else S.Paused
        keyset = keyset_for(pause_key) if model is not None else None
        proposed = make(
            pause_expiration_time=_expiration(runtime, timeout),
            pause_key=pause_key,
            state_details=StateDetails(run_input_keyset=keyset),
        )
        if keyset is not None:
            backend.write_run_input(flow_run_id, keyset["schema"], schema_json(model))  # type: ignore[arg-type]
            waiting_models[(flow_run_id, keyset["response"])] = model
        transition: Transition = await runtime.orchestrator.ask(  # type: ignore[union-attr]
            ProposeState("flow", flow_run_id, proposed)
        )
        ctx.flow_run = transition.run
        state = transition.state
        if transition.status == "ABORT":
            raise RuntimeError(
                f"Flow run cannot be {'suspended' if suspend else 'paused'}: {transition.reason}"
            )
        if state.is_running():
            # This pause fired before and the run was resumed since: carry on.
            return _load_input(backend, flow_run_id, keyset, model)
        if not state.is_paused():
            raise RuntimeError(f"Flow run cannot be paused: it is {state}.")
        if suspend:
            register_run_flow(flow_run_id, ctx.flow)
            logger.info("Suspending flow run; it runs again from the top when it is resumed.")
            raise Pause("The flow run was suspended.", state=state)
        logger.info("Pausing flow run; it continues when it is resumed.")
        clock = runtime.clock
        deadline = None if timeout is None else clock.now() + timeout
        try:
            while True:
                if state.is_running():
                    break
                if state.is_cancelling() or state.is_cancelled():
                    raise CancelledRun("The flow run was cancelled while it was paused.")
                if state.is_final():
                    raise FlowPauseTimeout("Flow run was paused and never resumed.")
                remaining = None if deadline is None else deadline - clock.now()
                if remaining is not None and remaining <= 0:
                    # Past the pause's timeout: the rules answer Failed ("never resumed").
                    transition = await runtime.orchestrator.ask(  # type: ignore[union-attr]
                        ProposeState("flow", flow_run_id, S.Running())
                    )
                    ctx.flow_run = transition.run
                    state = transition.state
                    if state.is_running():
                        break
                    raise FlowPauseTimeout("Flow run was paused and never resumed.")
                wait = poll_interval if remaining is None else min(poll_interval, remaining)
                await wait_for_state_change(backend, flow_run_id, clock, wait)
                backend.sync_external()
                # The store, not a snapshot: a resume may come from another process.
                current = backend.read_flow_run(flow_run_id)
                if current.version > ctx.flow_run.version:
                    ctx.flow_run = current
                state = current.state  # type: ignore[assignment]
        finally:
            if keyset is not None:
                waiting_models.pop((flow_run_id, keyset["response"]), None)
        logger.info("Resuming flow run execution!")
        return _load_input(backend, flow_run_id, keyset, model)


def _expiration(runtime: Any, timeout: float | None) -> datetime | None:
    """When a pause of ``timeout`` seconds starting now expires, on the runtime's clock
    (the one the orchestrator judges expiry by)."""
    if timeout is None:
        return None
    return datetime.fromtimestamp(runtime.clock.now() + timeout, timezone.utc)


def _load_input(backend: Any, flow_run_id: UUID, keyset: dict[str, str] | None, model: Any) -> Any:
    if keyset is None or model is None:
        return None
    raw = backend.read_run_input(flow_run_id, keyset["response"])
    if raw is None:
        raise InvalidRunInput(f"Flow run {flow_run_id} was resumed without the input it waits for.")
    return unwrap(model.model_validate_json(raw))


async def _suspend_other(flow_run_id: UUID, timeout: float | None, key: str | None) -> None:
    async with runtime_scope() as runtime:
        assert runtime.backend is not None
        flow_run = runtime.backend.read_flow_run(flow_run_id)
        proposed = S.Suspended(
            pause_expiration_time=_expiration(runtime, timeout),
            pause_key=key or f"external-{flow_run.run_count}",
        )
        transition = await runtime.orchestrator.ask(  # type: ignore[union-attr]
            ProposeState("flow", flow_run_id, proposed)
        )
        if transition.status == "ABORT":
            raise RuntimeError(f"Flow run cannot be suspended: {transition.reason}")


# -- resume ----------------------------------------------------------------------------------


def resume_flow_run(flow_run_id: UUID | str, run_input: Any = None) -> Any:
    """Resume a paused or suspended flow run, giving it ``run_input`` if it waits for input.

    A paused run continues where it waits. A suspended run is run again now, in this
    process, and this call returns when that run finishes.

    Raises:
        ObjectNotFound: no flow run has this id.
        NotPausedError: the run is not paused or suspended.
        InvalidRunInput: the input is missing or does not match what the run waits for;
            the run stays paused, so it can be resumed again with good input.
        FlowPauseTimeout: the pause timed out; the run can no longer be resumed.
    """
    return run_sync_or_async(_resume, as_run_id(flow_run_id), run_input)


async def _resume(flow_run_id: UUID, run_input: Any) -> None:
    async with runtime_scope() as runtime:
        backend = runtime.backend
        assert backend is not None
        flow_run = backend.read_flow_run(flow_run_id)
        state = flow_run.state
        if state is not None and state.is_crashed() and _crashed_while_paused(backend, flow_run_id):
            # Its process died while it was paused (and the crash was recorded): run it
            # again here, as a resume of a crashed run does; its pause takes the input.
            await rerun_flow_run(flow_run_id, NO_INPUT if run_input is None else run_input)
            return
        if state is None or not state.is_paused():
            raise _not_paused(flow_run_id, state)
        keyset = state.state_details.run_input_keyset
        given = None
        if keyset is not None:
            value = validated_input(backend, flow_run_id, keyset, run_input)
            given = RunInputWrite(keyset["response"], value)
        suspended = state.state_details.pause_reschedule
        if is_orphan(flow_run, backend):
            # Paused, but the process that waits for this resume is gone: the run crashed.
            # Record that (with the input, so the re-run finds it), then run it again here,
            # as a crashed run is resumed; its pause has fired, so it goes on past it.
            crashed = S.Crashed(message=ORPHAN_MESSAGE.format(kind="flow", flow_run_id=flow_run_id))
            transition = await runtime.orchestrator.ask(  # type: ignore[union-attr]
                ProposeState("flow", flow_run_id, crashed, required_types=_PAUSED)
            )
            if transition.status != "ACCEPT":
                raise _not_paused(flow_run_id, transition.state)
            await rerun_flow_run(flow_run_id, NO_INPUT if run_input is None else run_input)
            return
        target = S.Scheduled(name="Resuming") if suspended else S.Running()
        # Checked with the write: of two resumers, the second finds the run no longer
        # paused, and its input is not written.
        transition = await runtime.orchestrator.ask(  # type: ignore[union-attr]
            ProposeState("flow", flow_run_id, target, required_types=_PAUSED, run_input=given)
        )
        if transition.status == "ABORT" and not transition.state.is_paused():
            raise _not_paused(flow_run_id, transition.state)
        if transition.status == "REJECT" and transition.state.is_failed():
            raise FlowPauseTimeout("Flow run can no longer be resumed.")
        if transition.status in ("REJECT", "ABORT"):
            raise RuntimeError(f"Cannot resume this run: {transition.reason}")
        if suspended and keyset is not None:
            # The suspending body has left; only a pause's own cleanup forgets its model.
            waiting_models.pop((flow_run_id, keyset["response"]), None)
    if suspended:
        await run_resumed_flow_run(flow_run_id)


_PAUSED = frozenset({StateType.PAUSED})


def _crashed_while_paused(backend: Any, flow_run_id: UUID) -> bool:
    """Whether the run's state before its crash was a pause (not a suspension)."""
    history = backend.read_state_history("flow", flow_run_id)
    return (
        len(history) >= 2
        and history[-2].is_paused()
        and not history[-2].state_details.pause_reschedule
    )


def _not_paused(flow_run_id: UUID, state: State[Any] | None) -> NotPausedError:
    if state is not None and state.name == "Resuming":
        # A suspended run another caller resumed a moment ago, its body not started yet.
        detail = "another caller is resuming it"
    else:
        detail = f"it is {state}"
    return NotPausedError(f"Cannot resume flow run {flow_run_id}: it is not paused ({detail}).")


# -- cancel and wait -------------------------------------------------------------------------


def cancel_flow_run(flow_run_id: UUID | str) -> Any:
    """Cancel a flow run; return its state after the request.

    A run being executed (here or in another process) goes Cancelling, and its engine
    cancels what runs, runs the ``on_cancellation`` hooks and ends it Cancelled. A run that
    nothing executes (scheduled, suspended, or whose process is gone) is Cancelled at once.
    A final run is left as it is.

    Raises:
        ObjectNotFound: no flow run has this id.
    """
    return run_sync_or_async(_cancel, as_run_id(flow_run_id))


async def _cancel(flow_run_id: UUID) -> State[Any]:
    async with runtime_scope() as runtime:
        backend = runtime.backend
        assert backend is not None
        flow_run = backend.read_flow_run(flow_run_id)
        state = flow_run.state
        if state is None or state.is_final():
            return state  # type: ignore[return-value]
        executed = flow_run_id in active_flow_runs or (
            not owner_gone(backend, flow_run.owner)
            and not state.state_details.pause_reschedule
            and not state.is_scheduled()
        )
        proposed = (
            S.Cancelling(message="The flow run was cancelled.")
            if executed
            else S.Cancelled(message="The flow run was cancelled.")
        )
        transition = await runtime.orchestrator.ask(  # type: ignore[union-attr]
            ProposeState("flow", flow_run_id, proposed)
        )
        return transition.state


def wait_for_flow_run(
    flow_run_id: UUID | str, timeout: float | None = 10800, poll_interval: float = 5
) -> Any:
    """Wait until a flow run is final and return it (a :class:`~runtime.FlowRun`).

    A run in this process is noticed at once; one in another process within
    ``poll_interval`` seconds. A run whose process is gone (its lease in the store
    expired, or it ran on this host and died) is marked Crashed and returned as such,
    within ``poll_interval`` seconds of that being known.

    Raises:
        ObjectNotFound: no flow run has this id.
        FlowRunWaitTimeout: the run was not final after ``timeout`` seconds.
    """
    return run_sync_or_async(_wait_for, as_run_id(flow_run_id), timeout, poll_interval)


async def _wait_for(flow_run_id: UUID, timeout: float | None, poll_interval: float) -> FlowRun:
    async with runtime_scope() as runtime:
        backend = runtime.backend
        assert backend is not None
        clock = runtime.clock
        deadline = None if timeout is None else clock.now() + timeout
        while True:
            backend.sync_external()
            flow_run = backend.read_flow_run(flow_run_id)
            if is_orphan(flow_run, backend):
                await reap_flow_run(runtime.orchestrator, backend, flow_run)  # type: ignore[arg-type]
                flow_run = backend.read_flow_run(flow_run_id)
            if flow_run.state is not None and flow_run.state.is_final():
                return flow_run
            remaining = None if deadline is None else deadline - clock.now()
            if remaining is not None and remaining <= 0:
                raise FlowRunWaitTimeout(
                    f"Flow run with ID {flow_run_id} exceeded watch timeout of {timeout} seconds"
                )
            wait = poll_interval if remaining is None else min(poll_interval, remaining)
            await wait_for_state_change(backend, flow_run_id, clock, wait)
