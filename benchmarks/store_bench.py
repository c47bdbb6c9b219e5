"""What a task run costs a store: the memory store next to the SQLite and PostgreSQL
stores.

Run: ``python benchmarks/store_bench.py [--quick] [--postgres URL]`` (without ``--postgres``
a throwaway PostgreSQL server is started, as ``tests/postgres_server.py`` does, if one can
be; else the PostgreSQL rows are left out; each repetition makes a schema ``bench_*``,
which a given server keeps).

One task run here is what the orchestrator does to the store for a task run in a flow
run: ``create_run`` in Pending, then two checked ``write_run`` calls (Running, Completed;
the orchestrator decides on the parent flow run from its own memory, not the store), with
a ``commit()`` after every N task runs (N = 1 is a commit per task run; "never" leaves the
commits to the store's own bound (``commit_delay``, 50 ms) and the final close). It prints µs per task run,
best of several repetitions, what the SQLite store adds to the memory store ("+µs") and
the ratio. The memory row is mostly the cost of building the run and state models, which
every row pays too. Each SQLite repetition uses a new file in a temporary directory;
"fsync" rows sync every commit to disk.

This measures the store alone. The engine's whole per-task-run cost, memory vs SQLite,
is measured by ``benchmarks/engine_bench.py --store sqlite``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from runtime import states as S
from runtime.core._models import FlowRun, TaskRun, evolve
from runtime.store._backend import StoreBackend
from runtime.store._memory import MemoryStore
from runtime.store._sqlite import SqliteStore
from runtime.store._urls import open_backend

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def one_pass(store: StoreBackend, n: int, commit_every: int | None) -> float:
    """Run ``n`` task runs through ``store``; return µs per task run."""
    flow_run = evolve(FlowRun(name="bench", flow_name="bench"), state=S.Running(), version=1)
    store.create_run("flow", flow_run)
    start = time.perf_counter()
    for i in range(n):
        run = TaskRun(name=f"t-{i}", task_key="t", dynamic_key=str(i), flow_run_id=flow_run.id)
        run = evolve(run, state=S.Pending(), version=1)
        store.create_run("task", run)
        for make in (S.Running, S.Completed):
            state = make()
            run = evolve(run, state=state, version=run.version + 1)
            store.write_run("task", run, state=state, fields_changed=False)
        if commit_every is not None and (i + 1) % commit_every == 0 and store.has_pending_writes():
            store.commit()
    store.commit()
    return (time.perf_counter() - start) / n * 1e6


def best(
    make_store: Callable[[], StoreBackend], n: int, repeats: int, commit_every: int | None
) -> float:
    """Return the best µs per task run over ``repeats`` fresh stores."""
    times = []
    for _ in range(repeats):
        store = make_store()
        try:
            times.append(one_pass(store, n, commit_every))
        finally:
            store.close()
    return min(times)


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer task runs and repetitions")
    parser.add_argument("--postgres", help="a PostgreSQL URL (else a throwaway server)")
    args = parser.parse_args()
    n, repeats = (500, 2) if args.quick else (3000, 5)
    from postgres_server import PostgresServer, ServerUnavailable

    server = None
    postgres = args.postgres
    if postgres is None:
        server = PostgresServer()
        try:
            postgres = server.start()
        except ServerUnavailable as exc:
            print(f"(no PostgreSQL rows: {exc})")
            server, postgres = None, None
    try:
        with tempfile.TemporaryDirectory(prefix="stageflow-store-bench-") as tmp:
            run_table(Path(tmp), n, repeats, postgres)
    finally:
        if server is not None:
            server.stop()


def run_table(tmp: Path, n: int, repeats: int, postgres: str | None) -> None:
    """Measure every row, with SQLite files in ``tmp`` and PostgreSQL schemas at
    ``postgres`` (if given)."""
    counter = iter(range(1_000_000))

    def sqlite(fsync: bool) -> Callable[[], StoreBackend]:
        return lambda: SqliteStore(tmp / f"bench-{next(counter)}.db", fsync=fsync)

    def postgresql() -> StoreBackend:
        return open_backend(f"{postgres}?schema=bench_{uuid.uuid4().hex[:12]}")[0]

    memory = best(MemoryStore, n, repeats, None)
    print(f"{'store':<24}{'commit every':>14}{'µs/task run':>14}{'+µs':>8}{'x memory':>10}")
    print(f"{'memory://':<24}{'-':>14}{memory:>14.1f}{0:>8.0f}{1.0:>10.1f}")
    for label, make, sizes in (
        ("sqlite", sqlite(False), (1, 10, 100, None)),
        ("sqlite, fsync", sqlite(True), (1, 100, None)),
        *((("postgresql", postgresql, (1, 10, 100, None)),) if postgres else ()),
    ):
        for every in sizes:
            count = n if not (label.endswith("fsync") and every == 1) else max(100, n // 10)
            us = best(make, count, repeats, every)
            shown = "never" if every is None else str(every)
            print(f"{label:<24}{shown:>14}{us:>14.1f}{us - memory:>8.0f}{us / memory:>10.1f}")


if __name__ == "__main__":
    main()
