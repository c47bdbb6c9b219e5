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
from .cache_policies import DEFAULT as DEFAULT
from .cache_policies import FLOW_PARAMETERS as FLOW_PARAMETERS
from .cache_policies import INPUTS as INPUTS
from .cache_policies import NONE as NONE
from .cache_policies import RUN_ID as RUN_ID
from .cache_policies import TASK_SOURCE as TASK_SOURCE
from .flow_runs import cancel_flow_run as cancel_flow_run
from .flow_runs import pause_flow_run as pause_flow_run
from .flow_runs import resume_flow_run as resume_flow_run
from .flow_runs import suspend_flow_run as suspend_flow_run
from .flow_runs import wait_for_flow_run as wait_for_flow_run
from .futures import TaskRunFuture as TaskRunFuture
from .futures import as_completed as as_completed
from .futures import wait as wait
from .input import RunInput as RunInput
from .states import State as State
from .states import StateType as StateType
from .transactions import Transaction as Transaction
from .transactions import get_transaction as get_transaction
from .transactions import transaction as transaction

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
    "RunInput",
    "Runtime",
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
    "cancel_flow_run",
    "flow",
    "get_run_context",
    "get_run_logger",
    "get_transaction",
    "pause_flow_run",
    "quote",
    "resume_flow_run",
    "suspend_flow_run",
    "tags",
    "task",
    "transaction",
    "unmapped",
    "wait",
    "wait_for_flow_run",
]
