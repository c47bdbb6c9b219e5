"""Engine benchmarks: issue 8's hot-path table, as ratios, from one run.

Run: ``python benchmarks/engine_bench.py [--quick]`` (about 4 minutes; ``--quick`` about 2).

It prints, as a Markdown table, every row of issue 8 section 5 with its target and whether
it is met, on asyncio and on trio:

- async tasks gathered in an async flow, against a bare anyio task group of the same
  coroutines (≤ 2×);
- a sync task called in a sync flow, against stageflow's own async-gathered figure (≤ 1.2×);
- sync tasks ``.submit()``ed, then their results collected, against
  ``anyio.to_thread.run_sync`` in a task group (≤ 2×);
- one trivial flow call, sync against the sync-called figure and async against the
  async-gathered one (≤ 5× one task run);
- each of those on the SQLite store (the default) against the memory store (≤ 1.5×), and the
  rows on disk: after each child process that ran SQLite workloads has exited, this process
  opens its file with ``sqlite3`` and counts the Completed flow runs, Completed task runs
  and states (three per run: Pending, Running, Completed) against what the child says it
  ran (rows lost must be 0);
- 100,000 async tasks submitted in one async flow on SQLite (``Runtime(store="sqlite:///...")``),
  in a child process: RSS growth from just before the flow to its peak (``VmHWM``, reset
  just before the flow), per finished task run (≤ 1 KiB); also the RSS once every result
  is collected (the flow still running), after the flow, and the peak of the same number of
  coroutines in a bare anyio task group;
- ``memory://?max_runs=N``: a child process runs 5N flow runs of a few tasks each and reports
  its RSS after every N runs and how many flow and task runs the store holds at the end
  (bounded: the RSS stays flat after N runs and the store holds N flow runs); the same with
  ``max_runs=0`` (keep everything) for contrast.

Then the extra rows (``task.map``, async ``.submit()``) against their floors, cold start,
peak RSS of a 1000-task flow process, the cross-thread floors, the engine's log records
(INFO is off; should be 0) and the load average.

Each (store, backend) pair is measured in a fresh child process: the sync flows run on the
global loop (``STAGEFLOW_GLOBAL_LOOP`` set to the backend; the process's default store from
``STAGEFLOW_STORE``), the async flows and the floors under ``anyio.run(..., backend=...)``
with ``Runtime(store=...)``. Workloads and their floors take turns, round after round; each
figure is the best (µs per task run, or per flow call) of its rounds, wall time, GC on.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import logging
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

_TMP = tempfile.mkdtemp(prefix="stageflow-bench-")
# The store must be chosen before the engine picks its default: sync flows use the
# process's default store. STAGEFLOW_HOME keeps any default file out of the user's home.
os.environ.setdefault("STAGEFLOW_HOME", _TMP)
os.environ.setdefault("STAGEFLOW_STORE", "memory://")
os.environ.setdefault("STAGEFLOW_LOGGING_LEVEL", "WARNING")

import anyio
import anyio.from_thread

from actors import GlobalLoop
from runtime import Runtime, flow, read_flow_runs, read_task_runs, task

HERE = Path(__file__).resolve()
BACKENDS = ("asyncio", "trio")
INF = float("inf")

# (label, target, limit, measured key, reference key) for the ratio rows.
RATIO_ROWS = [
    ("async tasks gathered in an async flow", "≤ 2× a bare anyio task group",
     2.0, "async_gather", "floor_gather"),
    ("sync task called in a sync flow", "≤ 1.2× the async-gathered figure",
     1.2, "sync_call", "async_gather"),
    ("sync tasks `.submit()`ed, then results collected", "≤ 2× `anyio.to_thread.run_sync` in a task group",
     2.0, "sync_submit", "floor_to_thread"),
    ("one trivial flow call, sync", "≤ 5× one task run (the sync-called figure)",
     5.0, "sync_flow", "sync_call"),
    ("one trivial flow call, async", "≤ 5× one task run (the async-gathered figure)",
     5.0, "async_flow", "async_gather"),
]  # fmt: skip
# Extra rows, for context: (label, measured key, floor key, floor name).
CONTEXT_ROWS = [
    ("`task.map` over 1000 (sync task, sync flow)", "sync_map", "floor_to_thread", "to_thread"),
    ("`task.map` over 1000 (async task, async flow)", "async_map", "floor_gather", "task group"),
    ("1000 async tasks `.submit()`, awaited (async flow)", "async_submit", "floor_gather",
     "task group"),
]  # fmt: skip
SQLITE_LIMIT = 1.5
KIB_PER_RUN_LIMIT = 1.0


# -- the workloads ----------------------------------------------------------------------


def add_one(x: int) -> int:
    return x + 1


async def add_one_async(x: int) -> int:
    return x + 1


add_task = task(add_one)
add_task_async = task(add_one_async)


@flow
def sync_call_flow(n: int) -> int:
    total = 0
    for i in range(n):
        total += add_task(i)
    return total


@flow
def sync_submit_flow(n: int) -> int:
    futures = [add_task.submit(i) for i in range(n)]
    return sum(f.result() for f in futures)


@flow
def sync_map_flow(n: int) -> int:
    return sum(add_task.map(range(n)).result())


@flow
def trivial_sync_flow() -> int:
    return 1


@flow
async def async_gather_flow(n: int) -> int:
    results = [0] * n

    async def one(i: int) -> None:
        results[i] = await add_task_async(i)

    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(one, i)
    return sum(results)


@flow
async def async_map_flow(n: int) -> int:
    futures = add_task_async.map(range(n))
    return sum([await f for f in futures])


@flow
async def async_submit_flow(n: int) -> int:
    futures = [add_task_async.submit(i) for i in range(n)]
    return sum([await f for f in futures])


@flow
async def trivial_async_flow() -> int:
    return 1


@flow
async def few_tasks_flow(k: int) -> int:
    return sum([await add_task_async(i) for i in range(k)])


MANY_SAMPLES: dict[str, int] = {}


@flow
async def many_submit_flow(n: int) -> int:
    """Submit ``n`` async tasks, then collect their results; sample RSS once all are in."""
    futures = [add_task_async.submit(i) for i in range(n)]
    total = sum([await f for f in futures])
    MANY_SAMPLES["collected"] = status_kib("VmRSS")
    return total


def expected(n: int) -> int:
    return n * (n + 1) // 2


# -- the raw anyio floors ---------------------------------------------------------------


async def floor_to_thread(n: int) -> int:
    results = [0] * n

    async def one(i: int) -> None:
        results[i] = await anyio.to_thread.run_sync(add_one, i)

    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(one, i)
    return sum(results)


async def floor_gather(n: int) -> int:
    results = [0] * n

    async def one(i: int) -> None:
        results[i] = await add_one_async(i)

    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(one, i)
    return sum(results)


async def floor_trivial_async() -> int:
    return await add_one_async(0)


# -- timing -----------------------------------------------------------------------------


def timed(fn: Callable[[], Any], check: Any = None) -> float:
    """Wall time in seconds of one call of ``fn``, whose result must be ``check``."""
    start = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - start
    if check is not None and result != check:
        raise AssertionError(f"{fn!r} returned {result!r}, expected {check!r}")
    return elapsed


async def atimed(fn: Callable[[], Awaitable[Any]], check: Any = None) -> float:
    """Async :func:`timed`."""
    start = time.perf_counter()
    result = await fn()
    elapsed = time.perf_counter() - start
    if check is not None and result != check:
        raise AssertionError(f"{fn!r} returned {result!r}, expected {check!r}")
    return elapsed


def _repeat(fn: Callable[[], Any], calls: int) -> Callable[[], None]:
    def run() -> None:
        for _ in range(calls):
            fn()

    return run


def _arepeat(fn: Callable[[], Awaitable[Any]], calls: int) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        for _ in range(calls):
            await fn()

    return run


class Best:
    """Best µs per item of each figure over the rounds, and what ran (for the row check)."""

    def __init__(self) -> None:
        self.figures: dict[str, float] = {}
        self.flow_runs = 0
        self.task_runs = 0
        self.timing = True

    def keep(self, key: str, seconds: float, items: int) -> None:
        if self.timing:
            self.figures[key] = min(self.figures.get(key, INF), seconds / items * 1e6)

    def ran(self, flow_runs: int, task_runs: int) -> None:
        self.flow_runs += flow_runs
        self.task_runs += task_runs


# -- reading this process ---------------------------------------------------------------


def status_kib(field: str) -> int:
    """A ``/proc/self/status`` figure in KiB (``VmRSS``, ``VmHWM``); 0 where unknown."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def reset_peak() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux ≥ 4.0); False where that is refused."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


