"""Turning what user code did (returned, raised, was interrupted) into a proposed state."""

from __future__ import annotations

import types
from typing import Any

import anyio

from ..core import _states as S
from ..core._exceptions import CrashedRun, TerminationSignal, WorkerLost
from ..core._states import State, StateDetails, StateType
from ._interrupt import BodyInterrupted

__all__ = [
    "exception_to_crashed_state",
    "exception_to_failed_state",
    "format_exception",
    "is_cancellation",
    "return_value_to_state",
]


def format_exception(exc: BaseException) -> str:
    """Return ``"ValueError: message"`` for an exception."""
    return f"{type(exc).__name__}: {exc}"


def exception_to_failed_state(exc: BaseException, message: str = "", **kwargs: Any) -> State[Any]:
    """Return a Failed state carrying ``exc``; the message is ``message`` then the exception."""
    if message and not message.endswith(" "):
        message += " "
    return S.Failed(data=exc, message=message + format_exception(exc), **kwargs)


def is_cancellation(exc: BaseException) -> bool:
    """Whether ``exc`` is the running event loop's cancellation (False with no loop)."""
    try:
        cancelled = anyio.get_cancelled_exc_class()
    except Exception:  # no event loop runs here (a run driven on a plain thread)
        return False
    return isinstance(exc, cancelled)


def exception_to_crashed_state(exc: BaseException) -> State[Any]:
    """Return a Crashed state saying what stopped the run from outside its code."""
    if is_cancellation(exc):
        message = "Execution was cancelled by the runtime environment."
    elif isinstance(exc, KeyboardInterrupt):
        message = "Execution was aborted by an interrupt signal."
    elif isinstance(exc, TerminationSignal):
        message = "Execution was aborted by a termination signal."
    elif isinstance(exc, BodyInterrupted):
        message = (
            "Execution was interrupted by the run that called it (its timeout or its cancellation)."
        )
    elif isinstance(exc, WorkerLost):
        return S.Crashed(message=str(exc), data=CrashedRun(str(exc)))
    elif isinstance(exc, SystemExit):
        message = "Execution was aborted by Python system exit call."
    else:
        message = f"Execution was interrupted by an unexpected exception: {format_exception(exc)}"
    return S.Crashed(message=message, data=exc)


def _is_state_collection(value: Any) -> bool:
    return (
        isinstance(value, (list, tuple, set))
        and bool(value)
        and all(isinstance(item, State) for item in value)
    )


def return_value_to_state(value: Any, details: StateDetails | None = None) -> State[Any]:
    """Return the state a run takes when its function returned ``value`` (a Completed state
    carries ``details``, the run's own, when given).

    - A State the user built (not one of a run) is taken as is.
    - A run's State, or a list/tuple/set of them, aggregates: Completed if all completed,
      else Cancelled if any was cancelled, else Paused if any paused, else Failed; the
      states themselves become the data.
    - A generator is drained into a list; anything else is a Completed state's data.
    """
    if isinstance(value, State):
        details = value.state_details
        if details.flow_run_id is None and details.task_run_id is None:
            return value
        states = [value]
    elif _is_state_collection(value):
        states = list(value)
    else:
        if isinstance(value, types.GeneratorType):
            value = list(value)
        if details is None:
            return S.Completed(data=value)
        return S.Completed(data=value, state_details=details)

    total = len(states)
    counts: dict[StateType, int] = {}
    for state in states:
        counts[state.type] = counts.get(state.type, 0) + 1
    completed = counts.get(StateType.COMPLETED, 0)
    if completed == total:
        state_type, message = StateType.COMPLETED, "All states completed."
    elif counts.get(StateType.CANCELLED):
        state_type = StateType.CANCELLED
        message = f"{counts[StateType.CANCELLED]}/{total} states cancelled."
    elif counts.get(StateType.PAUSED):
        state_type = StateType.PAUSED
        message = f"{counts[StateType.PAUSED]}/{total} states paused."
    else:
        state_type = StateType.FAILED
        failed = counts.get(StateType.FAILED, 0) + counts.get(StateType.CRASHED, 0)
        if failed:
            message = f"{failed}/{total} states failed."
        else:
            not_final = sum(1 for s in states if not s.is_final())
            message = f"{not_final}/{total} states are not final."
    return State(type=state_type, message=message, data=value)
