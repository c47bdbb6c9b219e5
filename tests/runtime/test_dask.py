"""The Dask task runner, on real ``distributed.LocalCluster``s.

Most tests share one in-process cluster (threads, ``processes=False``: it starts in a
fraction of a second) and reach it with ``DaskTaskRunner(address=...)``; the tests of a
runner's own cluster start one each, and only the worker-death test uses processes.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import anyio
import dask
import pytest
from distributed import Client, Event, LocalCluster, Status, get_worker
from engine_support import isolated_home, state_names, task_runs_of  # noqa: F401

from runtime import (
    INPUTS,
    Runtime,
    State,
    TaskRunFuture,
    flow,
    get_run_context,
    get_run_logger,
    task,
    wait,
)
from runtime.exceptions import CrashedRun, TaskRunTimeoutError
from runtime.task_runners import (
    DaskTaskRunner,
    TaskRunner,
    ThreadPoolTaskRunner,
    get_dask_client,
)


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """One in-process cluster for the module: 2 workers of 2 threads."""
    with LocalCluster(
        n_workers=2, threads_per_worker=2, processes=False, dashboard_address=":0"
    ) as local:
        yield local


@pytest.fixture
def runner(cluster: LocalCluster) -> DaskTaskRunner:
    return DaskTaskRunner(address=cluster.scheduler_address)


def final_state(task_runner: TaskRunner, submit: Callable[[], TaskRunFuture[Any]]) -> State[Any]:
    """Run a flow on ``task_runner`` that submits one task run (``submit()``), and return
    the task run's final state."""
    seen: list[State[Any]] = []

    @flow(task_runner=task_runner)
    def pipeline() -> None:
        future = submit()
        future.wait()
        seen.append(future.state)

    with Runtime(store="memory://"):
        pipeline(return_state=True)
    (state,) = seen
    return state


def _on_worker() -> str:
    """The address of the Dask worker running the calling task body."""
    return str(get_worker().address)


@task
def sync_where(x: int) -> tuple[int, str]:
    return x + 1, _on_worker()


@task
async def async_where(x: int) -> tuple[int, str]:
    await anyio.lowlevel.checkpoint()
    return x * 10, _on_worker()


@task
def inc(x: int) -> int:
    return x + 1


# -- where bodies run ------------------------------------------------------------------------


async def test_sync_and_async_bodies_run_on_dask_workers(
    runner: DaskTaskRunner, cluster: LocalCluster
) -> None:
    @flow(task_runner=runner)
    async def pipeline() -> list[Any]:
        return [await sync_where.submit(1), await async_where.submit(2)]

    async with Runtime(store="memory://") as rt:
        (one, two) = await pipeline()
        runs = task_runs_of(rt, rt.backend.read_flow_runs()[0].id)  # type: ignore[union-attr]
        histories = [state_names(rt, run) for run in runs]
    workers = set(cluster.scheduler_info["workers"])
    assert one[0] == 2 and one[1] in workers
    assert two[0] == 20 and two[1] in workers
    assert [run.state.type.value for run in runs] == ["COMPLETED", "COMPLETED"]  # type: ignore[union-attr]
    assert histories == [["Pending", "Running", "Completed"]] * 2


def test_map_over_a_thousand_items(runner: DaskTaskRunner) -> None:
    @flow(task_runner=runner)
    def pipeline() -> tuple[list[int], list[State[Any]]]:
        futures = inc.map(range(1000))
        return futures.result(), [future.state for future in futures]

    with Runtime(store="memory://"):
        results, states = pipeline()
    assert results == list(range(1, 1001))
    assert all(state.is_completed() for state in states)


def test_called_tasks_run_in_the_caller(runner: DaskTaskRunner) -> None:
    @flow(task_runner=runner)
    def pipeline() -> tuple[int, int]:
        return threading.get_ident(), called_here()

    @task
    def called_here() -> int:
        return threading.get_ident()

    with Runtime(store="memory://"):
        flow_thread, task_thread = pipeline()
    assert flow_thread == task_thread


# -- the task run stays home -----------------------------------------------------------------


@task(retries=2)
def fails_twice() -> int:
    ctx = get_run_context()
    if ctx.task_run.run_count < 3:  # type: ignore[union-attr]
        raise ValueError(f"attempt {ctx.task_run.run_count} fails")  # type: ignore[union-attr]
    return ctx.task_run.run_count  # type: ignore[union-attr]


