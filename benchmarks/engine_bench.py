"""Engine benchmarks: stageflow flows and tasks next to the same work done with plain anyio.

Run: ``python benchmarks/engine_bench.py [--quick] [--store sqlite]``.

Each workload runs on stageflow and on a raw anyio "floor" (the same function calls with
no engine: a plain call loop, ``anyio.to_thread`` for submitted sync work, a task group for
async work); the best of several repetitions counts. It prints µs per task run (per flow
call for the flow-call rows), the ratio stageflow/floor and the target.

- Async workloads run under ``Runtime(store=...)`` on asyncio and on trio.
- Sync workloads run on the global loop; the "asyncio" column uses the default (asyncio)
  global loop in this process, the "trio" column reruns them in a child process with
  ``STAGEFLOW_GLOBAL_LOOP=trio``.
- Cold start (``python -c`` import + first flow result) and the peak RSS of a process that
  runs the 1000-task flow are measured in child processes, started before this process has
  grown: on Linux a child's ``ru_maxrss`` starts at its parent's RSS, so the child also
  reports its own high-water mark (``VmHWM``), which is the figure used.
- For context it also prints the cross-thread floors of a sync task call: one
  ``BlockingPortal.call`` round trip, and one ``GlobalLoop.call`` whose task runs a callback
  back on the waiting thread (the engine's pattern: a sync task called in a sync flow makes
  one such call).

``--store sqlite`` runs every workload again on ``sqlite:///<tmpdir>/bench.db`` and prints
the ratio sqlite/memory (target at most 2x); if the SQLite store is not available it says
so and goes on. INFO logs are off (``stageflow`` at WARNING); the run ends by saying how
many log records the engine emitted, which should be none.
"""

from __future__ import annotations

import argparse
import atexit
import importlib.metadata
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The store must be chosen before the engine picks its default: sync flows use the
# process's default store. STAGEFLOW_HOME keeps any default file out of the user's home.
_TMP = tempfile.mkdtemp(prefix="stageflow-bench-")
atexit.register(shutil.rmtree, _TMP, True)
os.environ.setdefault("STAGEFLOW_HOME", _TMP)
os.environ.setdefault("STAGEFLOW_STORE", "memory://")

import anyio
import anyio.from_thread

from actors import GlobalLoop
from runtime import Runtime, flow, task

HERE = Path(__file__).resolve()
BACKENDS = ("asyncio", "trio")
MIB = 1024 * 1024

# (key, label, target, unit) for every row of the table, in order.
ROWS = [
    ("sync_call", "1000 sync tasks called in a sync flow", 40.0, "µs/task"),
    ("sync_submit", "1000 sync tasks .submit() then .result()", 150.0, "µs/task"),
    ("async_gather", "1000 async tasks gathered in an async flow", 40.0, "µs/task"),
    ("sync_map", "task.map over 1000 (sync task, sync flow)", 150.0, "µs/task"),
    ("async_map", "task.map over 1000 (async task, async flow)", 150.0, "µs/task"),
    ("async_submit", "1000 async tasks .submit(), awaited (async flow)", 150.0, "µs/task"),
    ("sync_flow", "one trivial flow call, sync", 500.0, "µs/flow"),
    ("async_flow", "one trivial flow call, async", 500.0, "µs/flow"),
]
SYNC_KEYS = ("sync_call", "sync_submit", "sync_map", "sync_flow")


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


def expected(n: int) -> int:
    return n * (n + 1) // 2


# -- the raw anyio floors ---------------------------------------------------------------


def floor_call_loop(n: int) -> int:
    total = 0
    for i in range(n):
        total += add_one(i)
    return total


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


def floor_trivial_call() -> int:
    return add_one(0)


async def floor_trivial_async() -> int:
    return await add_one_async(0)


# -- timing -----------------------------------------------------------------------------


def best_of(repeats: int, fn: Callable[[], Any], check: Any = None) -> float:
    """Return the best wall time in seconds of ``repeats`` calls of ``fn``."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        elapsed = time.perf_counter() - start
        if check is not None and result != check:
            raise AssertionError(f"{fn!r} returned {result!r}, expected {check!r}")
        best = min(best, elapsed)
    return best


async def abest_of(repeats: int, fn: Callable[[], Any], check: Any = None) -> float:
    """Async :func:`best_of`."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = await fn()
        elapsed = time.perf_counter() - start
        if check is not None and result != check:
            raise AssertionError(f"{fn!r} returned {result!r}, expected {check!r}")
        best = min(best, elapsed)
    return best


