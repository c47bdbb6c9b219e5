"""Background tasks: ``task.delay()`` queues runs in the store, task workers run them.

In one process first (a worker in a task of the test, on the memory store and on an
SQLite file): results, the queue and its limit, upstream futures, failures, stopping.
Then real processes sharing a store (an SQLite file, and PostgreSQL): workers started
before or after the runs were queued, two workers that never run one run twice, a worker
killed with ``-9`` whose run another worker finishes. Another process's progress can only
be seen in the store, so those tests poll it (bounded waits), never sleep.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any
from uuid import UUID

import anyio
import pytest
from engine_support import StoreUrl, process_env, python_process, wait_until

from runtime import Runtime, aserve_tasks, flow, read_task_runs, serve_tasks, task
from runtime.core._exceptions import MissingResult, ResultSerializationError, UpstreamTaskError
from runtime.futures import DistributedTaskRunFuture
from runtime.states import StateType
from runtime.store._backend import StoreBackend
from runtime.store._urls import open_backend


class Refused(Exception):
    """A task's own failure."""


@task
def add(x: int, y: int) -> int:
    return x + y


@task
async def double(x: int) -> int:
    return 2 * x


@task
def refuse(reason: str) -> None:
    raise Refused(reason)


@pytest.fixture(params=["memory", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'q.db'}"


@asynccontextmanager
async def worker(*tasks: Any, **options: Any) -> AsyncIterator[None]:
    """A task worker serving ``tasks`` in a task of the test, stopped (cancelled) at the end."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(partial(aserve_tasks, *tasks, **options))
        yield
        tg.cancel_scope.cancel()


def names(backend: StoreBackend, run_id: Any) -> list[str | None]:
    return [state.name for state in backend.read_state_history("task", run_id)]


# -- in one process ------------------------------------------------------------------------


async def test_a_worker_says_which_queued_runs_another_version_of_its_task_queued(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A run queued by other code of the same task (its key differs) is not this worker's
    to run: it stays queued, and the worker says so as it starts."""

    def total(x: int) -> int:
        return x

    def total_v2(x: int) -> int:
        return x + 1

    total_v2.__name__, total_v2.__qualname__ = total.__name__, total.__qualname__
    old, new = task(total), task(total_v2)
    assert old.task_key != new.task_key
    async with Runtime(store=url) as rt:
        old.delay(1)
        old.delay(2)
        with caplog.at_level("WARNING", logger="stageflow.task_worker"):
            await aserve_tasks(new, timeout=0.01)
        assert rt.backend is not None
        assert len(rt.backend.read_task_queue()) == 2
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        "2 queued run(s) of task 'total' were queued by another version of its code; this "
        "worker does not run them. Serve them with a worker running that code, or queue "
        "them again."
    ]


async def test_a_worker_runs_queued_runs_and_their_futures_give_the_results(url: str) -> None:
    """delay() records a Scheduled run and returns its future; a worker serving the task
    runs it (sync and async tasks), the future gives its result, and the queue is empty."""
    async with Runtime(store=url) as rt:
        assert rt.backend is not None
        first = add.delay(1, 2)
        second = double.apply_async((5,))
        assert isinstance(first, DistributedTaskRunFuture)
        assert first.state.type is StateType.SCHEDULED and not first.done()
        assert [e.task_run_id for e in rt.backend.read_task_queue()] == [
            first.task_run_id,
            second.task_run_id,
        ]
        async with worker(add, double):
            assert await first == 3
            assert await second.aresult() == 10
        assert names(rt.backend, first.task_run_id) == ["Scheduled", "Running", "Completed"]
        assert rt.backend.read_task_queue() == []


async def test_read_task_runs_without_a_flow_run_lists_the_queued_runs(url: str) -> None:
    """Runs queued by delay() belong to no flow run: ``read_task_runs()`` (no flow run id)
    lists them, oldest first, as docs/pipelines.md says, and not the task runs of flows."""

    @flow
    async def with_a_task() -> int:
        return await double(1)

    async with Runtime(store=url):
        await with_a_task()
        first, second = add.delay(1, 2), double.delay(3)
        listed = await read_task_runs()
        assert [run.id for run in listed] == [first.task_run_id, second.task_run_id]
        assert {run.state_name for run in listed} == {"Scheduled"}
        assert [run.id for run in await read_task_runs(None)] == [run.id for run in listed]


@task
def a_lock() -> Any:
    return threading.Lock()


async def test_a_result_the_store_could_not_keep_says_why_elsewhere(tmp_path: Path) -> None:
    """A result that cannot be serialized is not kept in the store (results are kept by
    default): read back from the store, in another process, its MissingResult says that,
    rather than telling to set persist_result=True (which is already the default)."""
    url = f"sqlite:///{tmp_path / 'q.db'}"
    async with Runtime(store=url):
        future = a_lock.delay()
        async with worker(a_lock):
            await future.wait_async()
    store = open_backend(url)[0]
    try:
        state = store.read_task_run(future.task_run_id).state
        assert state is not None and state.is_completed()
        with pytest.raises(MissingResult) as caught:
            state.result()
    finally:
        store.close()
    message = str(caught.value)
    assert "could not be serialized" in message
    assert "Set persist_result=True to keep results" not in message


