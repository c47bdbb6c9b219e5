"""Run loggers, log_prints, and the run context code sees inside flows and tasks."""

from __future__ import annotations

import logging
import sys
from typing import Any

import pytest
from engine_support import isolated_home, only_flow_run, records_of  # noqa: F401

from runtime import (
    FlowRunContext,
    MissingContextError,
    Runtime,
    TaskRunContext,
    flow,
    get_run_context,
    get_run_logger,
    task,
)

# -- run loggers ---------------------------------------------------------------------------


def test_flow_and_task_loggers_carry_run_names(caplog: pytest.LogCaptureFixture) -> None:
    names: dict[str, str] = {}

    @task
    def step() -> None:
        names["task"] = get_run_context().task_run.name  # type: ignore[union-attr]
        get_run_logger().info("from the task")

    @flow
    def pipeline() -> None:
        names["flow"] = get_run_context().flow_run.name  # type: ignore[union-attr]
        get_run_logger().warning("from the flow")
        step()

    with caplog.at_level(logging.INFO, logger="stageflow"):
        pipeline()
    (flow_record,) = [r for r in caplog.records if r.getMessage() == "from the flow"]
    (task_record,) = [r for r in caplog.records if r.getMessage() == "from the task"]
    assert flow_record.name == "stageflow.flow_runs"
    assert flow_record.levelno == logging.WARNING
    assert flow_record.flow_run_name == names["flow"]  # type: ignore[attr-defined]
    assert flow_record.flow_name == "pipeline"  # type: ignore[attr-defined]
    assert task_record.name == "stageflow.task_runs"
    assert task_record.task_run_name == names["task"]  # type: ignore[attr-defined]
    assert task_record.task_name == "step"  # type: ignore[attr-defined]
    assert task_record.flow_run_name == names["flow"]  # type: ignore[attr-defined]


async def test_async_loggers_carry_run_ids(caplog: pytest.LogCaptureFixture) -> None:
    @task
    async def step() -> str:
        get_run_logger().info("task line")
        return str(get_run_context().task_run.id)  # type: ignore[union-attr]

    @flow
    async def pipeline() -> str:
        get_run_logger().info("flow line")
        return await step.submit()  # type: ignore[no-any-return]

    async with Runtime(store="memory://") as rt:
        with caplog.at_level(logging.INFO, logger="stageflow"):
            task_run_id = await pipeline()
        run = only_flow_run(rt)
    (flow_record,) = [r for r in caplog.records if r.getMessage() == "flow line"]
    (task_record,) = [r for r in caplog.records if r.getMessage() == "task line"]
    assert flow_record.flow_run_id == str(run.id)  # type: ignore[attr-defined]
    assert task_record.task_run_id == task_run_id  # type: ignore[attr-defined]
    assert task_record.flow_run_id == str(run.id)  # type: ignore[attr-defined]


def test_engine_logs_the_run_lifecycle(caplog: pytest.LogCaptureFixture) -> None:
    @task
    def step() -> None:
        pass

    @flow(flow_run_name="lifecycle")
    def pipeline() -> None:
        step()

    with caplog.at_level(logging.INFO, logger="stageflow"):
        pipeline()
    flow_messages = [r.getMessage() for r in records_of(caplog, "stageflow.flow_runs")]
    task_messages = [r.getMessage() for r in records_of(caplog, "stageflow.task_runs")]
    assert flow_messages[-1] == "Finished in state Completed()"
    assert any(
        m.startswith("Beginning flow run ") and m.endswith(" for flow 'pipeline'")
        for m in flow_messages
    )
    assert "Created task run 'step-0' for task 'step'" in task_messages
    assert task_messages[-1] == "Finished in state Completed()"
    finished = [
        r
        for r in records_of(caplog, "stageflow.flow_runs")
        if r.getMessage().startswith("Finished")
    ]
    assert finished[-1].flow_run_name == "lifecycle"  # type: ignore[attr-defined]


def test_get_run_logger_outside_a_run() -> None:
    with pytest.raises(MissingContextError, match="There is no active flow or task run context"):
        get_run_logger()


def test_get_run_context_outside_a_run() -> None:
    with pytest.raises(MissingContextError, match=r"^No run context available"):
        get_run_context()
    assert FlowRunContext.get() is None
    assert TaskRunContext.get() is None


def test_root_logging_is_untouched() -> None:
    root = logging.getLogger()
    engine = logging.getLogger("stageflow")
    before = (
        list(root.handlers),
        root.level,
        list(engine.handlers),
        engine.level,
        engine.propagate,
    )

    @task
    def step() -> None:
        get_run_logger().info("x")

    @flow(log_prints=True)
    def pipeline() -> None:
        get_run_logger().info("y")
        step()

    pipeline()
    after = (list(root.handlers), root.level, list(engine.handlers), engine.level, engine.propagate)
    assert after == before


# -- log_prints ----------------------------------------------------------------------------


