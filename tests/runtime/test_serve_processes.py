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
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from engine_support import StoreUrl, wait_until

from runtime.store._backend import StoreBackend
from runtime.store._urls import open_backend

REPO = Path(__file__).resolve().parents[2]

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
    return {
        **os.environ,
        "STAGEFLOW_HOME": str(tmp_path),
        "STAGEFLOW_STORE": store_url(tmp_path),
        "STAGEFLOW_LEASE_SECONDS": "2",
        "PYTHONPATH": str(REPO),
    }


def _serve(tmp_path: Path, env: dict[str, str], *argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "runtime", "--log-level", "WARNING", "serve", *argv],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _read(env: dict[str, str], read: Callable[[StoreBackend], Any]) -> Any:
    store = open_backend(env["STAGEFLOW_STORE"])[0]
    try:
        return read(store)
    finally:
        store.close()


def _stop(process: subprocess.Popen[str]) -> tuple[str, str]:
    """SIGTERM ``process``; return its output once it exited, cleanly."""
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
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
                lambda s: len({claim.claimer for claim in s.read_schedule_slots("beat")}) == 2
                and len(s.read_flow_runs(flow_name="beat")) >= 8,
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
