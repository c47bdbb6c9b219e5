"""stageflow's demo: a flow with tasks, a retry, a map and a subflow, printing its states.

Run it with ``python examples/demo.py``. Runs are recorded in the default store
(``$STAGEFLOW_HOME/stageflow.db``; see ``stageflow runs ls``).
"""

from __future__ import annotations

import logging

from runtime import RUN_LOG_FORMAT, Runtime, flow, get_run_context, get_run_logger, task

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


def main() -> None:
    """Run the pipeline and print the states it and its task runs went through."""
    logging.basicConfig(level=logging.INFO, format=RUN_LOG_FORMAT)
    with Runtime() as runtime:  # the default store: $STAGEFLOW_HOME/stageflow.db
        state = pipeline(return_state=True)
        store = runtime.backend
        assert store is not None
        flow_run_id = state.state_details.flow_run_id
        print()
        print(f"flow run {flow_run_id}: {state!r}")
        print(f"result: {state.result()}")
        print(f"fetch_rate attempts (run_count as seen inside the task): {attempts}")
        print("state history of every run:")
        runs = [("flow", store.read_flow_run(flow_run_id))]
        runs += [("task", run) for run in store.read_task_runs(flow_run_id=flow_run_id)]
        for kind, run in runs:
            history = " -> ".join(s.name for s in store.read_state_history(kind, run.id))
            print(f"  {run.name:<22} {history}")
    print(f"\nInspect it again with: stageflow runs show {flow_run_id}")


if __name__ == "__main__":
    main()
