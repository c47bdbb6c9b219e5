"""Where code runs: the caller's loop and thread, worker threads, embedding the Runtime,
and a clean process exit."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from engine_support import isolated_home, only_flow_run, task_runs_of, wait_until  # noqa: F401

from runtime import FlowRunContext, Runtime, flow, task
from runtime.core._exceptions import StoreClosed
from runtime.store._memory import MemoryStore
from actors import global_loop
from runtime.orchestration import _runtime as runtimes
from runtime.orchestration._owners import process_owner
from runtime.store import _urls as urls
from runtime.store._urls import default_backend


def _new_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t not in before]


# -- async: the caller's loop, no extra thread ------------------------------------------------


async def test_async_engine_runs_in_the_callers_thread() -> None:
    """A flow and the tasks it calls run in the caller's thread; tasks it submits run on the
    task runner's loop, another thread (as in Prefect, so the flow may block on them)."""
    idents: dict[str, int] = {}

    @task
    async def called() -> None:
        idents["called task"] = threading.get_ident()

    @task
    async def submitted() -> None:
        idents["submitted task"] = threading.get_ident()

    @flow
    async def pipeline() -> None:
        idents["flow"] = threading.get_ident()
        await called()
        await submitted.submit()
        await anyio.wait_all_tasks_blocked()

    async with Runtime(store="memory://"):
        await pipeline()
    me = threading.get_ident()
    assert idents["flow"] == idents["called task"] == me
    assert idents["submitted task"] != me


async def test_async_flow_without_runtime_makes_no_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without a Runtime, an async flow runs in the caller's thread and starts no thread
    on a store of this process alone."""

    @flow
    async def pipeline() -> int:
        return threading.get_ident()

    monkeypatch.setattr(urls, "_default", MemoryStore())  # the default store, for this test
    before = set(threading.enumerate())
    assert await pipeline() == threading.get_ident()
    assert _new_threads(before) == []


async def test_on_a_shared_store_the_global_loop_keeps_the_lease() -> None:
    """On a store shared between processes, async flows called without a Runtime leave
    the process's lease to the global loop's background runtime (started by the first
    call, one thread per process at most), which goes on renewing it between calls; the
    calls run in the caller's thread and start no liveness actor each."""

    @flow
    async def pipeline() -> int:
        return threading.get_ident()

    before = set(threading.enumerate())
    assert await pipeline() == threading.get_ident()
    assert [t.name for t in _new_threads(before)] in ([], ["stageflow-global-loop"])
    before = set(threading.enumerate())
    assert await pipeline() == threading.get_ident()
    assert _new_threads(before) == []
    key = (id(global_loop()), id(default_backend()))
    wait_until(lambda: key in runtimes._companions, "the background runtime")
    assert default_backend().read_lease(process_owner()) is not None


async def test_submitted_sync_task_in_async_flow_runs_on_a_worker_thread() -> None:
    @task
    def blocking() -> int:
        return threading.get_ident()

    @flow
    async def pipeline() -> int:
        return await blocking.submit()  # type: ignore[no-any-return]

    async with Runtime(store="memory://"):
        assert await pipeline() != threading.get_ident()


# -- sync: the caller's thread ----------------------------------------------------------------


def test_sync_flow_body_and_called_tasks_run_on_the_callers_thread() -> None:
    idents: dict[str, int] = {}

    @task
    def called() -> None:
        idents["called task"] = threading.get_ident()

    @flow
    def pipeline() -> None:
        idents["flow"] = threading.get_ident()
        called()

    pipeline()
    me = threading.get_ident()
    assert idents == {"flow": me, "called task": me}


def test_submitted_sync_tasks_run_on_worker_threads() -> None:
    @task
    def where(x: int = 0) -> int:
        return threading.get_ident()

    @flow
    def pipeline() -> list[int]:
        return [where.submit().result(), *where.map([1, 2]).result()]

    idents = pipeline()
    assert threading.get_ident() not in idents


