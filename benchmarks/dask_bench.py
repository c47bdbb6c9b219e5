"""The Dask task runner: CPU-bound work across processes, and the cost per task.

Run: ``python benchmarks/dask_bench.py [--items 64] [--ms 50] [--tasks 1000]``
(needs ``pip install -e '.[dask]'``; ~1 min on 2 cores).

1. **CPU-bound map**: ``--items`` task runs of ~``--ms`` ms of pure-Python work each (a
   loop calibrated on this machine first), mapped in one sync flow, on the default
   ``ThreadPoolTaskRunner`` (one process: the GIL lets one body run at a time) and on a
   ``DaskTaskRunner`` whose ``LocalCluster`` has 2 worker processes of 1 thread. The Dask
   row counts the whole flow call, the cluster's start and stop included; a second Dask
   row maps on a cluster already running (``address=``). Best of 3, the three runners
   taking turns; every result is checked.
2. **Per-task overhead**: ``--tasks`` trivial task runs (``x + 1``) mapped in one flow on a
   ``DaskTaskRunner(address=...)``, next to the same work as bare ``client.submit`` calls
   gathered at the end; and one task at a time (submit, wait for its result; 200 times)
   both ways. µs per task, best of 3. Against two clusters of 2 worker processes: a
   ``LocalCluster`` (its scheduler runs in this process, on the client's thread: what
   ``DaskTaskRunner()`` starts) and a scheduler of its own (``dask scheduler`` and ``dask
   worker --nworkers 2`` started as commands, as in docs/dask.md).

Logs are kept at WARNING; the memory store is used (the store's cost is not the point).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")  # workers' start-up chatter
os.environ.setdefault("STAGEFLOW_LOGGING_LEVEL", "WARNING")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import distributed  # noqa: E402

from runtime import Runtime, flow, task  # noqa: E402
from runtime.task_runners import DaskTaskRunner, ThreadPoolTaskRunner  # noqa: E402

CLUSTER = {"n_workers": 2, "threads_per_worker": 1, "processes": True, "dashboard_address": ":0"}


def spin(n: int) -> int:
    """Pure-Python CPU work: holds the GIL all along."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


@task
def cpu(n: int) -> int:
    return spin(n)


@task
def inc(x: int) -> int:
    return x + 1


def plain_inc(x: int) -> int:
    return x + 1


def calibrate(ms: float) -> int:
    """Return the loop size that takes ~``ms`` milliseconds here."""
    n = 100_000
    while True:
        start = time.perf_counter()
        spin(n)
        elapsed = time.perf_counter() - start
        if elapsed > 0.02:
            return int(n * ms / 1000 / elapsed)
        n *= 2


def cpu_map(task_runner: Any, items: int, n: int) -> float:
    @flow(task_runner=task_runner)
    def crunch() -> list[int]:
        return cpu.map([n] * items).result()

    start = time.perf_counter()
    results = crunch()
    elapsed = time.perf_counter() - start
    assert results == [spin(n)] * items
    return elapsed


def best(fn: Any, repeat: int = 3) -> float:
    return min(fn() for _ in range(repeat))


def flow_map(address: str, tasks: int) -> float:
    @flow(task_runner=DaskTaskRunner(address=address))
    def trivial() -> list[int]:
        return inc.map(range(tasks)).result()

    start = time.perf_counter()
    assert trivial() == list(range(1, tasks + 1))
    return time.perf_counter() - start


def bare_map(client: distributed.Client, tasks: int) -> float:
    start = time.perf_counter()
    futures = [client.submit(plain_inc, i, pure=False) for i in range(tasks)]
    assert client.gather(futures) == list(range(1, tasks + 1))
    return time.perf_counter() - start


def flow_one_by_one(address: str, count: int) -> float:
    @flow(task_runner=DaskTaskRunner(address=address))
    def trivial() -> None:
        inc.submit(0).result()  # connects the client: not timed
        start = time.perf_counter()
        for i in range(count):
            assert inc.submit(i).result() == i + 1
        times.append(time.perf_counter() - start)

    times: list[float] = []
    trivial()
    return times[0]