def _repeat(fn: Callable[[], Any], calls: int) -> Callable[[], None]:
    def run() -> None:
        for _ in range(calls):
            fn()

    return run


def _arepeat(fn: Callable[[], Any], calls: int) -> Callable[[], Any]:
    async def run() -> None:
        for _ in range(calls):
            await fn()

    return run


# -- stores -----------------------------------------------------------------------------


def sqlite_url() -> str:
    return f"sqlite:///{_TMP}/bench.db"


def sqlite_available() -> str | None:
    """Return None if the SQLite store opens, else why not."""
    from runtime.store._urls import open_backend

    try:
        backend, owned = open_backend(sqlite_url())
    except Exception as exc:  # noqa: BLE001 - any failure means "not available"
        return f"{type(exc).__name__}: {exc}"
    if owned:
        backend.close()
    return None


def use_default_store(url: str) -> str:
    """Make ``url`` the store of sync flows (the process's default store); return the
    URL of the default store actually in use.

    ``$STAGEFLOW_STORE`` chooses it, and a closed default store is replaced by a new one
    from that variable.
    """
    from runtime.store._urls import default_backend

    os.environ["STAGEFLOW_STORE"] = url
    backend = default_backend()
    if not _same_store(backend.url, url):
        backend.close()
        backend = default_backend()
    return backend.url


def _same_store(actual: str, wanted: str) -> bool:
    return actual.split(":", 1)[0] == wanted.split(":", 1)[0]


# -- measuring --------------------------------------------------------------------------


def measure_sync(n: int, flows: int, repeats: int) -> dict[str, float]:
    """The sync workloads on the global loop of this process; µs per task / per flow."""
    sync_call_flow(10), sync_submit_flow(10), sync_map_flow(10), trivial_sync_flow()  # warm up
    out = {
        "sync_call": best_of(repeats, lambda: sync_call_flow(n), expected(n)) / n,
        "sync_submit": best_of(repeats, lambda: sync_submit_flow(n), expected(n)) / n,
        "sync_map": best_of(repeats, lambda: sync_map_flow(n), expected(n)) / n,
        "sync_flow": best_of(repeats, _repeat(trivial_sync_flow, flows)) / flows,
    }
    return {k: v * 1e6 for k, v in out.items()}


async def _measure_async(n: int, flows: int, repeats: int, store: str) -> dict[str, float]:
    async with Runtime(store=store):
        await async_gather_flow(10), await async_map_flow(10), await trivial_async_flow()
        out = {
            "async_gather": await abest_of(repeats, lambda: async_gather_flow(n), expected(n)) / n,
            "async_map": await abest_of(repeats, lambda: async_map_flow(n), expected(n)) / n,
            "async_submit": await abest_of(repeats, lambda: async_submit_flow(n), expected(n)) / n,
            "async_flow": await abest_of(repeats, _arepeat(trivial_async_flow, flows)) / flows,
        }
    return {k: v * 1e6 for k, v in out.items()}


def measure_async(backend: str, n: int, flows: int, repeats: int, store: str) -> dict[str, float]:
    """The async workloads under ``Runtime(store=store)`` on ``backend``."""
    return anyio.run(_measure_async, n, flows, repeats, store, backend=backend)


async def _measure_floors(n: int, flows: int, repeats: int) -> dict[str, float]:
    to_thread = await abest_of(repeats, lambda: floor_to_thread(n), expected(n)) / n
    gather = await abest_of(repeats, lambda: floor_gather(n), expected(n)) / n
    trivial = await abest_of(repeats, _arepeat(floor_trivial_async, flows)) / flows
    return {
        "sync_submit": to_thread * 1e6,
        "sync_map": to_thread * 1e6,
        "async_gather": gather * 1e6,
        "async_map": gather * 1e6,
        "async_submit": gather * 1e6,
        "async_flow": trivial * 1e6,
    }


def measure_floors(backend: str, n: int, flows: int, repeats: int) -> dict[str, float]:
    """The raw anyio floors on ``backend`` (sync floors are plain function calls)."""
    floors = anyio.run(_measure_floors, n, flows, repeats, backend=backend)
    floors["sync_call"] = best_of(repeats, lambda: floor_call_loop(n), expected(n)) / n * 1e6
    floors["sync_flow"] = best_of(repeats, _repeat(floor_trivial_call, flows)) / flows * 1e6
    return floors


def portal_round_trip(backend: str, calls: int, repeats: int) -> float:
    """µs per ``BlockingPortal.call`` of a trivial coroutine: one cross-thread round trip."""
    with anyio.from_thread.start_blocking_portal(backend) as portal:
        for _ in range(100):
            portal.call(floor_trivial_async)
        return (
            best_of(repeats, _repeat(lambda: portal.call(floor_trivial_async), calls)) / calls * 1e6
        )