def test_sync_flow_called_from_another_thread() -> None:
    results: dict[str, Any] = {}

    @task
    def called() -> int:
        return threading.get_ident()

    @flow
    def pipeline() -> tuple[int, int]:
        return threading.get_ident(), called()

    def in_thread() -> None:
        results["thread"] = threading.get_ident()
        results["ran"] = pipeline()

    worker = threading.Thread(target=in_thread)
    worker.start()
    worker.join(30)
    assert results["ran"] == (results["thread"], results["thread"])


def test_concurrent_sync_flows_from_several_threads() -> None:
    @task
    def square(x: int) -> int:
        return x * x

    @flow
    def pipeline(x: int) -> int:
        return square(x) + sum(square.map([x, x]).result())  # type: ignore[no-any-return]

    results: list[int] = []
    lock = threading.Lock()

    def call(x: int) -> None:
        value = pipeline(x)
        with lock:
            results.append(value)

    threads = [threading.Thread(target=call, args=(x,)) for x in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == [3 * x * x for x in range(4)]


async def test_sync_flow_called_from_async_code_lands_in_the_open_runtime() -> None:
    @task
    def step() -> int:
        return 1

    @flow
    def sync_pipeline() -> int:
        return step()

    async with Runtime(store="memory://") as rt:
        assert sync_pipeline() == 1
        run = only_flow_run(rt)
        (task_run,) = task_runs_of(rt, run.id)
    assert run.flow_name == "sync-pipeline"
    assert task_run.state is not None and task_run.state.is_completed()


# -- embedding the Runtime ----------------------------------------------------------------


async def test_runtime_inside_a_user_task_group() -> None:
    @task
    async def step(x: int) -> int:
        await anyio.lowlevel.checkpoint()
        return x

    @flow
    async def pipeline(x: int) -> int:
        return await step(x)

    results: list[int] = []
    all_done = anyio.Event()
    async with anyio.create_task_group() as tg, Runtime(store="memory://") as rt:

        async def call(x: int) -> None:
            results.append(await pipeline(x))
            if len(results) == 6:
                all_done.set()

        async with anyio.create_task_group() as inner:
            for x in range(5):
                inner.start_soon(call, x)
        # A flow started in the user's outer task group runs under the Runtime too.
        tg.start_soon(call, 10)
        await all_done.wait()
        runs = rt.backend.read_flow_runs()  # type: ignore[union-attr]
    assert sorted(results) == [0, 1, 2, 3, 4, 10]
    assert len(runs) == 6
    assert all(r.state is not None and r.state.is_completed() for r in runs)


async def test_runtime_lifecycle() -> None:
    rt = Runtime(store="memory://")
    assert not rt.running
    async with rt:
        assert rt.running
        with pytest.raises(RuntimeError, match="already running"):
            await rt.__aenter__()
    assert not rt.running
    # The memory store it opened closed with it.
    assert rt.backend is not None
    with pytest.raises(StoreClosed, match="closed"):
        rt.backend.read_flow_runs()


async def test_a_store_backend_outlives_the_runtimes_using_it() -> None:
    @flow
    async def pipeline() -> None:
        pass

    backend = MemoryStore()
    async with Runtime(backend):
        await pipeline()
    async with Runtime(backend):
        await pipeline()
    assert len(backend.read_flow_runs()) == 2


async def test_cancelled_caller_crashes_the_run() -> None:
    crashed: list[str | None] = []

    @flow(on_crashed=[lambda f, r, s: crashed.append(s.message)])
    async def hangs() -> None:
        await anyio.Event().wait()

    async with Runtime(store="memory://") as rt:
        with anyio.move_on_after(0.05) as scope:
            await hangs()
        run = only_flow_run(rt)
    assert scope.cancelled_caught
    assert run.state is not None and run.state.is_crashed()
    assert run.state.message == "Execution was cancelled by the runtime environment."
    assert crashed == ["Execution was cancelled by the runtime environment."]


async def test_cancelled_caller_stops_submitted_task_runs() -> None:
    @task
    async def hangs() -> None:
        await anyio.Event().wait()

    @flow
    async def pipeline() -> None:
        hangs.submit()
        await anyio.Event().wait()

    async with Runtime(store="memory://") as rt:
        with anyio.move_on_after(0.05):
            await pipeline()
        run = only_flow_run(rt)
        (task_run,) = task_runs_of(rt, run.id)
    assert run.state is not None and run.state.is_crashed()
    assert task_run.state is not None and task_run.state.is_final()


# -- which Runtime serves a call: the one open in the loop, whichever task calls ------------


def _names_in_default_store(flow_name: str) -> list[str]:
    return [run.name for run in default_backend().read_flow_runs(flow_name=flow_name)]


async def _call_from_a_task_that_inherits_no_runtime(
    handler: Callable[[], Awaitable[None]],
) -> MemoryStore:
    """Run ``handler`` in a task started before a Runtime opens (as a server starts request
    tasks outside its lifespan's context) while that Runtime is open; return its store."""
    go, done = anyio.Event(), anyio.Event()

    async def request_task() -> None:
        await go.wait()
        await handler()
        done.set()

    backend = MemoryStore()
    async with anyio.create_task_group() as tg:
        tg.start_soon(request_task)
        async with Runtime(store=backend):
            go.set()
            await done.wait()
    return backend


async def test_a_task_that_did_not_inherit_the_runtime_uses_the_one_open_in_its_loop() -> None:
    """A server starts request tasks outside its lifespan's context: they still use the
    Runtime the lifespan opened, not the default store."""

    @flow(name="not-inherited")
    async def pipeline() -> None:
        pass

    store = await _call_from_a_task_that_inherits_no_runtime(pipeline)
    assert [run.flow_name for run in store.read_flow_runs()] == ["not-inherited"]
    assert _names_in_default_store("not-inherited") == []


async def test_the_innermost_open_runtime_wins_and_an_inherited_one_stays() -> None:
    served: dict[str, Any] = {}

    @flow
    async def pipeline(label: str) -> None:
        ctx = FlowRunContext.get()
        assert ctx is not None
        served[label] = ctx.runtime

    calls: anyio.abc.ObjectSendStream[tuple[str, anyio.Event]]
    calls, requests = anyio.create_memory_object_stream[tuple[str, anyio.Event]]()

    async def server() -> None:  # serves "requests" from a task that inherited no runtime
        async with requests:
            async for label, done in requests:
                await pipeline(label)
                done.set()

    async def request(label: str) -> None:
        done = anyio.Event()
        await calls.send((label, done))
        await done.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(server)
        async with Runtime(store="memory://") as outer:
            inherited_go, inherited_done = anyio.Event(), anyio.Event()

            async def inherits_outer() -> None:
                await inherited_go.wait()
                await pipeline("inherited")
                inherited_done.set()

            tg.start_soon(inherits_outer)
            async with Runtime(store="memory://") as inner:
                await request("nested")
                inherited_go.set()
                await inherited_done.wait()
            await request("after inner closed")
        await calls.aclose()
    assert served == {"nested": inner, "inherited": outer, "after inner closed": outer}


async def test_an_implicit_runtime_serves_only_its_own_call() -> None:
    served: list[Any] = []
    first_running, release = anyio.Event(), anyio.Event()

    @flow
    async def first() -> None:
        served.append(FlowRunContext.get().runtime)  # type: ignore[union-attr]
        first_running.set()
        await release.wait()

    @flow
    async def second() -> None:
        served.append(FlowRunContext.get().runtime)  # type: ignore[union-attr]

    async with anyio.create_task_group() as tg:
        tg.start_soon(first)
        await first_running.wait()
        await second()  # no Runtime open: its own implicit one, not first's
        release.set()
    assert len(served) == 2 and served[0] is not served[1]


async def test_sync_flows_called_from_the_loop_or_its_worker_threads_use_its_runtime() -> None:
    @task
    def step() -> int:
        return 1

    @flow(name="sync-in-service")
    def sync_pipeline() -> int:
        return step()

    async def request_handler() -> None:
        assert await anyio.to_thread.run_sync(sync_pipeline) == 1  # e.g. a `def` endpoint
        assert sync_pipeline() == 1  # blocking the loop: allowed, if unwise

    store = await _call_from_a_task_that_inherits_no_runtime(request_handler)
    assert [run.flow_name for run in store.read_flow_runs()] == ["sync-in-service"] * 2
    assert len(store.read_task_runs()) == 2
    assert _names_in_default_store("sync-in-service") == []


# -- process exit -------------------------------------------------------------------------

_SCRIPT = """
import atexit, sys, threading
sys.path.insert(0, {root!r})
from runtime import flow, task

def report():
    alive = [t.name for t in threading.enumerate() if not t.daemon and t is not threading.main_thread()]
    print("non-daemon threads at exit:", alive, flush=True)

atexit.register(report)

@task
def square(x):
    return x * x

@flow
def pipeline():
    return square(2) + sum(square.map([1, 2]).result()) + square.submit(3).result()

{body}
"""


@pytest.mark.parametrize(
    "body",
    [
        pytest.param("print('result', pipeline())", id="sync"),
        pytest.param(
            textwrap.dedent(
                """
                import anyio
                @task
                async def cube(x):
                    return x ** 3
                @flow
                async def apipeline():
                    return await cube(2) + await cube.submit(1)
                print('result', anyio.run(apipeline) + pipeline() - 18, anyio.run(apipeline, backend='trio') - 9)
                """
            ),
            id="async",
        ),
    ],
)
def test_process_exits_promptly_after_flows(tmp_path: Path, body: str) -> None:
    script = tmp_path / "script.py"
    root = str(Path(__file__).resolve().parents[2])
    script.write_text(_SCRIPT.format(root=root, body=body))
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={"STAGEFLOW_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] in ("result 18", "result 9 0")
    assert lines[-1] == "non-daemon threads at exit: []"


# -- a Runtime used from sync code ----------------------------------------------------------


def test_a_sync_runtime_block_records_sync_flows_in_its_store(tmp_path: Path) -> None:
    from runtime import Runtime, flow, task

    @task
    def add(x: int, y: int) -> int:
        return x + y

    @flow
    def adder() -> int:
        return add(1, 2)

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    with Runtime(store=url) as runtime:
        assert adder() == 3
        (run,) = runtime.backend.read_flow_runs(flow_name="adder")
        assert run.state.is_completed()
    from runtime.store._sqlite import SqliteStore

    store = SqliteStore(tmp_path / "runs.db")
    try:
        assert [r.flow_name for r in store.read_flow_runs()] == ["adder"]
    finally:
        store.close()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_loop_chooses_the_backend_of_the_loop_sync_calls_use(backend: str) -> None:
    from runtime import Runtime, flow, task

    @task
    def inner() -> int:
        return 1

    @flow
    def outer() -> int:
        return inner()

    with Runtime(store="memory://", loop=backend) as runtime:
        loop = runtime.sync_loop
        assert loop is not None and loop.backend == backend
        assert loop.thread is None  # started by the first sync call
        assert outer() == 1
        assert loop.thread is not None
        (run,) = runtime.backend.read_flow_runs(flow_name="outer")
        assert run.state.is_completed()
    assert loop.closed


def test_loop_must_name_a_backend() -> None:
    from runtime import Runtime

    with pytest.raises(ValueError, match="'asyncio', 'trio' or a GlobalLoop"):
        Runtime(loop="curio")