def test_a_failing_body_is_retried_as_with_threads(
    runner: DaskTaskRunner, sync_runtime: Runtime
) -> None:
    histories = []
    for task_runner in (ThreadPoolTaskRunner(), runner):

        @flow(task_runner=task_runner)
        def pipeline() -> Any:
            future = fails_twice.submit()
            return future.result(), future.task_run.id

        result, run_id = pipeline()
        assert result == 3
        histories.append(state_names(sync_runtime, sync_runtime.backend.read_task_run(run_id)))  # type: ignore[union-attr]
    assert (
        histories[1]
        == histories[0]
        == [
            "Pending",
            "Running",
            "Retrying",
            "Retrying",
            "Completed",
        ]
    )


@task(timeout_seconds=0.2)
def spins() -> None:
    for _ in range(6000):  # 60 s if it were never stopped: the test would time out
        time.sleep(0.01)


@task(timeout_seconds=0.2)
async def waits() -> None:
    await anyio.sleep(60)


def test_a_body_past_its_timeout_is_stopped_on_the_worker(runner: DaskTaskRunner) -> None:
    @flow(task_runner=runner)
    def pipeline() -> None:
        futures = [spins.submit(), waits.submit()]
        wait(futures)
        seen.extend(future.state for future in futures)

    seen: list[State[Any]] = []
    with Runtime(store="memory://"):
        pipeline()
    for state in seen:
        assert state.is_failed() and state.name == "TimedOut"
        assert state.message == "Task run exceeded timeout of 0.2 second(s)"
        assert isinstance(state.result(raise_on_failure=False), TaskRunTimeoutError)


@task(cache_policy=INPUTS, persist_result=True)
def counted(path: str) -> int:
    with open(path, "a") as file:
        file.write("ran\n")
    return 42


def test_a_cached_run_does_not_reach_a_worker(
    runner: DaskTaskRunner, sync_runtime: Runtime, tmp_path: Path
) -> None:
    path = str(tmp_path / "runs.txt")

    @flow(task_runner=runner)
    def pipeline() -> None:
        future = counted.submit(path)
        future.wait()
        seen.append(future.state)

    seen: list[State[Any]] = []
    pipeline()
    pipeline()
    first, second = seen
    assert first.name == "Completed" and second.name == "Cached"
    assert second.result() == 42
    assert Path(path).read_text() == "ran\n"


def test_hooks_run_in_the_flows_process(runner: DaskTaskRunner, sync_runtime: Runtime) -> None:
    calls: list[tuple[str, str]] = []

    def completed(task: Any, run: Any, state: State[Any]) -> None:
        calls.append(("completed", run.name))

    def failed(task: Any, run: Any, state: State[Any]) -> None:
        calls.append(("failed", str(state.result(raise_on_failure=False))))

    @task(on_completion=[completed], on_failure=[failed])
    def maybe(fail: bool) -> int:
        if fail:
            raise ValueError("asked to fail")
        return 1

    @flow(task_runner=runner)
    def pipeline() -> None:
        maybe.submit(False).wait()
        maybe.submit(True).wait()

    pipeline()
    assert calls == [("completed", "maybe-0"), ("failed", "asked to fail")]


def test_the_body_sees_its_run_context_and_logger(
    runner: DaskTaskRunner, sync_runtime: Runtime
) -> None:
    @task(log_prints=True)
    def introspects(x: int, y: int = 5) -> tuple[str, str, dict[str, Any]]:
        get_run_logger().info("logged on the worker")
        print("printed on the worker")
        ctx = get_run_context()
        return ctx.task.name, ctx.task_run.name, ctx.parameters  # type: ignore[union-attr]

    @flow(task_runner=runner)
    def pipeline() -> Any:
        return introspects.submit(1).result()

    assert pipeline() == ("introspects", "introspects-0", {"x": 1, "y": 5})


# -- upstreams -------------------------------------------------------------------------------


@task
def rows(n: int) -> list[int]:
    return list(range(n))


@task
def count(n: int) -> int:
    return n


@task
def depends_on(*values: Any) -> tuple[Any, list[str]]:
    """Return its values and the Dask keys its Dask task depended on."""
    from distributed.worker import thread_state  # a global would be pickled with the body

    worker = get_worker()
    keys = [str(dep.key) for dep in worker.state.tasks[thread_state.key].dependencies]
    return values, keys


def test_an_upstream_result_travels_as_a_dask_dependency(runner: DaskTaskRunner) -> None:
    @flow(task_runner=runner)
    def pipeline() -> tuple[Any, Any, list[str]]:
        table, number = rows.submit(3), count.submit(7)
        downstream = depends_on.submit(table, number)
        return downstream.result(), table.task_run.id.hex, number.task_run.id.hex

    with Runtime(store="memory://"):
        (values, keys), table_id, number_id = pipeline()
    assert values == ([0, 1, 2], 7)
    # The list came as the upstream's Dask future; the int (cheap) as a value.
    assert len(keys) == 1 and table_id in keys[0]
    assert not any(number_id in key for key in keys)