def global_loop_round_trip(backend: str, calls: int, repeats: int) -> float:
    """µs per ``GlobalLoop.call`` whose task runs one callback on the waiting thread."""
    loop = GlobalLoop(backend, name=f"bench-floor-{backend}")

    async def with_callback() -> int:
        return await loop.run_in_waiting_thread(add_one, 1)

    try:
        for _ in range(100):
            loop.call(with_callback)
        return best_of(repeats, _repeat(lambda: loop.call(with_callback), calls)) / calls * 1e6
    finally:
        loop.close()


def child_json(args: list[str], env: dict[str, str] | None = None) -> Any:
    """Run this script with ``args`` in a child process; return the JSON it prints last."""
    proc = subprocess.run(
        [sys.executable, str(HERE), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


COLD_SNIPPET = """\
from runtime import flow

@flow
def hello():
    return 1

assert hello() == 1
"""


def cold_start(repeats: int, env: dict[str, str]) -> tuple[float, float]:
    """Best wall time (s) of ``python -c`` import + first flow result, and of ``python -c pass``."""

    def run(code: str) -> None:
        subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, **env})

    return best_of(repeats, lambda: run(COLD_SNIPPET)), best_of(repeats, lambda: run("pass"))


# -- child processes --------------------------------------------------------------------


def child_main(mode: str, n: int, flows: int, repeats: int, store: str) -> None:
    import resource

    logging.getLogger("stageflow").setLevel(logging.WARNING)
    if mode == "rss":
        use_default_store(store)
        before = _high_water_kib()
        assert sync_call_flow(n) == expected(n)
        ru_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(
            json.dumps(
                {
                    "after_import_kib": before,
                    "peak_kib": _high_water_kib() or ru_maxrss,
                    "ru_maxrss_kib": ru_maxrss,
                }
            )
        )
    elif mode == "sync":
        use_default_store(store)
        print(json.dumps(measure_sync(n, flows, repeats)))
    else:
        raise SystemExit(f"unknown child mode {mode!r}")


def _high_water_kib() -> int | None:
    """This process's peak RSS in KiB (``VmHWM``, Linux), or None where unknown."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def bytecode_cached() -> bool:
    """Whether ``runtime``'s modules have .pyc files (cold start is ~0.15 s slower without)."""
    import importlib.util

    import runtime.engine._flow_engine

    source = runtime.engine._flow_engine.__file__
    return source is not None and os.path.exists(importlib.util.cache_from_source(source))


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


# -- report -----------------------------------------------------------------------------