class LogCounter(logging.Handler):
    """Counts the engine's log records (WARNING and up reach it; INFO is off)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def count_logs() -> LogCounter:
    counter = LogCounter()
    for name in ("stageflow", "actors"):
        logging.getLogger(name).setLevel(logging.WARNING)
        logging.getLogger(name).addHandler(counter)
    return counter


# -- child: one store on one backend ----------------------------------------------------


def use_default_store(url: str) -> str:
    """Make ``url`` the store of sync flows (the process's default store); return the URL
    of the default store in use (a closed default store is reopened from the variable)."""
    from runtime.store._urls import default_backend

    os.environ["STAGEFLOW_STORE"] = url
    backend = default_backend()
    if backend.url.split(":", 1)[0] != url.split(":", 1)[0]:
        backend.close()
        backend = default_backend()
    return backend.url


async def _async_round(url: str, size: int, calls: int, best: Best) -> None:
    async with Runtime(store=url):
        best.keep("floor_gather", await atimed(lambda: floor_gather(size), expected(size)), size)
        best.keep("async_gather", await atimed(lambda: async_gather_flow(size), expected(size)), size)  # fmt: skip
        best.ran(1, size)
        await floor_to_thread(size)  # starts the worker threads, as the global loop has them
        best.keep("floor_to_thread", await atimed(lambda: floor_to_thread(size), expected(size)), size)  # fmt: skip
        best.keep("async_map", await atimed(lambda: async_map_flow(size), expected(size)), size)
        best.keep("async_submit", await atimed(lambda: async_submit_flow(size), expected(size)), size)  # fmt: skip
        best.ran(2, 2 * size)
        best.keep("floor_flow", await atimed(_arepeat(floor_trivial_async, calls)), calls)
        best.keep("async_flow", await atimed(_arepeat(trivial_async_flow, calls)), calls)
        best.ran(calls, 0)


def _sync_round(size: int, calls: int, best: Best) -> None:
    best.keep("sync_call", timed(lambda: sync_call_flow(size), expected(size)), size)
    best.keep("sync_submit", timed(lambda: sync_submit_flow(size), expected(size)), size)
    best.keep("sync_map", timed(lambda: sync_map_flow(size), expected(size)), size)
    best.ran(3, 3 * size)
    best.keep("sync_flow", timed(_repeat(trivial_sync_flow, calls)), calls)
    best.ran(calls, 0)


def child_store(url: str, backend: str, n: int, flows: int, rounds: int) -> dict[str, Any]:
    """Every timed workload and floor on ``url`` and ``backend``, ``rounds`` times after a
    warm-up round; returns the best figures and the runs made (warm-up included)."""
    counter = count_logs()
    default = use_default_store(url)
    best = Best()
    for round_ in range(rounds + 1):
        best.timing = round_ > 0
        size, calls = (n, flows) if best.timing else (10, 3)
        anyio.run(_async_round, url, size, calls, best, backend=backend)
        _sync_round(size, calls, best)
    return {
        "figures": best.figures,
        "flow_runs": best.flow_runs,
        "task_runs": best.task_runs,
        "default_store": default,
        "logs": counter.count,
    }


# -- child: many task runs in one flow --------------------------------------------------


async def _many(url: str, n: int) -> dict[str, Any]:
    async with Runtime(store=url):
        assert await trivial_async_flow() == 1  # opens the store; warms up
        gc.collect()
        before = status_kib("VmRSS")
        peak_reset = reset_peak()
        start = time.perf_counter()
        assert await many_submit_flow(n) == expected(n)
        seconds = time.perf_counter() - start
        after = status_kib("VmRSS")
        peak = status_kib("VmHWM")
    return {
        "before": before, "peak": peak, "peak_reset": peak_reset,
        "collected": MANY_SAMPLES["collected"], "after": after,
        "µs_per_task": seconds / n * 1e6, "flow_runs": 2, "task_runs": n,
    }  # fmt: skip


async def _many_floor(n: int) -> dict[str, Any]:
    gc.collect()
    before = status_kib("VmRSS")
    peak_reset = reset_peak()
    assert await floor_gather(n) == expected(n)
    return {"before": before, "peak": status_kib("VmHWM"), "peak_reset": peak_reset}


def child_many(url: str, backend: str, n: int) -> dict[str, Any]:
    counter = count_logs()
    report = anyio.run(_many, url, n, backend=backend)
    return {**report, "logs": counter.count}


# -- child: memory:// keeps a bounded history -------------------------------------------


async def _bounded(url: str, runs: int, every: int, tasks: int) -> dict[str, Any]:
    rss, µs_per_run = [], []
    async with Runtime(store=url):
        start = time.perf_counter()
        for i in range(1, runs + 1):
            assert await few_tasks_flow(tasks) == expected(tasks)
            if i % every == 0:
                µs_per_run.append((time.perf_counter() - start) / every * 1e6)
                gc.collect()
                rss.append(status_kib("VmRSS"))
                start = time.perf_counter()
        held = await read_flow_runs(limit=None)
        held_tasks = 0
        for run in held:
            held_tasks += len(await read_task_runs(run.id))
    return {"rss": rss, "µs_per_run": µs_per_run, "held_flow_runs": len(held),
            "held_task_runs": held_tasks}  # fmt: skip


def child_bounded(url: str, runs: int, every: int, tasks: int) -> dict[str, Any]:
    counter = count_logs()
    return {**anyio.run(_bounded, url, runs, every, tasks), "logs": counter.count}


# -- child: peak RSS of a 1000-task flow process ----------------------------------------


def child_rss(url: str, n: int) -> dict[str, Any]:
    import resource

    count_logs()
    use_default_store(url)
    before = status_kib("VmHWM")
    assert sync_call_flow(n) == expected(n)
    ru_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"after_import_kib": before, "peak_kib": status_kib("VmHWM") or ru_maxrss}


CHILDREN: dict[str, Callable[..., dict[str, Any]]] = {
    "store": child_store,
    "many": child_many,
    "many_floor": lambda backend, n: anyio.run(_many_floor, n, backend=backend),
    "bounded": child_bounded,
    "rss": child_rss,
}


def child(mode: str, *args: Any, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``CHILDREN[mode](*args)`` in a child process of this script; return its report."""
    proc = subprocess.run(
        [sys.executable, str(HERE), "--child", json.dumps([mode, *args])],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child {mode} {args} failed:\n{proc.stderr[-3000:]}")
    report: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    report["stderr"] = proc.stderr.strip()
    CHILD_REPORTS.append(report)
    return report


CHILD_REPORTS: list[dict[str, Any]] = []


# -- checking an SQLite file after its process exited -----------------------------------


def rows_on_disk(path: str, flow_runs: int, task_runs: int) -> dict[str, int]:
    """Count, with plain ``sqlite3``, what the file holds against what was run."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        completed = dict(db.execute(
            "SELECT 'flow', count(*) FROM flow_runs WHERE state_type = 'COMPLETED' "
            "UNION ALL SELECT 'task', count(*) FROM task_runs WHERE state_type = 'COMPLETED'"
        ).fetchall())  # fmt: skip
        states = dict(db.execute("SELECT kind, count(*) FROM states GROUP BY kind").fetchall())
    found = {
        "flow_runs": completed.get("flow", 0), "task_runs": completed.get("task", 0),
        "flow_states": states.get("flow", 0), "task_states": states.get("task", 0),
    }  # fmt: skip
    wanted = {
        "flow_runs": flow_runs, "task_runs": task_runs,
        "flow_states": 3 * flow_runs, "task_states": 3 * task_runs,
    }  # fmt: skip
    return {
        "expected": sum(wanted.values()),
        "found": sum(found.values()),
        "lost": sum(max(0, wanted[k] - found[k]) for k in wanted),
        "extra": sum(max(0, found[k] - wanted[k]) for k in wanted),
    }


# -- floors and facts measured in this process ------------------------------------------


def cross_thread_floors(backend: str, calls: int) -> tuple[float, float]:
    """µs per ``BlockingPortal.call`` round trip, and per ``GlobalLoop.call`` whose task
    runs one callback on the waiting thread; best of 3."""
    with anyio.from_thread.start_blocking_portal(backend) as portal:
        portal_call = _repeat(lambda: portal.call(floor_trivial_async), calls)
        portal_call()
        portal_us = min(timed(portal_call) for _ in range(3)) / calls * 1e6
    loop = GlobalLoop(backend, name=f"bench-floor-{backend}")

    async def with_callback() -> int:
        return await loop.run_in_waiting_thread(add_one, 1)

    try:
        loop_call = _repeat(lambda: loop.call(with_callback), calls)
        loop_call()
        loop_us = min(timed(loop_call) for _ in range(3)) / calls * 1e6
    finally:
        loop.close()
    return portal_us, loop_us


COLD_SNIPPET = """\
from runtime import flow

@flow
def hello():
    return 1

assert hello() == 1
"""


def cold_start(url: str) -> tuple[float, float]:
    """Best of 3 wall times (s): ``python -c`` import + first flow result, ``python -c pass``."""
    env = {**os.environ, "STAGEFLOW_STORE": url}

    def run(code: str) -> float:
        return timed(lambda: subprocess.run([sys.executable, "-c", code], check=True, env=env))

    return min(run(COLD_SNIPPET) for _ in range(3)), min(run("pass") for _ in range(3))


def bytecode_cached() -> bool:
    """Whether ``runtime``'s modules have .pyc files (cold start is slower without)."""
    import importlib.util

    import runtime.engine._flow_engine as module

    return module.__file__ is not None and os.path.exists(
        importlib.util.cache_from_source(module.__file__)
    )


def machine() -> str:
    """CPU count and model, Python and library versions."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(
                line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}" for name in ("anyio", "trio", "pydantic")
    )
    return f"{os.cpu_count()} CPUs ({model}), Python {platform.python_version()}, {versions}"


def engine_sources() -> str:
    """The checked-out commit, and a digest of the engine's sources as imported (``runtime/``
    and ``actors/``), to tell whether they changed while the benchmark ran."""
    import hashlib

    import actors
    import runtime

    digest = hashlib.sha256()
    for package in (runtime, actors):
        for path in sorted(Path(package.__file__).parent.rglob("*.py")):
            digest.update(str(path).encode() + path.read_bytes())
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE.parent,
                          capture_output=True, text=True, check=False).stdout.strip()  # fmt: skip
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "runtime", "actors"],
                           cwd=HERE.parent, capture_output=True, text=True, check=False).stdout  # fmt: skip
    state = "modified" if dirty.strip() else "as committed"
    return f"commit {head or 'unknown'}, runtime/ and actors/ {state} (digest {digest.hexdigest()[:12]})"


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


# -- the report -------------------------------------------------------------------------


def ratio_cell(measured: float, reference: float) -> str:
    return f"{measured / reference:.2f}× ({measured:.1f} / {reference:.1f} µs)"


def verdict(ratios: list[float], limit: float) -> str:
    return "yes" if all(r <= limit for r in ratios) else "**no**"


def print_tables(
    stores: dict[str, dict[str, dict[str, Any]]],
    many: dict[str, dict[str, Any]],
    lost: dict[str, dict[str, int]],
    bounded: dict[str, dict[str, Any]],
    args: argparse.Namespace,
) -> None:
    memory, sqlite_ = stores["memory"], stores["sqlite"]
    print(f"\n| workload (memory store unless said) | target | {' | '.join(BACKENDS)} | met? |")
    print("| --- | --- |" + " ---: |" * len(BACKENDS) + " --- |")
    for label, target, limit, key, ref in RATIO_ROWS:
        figs = [memory[b]["figures"] for b in BACKENDS]
        cells = [ratio_cell(f[key], f[ref]) for f in figs]
        met = verdict([f[key] / f[ref] for f in figs], limit)
        print(f"| {label} | {target} | {' | '.join(cells)} | {met} |")
    for label, _target, _limit, key, _ref in RATIO_ROWS:
        mem = [memory[b]["figures"][key] for b in BACKENDS]
        sql = [sqlite_[b]["figures"][key] for b in BACKENDS]
        cells = [ratio_cell(s, m) for s, m in zip(sql, mem)]
        met = verdict([s / m for s, m in zip(sql, mem)], SQLITE_LIMIT)
        print(f"| SQLite: {label} | ≤ {SQLITE_LIMIT}× the memory store | {' | '.join(cells)} | {met} |")  # fmt: skip
    cells = []
    for b in BACKENDS:
        rows = lost[b]
        cells.append(f"{rows['lost']} lost of {rows['expected']:,} rows")
    total_lost = sum(rows["lost"] for rows in lost.values())
    print(
        "| SQLite: runs and states on disk after the process exits (Completed flow runs, "
        "Completed task runs, 3 states each) | 0 rows lost | "
        f"{' | '.join(cells)} | {'yes' if total_lost == 0 else '**no**'} |"
    )
    cells, per_run = [], []
    for b in BACKENDS:
        m = many[b]
        peak = (m["peak"] - m["before"]) / args.many
        per_run.append(peak)
        cells.append(
            f"{peak:.2f} KiB/run at the peak (+{(m['peak'] - m['before']) / 1024:.0f} MiB); "
            f"{(m['collected'] - m['before']) / args.many:.2f} once all collected, "
            f"{(m['after'] - m['before']) / args.many:.2f} after the flow"
        )
    print(
        f"| {args.many:,} async tasks submitted in one flow, SQLite | RSS growth "
        f"≤ {KIB_PER_RUN_LIMIT:g} KiB per finished task run | {' | '.join(cells)} | "
        f"{verdict(per_run, KIB_PER_RUN_LIMIT)} |"
    )
    b = bounded["bounded"]
    n, runs = args.max_runs, args.max_runs * 5
    flat = (b["rss"][-1] - b["rss"][0]) / (runs - n)
    ok = b["held_flow_runs"] == n and flat <= KIB_PER_RUN_LIMIT
    rss = ", ".join(f"{kib / 1024:.1f}" for kib in b["rss"])
    print(
        f"| `memory://?max_runs={n}`: {runs:,} flow runs of {args.tasks_per_run} tasks | bounded "
        f"history: RSS flat after {n:,} runs, {n:,} runs held | RSS after each {n:,} runs: "
        f"{rss} MiB ({flat:+.2f} KiB/run after the first {n:,}); holds {b['held_flow_runs']:,} "
        f"flow runs, {b['held_task_runs']:,} task runs | (asyncio only) | {'yes' if ok else '**no**'} |"
    )

    print(f"\n| extra workload | {' | '.join(BACKENDS)} | SQLite/memory ({', '.join(BACKENDS)}) |")
    print("| --- |" + " ---: |" * len(BACKENDS) + " ---: |")
    for label, key, ref, name in CONTEXT_ROWS:
        cells = [
            f"{memory[b]['figures'][key]:.1f} µs = {memory[b]['figures'][key] / memory[b]['figures'][ref]:.1f}× {name}"
            for b in BACKENDS
        ]  # fmt: skip
        over = ", ".join(
            f"{sqlite_[b]['figures'][key] / memory[b]['figures'][key]:.2f}×" for b in BACKENDS
        )
        print(f"| {label} | {' | '.join(cells)} | {over} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and runs (~2 min)")
    parser.add_argument("-n", type=int, default=1000, help="task runs per flow")
    parser.add_argument("--flows", type=int, default=None, help="flow calls per flow-call timing")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (best counts)")
    parser.add_argument("--many", type=int, default=None, help="task runs in the RSS flow")
    parser.add_argument("--max-runs", type=int, default=None, help="memory://?max_runs=N")
    parser.add_argument("--tasks-per-run", type=int, default=5, help="tasks per bounded run")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, *child_args = json.loads(args.child)
        print(json.dumps(CHILDREN[mode](*child_args)))
        return
    args.rounds = args.rounds or (2 if args.quick else 5)
    args.flows = args.flows or (50 if args.quick else 100)
    args.many = args.many or (20_000 if args.quick else 100_000)
    args.max_runs = args.max_runs or (200 if args.quick else 1000)
    try:
        run_all(args)
    finally:
        shutil.rmtree(_TMP, ignore_errors=True)


def progress(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {load_average()}] {text}", file=sys.stderr, flush=True)


def run_all(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    load_start = load_average()
    print(
        f"stageflow engine benchmark: n={args.n} task runs per flow, {args.flows} flow calls "
        f"per flow-call figure, best of {args.rounds} rounds"
    )
    print(machine())
    sources = engine_sources()
    print(sources)
    print(f"load average (1, 5, 15 min) at the start: {load_start}")
    logs = 0

    progress("cold start and peak RSS")
    memory_url = "memory://"
    cold = {name: cold_start(url) for name, url in
            (("memory", memory_url), ("sqlite", f"sqlite:///{_TMP}/cold.db"))}  # fmt: skip
    rss = {
        "memory": child("rss", memory_url, args.n),
        "sqlite": child("rss", f"sqlite:///{_TMP}/rss.db", args.n),
    }

    stores: dict[str, dict[str, dict[str, Any]]] = {"memory": {}, "sqlite": {}}
    lost: dict[str, dict[str, int]] = {}
    for name in stores:
        for backend in BACKENDS:
            progress(f"{name} store, {backend}")
            path = f"{_TMP}/engine-{backend}.db"
            url = memory_url if name == "memory" else f"sqlite:///{path}"
            report = child(
                "store", url, backend, args.n, args.flows, args.rounds,
                env={"STAGEFLOW_GLOBAL_LOOP": backend, "STAGEFLOW_STORE": url},
            )  # fmt: skip
            stores[name][backend] = report
            logs += report["logs"]
            if name == "sqlite":
                lost[backend] = rows_on_disk(path, report["flow_runs"], report["task_runs"])

    many: dict[str, dict[str, Any]] = {}
    many_floor: dict[str, dict[str, Any]] = {}
    for backend in BACKENDS:
        progress(f"{args.many:,} submitted async tasks on SQLite, {backend}")
        path = f"{_TMP}/many-{backend}.db"
        many[backend] = child("many", f"sqlite:///{path}", backend, args.many)
        logs += many[backend]["logs"]
        on_disk = rows_on_disk(path, many[backend]["flow_runs"], many[backend]["task_runs"])
        for key in on_disk:
            lost[backend][key] += on_disk[key]
        many_floor[backend] = child("many_floor", backend, args.many)

    progress("memory:// history, bounded and not")
    runs = args.max_runs * 5
    bounded = {
        "bounded": child(
            "bounded", f"memory://?max_runs={args.max_runs}", runs, args.max_runs, args.tasks_per_run
        ),
        "unbounded": child("bounded", "memory://?max_runs=0", runs, args.max_runs, args.tasks_per_run),
    }  # fmt: skip
    logs += sum(b["logs"] for b in bounded.values())

    progress("cross-thread floors")
    calls = 500 if args.quick else 2000
    hops = {b: cross_thread_floors(b, calls) for b in BACKENDS}
    load_end = load_average()

    print_tables(stores, many, lost, bounded, args)

    print("\nDetails")
    for b in BACKENDS:
        f = stores["memory"][b]["figures"]
        print(
            f"- floors, {b} (µs per item): task group {f['floor_gather']:.1f}, to_thread "
            f"{f['floor_to_thread']:.1f}, awaiting a trivial coroutine {f['floor_flow']:.2f}; "
            f"BlockingPortal.call round trip {hops[b][0]:.1f}, GlobalLoop.call + callback on "
            f"the waiting thread {hops[b][1]:.1f}"
        )
    for b in BACKENDS:
        m, fl = many[b], many_floor[b]
        print(
            f"- {args.many:,} submitted async tasks, SQLite, {b}: {m['µs_per_task']:.0f} µs per "
            f"task run; RSS before the flow {m['before'] / 1024:.1f} MiB, peak "
            f"{m['peak'] / 1024:.1f}, all results collected {m['collected'] / 1024:.1f}, after "
            f"the flow {m['after'] / 1024:.1f} MiB (peak reset: {m['peak_reset']}); the same "
            f"{args.many:,} coroutines in a bare anyio task group: peak +"
            f"{(fl['peak'] - fl['before']) / args.many:.2f} KiB each"
        )
    u = bounded["unbounded"]
    print(
        f"- `memory://?max_runs=0` (keep everything), same runs: RSS after each "
        f"{args.max_runs:,} runs: {', '.join(f'{kib / 1024:.1f}' for kib in u['rss'])} MiB "
        f"({(u['rss'][-1] - u['rss'][0]) / (runs - args.max_runs):+.2f} KiB/run); holds "
        f"{u['held_flow_runs']:,} flow runs, {u['held_task_runs']:,} task runs"
    )
    for name, b in bounded.items():
        print(
            f"- time per flow run of {args.tasks_per_run} tasks, each block of {args.max_runs:,} runs, "
            f"{'max_runs=' + str(args.max_runs) if name == 'bounded' else 'max_runs=0'}: "
            f"{', '.join(f'{us:.0f}' for us in b['µs_per_run'])} µs"
        )
    for b in BACKENDS:
        rows = lost[b]
        print(
            f"- SQLite rows, {b} (the store child and the {args.many:,}-task child): "
            f"{rows['found']:,} found of {rows['expected']:,} expected, {rows['lost']} lost, "
            f"{rows['extra']} unexpected"
        )
    for name in ("memory", "sqlite"):
        c, bare = cold[name]
        r = rss[name]
        print(
            f"- {name}: cold `python -c` import + first flow result {c:.3f} s (target ≤ 0.5 s: "
            f"{'yes' if c <= 0.5 else 'no'}; `python -c pass` {bare:.3f} s; bytecode cache "
            f"{'present' if bytecode_cached() else 'absent'}); peak RSS of a {args.n}-task "
            f"sync flow process {r['peak_kib'] / 1024:.1f} MiB (after imports "
            f"{r['after_import_kib'] / 1024:.1f} MiB; target ≤ 60 MiB: "
            f"{'yes' if r['peak_kib'] <= 60 * 1024 else 'no'})"
        )
    print(f"- sync flows' default store in the store children: "
          f"{', '.join(sorted({r['default_store'] for s in stores.values() for r in s.values()}))}")  # fmt: skip
    print(f"- engine log records (WARNING and up) in the children: {logs}")
    noisy = [r for r in CHILD_REPORTS if r["stderr"]]
    print(f"- children that wrote to stderr: {len(noisy)} of {len(CHILD_REPORTS)}")
    for r in noisy:
        print("  " + r["stderr"][-500:].replace("\n", "\n  "))
    print(f"- load average (1, 5, 15 min): {load_start} at the start, {load_end} at the end")
    sources_end = engine_sources()
    if sources_end == sources:
        print("- the engine's sources did not change during the run")
    else:
        print(f"- NOTE: the engine's sources changed during the run: now {sources_end}")
    print(f"- total time: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
