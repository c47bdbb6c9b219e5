"""``stageflow serve`` in real processes sharing one store (an SQLite file, and PostgreSQL):
two serves fire each slot once; a serve killed with ``-9`` leaves a run that the next serve recovers, reusing
its finished task; SIGTERM stops a serve cleanly.

Another process's progress can only be observed by reading the store, so these tests poll
it (a bounded wait, failing after 60 seconds) instead of sleeping.
"""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from engine_support import StoreUrl, process_env, python_process, wait_until

from runtime.store._backend import StoreBackend
from runtime.store._urls import open_backend

FLOWS = """
    import pathlib
    import time

    from runtime import flow, task

    @task(persist_result=True)
    def prepare() -> str:
        with open("calls.log", "a") as log:
            log.write("prepare\\n")
        return "data"

    @flow
    def beat() -> None:
        pass

    def sleep_for_good() -> None:
        # Sleep in one C call, which an interruption cannot stop (so the body is
        # abandoned); an interruption that lands before the call is swallowed.
        while True:
            try:
                print("stuck", flush=True)
                time.sleep(3600)
            except BaseException:
                pass

    @flow
    def stuck() -> None:
        sleep_for_good()

    @task
    def stuck_task() -> None:
        sleep_for_good()

    @flow(persist_result=True)
    def pipeline() -> str:
        data = prepare()
        if not pathlib.Path("resumed").exists():
            print("blocking", flush=True)
            while True:  # killed here
                time.sleep(0.05)
        return data
"""


@pytest.fixture
def env(tmp_path: Path, store_url: StoreUrl) -> dict[str, str]:
    """One store (each shared kind), one results directory; leases of 2 s, so that a dead
    serve is noticed in about a second."""
    (tmp_path / "flows.py").write_text(textwrap.dedent(FLOWS))
    return process_env(tmp_path, store_url(tmp_path))


def _serve(tmp_path: Path, env: dict[str, str], *argv: str) -> subprocess.Popen[str]:
    return python_process(tmp_path, env, "-m", "runtime", "--log-level", "WARNING", "serve", *argv)


def _read(env: dict[str, str], read: Callable[[StoreBackend], Any]) -> Any:
    store = open_backend(env["STAGEFLOW_STORE"])[0]
    try:
        return read(store)
    finally:
        store.close()


def _stop(process: subprocess.Popen[str], timeout: float = 60) -> tuple[str, str]:
    """SIGTERM ``process``; return its output once it exited, cleanly."""
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err
    return out, err


def test_two_serves_fire_each_slot_once(tmp_path: Path, env: dict[str, str]) -> None:
    """Two ``stageflow serve`` processes of one schedule: every slot is claimed by one of
    them and fired once; SIGTERM stops both cleanly, and the schedule shows stopped."""
    target = f"{tmp_path / 'flows.py'}:beat"
    serves = [_serve(tmp_path, env, target, "--interval", "0.2") for _ in range(2)]
    try:
        # Both serves claim slots (however late the second one starts), and eight ran.
        wait_until(
            lambda: _read(
                env,
                lambda s: (
                    len({claim.claimer for claim in s.read_schedule_slots("beat")}) == 2
                    and len(s.read_flow_runs(flow_name="beat")) >= 8
                ),
            ),
            "slots claimed by both serves, and eight runs",
        )
        for process in serves:
            out, _ = _stop(process)
            assert "Stopped serving schedule 'beat'." in out
    finally:
        for process in serves:
            process.kill()
            process.communicate(timeout=30)
    runs = _read(env, lambda s: s.read_flow_runs(flow_name="beat"))
    slots = [tag for run in runs for tag in run.tags if tag.startswith("slot:")]
    assert len(slots) == len(set(slots)) == len(runs) >= 8
    assert {run.state_name for run in runs} == {"Completed"}
    claims = _read(env, lambda s: s.read_schedule_slots("beat"))
    assert len({claim.claimer for claim in claims}) == 2  # both fired some
    record = _read(env, lambda s: s.read_schedule("beat"))
    assert record.status == "stopped"


