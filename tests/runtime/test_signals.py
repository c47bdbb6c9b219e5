"""SIGTERM on a flow process: its runs are reported Crashed, hooks run, the process ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

SYNC_FLOW = """
    import threading, time
    from runtime import flow, task

    def crashed(flow, run, state):
        print("on_crashed", state.name, state.message, flush=True)

    @task
    def step() -> int:
        return 1

    @flow(on_crashed=[crashed])
    def work() -> None:
        step()
        print("started", flush=True)
        while True:
            time.sleep(0.01)

    work()
"""

ASYNC_FLOW = """
    import sys
    import anyio
    from runtime import flow

    def crashed(flow, run, state):
        print("on_crashed", state.name, state.message, flush=True)

    @flow(on_crashed=[crashed])
    async def work() -> None:
        print("started", flush=True)
        await anyio.sleep_forever()

    anyio.run(work, backend=sys.argv[1])
"""


def _terminate(tmp_path: Path, source: str, *args: str) -> tuple[int, str]:
    script = tmp_path / "flow_process.py"
    script.write_text(textwrap.dedent(source))
    process = subprocess.Popen(
        [sys.executable, str(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "started"
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=30)
    return process.returncode, out + err


def test_sigterm_crashes_a_sync_flow_run_and_runs_on_crashed(tmp_path: Path) -> None:
    code, output = _terminate(tmp_path, SYNC_FLOW)
    assert "on_crashed Crashed Execution was aborted by a termination signal." in output
    assert "TerminationSignal" in output
    assert code != 0


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_sigterm_crashes_an_async_flow_run(tmp_path: Path, backend: str) -> None:
    code, output = _terminate(tmp_path, ASYNC_FLOW, backend)
    assert "on_crashed Crashed Execution was aborted by a termination signal." in output
    assert code != 0


# -- signals that land while hooks run -------------------------------------------------------
#
# Each flow process records its runs in an SQLite file of the test's own; after the process
# has ended, the test reads what the store says and what the hooks printed.

HOOK_SIGNAL_FLOW = """
    import os, signal, sys
    from runtime import flow, task

    SIGNAL = getattr(signal, sys.argv[1])

    def completed(flow, run, state):
        print("on_completion", state.name, flush=True)
        os.kill(os.getpid(), SIGNAL)
        print("on_completion went on", flush=True)

    def crashed(flow, run, state):
        print("on_crashed", state.name, flush=True)

    def task_completed(task, run, state):
        print("task on_completion", state.name, flush=True)
        if sys.argv[2] == "task":
            os.kill(os.getpid(), SIGNAL)

    @task(on_completion=[task_completed])
    def step() -> int:
        return 1

    @flow(on_completion=[completed], on_crashed=[crashed])
    def work() -> int:
        return step()

    work()
"""

ASYNC_HOOK_SIGNAL_FLOW = """
    import os, signal, sys
    import anyio
    from runtime import flow

    SIGNAL = getattr(signal, sys.argv[1])

    def completed(flow, run, state):
        print("on_completion", state.name, flush=True)
        os.kill(os.getpid(), SIGNAL)

    def crashed(flow, run, state):
        print("on_crashed", state.name, flush=True)

    @flow(on_completion=[completed], on_crashed=[crashed])
    async def work() -> int:
        return 1

    anyio.run(work, backend=sys.argv[2])
