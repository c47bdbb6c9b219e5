"""Liveness: process leases, and how live processes notice dead ones.

The liveness actor is driven on a FakeClock in its own actor system (leases judged at the
fake time); ``wait_for_flow_run`` and the Runtime's lease on a real clock; and real
processes, killed with ``-9`` or stopped with SIGSTOP, are noticed by a live one
(``test_a_live_process_notices_a_dead_one``).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from engine_support import StoreUrl, wait_until

from actors import ChildSpec, FakeClock, Restart, open_actor_system
from runtime import Runtime, flow, wait_for_flow_run
from runtime import states as S
from runtime.core._exceptions import ConfigurationError, FlowRunWaitTimeout
from runtime.core._models import FlowRun, TaskRun, evolve
from runtime.orchestration._liveness import (
    DEFAULT_LEASE_SECONDS,
    LEASE_ENV,
    LeaseKeeper,
    LivenessActor,
    lease_seconds_setting,
)
from runtime.orchestration._orchestrator import Orchestrator
from runtime.orchestration._owners import HOST, _start_time, owner_alive, process_owner
from runtime.orchestration._ownership import reap_dead_processes
from runtime.store._memory import MemoryStore
from runtime.store._records import ProcessLease
from runtime.store._urls import open_backend

START = 1_800_000_000.0
REPO = Path(__file__).resolve().parents[2]


def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)


def _lease(owner: str, expires: float, **fields: Any) -> ProcessLease:
    values: dict[str, Any] = dict(
        host="elsewhere", pid=7, started=_at(START - 3600), renewed=_at(expires - 10)
    )
    values.update(fields)
    return ProcessLease(owner, expires=_at(expires), **values)


def _running_flow_run(store: MemoryStore, owner: str, *, created: float = START - 60) -> FlowRun:
    run = evolve(
        FlowRun(name=f"run-of-{owner}", flow_name="etl", owner=owner, created=_at(created)),
        state=S.Pending(),
        version=1,
    )
    store.create_run("flow", run)
    running = evolve(run, state=S.Running(), version=2)
    store.write_run("flow", running, state=running.state)
    return running


def _running_task_run(store: MemoryStore, flow_run: FlowRun) -> TaskRun:
    run = evolve(
        TaskRun(name="load-0", task_key="load", dynamic_key="0", flow_run_id=flow_run.id),
        state=S.Running(),
        version=1,
    )
    store.create_run("task", run)
    return run


def _state_name(store: MemoryStore, run: FlowRun | TaskRun) -> str | None:
    kind = "flow" if isinstance(run, FlowRun) else "task"
    return store.read_run(kind, run.id).state_name


# -- the bound ------------------------------------------------------------------------------


class TestLeaseSeconds:
    def test_given_then_environment_then_default(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """``lease_seconds`` wins over ``$STAGEFLOW_LEASE_SECONDS``, which wins over 15 s."""
        monkeypatch.delenv(LEASE_ENV, raising=False)
        assert lease_seconds_setting() == DEFAULT_LEASE_SECONDS == 15.0
        monkeypatch.setenv(LEASE_ENV, "4.5")
        assert lease_seconds_setting() == 4.5
        assert lease_seconds_setting(2) == 2.0
        assert Runtime(lease_seconds=3).lease_seconds == 3.0

    def test_bad_values_are_refused(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A bound that is not a positive number is refused, saying what to give."""
        with pytest.raises(ValueError, match=r"^lease_seconds must be a positive number"):
            Runtime(lease_seconds=0)
        monkeypatch.setenv(LEASE_ENV, "soon")
        with pytest.raises(
            ConfigurationError,
            match=rf"^{LEASE_ENV}='soon' is not a positive number of seconds; set it to",
        ):
            lease_seconds_setting()

    def test_the_timing_follows_the_bound(self) -> None:
        """Renewals every L/5 s, valid 2L/3 s; a look every L/3 s: noticed within L."""
        keeper = LeaseKeeper("me", 15.0, START)
        assert (keeper.renew_every, keeper.valid_for, keeper.scan_every) == (3.0, 10.0, 5.0)
        assert keeper.valid_for + keeper.scan_every == keeper.lease_seconds


def test_a_killed_process_not_yet_reaped_by_its_parent_is_gone() -> None:
    """A process killed with -9 whose parent has not waited for it yet (a zombie) still
    has its pid; it runs nothing, so its runs' owner is gone."""

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        owner = f"{HOST}:{child.pid}:{_start_time(child.pid)}:0123abcd"
        assert owner_alive(owner) is True
        os.kill(child.pid, signal.SIGKILL)
        wait_until(lambda: owner_alive(owner) is False, "the child to die")  # unreaped
    finally:
        child.kill()
        child.wait()
    assert owner_alive(owner) is False
    assert owner_alive(f"{HOST}:{child.pid}:{_start_time(child.pid)}") is False  # no nonce
    assert owner_alive("elsewhere:1:2:3") is None and owner_alive("garbage") is None


