"""Run contexts: what code running inside a flow run or task run can see.

The contexts live in context variables, so they follow the code: into child tasks, into
the worker thread or waiting thread that runs a sync body, and across the global-loop
hop (which copies the caller's context).
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from datetime import datetime
from typing import TYPE_CHECKING, Any, Iterator

import attrs

from ..core._exceptions import MissingContextError
from ._specs import FlowSpec, TaskSpec

if TYPE_CHECKING:
    from ..core._models import FlowRun, TaskRun
    from ..orchestration._runtime import Runtime

__all__ = [
    "FlowRunContext",
    "TaskRunContext",
    "current_tags",
    "get_run_context",
    "tags",
]


@attrs.define(eq=False)
class FlowRunContext:
    """The context of a running flow run.

    Attributes:
        flow: the flow being run.
        flow_run: the flow run record (id, name, run_count, state, ...).
        parameters: the validated parameters of the call.
        log_prints: whether ``print`` goes to the run logger.
        start_time: when the current attempt started.
    """

    flow: FlowSpec
    flow_run: FlowRun
    parameters: dict[str, Any]
    log_prints: bool
    start_time: datetime
    runtime: Runtime = attrs.field(repr=False)
    task_runner: Any = attrs.field(repr=False, default=None)
    task_host: Any = attrs.field(repr=False, default=None)
    result_settings: Any = attrs.field(repr=False, default=None)
    dynamic_keys: dict[str, int] = attrs.field(repr=False, factory=dict)
    observed_pauses: int = attrs.field(repr=False, default=0)
    # The flow run's actor (a FlowRunActor) and the thread of its loop: the runs it calls
    # on that thread attach to it.
    actor: Any = attrs.field(repr=False, default=None)
    actor_thread: int | None = attrs.field(repr=False, default=None)
    # Set when the engine stopped waiting for this attempt's body (timeout, cancellation):
    # a sync body that runs on regardless gets this error from its next task or subflow
    # call, instead of starting runs in a flow run that is over.
    abandoned: BaseException | None = attrs.field(repr=False, default=None)

    def next_dynamic_key(self, task_key: str) -> str:
        """Return the next dynamic key for ``task_key`` in this flow run: "0", "1", ..."""
        count = self.dynamic_keys.get(task_key, 0)
        self.dynamic_keys[task_key] = count + 1
        return str(count)

    @classmethod
    def get(cls) -> FlowRunContext | None:
        """Return the current flow run context, or None outside a flow run."""
        return _flow_run_context.get()


@attrs.define(eq=False)
class TaskRunContext:
    """The context of a running task run.

    Attributes:
        task: the task being run.
        task_run: the task run record (id, name, run_count, state, ...).
        parameters: the resolved parameters of the call.
        log_prints: whether ``print`` goes to the run logger.
        start_time: when the current attempt started.
    """

    task: TaskSpec
    task_run: TaskRun
    parameters: dict[str, Any]
    log_prints: bool
    start_time: datetime
    result_settings: Any = attrs.field(repr=False, default=None)

    @classmethod
    def get(cls) -> TaskRunContext | None:
        """Return the current task run context, or None outside a task run."""
        return _task_run_context.get()


_flow_run_context: ContextVar[FlowRunContext | None] = ContextVar(
    "stageflow_flow_run_context", default=None
)
_task_run_context: ContextVar[TaskRunContext | None] = ContextVar(
    "stageflow_task_run_context", default=None
)
_tags: ContextVar[frozenset[str]] = ContextVar("stageflow_tags", default=frozenset())


def get_run_context() -> TaskRunContext | FlowRunContext:
    """Return the context of the task run or flow run this code runs in.

    Raises:
        MissingContextError: outside any flow run or task run.
    """
    task_ctx = _task_run_context.get()
    if task_ctx is not None:
        return task_ctx
    flow_ctx = _flow_run_context.get()
    if flow_ctx is not None:
        return flow_ctx
    raise MissingContextError(
        "No run context available. You are not in a flow or task run context."
    )


@contextlib.contextmanager
def tags(*new_tags: str) -> Iterator[frozenset[str]]:
    """Add tags to every flow run and task run created inside this block.

    Yields:
        The full set of tags now in effect.
    """
    current = _tags.get() | frozenset(new_tags)
    token = _tags.set(current)
    try:
        yield current
    finally:
        _tags.reset(token)


def current_tags() -> frozenset[str]:
    """Return the tags added by enclosing :func:`tags` blocks."""
    return _tags.get()


@contextlib.contextmanager
def entered(var: ContextVar[Any], value: Any) -> Iterator[None]:
    """Set ``var`` to ``value`` for the duration of the block."""
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)
