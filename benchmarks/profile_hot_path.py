"""Where the time (and memory) of a task run goes: profiles of engine_bench.py's workloads.

Run: ``python benchmarks/profile_hot_path.py [--store memory|sqlite] [--backend asyncio|trio]
[--only WORKLOAD ...] [-n 1000] [--flows 5] [--top 25]``.

Workloads (all by default but ``retained``), each profiled after a warm-up:

- ``gathered``: ``--flows`` async flows, each gathering ``-n`` async tasks
  (``Runtime(store=...)``);
- ``called``: ``--flows`` sync flows, each calling ``-n`` sync tasks;
- ``submitted``: ``--flows`` sync flows, each submitting ``-n`` sync tasks, then collecting
  their results;
- ``sync_flows``, ``async_flows``: ``--flows`` × ``-n`` trivial flow calls;
- ``retained``: one async flow submitting ``-n`` async tasks (``Runtime(store=...)``),
  with ``tracemalloc``: the memory alive once every result is collected (the flow still
  running), by allocating line, per task run; once with the flow keeping its futures (as
  engine_bench.py's 100,000-task flow does), once with it dropping each future once it has
  its result.

For a timed workload it prints the wall and CPU time per task run (or flow call) without
the profiler, and how much of it the cyclic GC took (``gc.callbacks``); then, from a second
pass under cProfile with the GC off (so that a collection's time is not charged to whichever
function happened to allocate), the time grouped by where the code lives (orchestrator,
store, states and records, task engine, actor kernel, anyio and the event loop, ...; a
builtin is charged to the Python function that called it) and the ``--top`` functions by
own time. The calling thread and the global loop's thread are profiled (a second profiler
is enabled on the loop's thread through ``GlobalLoop.call``); anyio's worker threads, which
run submitted sync bodies, are not (their work is what the ``to_thread`` floor does too).
cProfile charges every call ~0.5-1 µs of its own, so small functions look more expensive
than they are: read the groups as shares, and the "scaled" column, which spreads the
GC-free CPU time measured without the profiler over those shares.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import sys
import tempfile
import time
import tracemalloc
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

_TMP = tempfile.mkdtemp(prefix="stageflow-profile-")
os.environ.setdefault("STAGEFLOW_HOME", _TMP)
os.environ.setdefault("STAGEFLOW_LOGGING_LEVEL", "WARNING")
REPO = str(Path(__file__).resolve().parents[1])
sys.path.insert(0, REPO)

import anyio

from actors import global_loop
from runtime import Runtime, flow

# (group, substrings of "path:function"); the first match wins.
GROUPS = [
    ("orchestrator: proposals, rules, run records (runtime/orchestration, core/_rules)", ("runtime/orchestration/", "runtime/core/_rules")),
    ("store writes (runtime/store, sqlite3)", ("runtime/store/", "sqlite3")),
    ("states, run records, ids (runtime/core)", ("runtime/core/",)),
    ("task engine: run, attempt, body (engine/_task_engine, _body, _drivers, _interrupt)", ("runtime/engine/_task_engine", "runtime/engine/_body", "runtime/engine/_drivers", "runtime/engine/_outcomes", "runtime/engine/_interrupt")),
    ("flow engine (engine/_flow_engine, _beside, _signals)", ("runtime/engine/_flow_engine", "runtime/engine/_beside", "runtime/engine/_signals")),
    ("submission, futures (engine/_submission, _futures, _task_runners)", ("runtime/engine/_submission", "runtime/engine/_futures", "runtime/engine/_task_runners")),
    ("run actors, context, transactions, hooks, logging checks (rest of runtime/engine)", ("runtime/engine/",)),
    ("entry points: Task.__call__, flow calls, parameters (runtime/api)", ("runtime/api/",)),
    ("actor kernel: attach, dispatch, supervisor (actors/)", ("actors/",)),
    ("pydantic", ("pydantic",)),
    ("outcome", ("outcome/",)),
    ("anyio", ("anyio/",)),
    ("trio", ("trio/",)),
    ("asyncio event loop", ("asyncio/",)),
    ("threading, queues", ("threading.py", "queue.py", "concurrent/", "_thread")),
    ("stdlib: uuid hashing, datetime, contextvars, copy, logging ...", ("/lib/python3",)),
    ("the benchmark's own code", ("benchmarks/",)),
]  # fmt: skip
# Waiting, not working: a loop's poll for I/O, a thread blocked on a lock or a queue.
IDLE = ("'poll' of 'select", "'select' of 'select", "'control' of 'select", "acquire' of '_thread",
        "'get' of '_queue.SimpleQueue'")


# -- the workloads ----------------------------------------------------------------------
# engine_bench.py's own, so that a profile explains the figure in its table.

from engine_bench import (  # noqa: E402 (after the environment above)
    add_task_async,
    async_gather_flow,
    sync_call_flow,
    sync_submit_flow,
    trivial_async_flow,
    trivial_sync_flow,
)

SNAPSHOTS: dict[str, Any] = {}


@flow
async def retained(n: int, drop: bool) -> int:
    futures: list[Any] = [add_task_async.submit(i) for i in range(n)]
    total = 0
    for i in range(n):
        total += await futures[i]
        if drop:
            futures[i] = None
    SNAPSHOTS["collected"] = tracemalloc.take_snapshot()
    SNAPSHOTS["traced"] = tracemalloc.get_traced_memory()
    return total


def sync_flows(n: int) -> None:
    for _ in range(n):
        trivial_sync_flow()


async def async_flows(n: int) -> None:
    for _ in range(n):
        await trivial_async_flow()


# name: (title, unit, the call, async?)
WORKLOADS: dict[str, tuple[str, str, Callable[[int], Any], bool]] = {
    "gathered": ("async tasks gathered in an async flow", "task run", async_gather_flow, True),
    "called": ("sync task called in a sync flow", "task run", sync_call_flow, False),
    "submitted": (
        "sync tasks .submit()ed, then results collected", "task run", sync_submit_flow, False
    ),
    "sync_flows": ("one trivial flow call, sync", "flow call", sync_flows, False),
    "async_flows": ("one trivial flow call, async", "flow call", async_flows, True),
}


# -- timing and profiling ---------------------------------------------------------------


class GcTimer:
    """Time spent in the cyclic GC, and collections per generation (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.collections = [0, 0, 0]
        self._start = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.seconds[info["generation"]] += time.perf_counter() - self._start
            self.collections[info["generation"]] += 1

    def reset(self) -> None:
        self.seconds, self.collections = [0.0, 0.0, 0.0], [0, 0, 0]


GC = GcTimer()
Timing = tuple[float, float, list[float], list[int]]  # wall, CPU, GC seconds, collections


class Session:
    """One timed pass, optionally profiled on this thread and the global loop's thread."""

    def __init__(self, profile: bool) -> None:
        self.profile = profile
        self.here, self.there = cProfile.Profile(), cProfile.Profile()
        self.timing: Timing | None = None

    def _switch(self, on: bool) -> None:  # a plain function: runs on the loop's thread
        self.there.enable() if on else self.there.disable()

    def start(self) -> None:
        if self.profile:
            gc.disable()
            global_loop().call(self._switch, True)
            self.here.enable()
        GC.reset()
        self._start = time.perf_counter(), time.process_time()

    def stop(self) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        self.timing = (wall - self._start[0], cpu - self._start[1], list(GC.seconds),
                       list(GC.collections))  # fmt: skip
        if self.profile:
            self.here.disable()
            global_loop().call(self._switch, False)
            gc.enable()

    def stats(self) -> pstats.Stats:
        stats = pstats.Stats(self.here)
        stats.add(self.there)
        return stats


def run_pass(name: str, url: str, backend: str, n: int, flows: int, profile: bool) -> Session:
    """One pass of a workload, on a store of its own: a new ``Runtime(store=url)`` for async
    flows; for sync flows the process's default store, closed first so that it reopens."""
    from runtime.store._urls import default_backend

    _title, _unit, call, is_async = WORKLOADS[name]
    session = Session(profile)
    default_backend().close()

    async def run_async() -> None:
        async with Runtime(store=url):
            await call(10)
            session.start()
            for _ in range(flows):
                await call(n)
            session.stop()

    if is_async:
        anyio.run(run_async, backend=backend)
    else:
        call(10)
        session.start()
        for _ in range(flows):
            call(n)
        session.stop()
    return session


def group_of(key: tuple[str, int, str]) -> str:
    where = f"{key[0].replace(REPO + '/', '')}:{key[2]}"
    for label, needles in GROUPS:
        if any(needle in where for needle in needles):
            return label
    return "other"


def short(path: str) -> str:
    path = path.replace(REPO + "/", "")
    for marker in ("site-packages/", "/lib/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def report(name: str, url: str, backend: str, n: int, flows: int, top: int) -> None:
    title, unit, _call, _is_async = WORKLOADS[name]
    units = n * flows
    plain = run_pass(name, url, backend, n, flows, profile=False)
    profiled = run_pass(name, url, backend, n, flows, profile=True)
    assert plain.timing is not None and profiled.timing is not None
    wall, cpu, gc_s, collections = plain.timing
    engine_cpu = cpu - sum(gc_s)
    raw: dict[Any, Any] = profiled.stats().stats  # type: ignore[attr-defined]
    idle = {key for key in raw if any(needle in key[2] for needle in IDLE)}
    total = sum(entry[2] for key, entry in raw.items() if key not in idle)

    def per(seconds: float) -> str:
        return f"{seconds / units * 1e6:.1f}"

    print(f"\n## {title} ({url}, {backend}): {units} {unit}s")
    print(
        f"- without the profiler: {per(wall)} µs wall, {per(cpu)} µs CPU per {unit}; cyclic GC "
        f"{per(sum(gc_s))} µs of it (generations 0/1/2: {per(gc_s[0])} / {per(gc_s[1])} / "
        f"{per(gc_s[2])} µs, {collections[0]} / {collections[1]} / {collections[2]} "
        f"collections); CPU without the GC {per(engine_cpu)} µs"
    )
    print(
        f"- profiled, GC off: {per(profiled.timing[0])} µs wall, {per(profiled.timing[1])} µs "
        f"CPU; own time of the profiled functions {per(total)} µs per {unit} (waiting left "
        f"out: {per(sum(raw[k][2] for k in idle))} µs)"
    )
    groups: dict[str, float] = defaultdict(float)
    calls: dict[str, float] = defaultdict(float)
    for key, (_cc, ncalls, tottime, _ct, callers) in raw.items():
        if key in idle:
            continue
        if key[0] == "~" and callers:
            # A builtin (dict.copy, isinstance, a C type's __new__, ...): charge it to the
            # Python functions that called it, in proportion.
            caller_time = sum(info[2] for info in callers.values()) or 1.0
            for caller, info in callers.items():
                groups[group_of(caller)] += tottime * info[2] / caller_time
            continue
        groups[group_of(key)] += tottime
        calls[group_of(key)] += ncalls
    print(f"\n| where (builtins charged to their callers) | µs per {unit}, profiled | share "
          f"| scaled µs | Python calls per {unit} |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: |")
    for label, seconds in sorted(groups.items(), key=lambda item: -item[1]):
        print(
            f"| {label} | {per(seconds)} | {seconds / total:.0%} | "
            f"{engine_cpu * seconds / total / units * 1e6:.1f} | {calls[label] / units:.1f} |"
        )
    print(f"\ntop {top} functions by own time (µs per {unit} profiled, cumulative, calls):")
    rows = sorted(((k, v) for k, v in raw.items() if k not in idle), key=lambda kv: -kv[1][2])
    for (path, line, fn), (_cc, ncalls, tottime, cumtime, _callers) in rows[:top]:
        print(f"  {per(tottime):>7} own {per(cumtime):>8} cum {ncalls / units:6.1f}x  "
              f"{short(path)}:{line}({fn})")  # fmt: skip


def allocated_in(frames: list[str]) -> str:
    """The group of the innermost stageflow frame (``runtime/``, ``actors/``) of an
    allocation, else of its innermost frame."""
    for frame in frames:
        if f"{REPO}/runtime/" in frame or f"{REPO}/actors/" in frame:
            return group_of((frame, 0, ""))
    return group_of((frames[0], 0, "")) if frames else "other"


def report_retained(url: str, backend: str, n: int, top: int, drop: bool) -> None:
    """What stays alive per task run once a flow's ``n`` submitted runs are collected;
    with ``drop``, the flow lets go of each future once it has its result."""

    async def main() -> tuple[tracemalloc.Snapshot, int]:
        async with Runtime(store=url):
            await retained(10, drop)
            gc.collect()
            before = tracemalloc.take_snapshot()
            tracemalloc.reset_peak()
            start = tracemalloc.get_traced_memory()[0]
            await retained(n, drop)
            return before, start

    tracemalloc.start(30)
    before, start = anyio.run(main, backend=backend)
    tracemalloc.stop()
    current, peak = SNAPSHOTS["traced"]
    holding = "drops each future once it has its result" if drop else "keeps its futures"
    print(f"\n## retained: one async flow submitting {n} async tasks, which {holding} ({url}, {backend})")
    print(
        f"- traced memory (tracemalloc), per task run: {(current - start) / n / 1024:.2f} KiB "
        f"alive once every result is collected (the flow still running), "
        f"{(peak - start) / n / 1024:.2f} KiB at the peak"
    )
    diff = SNAPSHOTS["collected"].compare_to(before, "traceback")
    groups: dict[str, float] = defaultdict(float)
    for stat in diff:
        groups[allocated_in([f.filename for f in reversed(stat.traceback)])] += stat.size_diff
    print("\n| allocated by (innermost frame in runtime/ or actors/) | bytes alive per task run |")
    print("| --- | ---: |")
    for label, size in sorted(groups.items(), key=lambda item: -item[1]):
        if abs(size) / n >= 1:
            print(f"| {label} | {size / n:.0f} |")
    print(f"\ntop {top} allocating lines (bytes alive per task run, objects per task run):")
    for stat in SNAPSHOTS["collected"].compare_to(before, "lineno")[:top]:
        frame = stat.traceback[0]
        print(f"  {stat.size_diff / n:8.0f} B {stat.count_diff / n:6.2f}x  "
              f"{short(frame.filename)}:{frame.lineno}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=["memory", "sqlite"], default="memory")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("-n", type=int, default=1000, help="task runs per flow")
    parser.add_argument("--flows", type=int, default=5, help="flows per profile")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--only", nargs="+", choices=[*WORKLOADS, "retained"], default=None)
    args = parser.parse_args()
    url = "memory://" if args.store == "memory" else f"sqlite:///{_TMP}/profile.db"
    # Sync flows use the process's default store and the global loop of this backend.
    os.environ["STAGEFLOW_STORE"] = url
    if os.environ.setdefault("STAGEFLOW_GLOBAL_LOOP", args.backend) != args.backend:
        raise SystemExit("STAGEFLOW_GLOBAL_LOOP and --backend disagree")
    print(f"profiles: {url}, {args.backend}, {args.flows} x {args.n}")
    for name in args.only or list(WORKLOADS):
        if name == "retained":
            report_retained(url, args.backend, args.n, args.top, drop=False)
            report_retained(url, args.backend, args.n, args.top, drop=True)
        else:
            report(name, url, args.backend, args.n, args.flows, args.top)


if __name__ == "__main__":
    main()
