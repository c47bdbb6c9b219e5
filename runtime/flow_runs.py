"""Controlling flow runs: pause, suspend, resume, cancel, wait.

The public face of :mod:`runtime.api._flow_runs`."""

from __future__ import annotations

from .api._flow_runs import cancel_flow_run as cancel_flow_run
from .api._flow_runs import pause_flow_run as pause_flow_run
from .api._flow_runs import resume_flow_run as resume_flow_run
from .api._flow_runs import suspend_flow_run as suspend_flow_run
from .api._flow_runs import wait_for_flow_run as wait_for_flow_run

__all__ = [
    "cancel_flow_run",
    "pause_flow_run",
    "resume_flow_run",
    "suspend_flow_run",
    "wait_for_flow_run",
]
