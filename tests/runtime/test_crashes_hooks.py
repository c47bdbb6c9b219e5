"""Crash reporting (KeyboardInterrupt, SystemExit, other BaseExceptions) and state hooks."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import pytest
from engine_support import (  # noqa: F401
    isolated_home,
    only_flow_run,
    records_of,
    state_history,
    task_runs_of,
)

from runtime import Runtime, StateType, flow, get_run_context, task
from runtime.core._exceptions import CancelledRun
from runtime.flow_runs import cancel_flow_run


class Boom(ValueError):
    pass


class Meltdown(BaseException):
    """A custom BaseException: not an Exception, so it crashes the run."""


CRASHERS = [
    pytest.param(
        KeyboardInterrupt, "Execution was aborted by an interrupt signal.", id="KeyboardInterrupt"
    ),
    pytest.param(SystemExit, "Execution was aborted by Python system exit call.", id="SystemExit"),
    pytest.param(
        Meltdown,
        "Execution was interrupted by an unexpected exception: Meltdown: crash",
        id="custom",
    ),
]


class HookLog:
    """Collects which hooks ran, with the state name they saw."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []

    def hook(self, kind: str) -> Any:
        def record(obj: Any, run: Any, state: Any) -> None:
            self.calls.append((kind, state.name))

        record.__name__ = f"{kind}_hook"
        return record

    def flow_hooks(self) -> dict[str, Any]:
        return {
            kind: [self.hook(kind)]
            for kind in (
                "on_completion",
                "on_failure",
                "on_crashed",
                "on_running",
                "on_cancellation",
            )
        }


# -- crashes -----------------------------------------------------------------------------


@pytest.mark.parametrize("exc_type, message", CRASHERS)
def test_sync_flow_crash_propagates_and_runs_on_crashed(
    exc_type: type[BaseException], message: str
) -> None:
    hooks = HookLog()

    @flow(**hooks.flow_hooks())
    def crashing() -> None:
        raise exc_type("crash")

    with pytest.raises(exc_type, match="^crash$"):
        crashing(return_state=True)
    assert hooks.calls == [("on_running", "Running"), ("on_crashed", "Crashed")]


@pytest.mark.parametrize("exc_type, message", CRASHERS)
async def test_async_flow_crash_is_recorded_and_propagates(
    exc_type: type[BaseException], message: str
) -> None:
    hooks = HookLog()

    @flow(**hooks.flow_hooks())
    async def crashing() -> None:
        raise exc_type("crash")

    async with Runtime(store="memory://") as rt:
        with pytest.raises(exc_type, match="^crash$"):
            await crashing(return_state=True)
        run = only_flow_run(rt)
    assert run.state is not None
    assert run.state.type is StateType.CRASHED
    assert run.state.message == message
    assert isinstance(run.state.result(raise_on_failure=False), exc_type)
    assert hooks.calls == [("on_running", "Running"), ("on_crashed", "Crashed")]


async def test_task_crash_crashes_the_task_and_the_flow() -> None:
    @task
    async def crashing_task() -> None:
        raise KeyboardInterrupt("in task")

    @flow
    async def pipeline() -> None:
        await crashing_task()

    async with Runtime(store="memory://") as rt:
        with pytest.raises(KeyboardInterrupt):
            await pipeline()
        run = only_flow_run(rt)
        (task_run,) = task_runs_of(rt, run.id)
    assert task_run.state is not None and task_run.state.is_crashed()
    assert run.state is not None and run.state.is_crashed()


def test_sync_task_crash_in_sync_flow() -> None:
    hooks = HookLog()

    @task(on_failure=[hooks.hook("task_on_failure")])
    def crashing_task() -> None:
        raise SystemExit(3)

    @flow(**hooks.flow_hooks())
    def pipeline() -> None:
        crashing_task()

    with pytest.raises(SystemExit):
        pipeline()
    # Tasks have no crash hook; the flow's on_crashed runs, on_failure does not.
    assert hooks.calls == [("on_running", "Running"), ("on_crashed", "Crashed")]