def test_a_failed_upstream_stops_the_downstream_as_locally(runner: DaskTaskRunner) -> None:
    @task
    def broken() -> list[int]:
        raise ValueError("upstream broke")

    state = final_state(runner, lambda: depends_on.submit(broken.submit()))
    assert state.is_pending() and state.name == "NotReady"


# -- Dask collections ------------------------------------------------------------------------


@task
def bag_total(n: int) -> int:
    import dask.bag as db

    with get_dask_client() as client:
        return int(client.compute(db.from_sequence(range(n), npartitions=4).sum()).result())


def test_get_dask_client_computes_a_collection_inside_a_task(runner: DaskTaskRunner) -> None:
    @flow(task_runner=runner)
    def pipeline() -> int:
        return bag_total.submit(100).result()

    with Runtime(store="memory://"):
        assert pipeline() == 4950


def test_get_dask_client_outside_a_dask_worker_says_where_it_works() -> None:
    where = (
        r"^get_dask_client\(\) works inside the body of a task run that a DaskTaskRunner runs on "
        r"a Dask worker: submit the task \(task.submit\(\) or task.map\(\)\) from a flow whose "
        r"task_runner is a DaskTaskRunner\.$"
    )
    with pytest.raises(RuntimeError, match=where), get_dask_client():
        pass


# -- failures --------------------------------------------------------------------------------


class Unpicklable(Exception):
    def __reduce__(self) -> Any:
        raise TypeError("this exception does not pickle")


@task
def raises_unpicklable() -> None:
    raise Unpicklable("the body's own words")


def test_an_unpicklable_exception_gives_a_clear_failure(runner: DaskTaskRunner) -> None:
    state = final_state(runner, raises_unpicklable.submit)
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, RuntimeError)
    assert str(error).startswith(
        'The task body raised Unpicklable("the body\'s own words") on its Dask worker, and '
        "that exception cannot be pickled to come back (TypeError('this exception does not "
        "pickle')); make it picklable to get it as raised. Its traceback on the worker:\n"
    )
    assert "raises_unpicklable" in str(error)


def test_arguments_that_cannot_be_sent_fail_the_run(runner: DaskTaskRunner) -> None:
    state = final_state(runner, lambda: depends_on.submit(threading.Lock()))
    assert state.is_failed()
    assert state.message.startswith(  # type: ignore[union-attr]
        "Task run encountered an exception RuntimeError: The body of task run 'depends_on-0' "
        "could not be sent to the Dask cluster: "
    )


def test_an_unreachable_scheduler_crashes_the_submitted_runs() -> None:
    with socket.socket() as sock:  # a free port, closed again: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    runner = DaskTaskRunner(address=f"tcp://127.0.0.1:{port}", client_kwargs={"timeout": 0.5})
    state = final_state(runner, lambda: inc.submit(1))
    assert state.is_crashed()
    assert state.message.startswith(  # type: ignore[union-attr]
        f"The task runner DaskTaskRunner(address='tcp://127.0.0.1:{port}') could not start: "
        f"OSError('Timed out trying to connect to tcp://127.0.0.1:{port} after 0.5 s')"
    )
    with pytest.raises(OSError, match=r"^Timed out trying to connect"):
        state.result()


@task
def waits_for_release(name: str) -> str:
    Event(name).wait(timeout=30)
    return "released"


async def test_a_stopped_run_cancels_its_dask_future(
    runner: DaskTaskRunner, cluster: LocalCluster
) -> None:
    release = f"release-{uuid.uuid4().hex}"

    @flow(task_runner=runner, timeout_seconds=1)
    async def pipeline() -> None:
        await waits_for_release.submit(release)

    async with Runtime(store="memory://") as rt:
        state = await pipeline(return_state=True)
        flow_run = rt.backend.read_flow_runs()[0]  # type: ignore[union-attr]
        (run,) = task_runs_of(rt, flow_run.id)
    with Client(cluster, set_as_default=False) as client:
        Event(release, client=client).set()
    assert state.is_failed() and state.name == "TimedOut"
    assert run.state is not None and run.state.is_final()
    assert not any(run.id.hex in str(key) for key in cluster.scheduler.tasks)


# -- the cluster's lifecycle -----------------------------------------------------------------