"""

SECOND_SIGTERM_FLOW = """
    import os, signal, sys, time
    from runtime import flow

    def crashed(flow, run, state):
        print("on_crashed", state.name, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
        print("on_crashed went on", flush=True)

    def failed(flow, run, state):
        print("on_failure", state.name, flush=True)

    @flow(on_crashed=[crashed], on_failure=[failed])
    def work() -> None:
        print("started", flush=True)
        while True:
            time.sleep(0.01)

    work()
"""


def _run_flow_process(
    tmp_path: Path, source: str, *args: str, terminate: bool = False
) -> tuple[str, list[tuple[str, list[str]]]]:
    """Run ``source`` in a process with its own store; return its output and, per run in
    the store (flow runs first), its kind and state history."""
    from runtime.store._sqlite import SqliteStore

    script = tmp_path / "flow_process.py"
    script.write_text(textwrap.dedent(source))
    env = {**os.environ, "STAGEFLOW_HOME": str(tmp_path), "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, str(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    if terminate:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "started"
        process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    store = SqliteStore(tmp_path / "stageflow.db")
    try:
        histories = [
            ("flow", [s.name or "" for s in store.read_state_history("flow", run.id)])
            for run in store.read_flow_runs()
        ] + [
            ("task", [s.name or "" for s in store.read_state_history("task", run.id)])
            for run in store.read_task_runs()
        ]
    finally:
        store.close()
    return out + err, histories


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_signal_during_on_completion_leaves_the_flow_run_completed(
    tmp_path: Path, sig: str
) -> None:
    """The hook is interrupted, never run again, and the Completed run stays Completed."""
    output, histories = _run_flow_process(tmp_path, HOOK_SIGNAL_FLOW, sig, "flow")
    assert output.splitlines().count("on_completion Completed") == 1, output
    assert "on_crashed" not in output
    assert histories == [
        ("flow", ["Pending", "Running", "Completed"]),
        ("task", ["Pending", "Running", "Completed"]),
    ]


def test_ctrl_c_during_a_task_on_completion_leaves_the_task_run_completed(
    tmp_path: Path,
) -> None:
    """Ctrl-C in a task's on_completion: the task run stays Completed; the flow run, which
    the interrupt stopped, is Crashed."""
    output, histories = _run_flow_process(tmp_path, HOOK_SIGNAL_FLOW, "SIGINT", "task")
    assert output.count("task on_completion Completed") == 1, output
    assert histories == [
        ("flow", ["Pending", "Running", "Crashed"]),
        ("task", ["Pending", "Running", "Completed"]),
    ]
    assert output.count("on_crashed Crashed") == 1


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_signal_during_an_async_flows_on_completion(
    tmp_path: Path, sig: str, backend: str
) -> None:
    output, histories = _run_flow_process(tmp_path, ASYNC_HOOK_SIGNAL_FLOW, sig, backend)
    assert output.splitlines().count("on_completion Completed") == 1, output
    assert "on_crashed" not in output
    assert histories == [("flow", ["Pending", "Running", "Completed"])]


def test_a_second_sigterm_during_on_crashed_does_not_run_it_again(tmp_path: Path) -> None:
    output, histories = _run_flow_process(tmp_path, SECOND_SIGTERM_FLOW, terminate=True)
    assert output.count("on_crashed Crashed") == 1, output
    assert "on_failure" not in output
    assert histories == [("flow", ["Pending", "Running", "Crashed"])]


ASYNC_FLOW_BLOCKED_ON_A_FUTURE = """
    import sys, threading, time
    import anyio
    from runtime import flow, task

    MAIN = threading.main_thread().ident

    def main_thread_waits_on_a_future() -> bool:
        frame = sys._current_frames().get(MAIN)
        while frame is not None:
            if frame.f_globals.get("__name__") == "runtime.engine._futures":
                return True
            frame = frame.f_back
        return False

    def crashed(flow, run, state):
        print("on_crashed", state.name, state.message, flush=True)

    @task
    def long() -> None:
        while not main_thread_waits_on_a_future():
            time.sleep(0.01)
        print("started", flush=True)
        while True:
            time.sleep(0.01)

    @flow(on_crashed=[crashed])
    async def work() -> None:
        long.submit().result()  # blocks this loop: no cancel scope can reach the body

    anyio.run(work, backend=sys.argv[1])
"""


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_sigterm_ends_an_async_flow_blocked_on_a_future(tmp_path: Path, backend: str) -> None:
    """An async flow body blocked in ``future.result()`` holds its event loop: SIGTERM
    is raised where it waits (as Ctrl-C would be), so the run is reported and the process
    ends instead of ignoring the signal until the task finishes."""
    code, output = _terminate(tmp_path, ASYNC_FLOW_BLOCKED_ON_A_FUTURE, backend)
    assert "on_crashed Crashed Execution was aborted by a termination signal." in output
    assert code != 0


RETRYING_FLOW = """
    import sys
    from runtime import flow

    def crashed(flow, run, state):
        print("on_crashed", state.name, flush=True)

    @flow(retries=1, retry_delay_seconds=3600, on_crashed=[crashed])
    def flaky() -> None:
        print("started", flush=True)
        raise ValueError("first attempt")

    flaky()
"""


def test_sigterm_during_a_sync_flows_retry_delay_crashes_it_with_on_crashed(
    tmp_path: Path,
) -> None:
    """The signal lands while the flow run waits to retry (its body is not running): the
    run ends Crashed at once, with its on_crashed hooks, and the process ends."""
    import time

    from runtime.store._sqlite import SqliteStore

    script = tmp_path / "flow_process.py"
    script.write_text(textwrap.dedent(RETRYING_FLOW))
    env = {**os.environ, "STAGEFLOW_HOME": str(tmp_path), "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "started"
    deadline = time.monotonic() + 30  # another process's progress: poll its store, bounded
    while True:
        store = SqliteStore(tmp_path / "stageflow.db")
        try:
            runs = store.read_flow_runs()
            state = runs[0].state if runs else None
        finally:
            store.close()
        if state is not None and state.name == "AwaitingRetry":
            break
        assert time.monotonic() < deadline, state
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert out.splitlines().count("on_crashed Crashed") == 1, out + err
    assert "TerminationSignal" in err
    store = SqliteStore(tmp_path / "stageflow.db")
    try:
        (run,) = store.read_flow_runs()
        history = [s.name for s in store.read_state_history("flow", run.id)]
    finally:
        store.close()
    assert history == ["Pending", "Running", "AwaitingRetry", "Crashed"], history