async def test_without_a_worker_the_run_waits_in_the_queue(url: str) -> None:
    """Queued with no worker serving the task, a run waits: its future is not done after
    a wait; a worker serving only other tasks leaves it; one serving it runs it."""
    async with Runtime(store=url):
        future = add.delay(2, 2)
        future.wait(timeout=0)
        assert not future.done() and future.state.is_scheduled()
        async with worker(double):
            assert await double.delay(1) == 2
            assert not future.done()
        async with worker(add):
            assert await future == 4


async def test_futures_and_wait_for_are_resolved_by_the_worker(url: str) -> None:
    """A queued run's future passed to another delay() is resolved by the worker (the
    downstream waits for it); a failed upstream leaves the downstream NotReady, as in a
    flow; the failed run's own future raises its exception."""
    async with Runtime(store=url):
        upstream = add.delay(1, 1)
        downstream = double.delay(upstream)
        failed = refuse.delay("no")
        blocked = double.apply_async((1,), wait_for=[failed])
        async with worker(add, double, refuse):
            assert await downstream == 4
            with pytest.raises(Refused, match=r"^no$"):
                await failed
            with pytest.raises(UpstreamTaskError):
                await blocked
        assert blocked.state.name == "NotReady"


async def test_a_worker_runs_at_most_limit_runs_at_once(url: str) -> None:
    """With limit=2, a worker never has more than two runs in progress; the rest wait in
    the queue until a slot is free."""
    release = anyio.Event()
    two_running = anyio.Event()
    running = 0
    most = 0

    @task
    async def held(i: int) -> int:
        nonlocal running, most
        running += 1
        most = max(most, running)
        if running == 2:
            two_running.set()
        await release.wait()
        running -= 1
        return i

    async with Runtime(store=url) as rt:
        assert rt.backend is not None
        futures = [held.delay(i) for i in range(5)]
        async with worker(held, limit=2):
            await two_running.wait()
            await anyio.wait_all_tasks_blocked()
            claimed = [e for e in rt.backend.read_task_queue() if e.claimer is not None]
            assert running == len(claimed) == 2
            release.set()
            assert [await f for f in futures] == [0, 1, 2, 3, 4]
        assert most == 2


async def test_a_stopped_worker_puts_its_runs_back_in_the_queue(url: str) -> None:
    """A worker stopped with a run in progress (grace period 0) puts it back in the
    queue, Scheduled again (Requeued); another worker runs it to completion."""
    started = anyio.Event()
    release = anyio.Event()

    @task
    async def slow() -> str:
        started.set()
        await release.wait()
        return "done"

    async with Runtime(store=url) as rt:
        assert rt.backend is not None
        future = slow.delay()
        async with worker(slow, grace_period=0):
            await started.wait()
        (entry,) = rt.backend.read_task_queue()
        assert entry.claimer is None
        assert names(rt.backend, future.task_run_id)[-1] == "Requeued"
        release.set()
        async with worker(slow):
            assert await future == "done"


async def test_deferred_map_queues_one_run_per_element(url: str) -> None:
    async with Runtime(store=url):
        futures = add.map([1, 2, 3], 10, deferred=True)
        assert all(isinstance(f, DistributedTaskRunFuture) for f in futures)
        async with worker(add):
            assert [await f for f in futures] == [11, 12, 13]


def test_bad_calls_are_refused_clearly() -> None:
    """A call that cannot be pickled, and bad worker options, are refused, saying what to
    do; serve_tasks() refuses to block an event loop."""
    lock = threading.Lock()
    with (
        Runtime(store="memory://"),
        pytest.raises(
            ResultSerializationError,
            match=r"^Cannot queue a run of task 'add': its parameters cannot be pickled "
            r"\(TypeError: cannot pickle '_thread\.lock' object\)\. A task worker",
        ),
    ):
        add.delay(lock, 1)
    with pytest.raises(ValueError, match=r"^Nothing to serve: give at least one task"):
        serve_tasks()
    with pytest.raises(ValueError, match=r"^serve_tasks\(\) takes tasks \(made with @task\)"):
        serve_tasks(print)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^limit must be a whole number >= 1, or None"):
        serve_tasks(add, limit=0)
    with pytest.raises(ValueError, match=r"^poll_interval must be a number of seconds > 0"):
        serve_tasks(add, poll_interval=0)


async def test_serve_tasks_refuses_to_block_an_event_loop() -> None:
    with pytest.raises(RuntimeError, match=r"^serve_tasks\(\) blocks until it is stopped"):
        serve_tasks(add)