async def test_submitted_task_crash_is_reported_through_its_future() -> None:
    @task
    async def crashing_task() -> None:
        raise KeyboardInterrupt("submitted")

    @task
    async def fine() -> str:
        return "fine"

    @flow
    async def pipeline() -> tuple[str | None, str]:
        future = crashing_task.submit()
        await future.wait_async()
        return future.state.name, await fine()

    async with Runtime(store="memory://") as rt:
        assert await pipeline() == ("Crashed", "fine")
        run = only_flow_run(rt)
        states = {r.name.split("-")[0]: r.state for r in task_runs_of(rt, run.id)}
    # The runtime survived the crash: the flow ran on and completed.
    assert run.state is not None and run.state.is_completed()
    assert states["crashing_task"] is not None and states["crashing_task"].is_crashed()


async def test_submitted_task_crash_reraises_where_its_result_is_awaited() -> None:
    @task
    async def crashing_task() -> None:
        raise KeyboardInterrupt("submitted")

    @flow
    async def pipeline() -> None:
        await crashing_task.submit()

    async with Runtime(store="memory://") as rt:
        with pytest.raises(KeyboardInterrupt, match="^submitted$"):
            await pipeline()
        run = only_flow_run(rt)
    assert run.state is not None and run.state.is_crashed()


def test_sync_submitted_task_crash_does_not_break_the_runtime() -> None:
    @task
    def crashing_task() -> None:
        raise SystemExit(1)

    @flow
    def pipeline() -> str | None:
        future = crashing_task.submit()
        future.wait()
        return future.state.name  # type: ignore[no-any-return]

    assert pipeline() == "Crashed"
    assert pipeline() == "Crashed"  # and again: the global loop's runtime still works


# -- flow hooks ----------------------------------------------------------------------------


def test_flow_completion_hooks() -> None:
    hooks = HookLog()

    @flow(**hooks.flow_hooks())
    def fine() -> int:
        return 1

    assert fine() == 1
    assert hooks.calls == [("on_running", "Running"), ("on_completion", "Completed")]


async def test_async_flow_failure_hooks_get_flow_run_and_state() -> None:
    seen: list[Any] = []

    def on_failure(flw: Any, flow_run: Any, state: Any) -> None:
        seen.append((flw.name, flow_run.id, state.type, type(state.result(raise_on_failure=False))))

    async def async_on_failure(flw: Any, flow_run: Any, state: Any) -> None:
        await anyio.lowlevel.checkpoint()
        seen.append("async hook")

    @flow(on_failure=[on_failure, async_on_failure])
    async def failing() -> None:
        raise Boom("fail")

    async with Runtime(store="memory://") as rt:
        with pytest.raises(Boom):
            await failing()
        run = only_flow_run(rt)
    assert seen == [("failing", run.id, StateType.FAILED, Boom), "async hook"]


def test_hook_decorators_add_hooks() -> None:
    calls: list[str] = []

    @flow
    def decorated() -> None:
        pass

    @decorated.on_completion
    def done(flw: Any, run: Any, state: Any) -> None:
        calls.append("completion")

    @decorated.on_running
    def running(flw: Any, run: Any, state: Any) -> None:
        calls.append("running")

    decorated()
    assert calls == ["running", "completion"]


async def test_cancelling_a_flow_run_runs_on_cancellation() -> None:
    hooks = HookLog()
    started = anyio.Event()
    run_ids: list[Any] = []

    @flow(**hooks.flow_hooks())
    async def waits_forever() -> None:
        run_ids.append(get_run_context().flow_run.id)  # type: ignore[union-attr]
        started.set()
        await anyio.Event().wait()

    async with Runtime(store="memory://") as rt:
        states: list[Any] = []
        async with anyio.create_task_group() as tg:

            async def call() -> None:
                states.append(await waits_forever(return_state=True))

            tg.start_soon(call)
            await started.wait()
            await cancel_flow_run(run_ids[0])
        run = only_flow_run(rt)
        history = state_history(rt, run)
    (state,) = states
    assert state.is_cancelled()
    assert run.state is not None and run.state.is_cancelled()
    assert [s.type for s in history][-2:] == [StateType.CANCELLING, StateType.CANCELLED]
    assert hooks.calls == [("on_running", "Running"), ("on_cancellation", "Cancelled")]
    with pytest.raises(CancelledRun):
        state.result()


