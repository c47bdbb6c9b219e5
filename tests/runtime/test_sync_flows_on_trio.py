"""The engine's sync-flow tests pass with the global loop on trio too.

A sync flow's engine runs on the process's global loop, asyncio unless
``STAGEFLOW_GLOBAL_LOOP`` says trio. The tests below run in this process on asyncio (and
those taking the ``sync_runtime`` fixture on both); this test runs the sync-flow test
modules again in a child pytest whose global loop is trio.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

SYNC_FLOW_MODULES = [
    "test_flows.py",
    "test_tasks.py",
    "test_subflows.py",
    "test_futures.py",
    "test_retries_timeouts.py",
    "test_crashes_hooks.py",
    "test_caching_transactions.py",
    "test_results.py",
    "test_pause_cancel.py",
    "test_prefect_semantics.py",
    "test_interrupts.py",
    "test_logging_context.py",
    "test_run_actors.py",
    "test_signals.py",
]


def test_the_sync_flow_tests_pass_with_a_trio_global_loop(tmp_path: Path) -> None:
    env = {**os.environ, "STAGEFLOW_GLOBAL_LOOP": "trio", "STAGEFLOW_HOME": str(tmp_path)}
    # Async tests already run on both backends here; the child runs the sync ones.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-k",
            "not trio and not asyncio",
            *[str(HERE / name) for name in SYNC_FLOW_MODULES],
        ],
        env=env,
        cwd=HERE.parent.parent,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    passed = re.search(r"(\d+) passed", result.stdout)
    assert passed is not None and int(passed.group(1)) >= 100, result.stdout[-2000:]
