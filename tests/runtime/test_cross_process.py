"""Durable runs across real process boundaries: processes sharing one SQLite store file.

Another process's progress can only be observed by reading the store, so these tests
poll it (``_wait_until``: a bounded wait, failing after 30 seconds) instead of sleeping.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from runtime.states import StateType
from runtime.store._sqlite import SqliteStore

REPO = Path(__file__).resolve().parents[2]


def _wait_until(predicate: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The environment of every process of a test: one store file, one results dir."""
    home = tmp_path / "home"
    return {
        **os.environ,
        "STAGEFLOW_HOME": str(home),
        "STAGEFLOW_STORE": f"sqlite:///{home / 'stageflow.db'}",
        "PYTHONPATH": str(REPO),
    }


def _store(env: dict[str, str]) -> SqliteStore:
    return SqliteStore(Path(env["STAGEFLOW_HOME"]) / "stageflow.db")


def _flow_state(env: dict[str, str], flow_name: str) -> Any:
    store = _store(env)
    try:
        runs = store.read_flow_runs(flow_name=flow_name)
        return runs[0] if runs else None
    finally:
        store.close()


def _start(tmp_path: Path, env: dict[str, str], source: str) -> subprocess.Popen[str]:
    script = tmp_path / "flows.py"
    script.write_text(textwrap.dedent(source))
    return subprocess.Popen(
        [sys.executable, str(script)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _in_other_process(env: dict[str, str], code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


PAUSING_FLOW = """
    from runtime import flow, pause_flow_run, RunInput

    class Approval(RunInput):
        approved: bool

    @flow
    def release() -> str:
        approval = pause_flow_run(wait_for_input=Approval, timeout=60, poll_interval=0.05)
        return "shipped" if approval.approved else "stopped"

    if __name__ == "__main__":
        print(release())
"""


def test_a_paused_flow_is_resumed_from_another_process(tmp_path: Path, env: dict[str, str]) -> None:
    process = _start(tmp_path, env, PAUSING_FLOW)
    try:
        run = _wait_until(
            lambda: (r := _flow_state(env, "release")) and r.state.is_paused() and r,
            "the flow run to pause",
        )
        bad = _in_other_process(
            env,
            f"""
            from runtime import resume_flow_run
            resume_flow_run("{run.id}", run_input={{"approved": "maybe"}})
            """,
        )
        assert "InvalidRunInput" in bad.stderr
        assert _flow_state(env, "release").state.is_paused()
        good = _in_other_process(
            env,
            f"""
            from runtime import resume_flow_run
            resume_flow_run("{run.id}", run_input={{"approved": True}})
            """,
        )
        assert good.returncode == 0, good.stderr
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert out.strip().splitlines()[-1] == "shipped"
    assert _flow_state(env, "release").state.is_completed()


CANCELLABLE_FLOW = """
    import anyio
    from runtime import flow, task

    @task
    async def forever() -> None:
        print("task started", flush=True)
        await anyio.sleep_forever()

    def cancelled(flow, run, state):
        print("on_cancellation", flush=True)

    @flow(on_cancellation=[cancelled])
    async def long_job() -> None:
        await forever()

    if __name__ == "__main__":
        state = anyio.run(lambda: long_job(return_state=True))
        print("final", state.name, flush=True)
"""


def test_a_flow_is_cancelled_from_another_process(tmp_path: Path, env: dict[str, str]) -> None:
    process = _start(tmp_path, env, CANCELLABLE_FLOW)
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "task started"
        run = _flow_state(env, "long-job")
        done = _in_other_process(
            env, f'from runtime import cancel_flow_run; print(cancel_flow_run("{run.id}").name)'
        )
        assert done.stdout.strip() == "Cancelling", done.stderr
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert "on_cancellation" in out and "final Cancelled" in out, err
    run = _flow_state(env, "long-job")
    assert run.state.type is StateType.CANCELLED
    store = _store(env)
    try:
        (task_run,) = store.read_task_runs(flow_run_id=run.id)
        assert task_run.state.is_cancelled()
        history = [s.name for s in store.read_state_history("flow", run.id)]
    finally:
        store.close()
    assert history[-2:] == ["Cancelling", "Cancelled"]


def _completed_task_runs(env: dict[str, str]) -> int:
    store = _store(env)
    try:
        return sum(1 for run in store.read_task_runs() if run.state and run.state.is_completed())
    finally:
        store.close()


CRASHING_FLOW = """
    import time
    from pathlib import Path
    from runtime import flow, task

    LOG = Path("calls.log")

    @task(persist_result=True)
    def step(name: str) -> str:
        with LOG.open("a") as log:
            log.write(name + "\\n")
        return name.upper()

    @flow(persist_result=True)
    def pipeline(block: bool = True) -> list[str]:
        results = [step("one"), step("two")]
        if block and not Path("resumed").exists():
            print("blocking", flush=True)
            while True:  # killed here
                time.sleep(0.01)
        results.append(step("three"))
        return results

    if __name__ == "__main__":
        print(pipeline())
"""


@pytest.mark.parametrize("persist", [True, False])
def test_kill_9_then_resume_reuses_finished_tasks(
    tmp_path: Path, env: dict[str, str], persist: bool
) -> None:
    """A run killed with -9 and resumed from another process does not run its finished
    tasks again: with persist_result=True, or without it (finished task results are kept
    in the store by default); only the flow's own result needs persist_result to be read
    from another process."""
    source = CRASHING_FLOW if persist else CRASHING_FLOW.replace("(persist_result=True)", "")
    process = _start(tmp_path, env, source)
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "blocking"
    # Task-run writes are committed in groups, within moments: kill once they are.
    _wait_until(lambda: _completed_task_runs(env) == 2, "the finished tasks' commit")
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=30)  # reaps it and closes its pipes
    run = _flow_state(env, "pipeline")
    assert run.state.is_running()  # nobody recorded the crash yet

    (tmp_path / "resumed").write_text("")
    resumed = subprocess.run(
        [sys.executable, "-m", "runtime.api._cli", "runs", "resume", str(run.id)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    calls = (tmp_path / "calls.log").read_text().split()
    assert calls == ["one", "two", "three"]  # no finished task ran twice
    store = _store(env)
    try:
        history = [s.name for s in store.read_state_history("flow", run.id)]
        final = store.read_flow_run(run.id).state
        assert final.is_completed()
        if persist:
            assert final.result() == ["ONE", "TWO", "THREE"]
    finally:
        store.close()
    assert "Crashed" in history


def test_an_orphaned_run_is_marked_crashed_by_the_next_process(
    tmp_path: Path, env: dict[str, str]
) -> None:
    process = _start(tmp_path, env, CRASHING_FLOW)
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "blocking"
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=30)  # reaps it and closes its pipes
    result = _in_other_process(
        env,
        """
        import anyio
        from runtime import Runtime
        async def main():
            async with Runtime():
                pass
        anyio.run(main)
        """,
    )
    assert result.returncode == 0, result.stderr
    run = _flow_state(env, "pipeline")
    assert run.state.is_crashed()
    assert "stageflow runs resume" in run.state.message
    store = _store(env)
    try:
        states = {t.name: t.state.name for t in store.read_task_runs(flow_run_id=run.id)}
    finally:
        store.close()
    assert states == {"step-0": "Completed", "step-1": "Completed"}


SUSPENDING_FLOW = """
    from runtime import flow, suspend_flow_run, task

    @task(persist_result=True)
    def prepare() -> str:
        with open("calls.log", "a") as log:
            log.write("prepare\\n")
        return "data"

    @flow(persist_result=True)
    def nightly() -> str:
        data = prepare()
        note = suspend_flow_run(wait_for_input=str, timeout=600)
        return f"{data}+{note}"

    if __name__ == "__main__":
        print(nightly(return_state=True).name)
"""


def test_a_suspended_flow_is_resumed_in_a_fresh_process(
    tmp_path: Path, env: dict[str, str]
) -> None:
    process = _start(tmp_path, env, SUSPENDING_FLOW)
    out, err = process.communicate(timeout=60)
    assert out.strip() == "Suspended", err
    run = _flow_state(env, "nightly")
    resumed = subprocess.run(
        [
            sys.executable,
            "-m",
            "runtime.api._cli",
            "runs",
            "resume",
            str(run.id),
            "--input",
            '"go"',
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert (tmp_path / "calls.log").read_text().split() == ["prepare"]
    store = _store(env)
    try:
        final = store.read_flow_run(run.id).state
        assert final.is_completed()
        assert final.result() == "data+go"
    finally:
        store.close()


LIMITED_TASK = """
    import sys
    from runtime import flow, task

    @task(tags=["shared"])
    def hold(name: str) -> str:
        with open("slots.log", "a") as log:
            log.write(f"start {name}\\n")
        print("holding", flush=True)
        sys.stdin.readline()  # the test says when to let go of the slot
        with open("slots.log", "a") as log:
            log.write(f"end {name}\\n")
        return name

    @flow
    def holder(name: str) -> str:
        return hold(name)

    if __name__ == "__main__":
        print(holder(sys.argv[1]))
"""


def test_a_tag_limit_holds_across_processes(tmp_path: Path, env: dict[str, str]) -> None:
    limit = _in_other_process(
        env,
        'from runtime.concurrency import set_concurrency_limit; set_concurrency_limit("shared", 1)',
    )
    assert limit.returncode == 0, limit.stderr
    script = tmp_path / "flows.py"
    script.write_text(textwrap.dedent(LIMITED_TASK))

    def start(name: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, str(script), name],
            env=env,
            cwd=tmp_path,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def waiting_for_a_slot() -> bool:
        store = _store(env)
        try:
            return any(
                run.state is not None and run.state.name == "AwaitingConcurrencySlot"
                for run in store.read_task_runs()
            )
        finally:
            store.close()

    first = start("a")
    second = None
    try:
        assert first.stdout is not None
        assert first.stdout.readline().strip() == "holding"  # a holds the only slot
        second = start("b")
        _wait_until(waiting_for_a_slot, "b's task run to wait for a slot")
        assert (tmp_path / "slots.log").read_text().split("\n")[:-1] == ["start a"]
        for process in (first, second):
            out, err = process.communicate("go\n", timeout=60)
            assert process.returncode == 0, err
    finally:
        first.kill()
        if second is not None:
            second.kill()
    log = (tmp_path / "slots.log").read_text().splitlines()
    assert log == ["start a", "end a", "start b", "end b"]


def test_unknown_ids_are_one_line_errors(env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "runtime.api._cli", "runs", "show", str(UUID(int=1))],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1


# -- a paused run whose process died -----------------------------------------------------------

PAUSED_THEN_KILLED_FLOW = """
    from runtime import flow, pause_flow_run, task

    @task(persist_result=True)
    def build() -> str:
        with open("calls.log", "a") as log:
            log.write("build\\n")
        return "v1"

    @flow(persist_result=True)
    def release() -> str:
        version = build()
        print("paused", flush=True)
        approver = pause_flow_run(wait_for_input=str, timeout=600, poll_interval=60)
        return f"{version} approved by {approver}"

    if __name__ == "__main__":
        release()
"""


def _kill_while_paused(tmp_path: Path, env: dict[str, str]) -> Any:
    process = _start(tmp_path, env, PAUSED_THEN_KILLED_FLOW)
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "paused"
    run = _wait_until(
        lambda: (r := _flow_state(env, "release")) and r.state.is_paused() and r,
        "the flow run to pause",
    )
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=30)
    return run


def test_resuming_a_paused_run_whose_process_died_runs_it_again(
    tmp_path: Path, env: dict[str, str]
) -> None:
    """The resumer finds the paused run orphaned: it records the crash and runs the flow
    again, here; the pause takes the resumer's input, and finished tasks are not redone."""
    run = _kill_while_paused(tmp_path, env)
    result = _in_other_process(
        env,
        f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        from runtime import resume_flow_run, read_flow_run
        resume_flow_run("{run.id}", run_input="ada")
        print(read_flow_run("{run.id}").state.result())
        """,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "v1 approved by ada"
    assert (tmp_path / "calls.log").read_text().split() == ["build"]
    store = _store(env)
    try:
        history = [s.name for s in store.read_state_history("flow", run.id)]
    finally:
        store.close()
    assert history[-4:] == ["Crashed", "Resuming", "Running", "Completed"]


def test_a_paused_run_whose_process_died_is_crashed_then_resumed_by_the_cli(
    tmp_path: Path, env: dict[str, str]
) -> None:
    """The next process that opens the store marks it Crashed (it used to stay Paused for
    ever, and a resume answered "Resumed ... Running" for a run nobody ran);
    ``stageflow runs resume ID --input`` then runs it again with that input."""
    run = _kill_while_paused(tmp_path, env)
    opened = _in_other_process(
        env, "import anyio\nfrom runtime import Runtime\nanyio.run(Runtime().__aenter__)"
    )
    assert opened.returncode == 0, opened.stderr
    assert _flow_state(env, "release").state.is_crashed()
    resumed = subprocess.run(
        [sys.executable, "-m", "runtime", "runs", "resume", str(run.id), "--input", '"grace"'],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    final = _flow_state(env, "release").state
    assert final.is_completed() and final.result() == "v1 approved by grace"
    assert (tmp_path / "calls.log").read_text().split() == ["build"]
