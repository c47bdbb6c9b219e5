"""Run loggers and ``log_prints``.

Records go to the standard ``logging`` module under ``stageflow.flow_runs`` and
``stageflow.task_runs`` and carry ``flow_run_name``/``flow_run_id``/``flow_name`` (and
``task_run_name``/``task_run_id``/``task_name`` for task runs) as record attributes.
Until the program configures logging, they show on stderr through the console handler
this module installs on the ``stageflow`` logger (see :mod:`runtime.engine._console`);
the root logger is never touched. A program that configures logging itself can use
:data:`RUN_LOG_FORMAT` to show which run a line belongs to.
"""

from __future__ import annotations

import builtins
import logging
import sys
import threading
from contextvars import ContextVar
from typing import Any, MutableMapping

from ..core._exceptions import MissingContextError
from ._console import install_console_handler
from ._context import FlowRunContext, TaskRunContext

__all__ = [
    "RUN_LOG_FORMAT",
    "RunLogger",
    "flow_run_logger",
    "get_run_logger",
    "install_print_patch",
    "log_prints_enabled",
    "task_run_logger",
]

RUN_LOG_FORMAT = "%(asctime)s | %(levelname)-7s | %(run_label)s - %(message)s"
"""A log format that prefixes each line with ``Flow run 'name'`` or ``Task run 'name'``
(for records of run loggers only: others have no ``run_label``)."""

install_console_handler()  # run logs show with no setup, as in Prefect (see ._console)

engine_logger = logging.getLogger("stageflow.engine")
_flow_runs = logging.getLogger("stageflow.flow_runs")
_task_runs = logging.getLogger("stageflow.task_runs")


class RunLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger adapter that adds the run's identity to every record it emits."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        extra = kwargs.get("extra")
        kwargs["extra"] = self.extra if not extra else {**self.extra, **extra}  # type: ignore[dict-item]
        return msg, kwargs


def flow_run_logger(flow_run: Any, flow: Any = None) -> RunLogger:
    """Return a logger whose records name ``flow_run`` (and ``flow``)."""
    return RunLogger(
        _flow_runs,
        {
            "flow_run_name": flow_run.name,
            "flow_run_id": str(flow_run.id),
            "flow_name": getattr(flow, "name", None) or getattr(flow_run, "flow_name", None),
            "run_label": f"Flow run {flow_run.name!r}",
        },
    )


def task_run_logger(
    task_run: Any, task: Any = None, flow_run: Any = None, flow: Any = None
) -> RunLogger:
    """Return a logger whose records name ``task_run`` and, if given, its flow run."""
    extra = {
        "task_run_id": str(task_run.id),
        "task_run_name": task_run.name,
        "task_name": getattr(task, "name", None),
        "run_label": f"Task run {task_run.name!r}",
    }
    if flow_run is not None:
        extra["flow_run_id"] = str(flow_run.id)
        extra["flow_run_name"] = flow_run.name
        extra["flow_name"] = getattr(flow, "name", None) or getattr(flow_run, "flow_name", None)
    return RunLogger(_task_runs, extra)


def get_run_logger() -> RunLogger:
    """Return the logger of the current task run, or else of the current flow run.

    Raises:
        MissingContextError: called outside of a flow run or task run.
    """
    task_ctx = TaskRunContext.get()
    flow_ctx = FlowRunContext.get()
    if task_ctx is not None:
        return task_run_logger(
            task_ctx.task_run,
            task_ctx.task,
            flow_ctx.flow_run if flow_ctx is not None else None,
            flow_ctx.flow if flow_ctx is not None else None,
        )
    if flow_ctx is not None:
        return flow_run_logger(flow_ctx.flow_run, flow_ctx.flow)
    raise MissingContextError(
        "There is no active flow or task run context: get_run_logger() works inside a flow "
        "or task. Outside of one, use logging.getLogger(...)."
    )


# -- log_prints -----------------------------------------------------------------------

_log_prints: ContextVar[bool] = ContextVar("stageflow_log_prints", default=False)
_original_print = builtins.print
_patch_lock = threading.Lock()
_patched = False


def log_prints_enabled() -> ContextVar[bool]:
    """The context variable that says whether ``print`` goes to the run logger here."""
    return _log_prints


def _print(
    *args: Any, sep: str | None = " ", end: str | None = "\n", file: Any = None, flush: bool = False
) -> None:
    if _log_prints.get() and (file is None or file is sys.stdout):
        try:
            logger = get_run_logger()
        except MissingContextError:
            pass
        else:
            if logger.isEnabledFor(logging.INFO):  # else print it: a print is never lost
                logger.info((" " if sep is None else sep).join(str(arg) for arg in args))
                return
    _original_print(*args, sep=sep, end=end, file=file, flush=flush)


def install_print_patch() -> None:
    """Route ``print`` through the run logger wherever ``log_prints`` is on.

    Installed once, the first time a run with ``log_prints=True`` starts; elsewhere the
    replacement defers to the original ``print``.
    """
    global _patched
    with _patch_lock:
        if not _patched:
            builtins.print = _print
            _patched = True
