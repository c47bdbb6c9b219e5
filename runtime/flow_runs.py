"""Controlling flow runs (pause, suspend, resume, cancel, wait) and reading them.

The public face of :mod:`runtime.api._flow_runs` and :mod:`runtime.api._read`."""

from __future__ import annotations

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

__all__ = [
    "cancel_flow_run",
    "pause_flow_run",
    "read_flow_run",
    "read_flow_runs",
    "read_state_history",
    "read_task_run",
    "read_task_runs",
    "resume_flow_run",
    "suspend_flow_run",
    "wait_for_flow_run",
]
