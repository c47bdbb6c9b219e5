"""Task workers: queue throughput with 1 and 4 worker processes, and the latency from
``delay()`` to the run's start, on one SQLite file and on PostgreSQL.

Run: ``python benchmarks/task_queue_bench.py [--runs 1000] [--workers 1 4] [--latency 30]
[--postgres URL]``.

Throughput: ``--runs`` runs of a trivial sync task are queued first, then N worker
processes (``stageflow worker``, ``--limit 10``) start; the figure is runs per second from
the first run's start to the last run's end, as the store recorded them (worker start-up
is not counted). Every run must be Completed exactly once (the table says how many were
not: must be 0). Latency: one idle worker; ``--latency`` runs queued one at a time, each
once the previous one finished; the figure is the time from a run's Scheduled state
(written by ``delay()``) to its Running state (written by the worker), as the store
recorded them (one host: one clock). On SQLite a worker in another process polls the
queue (every second by default); on PostgreSQL ``NOTIFY`` wakes it.

Each row uses a new store (an SQLite file in a temporary directory, a new PostgreSQL schema);
without ``--postgres``, a throwaway PostgreSQL server is started for the run and removed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

TASKS = """
from runtime import task

@task
def noop(i: int) -> int:
    return i
"""


def _env(url: str, work_dir: Path) -> dict[str, str]:
    return {**os.environ, "STAGEFLOW_STORE": url, "STAGEFLOW_HOME": str(work_dir),
            "PYTHONPATH": f"{REPO}:{work_dir}", "STAGEFLOW_LOGGING_LEVEL": "WARNING"}  # fmt: skip


def _workers(url: str, work_dir: Path, count: int) -> list[subprocess.Popen[str]]:
    return [
        subprocess.Popen(
            [sys.executable, "-m", "runtime", "worker", f"{work_dir / 'bench_tasks.py'}:noop",
             "--limit", "10"],
            env=_env(url, work_dir), cwd=work_dir, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        for _ in range(count)
    ]


def _stop(workers: list[subprocess.Popen[str]]) -> None:
    for worker in workers:
        worker.terminate()
    for worker in workers:
        _, err = worker.communicate(timeout=120)
        if worker.returncode != 0:
            raise SystemExit(f"a worker failed:\n{err}")


def _times(store: Any, run_id: Any) -> dict[str, float]:
    """The first timestamp of each state name of a task run (epoch seconds)."""
    found: dict[str, float] = {}
    for state in store.read_state_history("task", run_id):
        found.setdefault(state.name, state.timestamp.timestamp())
    return found


def throughput(url: str, work_dir: Path, runs: int, workers: int) -> tuple[float, int]:
    """Return (runs per second, runs not Completed exactly once)."""
    from bench_tasks import noop  # type: ignore[import-not-found]

    from runtime import Runtime

    with Runtime(store=url) as rt:
        futures = [noop.delay(i) for i in range(runs)]
        processes = _workers(url, work_dir, workers)
        try:
            for future in futures:
                future.wait(timeout=600)
        finally:
            _stop(processes)
        store = rt.backend
        assert store is not None
        starts, ends, bad = [], [], 0
        for future in futures:
            times = _times(store, future.task_run_id)
            bad += future.state.name != "Completed" or list(times).count("Running") != 1
            starts.append(times.get("Running", float("inf")))
            ends.append(times.get("Completed", 0.0))
        bad += len(store.read_task_queue())
    return runs / (max(ends) - min(starts)), bad


def latency(url: str, work_dir: Path, runs: int) -> list[float]:
    """Return the seconds from each run's Scheduled to its Running."""
    from bench_tasks import noop

    from runtime import Runtime

    with Runtime(store=url) as rt:
        processes = _workers(url, work_dir, 1)
        try:
            noop.delay(-1).wait(timeout=120)  # the worker is up
            found = []
            for i in range(runs):
                future = noop.delay(i)
                future.wait(timeout=120)
                times = _times(rt.backend, future.task_run_id)
                found.append(times["Running"] - times["Scheduled"])
        finally:
            _stop(processes)
    return found


def main() -> None:
    """Print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--latency", type=int, default=30)
    parser.add_argument("--postgres", help="a PostgreSQL URL (else a throwaway server)")
    args = parser.parse_args()
    from postgres_server import PostgresServer

    server = None
    postgres = args.postgres
    if postgres is None:
        server = PostgresServer(durable=True)
        postgres = server.start()
    try:
        with tempfile.TemporaryDirectory(prefix="stageflow-queue-bench-") as tmp:
            (Path(tmp) / "bench_tasks.py").write_text(TASKS)
            sys.path.insert(0, tmp)
            os.environ["STAGEFLOW_HOME"] = tmp
            print(f"{args.runs} runs of a trivial sync task, queued, then workers (--limit 10)")
            print(f"{'store':<12} {'workers':>7} {'runs/s':>8} {'not once':>8}")
            for name in ("sqlite", "postgresql"):
                for workers in args.workers:
                    url = _url(name, postgres, Path(tmp))
                    rate, bad = throughput(url, Path(tmp), args.runs, workers)
                    print(f"{name:<12} {workers:>7} {rate:>8.0f} {bad:>8}", flush=True)
            print(f"\nlatency from delay() to the run's start, {args.latency} runs, one idle worker")
            print(f"{'store':<12} {'median ms':>9} {'p90 ms':>7} {'max ms':>7}")
            for name in ("sqlite", "postgresql"):
                found = sorted(latency(_url(name, postgres, Path(tmp)), Path(tmp), args.latency))
                p90 = found[int(0.9 * (len(found) - 1))]
                print(f"{name:<12} {statistics.median(found) * 1000:>9.0f} {p90 * 1000:>7.0f} "
                      f"{found[-1] * 1000:>7.0f}", flush=True)  # fmt: skip
    finally:
        if server is not None:
            server.stop()


def _url(name: str, postgres: str, tmp: Path) -> str:
    if name == "sqlite":
        return f"sqlite:///{tmp / f'queue-{uuid.uuid4().hex[:8]}.db'}"
    return f"{postgres}?schema=bench_{uuid.uuid4().hex[:12]}"


if __name__ == "__main__":
    started = time.monotonic()
    main()
    print(f"\n({time.monotonic() - started:.0f} s)")