# -- real processes ------------------------------------------------------------------------

TASKS = """
    import os
    import time
    from pathlib import Path

    from runtime import task

    LOG = Path("runs.log")

    @task
    def square(x: int) -> int:
        with LOG.open("a") as log:
            log.write(f"{x} {os.getpid()}\\n")
        return x * x

    @task
    def stuck(x: int) -> int:
        with LOG.open("a") as log:
            log.write(f"stuck {x} {os.getpid()}\\n")
        if not Path("release").exists():
            print("stuck", flush=True)
            while True:  # killed here
                time.sleep(0.05)
        return x

    if __name__ == "__main__":
        import sys

        futures = [square.delay(x) for x in range(int(sys.argv[1]))]
        print("queued", flush=True)
        print(sum(f.result(timeout=120) for f in futures), flush=True)
"""


@pytest.fixture
def env(tmp_path: Path, store_url: StoreUrl) -> dict[str, str]:
    """One store of each shared kind, the tasks' file; leases of 2 s, so that a dead
    worker is noticed in about a second."""
    (tmp_path / "tasks.py").write_text(textwrap.dedent(TASKS))
    return process_env(tmp_path, store_url(tmp_path))


def _worker(tmp_path: Path, env: dict[str, str], target: str) -> subprocess.Popen[str]:
    argv = ("-m", "runtime", "--log-level", "WARNING", "worker", target, "--limit", "4")
    return python_process(tmp_path, env, *argv)


def _stop(process: subprocess.Popen[str], env: dict[str, str]) -> str:
    """SIGTERM the worker ``process`` once it serves (its lease is in the store: it took
    it before its first claim, after its signal handlers); return its output once it
    exited, cleanly."""
    store = _store(env)
    try:
        wait_until(
            lambda: any(lease.pid == process.pid for lease in store.read_leases()),
            "the worker to serve",
        )
    finally:
        store.close()
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    return out


def _store(env: dict[str, str]) -> StoreBackend:
    return open_backend(env["STAGEFLOW_STORE"])[0]


def _log(tmp_path: Path) -> list[str]:
    path = tmp_path / "runs.log"
    return path.read_text().splitlines() if path.exists() else []


def test_runs_queued_before_the_workers_start_are_run_once_each(
    tmp_path: Path, env: dict[str, str]
) -> None:
    """A process queues 20 runs with no worker running, and waits for their results; two
    worker processes started afterwards run every run exactly once between them, and the
    results reach the submitting process."""
    submitter = python_process(tmp_path, env, "tasks.py", "20")
    workers: list[subprocess.Popen[str]] = []
    try:
        assert submitter.stdout is not None and submitter.stdout.readline().strip() == "queued"
        workers = [_worker(tmp_path, env, "tasks.py:square,stuck") for _ in range(2)]
        out, err = submitter.communicate(timeout=120)
        assert submitter.returncode == 0, err
        assert out.strip() == str(sum(x * x for x in range(20)))
        for process in workers:
            assert "Stopped serving task(s) square, stuck." in _stop(process, env)
    finally:
        for process in [submitter, *workers]:
            process.kill()
            process.communicate(timeout=30)
    ran = [line.split()[0] for line in _log(tmp_path)]
    assert sorted(ran, key=int) == [str(x) for x in range(20)]  # each once
    store = _store(env)
    try:
        assert store.read_task_queue() == []
    finally:
        store.close()


def test_the_run_of_a_killed_worker_is_run_by_another(tmp_path: Path, env: dict[str, str]) -> None:
    """A run queued by a process that then exits; a worker killed with -9 in the middle of
    it: a live process (here the next worker, at once: the dead one ran on this host)
    puts the run back in the queue, and that worker runs it to completion (the body ran
    twice: at-least-once delivery)."""
    queued = subprocess.run(
        [sys.executable, "-c", "from tasks import stuck; print(stuck.delay(7).task_run_id)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert queued.returncode == 0, queued.stderr
    run_id = UUID(queued.stdout.strip())
    doomed = _worker(tmp_path, env, "tasks.py:stuck")
    assert doomed.stdout is not None and doomed.stdout.readline().strip() == "stuck"
    doomed.kill()
    doomed.communicate(timeout=30)
    (tmp_path / "release").touch()
    store = _store(env)
    rescuer = _worker(tmp_path, env, "tasks.py:stuck")
    try:
        wait_until(
            lambda: store.read_task_run(run_id).state_name == "Completed",
            "the run to be finished by the other worker",
        )
        _stop(rescuer, env)
        history = names(store, run_id)
        assert "Requeued" in history and history[-1] == "Completed"
        assert store.read_task_run(run_id).state.result() == 7  # type: ignore[union-attr]
        assert len(_log(tmp_path)) == 2
        assert store.read_task_queue() == []
    finally:
        rescuer.kill()
        rescuer.communicate(timeout=30)
        store.close()
