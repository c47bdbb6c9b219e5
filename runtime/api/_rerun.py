"""Running a stored flow run again: resuming a suspended or crashed run.

The store records each flow run's entrypoint (file and function) and parameters, so any
process can load the flow and run its body again under the same run id. The rerun reuses
task runs completed before, matched by their dynamic keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import UUID

from ..core import _states as S
from ..core._exceptions import InvalidRunInput, NotPausedError, ObjectNotFound
from ..core._flow_files import import_flow_file
from ..core._models import FlowRun
from ..core._states import State, StateType
from ..engine._body import WORKER_THREADS
from ..engine._flow_engine import FlowRunEngine
from ..engine._specs import FlowSpec
from ..orchestration._orchestrator import ProposeState, ReadRun, UpdateRun
from ..store._backend import RunInputWrite
from ._entry import runtime_scope
from ._registry import flow_at, flow_of_run, is_flow
from ._run_input import validated_input

__all__ = ["NO_INPUT", "import_flow_file", "load_flow", "rerun_flow_run", "run_resumed_flow_run"]


def load_flow(flow_run: FlowRun) -> FlowSpec:
    """Return the flow of ``flow_run``: the one defined in this process, else the one its
    entrypoint file defines (imported without running its ``__main__`` block).

    Raises:
        ObjectNotFound: the run has no entrypoint, or it no longer names a flow.
    """
    flow: FlowSpec | None = flow_of_run(flow_run.id)
    if flow is not None:
        return flow
    entrypoint = flow_run.entrypoint
    if not entrypoint:
        raise ObjectNotFound(
            f"Flow run {flow_run.id} has no entrypoint (its flow was defined inside a function), "
            "so it cannot be run again."
        )
    flow = flow_at(entrypoint)
    if flow is not None:
        return flow
    path, _, qualname = entrypoint.rpartition(":")
    if not Path(path).is_file():
        raise ObjectNotFound(f"The file of flow run {flow_run.id}'s flow is gone: {path}")
    try:
        module = import_flow_file(Path(path))
    except ImportError as exc:
        raise ObjectNotFound(
            f"Cannot import {path} to run flow run {flow_run.id} again: {exc}"
        ) from exc
    target: Any = module
    for part in qualname.split("."):
        target = getattr(target, part, None)
    if not is_flow(target):
        raise ObjectNotFound(f"{entrypoint} is not a flow (flow run {flow_run.id}).")
    found: FlowSpec = target
    return found


NO_INPUT: Any = object()
"""``run_input``'s default: the resumer gives no input."""


async def rerun_flow_run(flow_run_id: UUID, run_input: Any = NO_INPUT) -> State[Any]:
    """Run a crashed flow run's body again, in this process; return its final state.

    The run is first claimed: moved from Crashed to Scheduled ("Resuming") in one checked
    write, so of two processes re-running one run, one runs it. ``run_input`` is for a run
    that crashed while paused for input (its process died): it is checked as a resume's
    input and given to the pause, which the re-run passes.

    Raises:
        ObjectNotFound: no such run, or its flow cannot be loaded.
        NotPausedError: the run is not crashed (any more: someone else resumed it).
        InvalidRunInput: ``run_input`` does not fit what the paused run waited for, or the
            run waited for none.
    """
    async with runtime_scope() as runtime:
        given = _input_for_crashed_pause(runtime.backend, flow_run_id, run_input)
        transition = await runtime.orchestrator.ask(  # type: ignore[union-attr]
            ProposeState(
                "flow",
                flow_run_id,
                S.Scheduled(name="Resuming"),
                force=True,
                required_types=_CRASHED,
                run_input=given,
            )
        )
        if transition.status != "ACCEPT":
            raise NotPausedError(
                f"Cannot resume flow run {flow_run_id}: it is not crashed, suspended or paused "
                f"(it is {transition.state}); another process may have resumed it."
            )
        return await _run_again(runtime, transition.run)


def _input_for_crashed_pause(
    backend: Any, flow_run_id: UUID, run_input: Any
) -> RunInputWrite | None:
    """The input for the pause a crashed run was waiting in when its process died, if it
    was waiting for one.

    Raises:
        InvalidRunInput: it waits for input and none (or input that does not fit) was
            given, or input was given to a run that waited for none.
    """
    history = backend.read_state_history("flow", flow_run_id)
    before = history[-2] if len(history) >= 2 and history[-1].is_crashed() else None
    keyset = before.state_details.run_input_keyset if before and before.is_paused() else None
    if keyset is None:
        if run_input is not NO_INPUT:
            raise InvalidRunInput(
                f"Flow run {flow_run_id} crashed without waiting for input: resume it without one."
            )
        return None
    if run_input is NO_INPUT:
        raise InvalidRunInput(
            f"Flow run {flow_run_id} was paused for input when its process died: resume it "
            "with the input it waits for."
        )
    return RunInputWrite(
        keyset["response"], validated_input(backend, flow_run_id, keyset, run_input)
    )


async def run_resumed_flow_run(flow_run_id: UUID) -> State[Any]:
    """Run the body of a flow run this caller has just resumed (moved from Suspended to
    Scheduled "Resuming") again, in this process; return its final state.

    Raises:
        ObjectNotFound: the run's flow cannot be loaded.
    """
    async with runtime_scope() as runtime:
        flow_run = await runtime.orchestrator.ask(ReadRun("flow", flow_run_id))  # type: ignore[union-attr]
        return await _run_again(runtime, flow_run)


async def _run_again(runtime: Any, flow_run: FlowRun) -> State[Any]:
    flow = load_flow(flow_run)
    if not flow_run.empirical_policy.resuming:
        policy = flow_run.empirical_policy.model_copy(update={"resuming": True})
        flow_run = await runtime.orchestrator.ask(
            UpdateRun("flow", flow_run.id, {"empirical_policy": policy})
        )
    engine = FlowRunEngine(
        flow, dict(flow_run.parameters), None, runtime, WORKER_THREADS, None, existing=flow_run
    )
    return await engine.run()


_CRASHED = frozenset({StateType.CRASHED})
