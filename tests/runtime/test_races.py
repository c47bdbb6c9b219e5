"""Decisions that hold across processes: real processes racing for one run.

Each test repeats a race over several trials. The racers start together: each imports
stageflow, then waits at a file barrier (every racer has written its ready file) before
it acts, so their requests reach the store within microseconds of each other. What must
hold in every trial: one winner, a clear error for the loser, and a state history that
never leaves a final state.

Another process's progress can only be observed by reading the store, so the tests poll
it (bounded waits) instead of sleeping.

Every race runs on the SQLite store (one file) and on the PostgreSQL store (one schema
per trial).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from engine_support import StoreUrl

from runtime.store._backend import StoreBackend
from runtime.store._urls import open_backend

REPO = Path(__file__).resolve().parents[2]
TRIALS = 4
FINAL = {"Completed", "Failed", "Cancelled", "Crashed", "TimedOut", "Cached", "RolledBack"}


def _wait_until(predicate: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class Trial:
    """One trial's directory, store and processes."""

    def __init__(self, root: Path, n: int, store_url: StoreUrl) -> None:
        self.dir = root / f"trial-{n}"
        self.dir.mkdir()
        self.url = store_url(self.dir)
        self.env = {
            **os.environ,
            "STAGEFLOW_HOME": str(self.dir),
            "STAGEFLOW_STORE": self.url,
            "PYTHONPATH": str(REPO),
        }

    def start(self, name: str, source: str, *args: str) -> subprocess.Popen[str]:
        script = self.dir / f"{name}.py"
        script.write_text(textwrap.dedent(source))
        return subprocess.Popen(
            [sys.executable, str(script), *args],
            env=self.env,
            cwd=self.dir,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def racers(self, source: str, *args_per_racer: tuple[str, ...]) -> list[tuple[int, str]]:
        """Start one process per argument tuple, all behind one barrier; return each one's
        exit code and output, in order."""
        barrier = self.dir / "barrier"
        barrier.mkdir()
        count = len(args_per_racer)
        processes = [
            self.start(f"racer{i}", _BARRIER + source, str(barrier), str(count), str(i), *args)
            for i, args in enumerate(args_per_racer)
        ]
        results = []
        for process in processes:
            out, err = process.communicate(timeout=60)
            results.append((process.returncode, out + err))
        return results

    def store(self) -> StoreBackend:
        return open_backend(self.url)[0]

    def flow_run(self, flow_name: str) -> Any:
        store = self.store()
        try:
            runs = store.read_flow_runs(flow_name=flow_name)
            return runs[0] if runs else None
        finally:
            store.close()

    def history(self, run_id: Any) -> list[str]:
        store = self.store()
        try:
            return [s.name or "" for s in store.read_state_history("flow", run_id)]
        finally:
            store.close()

    def log(self, name: str) -> list[str]:
        path = self.dir / name
        return path.read_text().splitlines() if path.exists() else []


# Every racer script starts with this: argv[1:4] are the barrier directory, the number of
# racers and the racer's index; its own arguments follow.
_BARRIER = """
import os, sys, time
from pathlib import Path
import runtime  # imported before the barrier: the racers act together, not after startup

_barrier, _count, _me = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
(_barrier / _me).touch()
_deadline = time.monotonic() + 30
while len(list(_barrier.iterdir())) < _count and time.monotonic() < _deadline:
    pass
ARGS = sys.argv[4:]
"""


def _assert_final_once(history: list[str]) -> None:
    """A final state is only ever the last one (a re-run after a suspension or a crash goes
    through Resuming first)."""
    for before, after in zip(history, history[1:]):
        assert before not in FINAL or after == "Resuming", history


# -- two resumers of a suspended run ------------------------------------------------------------

SUSPENDING_FLOW = """
    from pathlib import Path
    from runtime import flow, suspend_flow_run, task

    @task(persist_result=True)
    def prepare() -> int:
        return 41

    @flow(persist_result=True)
    def nightly() -> int:
        value = prepare()
        note = suspend_flow_run(wait_for_input=str, timeout=60)
        with open(Path(__file__).parent / "bodies.log", "a") as log:
            print(f"resumed with {note}", file=log, flush=True)
        return value + 1

    if __name__ == "__main__":
        nightly(return_state=True)
"""

RESUMER = """
from runtime import resume_flow_run
from runtime.exceptions import NotPausedError
try:
    resume_flow_run(ARGS[0], run_input=ARGS[1])
except NotPausedError as exc:
    print("NotPausedError:", exc)
    sys.exit(3)
print("resumed")
"""


def test_two_resumers_of_a_suspended_run_run_its_body_once(
    tmp_path: Path, store_url: StoreUrl
) -> None:
    for n in range(TRIALS):
        trial = Trial(tmp_path, n, store_url)
        first = trial.start("flows", SUSPENDING_FLOW)
        output = first.communicate(timeout=60)
        assert first.returncode == 0, output
        run = trial.flow_run("nightly")
        assert run.state.name == "Suspended"
        results = trial.racers(RESUMER, (str(run.id), "one"), (str(run.id), "two"))
        codes = sorted(code for code, _ in results)
        assert codes == [0, 3], results
        winner = [out for code, out in results if code == 0][0]
        loser = [out for code, out in results if code == 3][0]
        assert "resumed" in winner
        assert f"Cannot resume flow run {run.id}: it is not paused" in loser
        bodies = trial.log("bodies.log")
        assert len(bodies) == 1, bodies  # the body ran again exactly once
        history = trial.history(run.id)
        assert history[-1] == "Completed", history
        assert history.count("Resuming") == 1, history
        _assert_final_once(history)


# -- two resumers of a paused run ---------------------------------------------------------------

PAUSING_FLOW = """
    from pathlib import Path
    from runtime import flow, pause_flow_run

    @flow
    def release() -> str:
        note = pause_flow_run(wait_for_input=str, timeout=60, poll_interval=0.02)
        (Path(__file__).parent / "result.txt").write_text(note)
        return note

    if __name__ == "__main__":
        release()
"""


def test_two_resumers_of_a_paused_run_one_wins_and_its_input_is_used(
    tmp_path: Path, store_url: StoreUrl
) -> None:
    for n in range(TRIALS):
        trial = Trial(tmp_path, n, store_url)
        flow_process = trial.start("flows", PAUSING_FLOW)
        run = _wait_until(
            lambda: (r := trial.flow_run("release")) and r.state.is_paused() and r,
            "the flow run to pause",
        )
        results = trial.racers(RESUMER, (str(run.id), "one"), (str(run.id), "two"))
        output = flow_process.communicate(timeout=60)
        assert flow_process.returncode == 0, output
        codes = [code for code, _ in results]
        assert sorted(codes) == [0, 3], results
        winner_input = ("one", "two")[codes.index(0)]
        assert (trial.dir / "result.txt").read_text() == winner_input  # no input lost
        history = trial.history(run.id)
        assert history == ["Pending", "Running", "Paused", "Running", "Completed"], history


# -- a cancel against a completion ---------------------------------------------------------------

FINISHING_FLOW = """
    import sys, time
    from pathlib import Path
    from runtime import flow

    def log(line):
        with open(Path(__file__).parent / "hooks.log", "a") as file:
            print(line, file=file, flush=True)

    @flow(
        on_completion=[lambda f, r, s: log("on_completion")],
        on_cancellation=[lambda f, r, s: log("on_cancellation")],
        on_failure=[lambda f, r, s: log("on_failure")],
    )
    def finishing() -> str:
        go = Path(__file__).parent / "go"
        while not go.exists():
            time.sleep(0.001)
        return "done"

    if __name__ == "__main__":
        try:
            print(finishing())
        except BaseException as exc:
            print(type(exc).__name__)
"""

CANCELLER = """
from runtime import cancel_flow_run
(Path(ARGS[1]) / "go").touch()  # lets the flow finish now: the cancel races it
print("state", cancel_flow_run(ARGS[0]).name)
"""


def test_a_cancel_racing_a_completion_ends_one_way_only(
    tmp_path: Path, store_url: StoreUrl
) -> None:
    outcomes = set()
    for n in range(TRIALS):
        trial = Trial(tmp_path, n, store_url)
        flow_process = trial.start("flows", FINISHING_FLOW)
        run = _wait_until(
            lambda: (r := trial.flow_run("finishing")) and r.state.is_running() and r,
            "the flow run to start",
        )
        ((code, out),) = trial.racers(CANCELLER, (str(run.id), str(trial.dir)))
        assert code == 0, out
        flow_process.communicate(timeout=60)
        history = trial.history(run.id)
        _assert_final_once(history)
        hooks = trial.log("hooks.log")
        if history[-1] == "Completed":
            assert hooks == ["on_completion"], (history, hooks)
            assert "Cancelling" not in history
        else:
            assert history[-2:] == ["Cancelling", "Cancelled"], history
            assert hooks == ["on_cancellation"], (history, hooks)
        outcomes.add(history[-1])
    assert outcomes <= {"Completed", "Cancelled"}


# -- a cancel from another process while an async flow awaits its tasks --------------------------

AWAITING_FLOW = """
    import sys
    from pathlib import Path
    import anyio
    from runtime import flow, task

    def log(line):
        with open(Path(__file__).parent / "hooks.log", "a") as file:
            print(line, file=file, flush=True)

    @task
    async def step(i: int) -> int:
        if i == 1:
            print("waiting", flush=True)
        await anyio.sleep(0.05)
        return i

    @flow(
        on_cancellation=[lambda f, r, s: log("on_cancellation")],
        on_failure=[lambda f, r, s: log("on_failure")],
    )
    async def one_by_one() -> int:
        total = 0
        for i in range(100_000):
            total += await step(i)
        return total

    anyio.run(one_by_one, backend=sys.argv[1])
"""


def cancel_from_another_process(trial: Trial, run_id: Any) -> None:
    """``cancel_flow_run(run_id)`` in a process of its own, on the trial's store."""
    cancel = subprocess.run(
        [sys.executable, "-c", f"from runtime import cancel_flow_run; cancel_flow_run('{run_id}')"],
        env=trial.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cancel.returncode == 0, cancel.stderr


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_cancel_from_another_process_ends_an_async_flow_cancelled(
    tmp_path: Path, backend: str, store_url: StoreUrl
) -> None:
    trial = Trial(tmp_path, 0, store_url)
    flow_process = trial.start("flows", AWAITING_FLOW, backend)
    assert flow_process.stdout is not None
    assert flow_process.stdout.readline().strip() == "waiting"
    run = trial.flow_run("one-by-one")
    cancel_from_another_process(trial, run.id)
    flow_process.communicate(timeout=60)
    history = trial.history(run.id)
    assert history[-2:] == ["Cancelling", "Cancelled"], history
    assert trial.log("hooks.log") == ["on_cancellation"]


# -- a cancel from another process while a sync flow calls a sync task or subflow --------------

CALLING_FLOW = """
    import sys, time
    from pathlib import Path
    from runtime import flow, task

    def log(line):
        with open(Path(__file__).parent / "hooks.log", "a") as file:
            print(line, file=file, flush=True)

    def wait_for_ever():
        print("waiting", flush=True)
        while True:
            time.sleep(0.01)

    @task
    def step() -> None:
        wait_for_ever()

    @flow(
        on_cancellation=[lambda f, r, s: log(f"sub on_cancellation {s.name}")],
        on_crashed=[lambda f, r, s: log(f"sub on_crashed {s.name}")],
    )
    def sub() -> None:
        wait_for_ever()

    @flow(on_cancellation=[lambda f, r, s: log(f"on_cancellation {s.name}")])
    def calling() -> None:
        step() if sys.argv[1] == "task" else sub()

    calling()
"""


@pytest.mark.parametrize("called", ["task", "subflow"])
def test_a_cancel_from_another_process_cancels_what_a_sync_flow_calls(
    tmp_path: Path, called: str, store_url: StoreUrl
) -> None:
    """The called task run or subflow run ends Cancelled, as with a cancel from this
    process: not Crashed, and the subflow's on_cancellation runs, not its on_crashed."""
    trial = Trial(tmp_path, 0, store_url)
    flow_process = trial.start("flows", CALLING_FLOW, called)
    assert flow_process.stdout is not None
    assert flow_process.stdout.readline().strip() == "waiting"
    run = trial.flow_run("calling")
    cancel_from_another_process(trial, run.id)
    flow_process.communicate(timeout=60)
    assert trial.history(run.id)[-2:] == ["Cancelling", "Cancelled"]
    store = trial.store()
    try:
        (task_run,) = store.read_task_runs(flow_run_id=run.id)
        subflows = store.read_flow_runs(flow_name="sub")
    finally:
        store.close()
    assert task_run.state.name == "Cancelled", task_run.state
    if called == "subflow":
        assert [s.state.name for s in subflows] == ["Cancelled"]
        assert trial.log("hooks.log") == ["sub on_cancellation Cancelled", "on_cancellation Cancelled"]
    else:
        assert trial.log("hooks.log") == ["on_cancellation Cancelled"]
