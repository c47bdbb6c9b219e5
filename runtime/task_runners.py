"""Task runners: where the bodies of submitted task runs execute.

The public face of :mod:`runtime.engine._task_runners`."""

from __future__ import annotations

from .engine._task_runners import ConcurrentTaskRunner as ConcurrentTaskRunner
from .engine._task_runners import TaskRunner as TaskRunner
from .engine._task_runners import ThreadPoolTaskRunner as ThreadPoolTaskRunner

__all__ = [
    "ConcurrentTaskRunner",
    "TaskRunner",
    "ThreadPoolTaskRunner",
]
