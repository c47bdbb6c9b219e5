"""A Dask worker plugin: the flow files of the flow's process, imported on every worker.

A flow started from a file (``stageflow run FILE.py:flow``, ``serve``, a resumed run) has
its tasks and helpers in a module named after the file
(:mod:`runtime.core._flow_files`), which Dask workers cannot import by that name: a task
body pickled by reference to it would fail to load there (``ModuleNotFoundError``). This
plugin imports those files on each worker, and on each worker that joins later, under the
same names. It is imported only where ``distributed`` is.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from ..core._flow_files import import_flow_file

__all__ = ["FlowFiles"]

_logger = logging.getLogger("stageflow.task_runners")


class FlowFiles(WorkerPlugin):
    """Import ``paths`` (flow files) on a Dask worker when it starts, as the flow's
    process did. A file the worker's machine does not have is skipped (the task bodies it
    defines cannot run there: install the code on the workers)."""

    name = "stageflow-flow-files"

    def __init__(self, paths: Iterable[str]) -> None:
        self.paths = tuple(paths)

    def setup(self, worker: Any) -> None:
        for path in self.paths:
            if not Path(path).is_file():
                _logger.warning(
                    "Dask worker %s has no file %s: task bodies defined in it cannot run "
                    "there; install the code on the workers.",
                    getattr(worker, "address", "?"),
                    path,
                )
                continue
            try:
                import_flow_file(Path(path))
            except Exception:  # the flow's process imported it: say why it fails here
                _logger.exception("Dask worker could not import the flow file %s", path)
