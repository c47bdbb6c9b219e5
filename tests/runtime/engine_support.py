"""Helpers shared by the engine behaviour tests (test_flows, test_tasks, ...).

Not a test module: the engine test modules import from it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from runtime import FlowRun, Runtime, State, TaskRun

__all__ = [
    "StoreUrl",
    "flow_run_named",
    "isolated_home",
    "messages",
    "only_flow_run",
    "records_of",
    "state_history",
    "state_names",
    "task_runs_of",
    "wait_until",
]

StoreUrl = Callable[[Path], str]
"""Makes the URL of a new shared store, given a directory of the test's (the
``store_url`` fixture of ``conftest.py``)."""


@pytest.fixture(autouse=True, scope="session")
def isolated_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep sync runs (which use the process's default store) out of ``~/.stageflow``."""
    patcher = pytest.MonkeyPatch()
    patcher.setenv("STAGEFLOW_HOME", str(tmp_path_factory.mktemp("stageflow-home")))
    yield
    patcher.undo()


def only_flow_run(rt: Runtime) -> FlowRun:
    """Return the one top-level flow run in ``rt``'s store."""
    assert rt.backend is not None
    runs = [run for run in rt.backend.read_flow_runs() if run.parent_task_run_id is None]
    assert len(runs) == 1, runs
    return runs[0]


def flow_run_named(rt: Runtime, flow_name: str) -> FlowRun:
    """Return the one flow run of ``flow_name`` in ``rt``'s store."""
    assert rt.backend is not None
    runs = rt.backend.read_flow_runs(flow_name=flow_name)
    assert len(runs) == 1, runs
    return runs[0]


def task_runs_of(rt: Runtime, flow_run_id: UUID | None) -> list[TaskRun]:
    """Return the task runs of ``flow_run_id`` (None: those outside any flow), by dynamic key."""
    assert rt.backend is not None
    runs = [run for run in rt.backend.read_task_runs() if run.flow_run_id == flow_run_id]
    return sorted(
        runs,
        key=lambda run: (run.task_key, int(run.dynamic_key) if run.dynamic_key.isdigit() else 0),
    )


def state_history(rt: Runtime, run: FlowRun | TaskRun) -> list[State[Any]]:
    """Return the states ``run`` went through, from ``rt``'s store."""
    assert rt.backend is not None
    kind = "flow" if isinstance(run, FlowRun) else "task"
    return rt.backend.read_state_history(kind, run.id)


def state_names(rt: Runtime, run: FlowRun | TaskRun) -> list[str]:
    """Return the names of the states ``run`` went through."""
    return [state.name or "" for state in state_history(rt, run)]


def records_of(caplog: pytest.LogCaptureFixture, logger: str) -> list[logging.LogRecord]:
    """Return the captured records of ``logger`` (and its children)."""
    return [r for r in caplog.records if r.name == logger or r.name.startswith(logger + ".")]


def messages(caplog: pytest.LogCaptureFixture, logger: str = "stageflow") -> list[str]:
    """Return the formatted messages captured from ``logger`` (and its children)."""
    return [r.getMessage() for r in records_of(caplog, logger)]


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    """Poll ``predicate`` (another process's progress, read from a store) until it returns
    something true, and return that; fail after ``timeout`` seconds, naming ``what``."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return value