def test_an_existing_cluster_stays_up_and_the_client_goes(
    runner: DaskTaskRunner, cluster: LocalCluster
) -> None:
    clients_before = set(cluster.scheduler.clients)

    @flow(task_runner=runner)
    def pipeline() -> int:
        return inc.submit(1).result()

    with Runtime(store="memory://"):
        assert pipeline() == 2
    assert cluster.status is Status.running and len(cluster.scheduler.workers) == 2
    assert set(cluster.scheduler.clients) == clients_before


class RecordingCluster(LocalCluster):
    """A LocalCluster that remembers its instances and the adapt() calls made on them."""

    made: ClassVar[list[RecordingCluster]] = []

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.adapted: list[dict[str, Any]] = []
        RecordingCluster.made.append(self)

    def adapt(self, **kwargs: Any) -> Any:
        self.adapted.append(kwargs)
        return super().adapt(**kwargs)


async def test_a_cluster_of_its_own_is_closed_after_the_flow_run() -> None:
    RecordingCluster.made.clear()
    runner = DaskTaskRunner(
        cluster_class=RecordingCluster,
        cluster_kwargs={"n_workers": 1, "processes": False, "dashboard_address": ":0"},
        adapt_kwargs={"minimum": 1, "maximum": 1},
    )

    @flow(task_runner=runner)
    async def pipeline() -> int:
        return await inc.submit(41)

    threads_before = set(threading.enumerate())
    async with Runtime(store="memory://"):
        assert await pipeline() == 42
    (made,) = RecordingCluster.made
    assert made.adapted == [{"minimum": 1, "maximum": 1}]
    assert made.status is Status.closed
    assert made.scheduler.status is Status.closed
    # Its event loop thread and its worker's threads are gone (distributed keeps a few
    # process-wide pools, and anyio its worker threads).
    left = [thread.name for thread in set(threading.enumerate()) - threads_before]
    assert not [name for name in left if "IO loop" in name or "Dask-Default-Threads" in name]


@task
def busy_sum(n: int) -> int:
    return sum(i * i for i in range(n))


@task
def dies() -> None:
    os._exit(1)


@task
def returns_a_lock() -> Any:
    return threading.Lock()


def test_a_process_cluster_computes_and_a_dead_worker_crashes_its_run() -> None:
    """One process cluster (they take seconds to start): a CPU-bound map comes back right,
    a result that cannot be pickled fails its run, and a body that kills its worker ends
    Crashed, not Running (Dask allowed no retry)."""
    runner = DaskTaskRunner(
        cluster_kwargs={
            "n_workers": 2,
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": ":0",
        }
    )

    @flow(task_runner=runner)
    def pipeline() -> list[int]:
        sums = busy_sum.map([10, 1000, 20_000]).result()
        locked = returns_a_lock.submit()
        locked.wait()
        seen.append(locked.state)
        doomed = dies.submit()
        doomed.wait()
        seen.append(doomed.state)
        return sums

    seen: list[State[Any]] = []
    no_retry = dask.config.set({"distributed.scheduler.allowed-failures": 0})
    with no_retry, Runtime(store="memory://") as rt:
        sums = pipeline()
        (died,) = [run for run in rt.backend.read_task_runs() if run.name == "dies-0"]  # type: ignore[union-attr]
        history = state_names(rt, died)
    assert sums == [sum(i * i for i in range(n)) for n in (10, 1000, 20_000)]
    unsendable, state = seen
    assert unsendable.is_failed()
    assert unsendable.message == (
        "Task run encountered an exception RuntimeError: What the body of task run "
        "'returns_a_lock-0' returned could not be brought back from its Dask worker (TypeError: "
        "Could not serialize object of type lock); return something that can be pickled."
    )
    assert state.is_crashed()
    assert state.message.startswith(  # type: ignore[union-attr]
        "The Dask worker running the body of task run 'dies-0' died: "
    )
    with pytest.raises(CrashedRun, match=r"^The Dask worker running the body of task run"):
        state.result()
    assert history == ["Pending", "Running", "Crashed"]
    assert multiprocessing.active_children() == []


