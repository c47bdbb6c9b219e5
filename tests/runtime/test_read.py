"""Reading runs from Python: read_flow_run, read_flow_runs, read_task_runs,
read_state_history, from sync and async code."""

from __future__ import annotations

from typing import Any
from uuid import uuid4

import anyio
import pytest
from engine_support import isolated_home  # noqa: F401

from runtime import (
    FlowRun,
    Runtime,
    State,
    StateType,
    TaskRun,
    flow,
    get_run_context,
    read_flow_run,
    read_flow_runs,
    read_state_history,
    read_task_runs,
    tags,
    task,
)
from runtime.core._exceptions import ObjectNotFound


@task
def double(x: int) -> int:
    return 2 * x


@flow(name="reader")
def reader(x: int) -> int:
    return double(x) + double(x + 1)


@flow(name="breaks")
def breaks() -> None:
    raise ValueError("broken on purpose")


@flow(name="times-out", timeout_seconds=0.01)
async def times_out() -> None:
    await anyio.Event().wait()


def test_read_flow_run_and_its_task_runs_and_history() -> None:
    with Runtime(store="memory://"):
        state = reader(1, return_state=True)
        run_id = state.state_details.flow_run_id
        run = read_flow_run(run_id)
        same = read_flow_run(str(run_id))
        task_runs = read_task_runs(run_id)
        history = read_state_history(run_id)
        task_history = read_state_history(task_runs[0].id)
    assert isinstance(run, FlowRun) and run == same
    assert (run.flow_name, run.parameters, run.state_type) == ("reader", {"x": 1}, "COMPLETED")
    assert all(isinstance(t, TaskRun) for t in task_runs)
    assert [t.name for t in task_runs] == ["double-0", "double-1"]
    assert all(isinstance(s, State) for s in history)
    assert [s.type for s in history] == [StateType.PENDING, StateType.RUNNING, "COMPLETED"]
    assert [s.name for s in task_history] == ["Pending", "Running", "Completed"]


def test_read_flow_runs_filters_by_flow_state_and_tags_newest_first() -> None:
    with Runtime(store="memory://"):
        first = reader(1, return_state=True).state_details.flow_run_id
        with tags("nightly", "eu"):
            tagged = reader(2, return_state=True).state_details.flow_run_id
        failed = breaks(return_state=True).state_details.flow_run_id
        timed_out = anyio.run(lambda: times_out(return_state=True)).state_details.flow_run_id

        def ids(**filters: Any) -> list[Any]:
            return [run.id for run in read_flow_runs(**filters)]

        assert ids() == [timed_out, failed, tagged, first]
        assert ids(limit=2) == [timed_out, failed]
        assert ids(flow_name="reader") == [tagged, first]
        assert ids(state="completed") == [tagged, first]
        assert ids(state=StateType.FAILED) == [timed_out, failed]
        assert ids(state="TimedOut") == [timed_out]
        assert ids(state=["timedout", "COMPLETED"], limit=2) == [timed_out, tagged]
        assert ids(tags=["nightly"]) == [tagged]
        assert ids(tags=["nightly", "eu"], state="Completed") == [tagged]
        assert ids(tags=["nightly", "us"]) == []
        assert ids(flow_name="no-such-flow") == []


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match=r"^Unknown state 'bogus': use a state type \(SCHEDULED, "):
        read_flow_runs(state="bogus")
    with pytest.raises(ValueError, match=r"state name \(Scheduled, Late, .*Suspended\)\.$"):
        read_flow_runs(state=["completed", "bogus"])
    with pytest.raises(ValueError, match=r"^limit must be 1 or more"):
        read_flow_runs(limit=0)
    with Runtime(store="memory://"):
        with pytest.raises(ObjectNotFound, match=r"^'nope' is not a flow run id \(a UUID\)\.$"):
            read_flow_run("nope")
        with pytest.raises(ObjectNotFound):
            read_flow_run(uuid4())
        with pytest.raises(ObjectNotFound):
            read_task_runs(uuid4())
        unknown = uuid4()
        with pytest.raises(ObjectNotFound, match=f"^No flow run or task run has the id {unknown}"):
            read_state_history(unknown)


async def test_awaitable_from_async_code() -> None:
    @task
    async def step() -> int:
        return 1

    @flow(name="async-reader")
    async def pipeline() -> list[str]:
        await step()
        me = await read_flow_run(get_run_context().flow_run.id)  # type: ignore[union-attr]
        return [me.state_name, *[t.name for t in await read_task_runs(me.id)]]

    async with Runtime(store="memory://"):
        seen = await pipeline()
        (run,) = await read_flow_runs(flow_name="async-reader")
        history = await read_state_history(run.id)
    assert seen == ["Running", "step-0"]
    assert run.state is not None and run.state.is_completed()
    assert [s.name for s in history] == ["Pending", "Running", "Completed"]


def test_reads_use_the_runtime_block_or_the_default_store() -> None:
    marker = f"marker-{uuid4()}"
    with Runtime(store="memory://"), tags(marker):
        reader(1)
        assert len(read_flow_runs(tags=[marker])) == 1
    assert read_flow_runs(tags=[marker]) == []  # the default store never saw it
