"""Many processes sharing one store: PostgreSQL next to one SQLite file.

Run: ``python benchmarks/multiprocess_bench.py [--processes 8 16] [--flows 20] [--tasks 50]
[--postgres URL]``.

For each store and each process count, N processes start, import stageflow and open the
store, then wait at a barrier; once all are ready they each run ``--flows`` sync flows of
``--tasks`` sync tasks, one after another, on the store (``STAGEFLOW_STORE``). It prints,
per row: the total time from the barrier to the last process's last flow, the rows lost
(flow runs, task runs and states the store should hold and does not, or that are not
Completed: must be 0) and the lock errors (store errors the processes met, "database is
locked" and the like: must be 0).

Each row uses a new store: an SQLite file in a temporary directory, a new PostgreSQL schema
(``bench_*``, which a server given with ``--postgres`` keeps).
Without ``--postgres``, a throwaway PostgreSQL server is started for the run (as
``tests/postgres_server.py`` does, fsync on) and removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

WORKER = """
import json, sys, time
from pathlib import Path
from runtime import flow, task
from runtime.core._exceptions import StoreError

flows, tasks, ready, go = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])

@task
def step(i: int) -> int:
    return i * 2

@flow
def work(n: int) -> int:
    return sum(step(i) for i in range(n))

work(0)  # opens the store, warms up; not counted (its rows are)
ready.touch()
while not go.exists():
    time.sleep(0.001)
errors, lock_errors = [], 0
for _ in range(flows):
    try:
        work(tasks)
    except StoreError as exc:
        errors.append(str(exc))
        lock_errors += 1
    except Exception as exc:
        errors.append(repr(exc))
print(json.dumps({"done": time.time(), "errors": errors, "lock_errors": lock_errors}))
"""


def run_row(url: str, processes: int, flows: int, tasks: int, work_dir: Path) -> dict[str, float]:
    """Run one row; return its figures."""
    ready_dir = work_dir / f"ready-{uuid.uuid4().hex[:8]}"
    ready_dir.mkdir()
    go = ready_dir / "go"
    env = {**os.environ, "STAGEFLOW_STORE": url, "STAGEFLOW_HOME": str(work_dir),
           "PYTHONPATH": str(REPO), "STAGEFLOW_LOGGING_LEVEL": "WARNING"}  # fmt: skip
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(flows), str(tasks), str(ready_dir / str(i)),
             str(go)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        for i in range(processes)
    ]
    deadline = time.monotonic() + 300
    while len(list(ready_dir.iterdir())) < processes:
        if time.monotonic() > deadline or any(w.poll() is not None for w in workers):
            raise SystemExit(f"a worker did not start: {[w.communicate() for w in workers]}")
        time.sleep(0.01)
    start = time.time()
    go.touch()
    reports = []
    lock_errors = 0
    for worker in workers:
        out, err = worker.communicate(timeout=1800)
        if worker.returncode != 0:
            raise SystemExit(f"a worker failed:\n{err}")
        report = json.loads(out.strip().splitlines()[-1])
        reports.append(report)
        lock_errors += report["lock_errors"] + err.count("locked")
        if report["errors"]:
            print("  errors:", report["errors"][:3], file=sys.stderr)
    total = max(r["done"] for r in reports) - start
    return {"seconds": total, "lost": rows_lost(url, processes, flows, tasks),
            "lock_errors": lock_errors}  # fmt: skip


def rows_lost(url: str, processes: int, flows: int, tasks: int) -> int:
    """How many of the rows the run should have left are missing or not Completed."""
    from runtime.store._urls import open_backend

    store, _ = open_backend(url)
    try:
        expected_flows = processes * (flows + 1)  # with each worker's warm-up flow
        expected_tasks = processes * flows * tasks
        flow_runs = [r for r in store.read_flow_runs(flow_name="work") if r.state_name == "Completed"]
        task_runs = [r for r in store.read_task_runs() if r.state_name == "Completed"]
        lost = (expected_flows - len(flow_runs)) + (expected_tasks - len(task_runs))
        sample = task_runs[:: max(1, len(task_runs) // 200)]  # every state of 200 task runs
        for run in sample:
            lost += 3 - len(store.read_state_history("task", run.id))
        return lost
    finally:
        store.close()


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--flows", type=int, default=20)
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--postgres", help="a PostgreSQL URL (else a throwaway server)")
    args = parser.parse_args()
    from postgres_server import PostgresServer

    server = None
    postgres = args.postgres
    if postgres is None:
        server = PostgresServer(durable=True)
        postgres = server.start()
    print(f"{args.flows} flows x {args.tasks} tasks per process (sync flow, sync tasks called)")
    print(f"{'store':<12} {'processes':>9} {'total s':>8} {'task runs/s':>11} "
          f"{'rows lost':>9} {'lock errors':>11}")  # fmt: skip
    try:
        with tempfile.TemporaryDirectory(prefix="stageflow-mp-bench-") as tmp:
            for processes in args.processes:
                for name in ("postgresql", "sqlite"):
                    work_dir = Path(tmp) / f"{name}-{processes}"
                    work_dir.mkdir()
                    if name == "sqlite":
                        url = f"sqlite:///{work_dir / 'bench.db'}"
                    else:
                        url = f"{postgres}?schema=bench_{uuid.uuid4().hex[:12]}"
                    row = run_row(url, processes, args.flows, args.tasks, work_dir)
                    rate = processes * args.flows * args.tasks / row["seconds"]
                    print(f"{name:<12} {processes:>9} {row['seconds']:>8.1f} {rate:>11.0f} "
                          f"{row['lost']:>9} {row['lock_errors']:>11}", flush=True)  # fmt: skip
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
