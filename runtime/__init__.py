"""stageflow's workflow engine: flows and tasks as supervised actors.

Prefect 3's programming model as a library: ``@flow``, ``@task``, states, retries,
timeouts, futures, mapping, subflows and hooks, running under asyncio or trio; and
long-running pipelines: schedules served in-process (``flow.serve``, ``serve``, ``aserve``).
"""

from __future__ import annotations

from .api._flow import Flow as Flow
from .api._flow import flow as flow
from .api._flow_runs import cancel_flow_run as cancel_flow_run
from .api._flow_runs import pause_flow_run as pause_flow_run
from .api._flow_runs import resume_flow_run as resume_flow_run
from .api._flow_runs import suspend_flow_run as suspend_flow_run
from .api._flow_runs import wait_for_flow_run as wait_for_flow_run
from .api._read import read_flow_run as read_flow_run
from .api._read import read_flow_runs as read_flow_runs
from .api._read import read_state_history as read_state_history
from .api._read import read_task_run as read_task_run
from .api._read import read_task_runs as read_task_runs
from .api._schedules import Restart as Restart
from .api._schedules import Schedule as Schedule
from .api._serve import aserve as aserve
from .api._serve import serve as serve
from .api._task import Task as Task
from .api._task import task as task
from .core._annotations import allow_failure as allow_failure
from .core._annotations import quote as quote
from .core._annotations import unmapped as unmapped
from .core._exceptions import MissingContextError as MissingContextError
from .core._exceptions import ParameterTypeError as ParameterTypeError
from .core._input import RunInput as RunInput
from .core._models import FlowRun as FlowRun
from .core._models import TaskRun as TaskRun
from .core._states import State as State
from .core._states import StateType as StateType
from .engine._cache_policies import DEFAULT as DEFAULT
from .engine._cache_policies import FLOW_PARAMETERS as FLOW_PARAMETERS
from .engine._cache_policies import INPUTS as INPUTS
from .engine._cache_policies import NONE as NONE
from .engine._cache_policies import RUN_ID as RUN_ID
from .engine._cache_policies import TASK_SOURCE as TASK_SOURCE
from .engine._context import FlowRunContext as FlowRunContext
from .engine._context import TaskRunContext as TaskRunContext
from .engine._context import get_run_context as get_run_context
from .engine._context import tags as tags
from .engine._futures import TaskRunFuture as TaskRunFuture
from .engine._futures import as_completed as as_completed
from .engine._futures import wait as wait
from .engine._logging import RUN_LOG_FORMAT as RUN_LOG_FORMAT
from .engine._logging import get_run_logger as get_run_logger
from .engine._transactions import Transaction as Transaction
from .engine._transactions import get_transaction as get_transaction
from .engine._transactions import transaction as transaction
from .orchestration._runtime import Runtime as Runtime

__all__ = [
    "DEFAULT",
    "FLOW_PARAMETERS",
    "Flow",
    "FlowRun",
    "FlowRunContext",
    "INPUTS",
    "MissingContextError",
    "NONE",
    "ParameterTypeError",
    "RUN_ID",
    "RUN_LOG_FORMAT",
    "Restart",
    "RunInput",
    "Runtime",
    "Schedule",
    "State",
    "StateType",
    "TASK_SOURCE",
    "Task",
    "TaskRun",
    "TaskRunContext",
    "TaskRunFuture",
    "Transaction",
    "allow_failure",
    "as_completed",
    "aserve",
    "cancel_flow_run",
    "flow",
    "get_run_context",
    "get_run_logger",
    "get_transaction",
    "pause_flow_run",
    "quote",
    "read_flow_run",
    "read_flow_runs",
    "read_state_history",
    "read_task_run",
    "read_task_runs",
    "resume_flow_run",
    "serve",
    "suspend_flow_run",
    "tags",
    "task",
    "transaction",
    "unmapped",
    "wait",
    "wait_for_flow_run",
]
