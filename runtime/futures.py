"""Futures: the eventual outcome of a submitted (or queued) task run.

The public face of :mod:`runtime.engine._futures` and :mod:`runtime.engine._distributed`."""

from __future__ import annotations

from .engine._distributed import DistributedTaskRunFuture as DistributedTaskRunFuture
from .engine._futures import DoneAndNotDoneFutures as DoneAndNotDoneFutures
from .engine._futures import TaskRunFuture as TaskRunFuture
from .engine._futures import TaskRunFutureList as TaskRunFutureList
from .engine._futures import as_completed as as_completed
from .engine._futures import wait as wait

__all__ = [
    "DistributedTaskRunFuture",
    "DoneAndNotDoneFutures",
    "TaskRunFuture",
    "TaskRunFutureList",
    "as_completed",
    "wait",
]
