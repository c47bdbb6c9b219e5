"""Exceptions raised by the workflow engine.

Signals (``Pause``, ``Abort``, ``TerminationSignal``) derive from ``BaseException`` so user
code that catches ``Exception`` does not swallow them, and the engine does not mistake them
for crashes.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "Abort",
    "CancelledRun",
    "ConfigurationError",
    "CrashedRun",
    "FailedRun",
    "FlowPauseTimeout",
    "FlowRunTimeoutError",
    "FlowRunWaitTimeout",
    "InvalidRunInput",
    "MappingLengthMismatch",
    "MappingMissingIterable",
    "MissingContextError",
    "MissingResult",
    "NotPausedError",
    "ObjectNotFound",
    "ParameterBindError",
    "ParameterTypeError",
    "Pause",
    "PausedRun",
    "ResultSerializationError",
    "SchedulesFailed",
    "StageflowError",
    "StoreClosed",
    "StoreError",
    "TaskRunTimeoutError",
    "TerminationSignal",
    "UnfinishedRun",
    "UpstreamTaskError",
]


class StageflowError(Exception):
    """Base class of the engine's ordinary errors."""


class MissingContextError(StageflowError, RuntimeError):
    """Raised when an API that needs a flow or task run context is used outside of one."""


class ParameterTypeError(StageflowError, TypeError):
    """Raised when flow parameters fail validation against the function's annotations."""


class ParameterBindError(StageflowError, TypeError):
    """Raised when call arguments do not bind to the flow or task signature."""


class MappingLengthMismatch(StageflowError, ValueError):
    """Raised when ``Task.map`` receives iterables of different lengths."""


class MappingMissingIterable(StageflowError, ValueError):
    """Raised when ``Task.map`` receives no iterable argument to map over."""


class UpstreamTaskError(StageflowError):
    """Raised when an upstream task run did not complete, so a downstream run cannot start.

    The downstream run stays Pending, named ``NotReady``; calling it, or asking its future
    or state for the result, raises this error. Its message names the upstream run and its
    state, and its ``__cause__`` is the upstream's exception.
    """


class TaskRunTimeoutError(TimeoutError):
    """Raised when a task run exceeds its ``timeout_seconds``."""


class FlowRunTimeoutError(TimeoutError):
    """Raised when a flow run exceeds its ``timeout_seconds``."""


class FlowPauseTimeout(StageflowError, TimeoutError):
    """Raised when a paused flow run was not resumed before its pause timeout."""


class FlowRunWaitTimeout(StageflowError, TimeoutError):
    """Raised when ``wait_for_flow_run`` gives up before the run reached a final state."""


class ObjectNotFound(StageflowError, LookupError):
    """Raised when a flow run or task run id is not in the store."""


class InvalidRunInput(StageflowError, ValueError):
    """Raised to a resumer whose input is missing or does not match what the run waits for.

    The run stays paused, so it can be resumed again with good input.
    """


class NotPausedError(StageflowError, RuntimeError):
    """Raised when ``resume_flow_run`` is called for a run that is not paused."""


class StoreClosed(StageflowError, RuntimeError):
    """Raised when a store is used after it was closed, or cannot be opened."""


class StoreError(StageflowError, RuntimeError):
    """Raised when a store file cannot be opened, read or written (unreadable, corrupt, or
    locked by another process for longer than the store waits)."""


class ConfigurationError(StageflowError, ValueError):
    """Raised when an option or a store URL is invalid."""


class ResultSerializationError(StageflowError, TypeError):
    """Raised when a result cannot be serialized with the configured serializer."""


class UnfinishedRun(StageflowError, RuntimeError):
    """Raised when the result of a run that is not final is requested."""


class MissingResult(StageflowError, RuntimeError):
    """Raised when a state's result was neither kept in memory nor persisted."""


class FailedRun(StageflowError):
    """Raised by ``State.result()`` for a Failed state that carries no exception."""


class CrashedRun(StageflowError):
    """Raised by ``State.result()`` for a Crashed state that carries no exception."""


class CancelledRun(StageflowError):
    """Raised by ``State.result()`` for a Cancelled state."""


class SchedulesFailed(StageflowError, RuntimeError):
    """Raised by ``serve``/``aserve`` when every schedule they serve stopped because its
    runs crashed more often than its restart policy allows."""


class PausedRun(StageflowError):
    """Raised by ``State.result()`` for a Paused state, whose result is not available yet."""

    def __init__(self, message: str, state: Any = None) -> None:
        super().__init__(message)
        self.state = state


class EngineSignal(BaseException):
    """Base class of control-flow signals the engine raises through user code."""


class Pause(EngineSignal):
    """Raised inside a flow run to leave the body because the run was suspended."""

    def __init__(self, message: str = "", state: Any = None) -> None:
        super().__init__(message)
        self.state = state


class Abort(EngineSignal):
    """Raised when the orchestrator aborts a proposed transition."""


class WorkerLost(BaseException):
    """Raised out of a task run's body call when the worker running the body elsewhere (a
    Dask worker) died or was lost: the run ends Crashed, with this message; its result
    raises :class:`CrashedRun`. Not an ``Exception``, so the run is not retried as a failure."""


class TerminationSignal(BaseException):
    """Raised in a flow process that received SIGTERM."""

    def __init__(self, signal: int) -> None:
        super().__init__(f"Received termination signal {signal}")
        self.signal = signal
