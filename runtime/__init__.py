"""stageflow's workflow engine: flows and tasks as supervised actors.

Prefect 3's programming model as a library: ``@flow``, ``@task``, states, retries,
timeouts, futures, mapping, subflows and hooks, running under asyncio or trio.
"""

from __future__ import annotations

from ._context import FlowRunContext as FlowRunContext
from ._context import TaskRunContext as TaskRunContext
from ._context import get_run_context as get_run_context
from ._context import tags as tags
from ._exceptions import MissingContextError as MissingContextError
from ._exceptions import ParameterTypeError as ParameterTypeError
from ._flow import Flow as Flow
from ._flow import flow as flow
from ._logging import RUN_LOG_FORMAT as RUN_LOG_FORMAT
from ._logging import get_run_logger as get_run_logger
from ._models import FlowRun as FlowRun
from ._models import TaskRun as TaskRun
from ._runtime import Runtime as Runtime
from ._task import Task as Task
from ._task import task as task
from .annotations import allow_failure as allow_failure
from .annotations import quote as quote
from .annotations import unmapped as unmapped
from .futures import TaskRunFuture as TaskRunFuture
from .futures import as_completed as as_completed
from .futures import wait as wait
from .states import State as State
from .states import StateType as StateType

__all__ = [
    "Flow",
    "FlowRun",
    "FlowRunContext",
    "MissingContextError",
    "ParameterTypeError",
    "RUN_LOG_FORMAT",
    "Runtime",
    "State",
    "StateType",
    "Task",
    "TaskRun",
    "TaskRunContext",
    "TaskRunFuture",
    "allow_failure",
    "as_completed",
    "flow",
    "get_run_context",
    "get_run_logger",
    "quote",
    "tags",
    "task",
    "unmapped",
    "wait",
]