async def test_flow_cancelling_itself() -> None:
    hooks = HookLog()

    @flow(**hooks.flow_hooks())
    async def cancels_itself() -> None:
        await cancel_flow_run(get_run_context().flow_run.id)  # type: ignore[union-attr]
        await anyio.Event().wait()

    async with Runtime(store="memory://"):
        state = await cancels_itself(return_state=True)
        with pytest.raises(CancelledRun):
            await cancels_itself()
    assert state.is_cancelled()
    assert ("on_cancellation", "Cancelled") in hooks.calls
    assert not any(kind in ("on_failure", "on_crashed") for kind, _ in hooks.calls)


def test_failing_hook_is_logged_and_state_unchanged(caplog: pytest.LogCaptureFixture) -> None:
    later: list[str] = []

    def bad_hook(flw: Any, run: Any, state: Any) -> None:
        raise RuntimeError("hook bug")

    @flow(on_completion=[bad_hook, lambda f, r, s: later.append("ran")])
    def fine() -> str:
        return "ok"

    with caplog.at_level(logging.INFO, logger="stageflow"):
        state = fine(return_state=True)
    assert state.is_completed() and state.result() == "ok"
    assert later == ["ran"]  # the next hook still ran
    errors = [r for r in records_of(caplog, "stageflow") if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        "An error was encountered while running hook 'bad_hook'"
    ]
    assert errors[0].exc_info is not None and isinstance(errors[0].exc_info[1], RuntimeError)
    messages = [r.getMessage() for r in records_of(caplog, "stageflow")]
    assert "Running hook 'bad_hook' in response to entering state 'Completed'" in messages


async def test_failing_async_hook_leaves_failed_state(caplog: pytest.LogCaptureFixture) -> None:
    async def bad_hook(flw: Any, run: Any, state: Any) -> None:
        raise RuntimeError("hook bug")

    @flow(on_failure=[bad_hook])
    async def failing() -> None:
        raise Boom("fail")

    async with Runtime(store="memory://") as rt:
        state = await failing(return_state=True)
        run = only_flow_run(rt)
    assert state.is_failed()
    assert run.state is not None and run.state.is_failed()
    assert any(
        r.getMessage() == "An error was encountered while running hook 'bad_hook'"
        for r in caplog.records
    )


# -- task hooks ----------------------------------------------------------------------------


async def test_task_hooks() -> None:
    hooks = HookLog()

    @task(on_completion=[hooks.hook("completion")], on_failure=[hooks.hook("failure")])
    async def maybe(fail: bool) -> None:
        if fail:
            raise Boom("no")

    @flow
    async def pipeline() -> None:
        await maybe(False)
        await maybe(True, return_state=True)
        await maybe.submit(False)

    async with Runtime(store="memory://"):
        await pipeline()
    assert hooks.calls == [
        ("completion", "Completed"),
        ("failure", "Failed"),
        ("completion", "Completed"),
    ]


def test_sync_task_hooks_get_task_and_run(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[Any] = []

    def on_completion(tsk: Any, task_run: Any, state: Any) -> None:
        seen.append((tsk.name, task_run.name, state.result()))

    def broken(tsk: Any, task_run: Any, state: Any) -> None:
        raise RuntimeError("task hook bug")

    @task(on_completion=[on_completion, broken], task_run_name="named-run")
    def work() -> int:
        return 5

    @flow
    def pipeline() -> int:
        return work()

    assert pipeline() == 5
    assert seen == [("work", "named-run", 5)]
    assert "An error was encountered while running hook 'broken'" in [
        r.getMessage() for r in caplog.records
    ]


def test_task_hook_decorators() -> None:
    calls: list[str] = []

    @task
    def work(fail: bool) -> None:
        if fail:
            raise Boom("x")

    @work.on_failure
    def failed(tsk: Any, run: Any, state: Any) -> None:
        calls.append("failure")

    @work.on_completion
    def completed(tsk: Any, run: Any, state: Any) -> None:
        calls.append("completion")

    @flow
    def pipeline() -> None:
        work(False)
        work(True, return_state=True)

    pipeline()
    assert calls == ["completion", "failure"]
