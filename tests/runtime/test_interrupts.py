"""Sync bodies stop when their run stops: timeouts and cancellations raise into the body's
thread (on the main thread through SIGALRM, which also breaks a blocking sleep), retries
really run the body again, and a body stuck in a call that cannot be interrupted is
abandoned with a warning.

Bodies count how much of their work they did; the assertions are about that count (the
body did not run to its end), never about elapsed time.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest
from engine_support import isolated_home, only_flow_run, state_names, task_runs_of  # noqa: F401

from runtime import Runtime, cancel_flow_run, flow, get_run_context, task

SLICES = 200  # 10 s of 0.05 s slices: a body that runs them all was never interrupted


def _slices(done: list[int]) -> None:
    for _ in range(SLICES):
        time.sleep(0.05)
        done.append(1)


def test_a_sync_flow_timeout_stops_its_body(sync_runtime: Runtime) -> None:
    done: list[int] = []

    @flow(timeout_seconds=0.3)
    def sliced() -> None:
        _slices(done)

    state = sliced(return_state=True)
    assert state.name == "TimedOut" and state.is_failed()
    assert len(done) < SLICES


def test_a_sync_flow_timeout_stops_a_body_off_the_main_thread(sync_runtime: Runtime) -> None:
    """Off the main thread the interruption is raised at the body's next bytecode."""
    done: list[int] = []
    states: list[Any] = []

    @flow(timeout_seconds=0.3)
    def sliced() -> None:
        _slices(done)

    def call() -> None:
        with Runtime(store=sync_runtime.backend, loop=sync_runtime.sync_loop):
            states.append(sliced(return_state=True))

    worker = threading.Thread(target=call)
    worker.start()
    worker.join(30)
    assert [s.name for s in states] == ["TimedOut"]
    assert len(done) < SLICES


def test_each_retry_of_a_timed_out_sync_task_runs_its_body(sync_runtime: Runtime) -> None:
    """timeout_seconds with retries: the body is stopped each time, and each retry runs it
    again (it used to run once, the retries queued behind the abandoned body)."""
    attempts: list[int] = []

    @task(timeout_seconds=0.2, retries=2)
    def slow() -> None:
        attempts.append(get_run_context().task_run.run_count)  # type: ignore[union-attr]
        _slices([])

    @flow
    def pipeline() -> Any:
        return slow(return_state=True).name

    assert pipeline() == "TimedOut"
    assert attempts == [1, 2, 3]
    (run,) = task_runs_of(sync_runtime, only_flow_run(sync_runtime).id)
    assert state_names(sync_runtime, run) == [
        "Pending",
        "Running",
        "Retrying",
        "Retrying",
        "TimedOut",
    ]


def test_a_parent_timeout_stops_a_sync_subflow_in_a_blocking_sleep(
    sync_runtime: Runtime,
) -> None:
    """On the main thread, the timer signal breaks a plain time.sleep too."""
    finished: list[str] = []

    @flow
    def child() -> None:
        time.sleep(30)
        finished.append("child")

    @flow(timeout_seconds=0.3)
    def parent() -> None:
        child()
        finished.append("parent")

    state = parent(return_state=True)
    assert state.name == "TimedOut"
    assert finished == []
    (child_run,) = sync_runtime.backend.read_flow_runs(flow_name="child")  # type: ignore[union-attr]
    assert child_run.state is not None and child_run.state.is_final()
    assert not child_run.state.is_completed()


def test_cancelling_a_sync_flow_stops_its_body(sync_runtime: Runtime) -> None:
    done: list[int] = []
    started = threading.Event()
    run_ids: list[Any] = []

    @flow
    def sliced() -> None:
        run_ids.append(get_run_context().flow_run.id)  # type: ignore[union-attr]
        started.set()
        _slices(done)

    def cancel() -> None:
        assert started.wait(30)
        with Runtime(store=sync_runtime.backend, loop=sync_runtime.sync_loop):
            cancel_flow_run(run_ids[0])

    canceller = threading.Thread(target=cancel)
    canceller.start()
    state = sliced(return_state=True)
    canceller.join(30)
    assert state.is_cancelled()
    assert len(done) < SLICES


def test_a_stuck_worker_thread_body_is_abandoned_with_a_warning(
    sync_runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    """A submitted sync body stuck in a call that reaches no bytecode (a long sleep on a
    worker thread) cannot be interrupted: the run ends TimedOut without it, with a warning,
    and its late result is ignored."""
    release = threading.Event()

    @task(timeout_seconds=0.1)
    def stuck() -> str:
        release.wait(30)  # a C-level wait: an exception raised into the thread waits for it
        return "late"

    @flow
    def pipeline() -> Any:
        return stuck.submit().result(raise_on_failure=False)

    try:
        with caplog.at_level(logging.WARNING, logger="stageflow"):
            result = pipeline()
    finally:
        release.set()
    assert isinstance(result, TimeoutError)
    warnings = [r.getMessage() for r in caplog.records]
    warnings = [message for message in warnings if "is abandoned on its thread" in message]
    assert warnings and warnings[0].startswith("Task run 'stuck-0' did not stop"), warnings
