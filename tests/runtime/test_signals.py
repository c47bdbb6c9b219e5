"""SIGTERM on a flow process: its runs are reported Crashed, hooks run, the process ends."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SYNC_FLOW = """
    import threading, time
    from runtime import flow, task

    def crashed(flow, run, state):
        print("on_crashed", state.name, state.message, flush=True)

    @task
    def step() -> int:
        return 1

    @flow(on_crashed=[crashed])
    def work() -> None:
        step()
        print("started", flush=True)
        while True:
            time.sleep(0.01)

    work()
"""

ASYNC_FLOW = """
    import sys
    import anyio
    from runtime import flow

    def crashed(flow, run, state):
        print("on_crashed", state.name, state.message, flush=True)

    @flow(on_crashed=[crashed])
    async def work() -> None:
        print("started", flush=True)
        await anyio.sleep_forever()

    anyio.run(work, backend=sys.argv[1])
"""


def _terminate(tmp_path: Path, source: str, *args: str) -> tuple[int, str]:
    script = tmp_path / "flow_process.py"
    script.write_text(textwrap.dedent(source))
    process = subprocess.Popen(
        [sys.executable, str(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "started"
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=30)
    return process.returncode, out + err


def test_sigterm_crashes_a_sync_flow_run_and_runs_on_crashed(tmp_path: Path) -> None:
    code, output = _terminate(tmp_path, SYNC_FLOW)
    assert "on_crashed Crashed Execution was aborted by a termination signal." in output
    assert "TerminationSignal" in output
    assert code != 0


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_sigterm_crashes_an_async_flow_run(tmp_path: Path, backend: str) -> None:
    code, output = _terminate(tmp_path, ASYNC_FLOW, backend)
    assert "on_crashed Crashed Execution was aborted by a termination signal." in output
    assert code != 0
