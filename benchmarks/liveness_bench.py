"""Time for a live process to notice that another one is gone.

A process runs a flow that blocks (on an SQLite store, with a liveness bound L); a second
process, opened before, waits for that run with ``wait_for_flow_run`` polling only once a
minute, so only its liveness actor can end the wait. The first process is then killed
with ``kill -9`` (noticed through its pid, on this host) or stopped with SIGSTOP (alive but
silent, as a hung process or one on another host: noticed once its lease expires). The
figure is the time from the signal to the moment the waiter returns the run Crashed.

    python benchmarks/liveness_bench.py [--trials N] [--lease SECONDS ...]

Each signal comes at a random moment of the renewal and look periods. A trial takes up
to L seconds for SIGSTOP, plus ~2 s of process start-up.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

BLOCKING = """
    import time
    from runtime import flow

    @flow
    def stuck() -> None:
        print("running", flush=True)
        while True:
            time.sleep(0.05)

    stuck()
"""

WATCHER = """
    import sys, time
    import anyio
    from runtime import Runtime, wait_for_flow_run

    async def main() -> None:
        async with Runtime():
            print("watching", flush=True)
            run = await wait_for_flow_run(sys.argv[1], timeout=600, poll_interval=60)
            print(run.state.name, time.time(), flush=True)

    anyio.run(main)
"""


def _python(env: dict[str, str], code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def _stop_outside_a_write(pid: int, db: Path) -> float:
    """SIGSTOP ``pid`` when it does not hold the store's write lock; return when."""
    while True:
        at = time.time()
        os.kill(pid, signal.SIGSTOP)
        conn = sqlite3.connect(db, timeout=0.05, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return at
        except sqlite3.OperationalError:
            os.kill(pid, signal.SIGCONT)
        finally:
            conn.close()


def trial(lease: float, how: str) -> float:
    """One measurement, in seconds."""
    with tempfile.TemporaryDirectory() as home:
        db = Path(home) / "stageflow.db"
        env = {
            **os.environ,
            "STAGEFLOW_HOME": home,
            "STAGEFLOW_STORE": f"sqlite:///{db}",
            "STAGEFLOW_LEASE_SECONDS": str(lease),
            "STAGEFLOW_LOGGING_LEVEL": "ERROR",
            "PYTHONPATH": str(REPO),
        }
        doomed = _python(env, BLOCKING)
        watcher = None
        try:
            assert doomed.stdout is not None and doomed.stdout.readline().strip() == "running"
            conn = sqlite3.connect(db)
            (run_id,) = conn.execute("SELECT id FROM flow_runs").fetchone()
            conn.close()
            watcher = _python(env, WATCHER, run_id)
            assert watcher.stdout is not None and watcher.stdout.readline().strip() == "watching"
            # At a random moment of the watcher's look period and of the renewal period.
            time.sleep(random.uniform(0, lease / 3))
            if how == "kill -9":
                at = time.time()
                os.kill(doomed.pid, signal.SIGKILL)
            else:
                at = _stop_outside_a_write(doomed.pid, db)
            state, seen = watcher.stdout.readline().split()
            assert state == "Crashed", state
            return float(seen) - at
        finally:
            doomed.kill()
            doomed.communicate()
            if watcher is not None:
                watcher.kill()
                watcher.communicate()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--lease", type=float, nargs="+", default=[15.0, 3.0])
    args = parser.parse_args()
    random.seed(11)
    print(f"{'lease L':>8}  {'how':<9}  {'median':>7}  {'max':>7}  (seconds, {args.trials} trials)")
    for lease in args.lease:
        for how in ("kill -9", "SIGSTOP"):
            times = [trial(lease, how) for _ in range(args.trials)]
            print(f"{lease:>8g}  {how:<9}  {statistics.median(times):>7.2f}  {max(times):>7.2f}")


if __name__ == "__main__":
    main()