def bare_one_by_one(client: distributed.Client, count: int) -> float:
    start = time.perf_counter()
    for i in range(count):
        assert client.submit(plain_inc, i, pure=False).result() == i + 1
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--ms", type=float, default=50.0)
    parser.add_argument("--tasks", type=int, default=1000)
    args = parser.parse_args()
    logging.getLogger("distributed").setLevel(logging.ERROR)

    print(
        f"Python {platform.python_version()}, dask {distributed.__version__}, "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the start"
    )
    n = calibrate(args.ms)
    start = time.perf_counter()
    spin(n)
    one = time.perf_counter() - start
    print(f"\n1. CPU-bound map: {args.items} items of {one * 1000:.0f} ms (loop of {n:,})")
    runners = {"threads": ThreadPoolTaskRunner(), "own": DaskTaskRunner(cluster_kwargs=CLUSTER)}
    times: dict[str, list[float]] = {"threads": [], "own": [], "running": []}
    with Runtime(store="memory://"), distributed.LocalCluster(**CLUSTER) as cluster:
        runners["running"] = DaskTaskRunner(address=cluster.scheduler_address)
        for _ in range(3):  # interleaved, so a change in the machine's load hits all three
            for name, runner in runners.items():
                times[name].append(cpu_map(runner, args.items, n))
    threads, dask_own, dask_running = (min(times[name]) for name in ("threads", "own", "running"))
    print(f"   ThreadPoolTaskRunner:                         {threads:6.2f} s")
    print(
        f"   DaskTaskRunner, its own 2-process cluster:    {dask_own:6.2f} s "
        f"(threads/dask = {threads / dask_own:.2f}x)"
    )
    print(
        f"   DaskTaskRunner, a running 2-process cluster:  {dask_running:6.2f} s "
        f"(threads/dask = {threads / dask_running:.2f}x)"
    )

    print(f"\n2. Per-task overhead, trivial task (x + 1), {args.tasks} tasks, best of 3")
    with distributed.LocalCluster(**CLUSTER) as cluster:
        overhead("LocalCluster", cluster.scheduler_address, args.tasks)
    with external_cluster() as address:
        overhead("dask scheduler + dask worker", address, args.tasks)
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")


def overhead(name: str, address: str, tasks: int) -> None:
    with distributed.Client(address, set_as_default=False) as client, Runtime(store="memory://"):
        client.wait_for_workers(2)
        bare_map(client, 100)  # warm both paths: workers import stageflow on first use
        flow_map(address, 100)
        start = time.perf_counter()
        distributed.Client(address, set_as_default=False).close()
        connect = time.perf_counter() - start
        mapped = best(lambda: flow_map(address, tasks)) / tasks * 1e6
        bare = best(lambda: bare_map(client, tasks)) / tasks * 1e6
        count = 200
        flow_seq = best(lambda: flow_one_by_one(address, count)) / count * 1e6
        bare_seq = best(lambda: bare_one_by_one(client, count)) / count * 1e6
    print(f"   {name}:")
    print(
        f"     map (throughput): stageflow {mapped:6.0f} µs/task   bare client.submit "
        f"{bare:6.0f} µs/task   ratio {mapped / bare:.1f}x"
    )
    print(
        f"     one at a time:    stageflow {flow_seq:6.0f} µs/task   bare client.submit "
        f"{bare_seq:6.0f} µs/task   ratio {flow_seq / bare_seq:.1f}x"
    )
    print(
        f"     (the stageflow map includes one client connection per flow run: "
        f"{connect * 1000:.0f} ms, {connect / tasks * 1e6:.0f} µs per task)"
    )


@contextlib.contextmanager
def external_cluster() -> Iterator[str]:
    """Start ``dask scheduler`` and ``dask worker --nworkers 2`` on 127.0.0.1; yield the
    scheduler's address; stop both."""
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        scheduler_file = Path(tmp) / "scheduler.json"
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        scheduler = subprocess.Popen(
            [bin_dir / "dask", "scheduler", "--host", "127.0.0.1", "--port", "0"]
            + ["--no-dashboard", "--scheduler-file", str(scheduler_file)],
            **quiet,  # type: ignore[call-overload]
        )
        worker = None
        try:
            deadline = time.monotonic() + 60
            while not scheduler_file.exists() or not scheduler_file.read_text():
                if time.monotonic() > deadline or scheduler.poll() is not None:
                    raise RuntimeError("dask scheduler did not start")
                time.sleep(0.05)
            address = json.loads(scheduler_file.read_text())["address"]
            worker = subprocess.Popen(
                [bin_dir / "dask", "worker", address, "--nworkers", "2", "--nthreads", "1"]
                + ["--no-dashboard"],
                **quiet,  # type: ignore[call-overload]
            )
            yield address
        finally:
            for process in (worker, scheduler):
                if process is not None:
                    process.terminate()
                    process.wait(30)


if __name__ == "__main__":
    main()