def test_the_next_serve_recovers_the_run_of_a_killed_one(
    tmp_path: Path, env: dict[str, str]
) -> None:
    """A serve killed with -9 mid-run leaves its run Running; the next serve of the
    schedule marks it Crashed (its process is gone) and runs it again, here, reusing the
    task it had finished."""
    target = f"{tmp_path / 'flows.py'}:pipeline"
    first = _serve(tmp_path, env, target, "--interval", "3600")
    assert first.stdout is not None and first.stdout.readline().strip() == "blocking"
    os.kill(first.pid, signal.SIGKILL)
    first.communicate(timeout=30)
    (run,) = _read(env, lambda s: s.read_flow_runs(flow_name="pipeline"))
    assert run.state_name == "Running"

    (tmp_path / "resumed").touch()
    second = _serve(tmp_path, env, target, "--interval", "3600")
    try:
        wait_until(
            lambda: _read(env, lambda s: s.read_flow_run(run.id)).state_name == "Completed",
            "the run to be recovered",
        )
        _stop(second)
    finally:
        second.kill()
        second.communicate(timeout=30)
    history = _read(env, lambda s: [x.name for x in s.read_state_history("flow", run.id)])
    assert history[-4:] == ["Crashed", "Resuming", "Running", "Completed"]
    assert (tmp_path / "calls.log").read_text().split() == ["prepare"]
    assert len(_read(env, lambda s: s.read_flow_runs(flow_name="pipeline"))) == 1


def test_a_stopped_serve_exits_though_a_run_body_is_stuck(
    tmp_path: Path, env: dict[str, str]
) -> None:
    """SIGTERM stops a serve whose run's body is stuck in a call that cannot be
    interrupted: the run is cancelled and its body abandoned on its thread, and the
    command exits (0) instead of waiting for that thread to return."""
    target = f"{tmp_path / 'flows.py'}:stuck"
    process = _serve(tmp_path, env, target, "--interval", "3600", "--grace-period", "0")
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "stuck"
        out, err = _stop(process, timeout=20)  # it sleeps for an hour
    finally:
        process.kill()
        process.communicate(timeout=30)
    assert "Stopped serving schedule 'stuck'." in out
    assert "abandoned" in err
    (run,) = _read(env, lambda s: s.read_flow_runs(flow_name="stuck"))
    assert run.state_name == "Cancelled"


def test_a_stopped_worker_exits_though_a_task_body_is_stuck(
    tmp_path: Path, env: dict[str, str]
) -> None:
    """SIGTERM stops a task worker whose run's body is stuck in a call that cannot be
    interrupted: the run goes back to the queue and the command exits (0) instead of
    waiting for the abandoned body's thread."""
    worker = python_process(
        tmp_path,
        env,
        *("-m", "runtime", "--log-level", "WARNING", "worker"),
        *(f"{tmp_path / 'flows.py'}:stuck_task", "--grace-period", "0"),
    )
    queue = python_process(
        tmp_path, env, "-c", "import flows; print(flows.stuck_task.delay().task_run_id)"
    )
    try:
        queued, err = queue.communicate(timeout=60)
        assert queue.returncode == 0, err
        assert worker.stdout is not None and worker.stdout.readline().strip() == "stuck"
        out, err = _stop(worker, timeout=20)  # it sleeps for an hour
    finally:
        for process in (queue, worker):
            process.kill()
            process.communicate(timeout=30)
    assert "Stopped serving task(s) stuck_task." in out
    run = _read(env, lambda s: s.read_task_run(UUID(queued.strip())))
    assert run.state_name == "Requeued"


def test_a_schedule_name_served_elsewhere_with_another_definition_is_refused(
    tmp_path: Path, env: dict[str, str]
) -> None:
    """A schedule's name is unique in the store: while a live process serves 'shared'
    (flow beat, every hour), serving another flow or trigger under that name is a usage
    error (exit 2) that names the other process's schedule, and changes nothing; the same
    definition is served alongside (it shares the slots)."""
    target = f"{tmp_path / 'flows.py'}"
    first = _serve(tmp_path, env, f"{target}:beat", "--interval", "3600", "--name", "shared")
    refused = None
    try:
        wait_until(
            lambda: _read(env, lambda s: any("shared" in x.serving for x in s.read_leases())),
            "the first serve to serve 'shared'",
        )
        refused = python_process(
            tmp_path,
            env,
            *("-m", "runtime", "serve", f"{target}:pipeline", "--interval", "5"),
            *("--name", "shared"),
        )
        out, err = refused.communicate(timeout=20)  # it would serve until stopped
        assert refused.returncode == 2, err
        assert "Schedule 'shared' is served by another process" in err
        assert "flow 'beat' every 3600 s" in err and "--name" in err
        record = _read(env, lambda s: s.read_schedule("shared"))
        assert (record.flow_name, record.interval) == ("beat", 3600)
        _stop(first)
    finally:
        for process in (first, refused):
            if process is not None:
                process.kill()
                process.communicate(timeout=30)