def test_log_prints_sends_print_to_the_run_logger(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    @task
    def inherits() -> None:
        print("from task")

    @task(log_prints=False)
    def opts_out() -> None:
        print("task to stdout")

    @flow(log_prints=True)
    def chatty() -> None:
        print("hello", "world", sep=", ")
        print("to stderr", file=sys.stderr)
        inherits()
        opts_out()

    with caplog.at_level(logging.INFO, logger="stageflow"):
        chatty()
    messages = {r.getMessage(): r for r in caplog.records}
    assert messages["hello, world"].name == "stageflow.flow_runs"
    assert messages["from task"].name == "stageflow.task_runs"
    assert "task to stdout" not in messages
    out, err = capsys.readouterr()
    assert "hello" not in out and "from task" not in out
    assert "task to stdout" in out
    assert "to stderr" in err


def test_print_without_log_prints_goes_to_stdout(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    @flow
    def quiet() -> None:
        print("plain print")

    @flow(log_prints=True)
    def chatty() -> None:
        print("logged print")

    with caplog.at_level(logging.INFO, logger="stageflow"):
        chatty()  # installs the print patch
        quiet()
    print("outside")
    out, _ = capsys.readouterr()
    assert "plain print" in out and "outside" in out and "logged print" not in out
    assert "plain print" not in [r.getMessage() for r in caplog.records]


async def test_async_log_prints(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    @task(log_prints=True)
    async def step() -> None:
        print("async task print")

    @flow
    async def pipeline() -> None:
        print("flow print to stdout")
        await step()

    async with Runtime(store="memory://"):
        with caplog.at_level(logging.INFO, logger="stageflow"):
            await pipeline()
    assert "async task print" in [r.getMessage() for r in caplog.records]
    out, _ = capsys.readouterr()
    assert "flow print to stdout" in out and "async task print" not in out


# -- the run context -------------------------------------------------------------------------


async def test_flow_run_context() -> None:
    seen: dict[str, Any] = {}

    @flow(flow_run_name="ctx-{n}")
    async def pipeline(n: int) -> None:
        ctx = get_run_context()
        assert isinstance(ctx, FlowRunContext)
        assert FlowRunContext.get() is ctx
        seen.update(
            id=ctx.flow_run.id,
            name=ctx.flow_run.name,
            run_count=ctx.flow_run.run_count,
            state=ctx.flow_run.state.name if ctx.flow_run.state else None,
            parameters=ctx.parameters,
            flow=ctx.flow.name,
        )

    async with Runtime(store="memory://") as rt:
        await pipeline("3")
        run = only_flow_run(rt)
    assert seen == {
        "id": run.id,
        "name": "ctx-3",
        "run_count": 1,
        "state": "Running",
        "parameters": {"n": 3},
        "flow": "pipeline",
    }


async def test_task_run_context() -> None:
    seen: list[dict[str, Any]] = []

    @task(retries=1)
    async def step(x: int) -> None:
        ctx = get_run_context()
        assert isinstance(ctx, TaskRunContext)
        flow_ctx = FlowRunContext.get()
        assert flow_ctx is not None
        seen.append(
            {
                "name": ctx.task_run.name,
                "run_count": ctx.task_run.run_count,
                "state": ctx.task_run.state.name if ctx.task_run.state else None,
                "parameters": ctx.parameters,
                "task": ctx.task.name,
                "flow_run_id": ctx.task_run.flow_run_id,
                "same_flow": flow_ctx.flow_run.id == ctx.task_run.flow_run_id,
            }
        )
        if ctx.task_run.run_count == 1:
            raise ValueError("retry me")

    @flow
    async def pipeline() -> None:
        await step(1)

    async with Runtime(store="memory://") as rt:
        await pipeline()
        run = only_flow_run(rt)
    base = {
        "name": "step-0",
        "parameters": {"x": 1},
        "task": "step",
        "flow_run_id": run.id,
        "same_flow": True,
    }
    assert seen == [
        {**base, "run_count": 1, "state": "Running"},
        {**base, "run_count": 2, "state": "Retrying"},
    ]


def test_context_in_sync_bodies_on_every_thread() -> None:
    seen: list[tuple[str, str]] = []

    @task
    def step(label: str) -> None:
        ctx = get_run_context()
        seen.append((label, type(ctx).__name__))

    @flow
    def pipeline() -> None:
        seen.append(("flow", type(get_run_context()).__name__))
        step("called")
        step.submit("submitted").wait()
        step.map(["mapped"]).wait()
        seen.append(("flow again", type(get_run_context()).__name__))

    pipeline()
    assert seen == [
        ("flow", "FlowRunContext"),
        ("called", "TaskRunContext"),
        ("submitted", "TaskRunContext"),
        ("mapped", "TaskRunContext"),
        ("flow again", "FlowRunContext"),
    ]


def test_task_outside_a_flow_has_a_task_context_only() -> None:
    seen: list[Any] = []

    @task
    def step() -> None:
        seen.append((type(get_run_context()).__name__, FlowRunContext.get()))

    step()
    assert seen == [("TaskRunContext", None)]