# -- the liveness actor, on a fake clock ----------------------------------------------------


async def test_the_actor_renews_the_lease_and_reaps_a_dead_process() -> None:
    """Once the process has taken its lease, the actor renews it every L/5 s; when another
    process's lease expires, its next look (every L/3 s) marks that process's unfinished
    runs Crashed and removes its lease. Live processes and suspended runs are left alone."""
    clock = FakeClock(START, autojump=True)
    store = MemoryStore()
    keeper = LeaseKeeper(process_owner(), 15.0, START)
    store.renew_lease(_lease("dead", START + 12))
    store.renew_lease(_lease("alive", START + 3600))
    dead_run = _running_flow_run(store, "dead")
    dead_task = _running_task_run(store, dead_run)
    alive_run = _running_flow_run(store, "alive")
    suspended = evolve(
        _running_flow_run(store, "dead"), state=S.Suspended(pause_key="1"), version=3
    )
    store.write_run("flow", suspended, state=suspended.state)
    keeper.take(store, now=START)

    async with open_actor_system(clock=clock) as system:
        orchestrator = await system.spawn(
            ChildSpec("orchestrator", lambda: Orchestrator(store, clock))
        )
        await system.spawn(
            ChildSpec(
                "liveness",
                lambda: LivenessActor(store, orchestrator, keeper, clock),
                restart=Restart.PERMANENT,
                shutdown_timeout=0,
            )
        )
        await clock.sleep_until(START + 10)  # looks at 0, 5, 10: the dead lease is valid
        assert _state_name(store, dead_run) == "Running"
        mine = store.read_lease(keeper.owner)
        assert mine is not None and mine.renewed == _at(START + 9)  # renewed at 0, 3, 6, 9
        assert mine.expires == _at(START + 19)
        await clock.sleep_until(START + 16)  # the look at 15 finds it expired (at 12)
    assert _state_name(store, dead_run) == "Crashed"
    assert _state_name(store, dead_task) == "Crashed"
    crashed = store.read_flow_run(dead_run.id).state
    assert crashed is not None and "stageflow runs resume" in (crashed.message or "")
    assert _state_name(store, alive_run) == "Running"
    assert _state_name(store, suspended) == "Suspended"
    assert [lease.owner for lease in store.read_leases()] == ["alive", keeper.owner]


class _RenewedWhileReaping(MemoryStore):
    """A store in which the process of ``owner`` renews its lease just as a reaper reads
    it again before reaping (the last moment it can)."""

    def __init__(self, renewed: ProcessLease) -> None:
        super().__init__()
        self.renewed = renewed

    def read_lease(self, owner: str) -> ProcessLease | None:
        if owner == self.renewed.owner:
            self.renew_lease(self.renewed)
        return super().read_lease(owner)


async def test_a_process_that_renewed_meanwhile_keeps_its_runs() -> None:
    """Runs recorded after a lease lapsed (the process was alive after all), and runs of a
    lease renewed before the reaper got to them, are not reaped."""
    store = _RenewedWhileReaping(_lease("slow", START + 10))
    clock = FakeClock(START)
    store.renew_lease(_lease("quick", START - 5))
    late = _running_flow_run(store, "quick", created=START - 1)  # after its lease expired
    store.renew_lease(_lease("slow", START - 5))
    early = _running_flow_run(store, "slow", created=START - 60)
    async with open_actor_system(clock=clock) as system:
        ref = await system.spawn(ChildSpec("orchestrator", lambda: Orchestrator(store, clock)))
        assert await reap_dead_processes(ref, store, now=_at(START)) == 0
    assert _state_name(store, late) == _state_name(store, early) == "Running"
    assert [lease.owner for lease in store.read_leases()] == ["slow"]  # the renewed one
    assert store.read_lease("slow") == store.renewed


# -- wait_for_flow_run consults liveness --------------------------------------------------


async def test_waiting_for_a_run_of_a_dead_process_returns_it_crashed() -> None:
    """A run whose owner's lease expired (a process on another host, say) is marked
    Crashed by the waiter, which returns at once instead of waiting out its timeout."""
    async with Runtime(store="memory://") as rt:
        store = rt.backend
        assert isinstance(store, MemoryStore)
        now = time.time()
        store.renew_lease(_lease("gone", now - 1))
        run = _running_flow_run(store, "gone", created=now - 60)
        done = await wait_for_flow_run(run.id, timeout=3600, poll_interval=3600)
    assert done.state.is_crashed()