def test_a_trio_global_loop_runs_dask_bodies(tmp_path: Path) -> None:
    """Submitted runs live on the global loop (asyncio in this process): with a trio one,
    the runner's cluster starts and stops, and its Dask futures are awaited, from trio."""
    script = tmp_path / "trio_flow.py"
    script.write_text(
        textwrap.dedent(
            """
            import sniffio
            from runtime import Runtime, flow, task
            from runtime.task_runners import DaskTaskRunner

            @task
            def double(x):
                return 2 * x

            @task
            async def loop_name():
                return sniffio.current_async_library()

            runner = DaskTaskRunner(
                cluster_kwargs={"n_workers": 1, "processes": False, "dashboard_address": ":0"}
            )

            @flow(task_runner=runner)
            def pipeline():
                return sum(double.map(range(10)).result()), loop_name.submit().result()

            with Runtime(store="memory://"):
                print(pipeline())
            """
        )
    )
    env = {**os.environ, "STAGEFLOW_GLOBAL_LOOP": "trio", "STAGEFLOW_LOGGING_TO_CONSOLE": "0"}
    done = subprocess.run(
        [sys.executable, str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    # The async body ran on its worker under asyncio (anyio.run there), whatever the loop home.
    assert done.stdout.strip() == "(90, 'asyncio')"


def test_stageflow_run_ships_a_flow_files_own_code_to_process_workers(tmp_path: Path) -> None:
    """`stageflow run FILE.py:flow` imports the file under a name of its own (not
    __main__), which worker processes could not import: a task calling a helper of that
    file failed to load there and the run hung. The workers now import the file too."""
    script = tmp_path / "shipped.py"
    script.write_text(
        textwrap.dedent(
            """
            from runtime import flow, task
            from runtime.task_runners import DaskTaskRunner

            def helper(x):
                return 2 * x

            @task
            def double(x):
                return helper(x)

            runner = DaskTaskRunner(
                cluster_kwargs={
                    "n_workers": 1, "threads_per_worker": 1, "processes": True,
                    "dashboard_address": ":0",
                }
            )

            @flow(task_runner=runner)
            def pipeline():
                return sum(double.map(range(4)).result())
            """
        )
    )
    env = {**os.environ, "STAGEFLOW_HOME": str(tmp_path), "STAGEFLOW_STORE": "memory://"}
    done = subprocess.run(
        [sys.executable, "-m", "runtime", "run", f"{script}:pipeline"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "result: 12" in done.stdout
    assert "Failed to deserialize" not in done.stderr


# -- the runner's settings -------------------------------------------------------------------


class TestDaskTaskRunnerSettings:
    def test_duplicate_equality_and_repr(self) -> None:
        runner = DaskTaskRunner(
            cluster_class="distributed.LocalCluster", cluster_kwargs={"n_workers": 2}
        )
        assert runner.cluster_class is LocalCluster
        assert runner.client_kwargs == {"set_as_default": False}
        assert runner.duplicate() == runner and hash(runner.duplicate()) == hash(runner)
        assert runner != DaskTaskRunner(address="tcp://127.0.0.1:8786")
        assert runner != ThreadPoolTaskRunner()
        assert repr(runner) == (
            "DaskTaskRunner(cluster_class='distributed.deploy.local.LocalCluster', "
            "cluster_kwargs={'n_workers': 2})"
        )
        assert repr(DaskTaskRunner(address="tcp://h:1")) == "DaskTaskRunner(address='tcp://h:1')"

    def test_address_excludes_the_options_of_a_new_cluster(self) -> None:
        with pytest.raises(
            ValueError,
            match=r"^DaskTaskRunner\(address=\.\.\.\) connects to a running cluster, so it takes "
            r"no cluster_class, cluster_kwargs or adapt_kwargs \(those start a new cluster\): "
            r"give one or the other\.$",
        ):
            DaskTaskRunner(address="tcp://127.0.0.1:8786", cluster_kwargs={"n_workers": 1})

    @pytest.mark.parametrize("option", ["cluster_kwargs", "client_kwargs"])
    def test_asynchronous_is_not_an_option(self, option: str) -> None:
        with pytest.raises(
            ValueError,
            match=rf"^DaskTaskRunner\({option}=\.\.\.\) cannot set 'asynchronous': stageflow "
            r"runs the Dask client and cluster in synchronous mode, on threads of their own\. "
            r"Leave it out\.$",
        ):
            DaskTaskRunner(**{option: {"asynchronous": True}})

    def test_a_cluster_class_name_must_import(self) -> None:
        with pytest.raises(
            ValueError,
            match=r"^DaskTaskRunner\(cluster_class='distributed.NoSuchCluster'\) cannot be "
            r"imported \(AttributeError\(.*\)\): give a cluster class or its qualified name, "
            r"e\.g\. 'distributed\.LocalCluster'\.$",
        ):
            DaskTaskRunner(cluster_class="distributed.NoSuchCluster")

    def test_without_distributed_it_says_how_to_install_it(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setitem(sys.modules, "distributed", None)
        with pytest.raises(
            ImportError,
            match=r"^DaskTaskRunner needs dask\.distributed, which is not installed\. Install it "
            r"with: pip install 'stageflow\[dask\]'$",
        ):
            DaskTaskRunner()
