"""Task runners: where the bodies of submitted task runs execute.

``ThreadPoolTaskRunner`` (the default) and ``ConcurrentTaskRunner`` run them in the flow's
process; ``DaskTaskRunner`` on a Dask cluster (the ``stageflow[dask]`` extra), with
``get_dask_client()`` for Dask collections inside a task body, as in prefect-dask.

The public face of :mod:`runtime.engine._task_runners` and :mod:`runtime.engine._dask`."""

from __future__ import annotations

from .engine._dask import DaskTaskRunner as DaskTaskRunner
from .engine._dask import get_dask_client as get_dask_client
from .engine._task_runners import ConcurrentTaskRunner as ConcurrentTaskRunner
from .engine._task_runners import TaskRunner as TaskRunner
from .engine._task_runners import ThreadPoolTaskRunner as ThreadPoolTaskRunner

__all__ = [
    "ConcurrentTaskRunner",
    "DaskTaskRunner",
    "TaskRunner",
    "ThreadPoolTaskRunner",
    "get_dask_client",
]
