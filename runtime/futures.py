"""Futures: the eventual outcome of a submitted task run.

The public face of :mod:`runtime.engine._futures`."""

from __future__ import annotations

from .engine._futures import DoneAndNotDoneFutures as DoneAndNotDoneFutures
from .engine._futures import TaskRunFuture as TaskRunFuture
from .engine._futures import TaskRunFutureList as TaskRunFutureList
from .engine._futures import as_completed as as_completed
from .engine._futures import wait as wait

__all__ = [
    "DoneAndNotDoneFutures",
    "TaskRunFuture",
    "TaskRunFutureList",
    "as_completed",
    "wait",
]
