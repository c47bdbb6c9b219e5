"""How much a hop through the global loop costs, on asyncio and trio loops.

Measures, per backend, the microseconds per cross-thread round trip of:

- ``GlobalLoop.call`` of a trivial coroutine;
- ``GlobalLoop.call`` whose task sends one callback back to the waiting thread with
  ``run_in_waiting_thread`` (the engine's pattern for a sync task body);
- the same trivial call through ``anyio.from_thread.start_blocking_portal(backend).call``,

and the ratio of the first to the last. Run it as ``python benchmarks/global_loop_bench.py``
or import it and call :func:`main`. It takes about 15 s.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import anyio.from_thread

from actors import GlobalLoop

BACKENDS = ("asyncio", "trio")


async def _trivial() -> int:
    return 1


def _one() -> int:
    return 1


def _best_of(repeats: int, n: int, fn: Callable[[], object]) -> float:
    """Return the best per-call time, in µs, over ``repeats`` runs of ``n`` calls."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - start) / n * 1e6)
    return best


def measure(backend: str, *, n: int = 2000, repeats: int = 5) -> dict[str, float]:
    """Measure the three round trips on one backend.

    Args:
        backend: "asyncio" or "trio".
        n: calls per timed run.
        repeats: timed runs; the best one counts.

    Returns:
        µs per call for "call", "call+callback" and "portal".
    """
    loop = GlobalLoop(backend, name=f"bench-{backend}")

    async def with_callback() -> int:
        return await loop.run_in_waiting_thread(_one)

    try:
        for _ in range(n // 10):  # warm up
            loop.call(with_callback)
        call = _best_of(repeats, n, lambda: loop.call(_trivial))
        callback = _best_of(repeats, n, lambda: loop.call(with_callback))
    finally:
        loop.close()
    with anyio.from_thread.start_blocking_portal(backend) as portal:
        for _ in range(n // 10):
            portal.call(_trivial)
        portal_call = _best_of(repeats, n, lambda: portal.call(_trivial))
    return {"call": call, "call+callback": callback, "portal": portal_call}


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Run the benchmark on both backends and print a table.

    Args:
        argv: command-line arguments (``--calls N``, ``--repeats N``); default sys.argv.

    Returns:
        The figures, by backend.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per timed run")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs; the best counts")
    args = parser.parse_args(argv)
    results = {b: measure(b, n=args.calls, repeats=args.repeats) for b in BACKENDS}
    print(f"{'backend':<8} {'call':>9} {'call+callback':>14} {'portal.call':>12} {'ratio':>6}")
    for backend, r in results.items():
        print(
            f"{backend:<8} {r['call']:>7.1f}µs {r['call+callback']:>12.1f}µs "
            f"{r['portal']:>10.1f}µs {r['call'] / r['portal']:>6.2f}"
        )
    print("ratio = GlobalLoop.call / BlockingPortal.call (target: at most 1.5)")
    return results


if __name__ == "__main__":
    main()