@pytest.mark.parametrize("lease", ["renewed", "lapsed before the run"])
async def test_waiting_for_a_run_of_a_live_process_waits(lease: str) -> None:
    """A run whose owner renews its lease is not touched, nor one recorded after its
    owner's lease lapsed (the owner was alive then): the wait times out."""
    clock = FakeClock(START, autojump=True)
    async with Runtime(store="memory://", clock=clock) as rt:
        store = rt.backend
        assert isinstance(store, MemoryStore)
        now = time.time()
        store.renew_lease(_lease("alive", now + 3600 if lease == "renewed" else now - 60))
        run = _running_flow_run(store, "alive", created=now - 30)
        with pytest.raises(FlowRunWaitTimeout):
            await wait_for_flow_run(run.id, timeout=30, poll_interval=5)
        assert _state_name(store, run) == "Running"


# -- the process's own lease ----------------------------------------------------------------


async def test_a_process_takes_its_lease_when_it_runs_a_flow(
    tmp_path: Path, store_url: StoreUrl
) -> None:
    """On a shared store, opening a runtime writes nothing; the first flow run takes the
    process's lease (valid 2L/3 s), and closing the runtime that owns the store removes it."""

    @flow
    async def tick() -> int:
        return 1

    url = store_url(tmp_path)
    async with Runtime(store=url, lease_seconds=6) as rt:
        assert rt.backend is not None
        assert rt.backend.read_leases() == []
        await tick()
        (lease,) = rt.backend.read_leases()
        assert lease.owner == process_owner() and lease.pid == os.getpid()
        assert lease.expires - lease.renewed == timedelta(seconds=4)
    store = open_backend(url)[0]
    try:
        assert store.read_leases() == []
    finally:
        store.close()


# -- real processes -----------------------------------------------------------------------

BLOCKING_FLOW = """
    import time
    from runtime import flow

    @flow
    def stuck() -> None:
        print("running", flush=True)
        while True:
            time.sleep(0.05)

    stuck()
"""

WATCHER = """
    import sys
    import anyio
    from runtime import Runtime, wait_for_flow_run

    async def main() -> None:
        async with Runtime():
            print("watching", flush=True)
            # Polls once a minute: only this process's liveness actor can end the wait early.
            run = await wait_for_flow_run(sys.argv[1], timeout=120, poll_interval=60)
            print(run.state.name, flush=True)

    anyio.run(main)
"""


def _python(env: dict[str, str], code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _stop_outside_a_write(pid: int, url: str) -> None:
    """SIGSTOP ``pid`` at a moment it does not hold an SQLite store's write lock (a process
    stopped inside a write would block every other writer for the busy timeout). A
    PostgreSQL server finishes a statement it was sent whatever its client does."""
    if not url.startswith("sqlite:///"):
        os.kill(pid, signal.SIGSTOP)
        return
    db = url.removeprefix("sqlite:///")
    for _ in range(100):
        os.kill(pid, signal.SIGSTOP)
        conn = sqlite3.connect(db, timeout=0.05, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return
        except sqlite3.OperationalError:  # locked: by it, or by the watcher; try again
            os.kill(pid, signal.SIGCONT)
        finally:
            conn.close()
    raise AssertionError("could not stop the process outside a write")


@pytest.mark.parametrize("how", ["kill -9", "SIGSTOP"])
def test_a_live_process_notices_a_dead_one(tmp_path: Path, store_url: StoreUrl, how: str) -> None:
    """A process opened *before* another died notices it (the kill on this host at its
    next look; a stopped, unresponsive process once its lease expires), marks its run
    Crashed, and a ``wait_for_flow_run`` there returns it Crashed, not after its timeout."""
    url = store_url(tmp_path)
    env = {
        **os.environ,
        "STAGEFLOW_HOME": str(tmp_path),
        "STAGEFLOW_STORE": url,
        "STAGEFLOW_LEASE_SECONDS": "1",
        "PYTHONPATH": str(REPO),
    }
    doomed = _python(env, BLOCKING_FLOW)
    watcher = None
    try:
        assert doomed.stdout is not None and doomed.stdout.readline().strip() == "running"
        store = open_backend(url)[0]
        try:
            (run,) = store.read_flow_runs(flow_name="stuck")
        finally:
            store.close()
        watcher = _python(env, WATCHER, str(run.id))
        assert watcher.stdout is not None and watcher.stdout.readline().strip() == "watching"
        if how == "kill -9":
            os.kill(doomed.pid, signal.SIGKILL)
        else:
            _stop_outside_a_write(doomed.pid, url)
        out, err = watcher.communicate(timeout=60)
        assert watcher.returncode == 0, err
        assert out.strip() == "Crashed"
    finally:
        doomed.kill()
        doomed.communicate(timeout=30)
        if watcher is not None:
            watcher.kill()
            watcher.communicate(timeout=30)