class LogCounter(logging.Handler):
    """Counts the engine's log records (WARNING and up reach it; INFO is off)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def run_store(
    store: str, n: int, flows: int, repeats: int, sync_trio: bool
) -> dict[str, dict[str, float]]:
    """Every timed workload on ``store``: {row key: {"asyncio": µs, "trio": µs}}."""
    figures: dict[str, dict[str, float]] = {key: {} for key, *_ in ROWS}
    used = use_default_store(store)
    for key, value in measure_sync(n, flows, repeats).items():
        figures[key]["asyncio"] = value
    if sync_trio:
        trio_sync = child_json(
            [
                "--child",
                "sync",
                "-n",
                str(n),
                "--flows",
                str(flows),
                "--repeats",
                str(repeats),
                "--store-url",
                store,
            ],
            env={"STAGEFLOW_GLOBAL_LOOP": "trio"},
        )
        for key, value in trio_sync.items():
            figures[key]["trio"] = value
    for backend in BACKENDS:
        for key, value in measure_async(backend, n, flows, repeats, store).items():
            figures[key][backend] = value
    figures["_store"] = {"default": used}  # type: ignore[dict-item]
    return figures


def fmt(value: float | None, width: int = 9) -> str:
    return f"{value:>{width}.1f}" if value is not None else f"{'-':>{width}}"


def print_table(
    title: str, figures: dict[str, dict[str, float]], floors: dict[str, dict[str, float]]
) -> None:
    print(f"\n{title}")
    print(
        f"{'workload':<50} {'asyncio':>9} {'trio':>9} {'floor':>9} {'ratio':>7} {'target':>8}  met?"
    )
    for key, label, target, unit in ROWS:
        row = figures[key]
        a, t = row.get("asyncio"), row.get("trio")
        floor = floors["asyncio"].get(key)
        worst = max(v for v in (a, t) if v is not None)
        ratio = f"{a / floor:>6.0f}x" if a is not None and floor else f"{'-':>7}"
        met = "yes" if worst <= target else f"NO ({worst / target:.1f}x)"
        print(f"{label:<50} {fmt(a)} {fmt(t)} {fmt(floor)} {ratio} {target:>6.0f}{unit[:2]}  {met}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (about 20 s)")
    parser.add_argument(
        "--store",
        choices=["memory", "sqlite"],
        default="memory",
        help="sqlite: also run every workload on sqlite:///<tmpdir>/bench.db",
    )
    parser.add_argument("-n", type=int, default=1000, help="task runs per flow")
    parser.add_argument("--flows", type=int, default=100, help="flow calls per flow-call timing")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed runs per figure (best counts)"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--store-url", default="memory://", help=argparse.SUPPRESS)
    args = parser.parse_args()
    repeats = args.repeats or (2 if args.quick else 4)
    n, flows = args.n, (50 if args.quick else args.flows)
    if args.child:
        child_main(args.child, n, flows, repeats, args.store_url)
        return

    counter = LogCounter()
    for name in ("stageflow", "actors"):
        logging.getLogger(name).setLevel(logging.WARNING)
        logging.getLogger(name).addHandler(counter)
    started = time.perf_counter()
    print(
        f"stageflow engine benchmark: n={n} task runs per flow, {flows} flow calls, best of {repeats}"
    )
    print(machine())

    stores = [("memory", "memory://")]
    if args.store == "sqlite":
        why_not = sqlite_available()
        if why_not is None:
            stores.append(("sqlite", sqlite_url()))
        else:
            print(f"sqlite: not available ({why_not})")

    # Child processes first, while this process is small (see the module docstring).
    processes = {}
    for name, url in stores:
        env = {"STAGEFLOW_STORE": url}
        cold, bare = cold_start(3, env)
        rss = child_json(["--child", "rss", "-n", str(n), "--store-url", url], env=env)
        processes[name] = (cold, bare, rss)

    floors = {b: measure_floors(b, n, flows, repeats) for b in BACKENDS}
    calls = 500 if args.quick else 2000
    portal = {b: portal_round_trip(b, calls, repeats) for b in BACKENDS}
    hop = {b: global_loop_round_trip(b, calls, repeats) for b in BACKENDS}

    results: dict[str, dict[str, dict[str, float]]] = {}
    for name, url in stores:
        results[name] = run_store(url, n, flows, repeats, sync_trio=True)
        print_table(
            f"{name} store ({url}; sync flows' default store: {results[name]['_store']['default']})",
            results[name],
            floors,
        )

    print("\nraw floors per backend (µs per item; the table's floor column is asyncio's):")
    for b in BACKENDS:
        print(
            f"  {b:<8} to_thread {floors[b]['sync_submit']:.1f}, task group {floors[b]['async_gather']:.1f}, "
            f"BlockingPortal.call round trip {portal[b]:.1f}, "
            f"GlobalLoop.call + callback in the waiting thread {hop[b]:.1f}"
        )

    for name, (cold, bare, rss) in processes.items():
        print(
            f"\n{name}: cold `python -c` import + first flow result: {cold:.3f} s "
            f"(target ≤ 0.5 s: {'yes' if cold <= 0.5 else 'NO'}; bare `python -c pass`: {bare:.3f} s; "
            f"bytecode cache of runtime/: {'present' if bytecode_cached() else 'ABSENT, so imports compile'})"
        )
        peak = rss["peak_kib"] / 1024
        print(
            f"{name}: peak RSS of the {n}-task flow process: {peak:.1f} MiB "
            f"(after imports {(rss['after_import_kib'] or 0) / 1024:.1f} MiB, ru_maxrss {rss['ru_maxrss_kib'] / 1024:.1f} MiB; "
            f"target ≤ 60 MiB: {'yes' if peak <= 60 else 'NO'})"
        )

    if "sqlite" in results:
        print("\nsqlite / memory (target ≤ 2x)")
        for key, label, *_ in ROWS:
            for backend in BACKENDS:
                mem, sql = results["memory"][key].get(backend), results["sqlite"][key].get(backend)
                if mem and sql:
                    print(
                        f"  {label:<50} {backend:<8} {sql:8.1f} / {mem:7.1f} = {sql / mem:5.2f}x  {'yes' if sql <= 2 * mem else 'NO'}"
                    )

    print(f"\nengine log records (WARNING and up) emitted during the benchmark: {counter.count}")
    print(f"total time: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
