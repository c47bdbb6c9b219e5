"""stageflow's demo: a flow with tasks, a retry, a map and a subflow, printing its states.

Run it with ``python examples/demo.py``. Its run logs show on stderr; runs are recorded
in the default store (``$STAGEFLOW_HOME/stageflow.db``; see ``stageflow runs ls``).
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

from runtime import (
    flow,
    get_run_context,
    get_run_logger,
    read_flow_run,
    read_state_history,
    read_task_runs,
    task,
)

attempts: list[int] = []


@task
def extract(source: str) -> list[int]:
    """Pretend to read numbers from a source."""
    return [len(source), 2, 3, 5, 8]


@task(retries=2, retry_delay_seconds=0)
def fetch_rate() -> float:
    """Fail on the first attempt, to show a retry."""
    run_count = get_run_context().task_run.run_count
    attempts.append(run_count)
    if run_count < 2:
        raise ConnectionError("the rate service is warming up")
    return 1.5


@task
def convert(amount: int, rate: float) -> float:
    """Convert one amount."""
    return amount * rate


@flow
def summarize(values: list[float]) -> dict[str, float]:
    """A subflow: its run is a child of the calling flow run."""
    get_run_logger().info("summarizing %d values", len(values))
    return {"total": sum(values), "largest": max(values)}


@flow(log_prints=True)
def pipeline(source: str = "ledger") -> dict[str, float]:
    """Extract numbers, convert each with a retried rate, summarize them in a subflow."""
    amounts = extract(source)
    rate = fetch_rate()
    converted = convert.map(amounts, rate)
    summary = summarize([future.result() for future in converted])
    print(f"summary: {summary}")
    return summary


def stageflow_command() -> str:
    """How to type the ``stageflow`` command of this interpreter: plain ``stageflow`` when
    it is the one on PATH, else the path of this virtualenv's script, else
    ``python -m runtime``."""
    script = Path(sys.executable).parent / "stageflow"
    if not script.is_file():
        return f"{shlex.quote(sys.executable)} -m runtime"
    if shutil.which("stageflow") == str(script):
        return "stageflow"
    relative = os.path.relpath(script)
    return shlex.quote(relative if not relative.startswith("..") else str(script))


def main() -> None:
    """Run the pipeline and print the states it and its task runs went through."""
    state = pipeline(return_state=True)  # recorded in the default store
    flow_run_id = state.state_details.flow_run_id
    print()
    print(f"flow run {flow_run_id}: {state!r}")
    print(f"result: {state.result()}")
    print(f"fetch_rate attempts (run_count as seen inside the task): {attempts}")
    print("state history of every run:")
    for run in [read_flow_run(flow_run_id), *read_task_runs(flow_run_id)]:
        history = " -> ".join(s.name or "" for s in read_state_history(run.id))
        print(f"  {run.name:<22} {history}")
    print(f"\nInspect it again with: {stageflow_command()} runs show {flow_run_id}")


if __name__ == "__main__":
    main()
