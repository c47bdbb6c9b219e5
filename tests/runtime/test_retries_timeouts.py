"""Retries (counts, delays on a fake clock, jitter, conditions) and timeouts."""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timezone
from typing import Any

import anyio
import pytest
from engine_support import (  # noqa: F401
    isolated_home,
    only_flow_run,
    state_history,
    state_names,
    task_runs_of,
)

from actors import FakeClock
from runtime import Runtime, State, StateType, flow, get_run_context, task
from runtime.core._exceptions import FlowRunTimeoutError, TaskRunTimeoutError

START = 1_700_000_000.0


class Boom(ValueError):
    pass


def _at(offset: float) -> datetime:
    return datetime.fromtimestamp(START + offset, timezone.utc)


def _scheduled_offsets(history: list[State[Any]]) -> list[float]:
    return [
        round(s.state_details.scheduled_time.timestamp() - START, 6)
        for s in history
        if s.name == "AwaitingRetry"
    ]


def fake_clock() -> FakeClock:
    return FakeClock(START, autojump=True)


# -- task retries ------------------------------------------------------------------------


async def test_task_retries_until_success_and_sees_run_count() -> None:
    counts: list[int] = []

    @task(retries=2)
    async def flaky() -> str:
        count = get_run_context().task_run.run_count  # type: ignore[union-attr]
        counts.append(count)
        if count < 3:
            raise Boom(f"attempt {count}")
        return "third time lucky"

    @flow
    async def pipeline() -> str:
        return await flaky()

    async with Runtime(store="memory://") as rt:
        assert await pipeline() == "third time lucky"
        (task_run,) = task_runs_of(rt, only_flow_run(rt).id)
        history = state_history(rt, task_run)
    assert counts == [1, 2, 3]
    assert task_run.run_count == 3
    assert [x.name for x in history] == ["Pending", "Running", "Retrying", "Retrying", "Completed"]


def test_sync_task_retries_exhausted() -> None:
    calls: list[int] = []

    @task(retries=2)
    def always_fails() -> None:
        calls.append(get_run_context().task_run.run_count)  # type: ignore[union-attr]
        raise Boom("never works")

    @flow
    def pipeline() -> None:
        always_fails()

    state = pipeline(return_state=True)
    assert state.is_failed()
    assert calls == [1, 2, 3]


def test_submitted_task_retries() -> None:
    calls: list[int] = []

    @task(retries=1)
    def flaky() -> int:
        calls.append(1)
        if len(calls) == 1:
            raise Boom("first")
        return len(calls)

    @flow
    def pipeline() -> int:
        return flaky.submit().result()  # type: ignore[no-any-return]

    assert pipeline() == 2


async def test_retry_delay_number_waits_on_the_clock(caplog: pytest.LogCaptureFixture) -> None:
    clock = fake_clock()

    @task(retries=2, retry_delay_seconds=10)
    async def flaky() -> int:
        run_count = get_run_context().task_run.run_count  # type: ignore[union-attr]
        if run_count < 3:
            raise Boom("again")
        return run_count

    @flow
    async def pipeline() -> int:
        return await flaky()

    async with Runtime(store="memory://", clock=clock) as rt:
        with caplog.at_level(logging.INFO, logger="stageflow"):
            assert await pipeline() == 3
        (task_run,) = task_runs_of(rt, only_flow_run(rt).id)
        history = state_history(rt, task_run)
    assert _scheduled_offsets(history) == [10.0, 20.0]
    assert clock.now() == START + 20
    assert [x.name for x in history] == [
        "Pending",
        "Running",
        "AwaitingRetry",
        "Retrying",
        "AwaitingRetry",
        "Retrying",
        "Completed",
    ]
    awaiting = [s for s in history if s.name == "AwaitingRetry"]
    assert all(s.type is StateType.SCHEDULED for s in awaiting)
    retry_lines = [r.getMessage() for r in caplog.records if "will start" in r.getMessage()]
    assert retry_lines == [
        "Task run failed with exception: Boom('again') - Retry 1/2 will start 10 second(s) from now",
        "Task run failed with exception: Boom('again') - Retry 2/2 will start 10 second(s) from now",
    ]


async def test_retry_delay_list_repeats_its_last_value() -> None:
    clock = fake_clock()

    @task(retries=4, retry_delay_seconds=[1, 5, 30])
    async def always_fails() -> None:
        raise Boom("no")

    @flow
    async def pipeline() -> None:
        await always_fails()

    async with Runtime(store="memory://", clock=clock) as rt:
        state = await pipeline(return_state=True)
        (task_run,) = task_runs_of(rt, only_flow_run(rt).id)
        history = state_history(rt, task_run)
    assert state.is_failed()
    assert task_run.run_count == 5
    assert _scheduled_offsets(history) == [1.0, 6.0, 36.0, 66.0]


async def test_retry_delay_callable_gets_the_retry_count() -> None:
    clock = fake_clock()
    asked: list[int] = []

    def backoff(retries: int) -> list[float]:
        asked.append(retries)
        return [2.0 * 2**i for i in range(retries)]

    @task(retries=3, retry_delay_seconds=backoff)
    async def always_fails() -> None:
        raise Boom("no")

    @flow
    async def pipeline() -> None:
        await always_fails()

    async with Runtime(store="memory://", clock=clock) as rt:
        await pipeline(return_state=True)
        (task_run,) = task_runs_of(rt, only_flow_run(rt).id)
        history = state_history(rt, task_run)
    assert asked == [3]
    assert _scheduled_offsets(history) == [2.0, 6.0, 14.0]


async def test_retry_jitter_keeps_delays_within_bounds() -> None:
    clock = fake_clock()

    @task(retries=5, retry_delay_seconds=10, retry_jitter_factor=0.5)
    async def always_fails() -> None:
        raise Boom("no")

    @flow
    async def pipeline() -> None:
        await always_fails()

    async with Runtime(store="memory://", clock=clock) as rt:
        await pipeline(return_state=True)
        (task_run,) = task_runs_of(rt, only_flow_run(rt).id)
        history = state_history(rt, task_run)
    offsets = _scheduled_offsets(history)
    delays = [b - a for a, b in zip([0.0, *offsets], offsets)]
    assert len(delays) == 5
    assert all(0 < d <= 15.0 + 1e-6 for d in delays), delays


def test_jitter_factor_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match=r"^retry_jitter_factor must be >= 0, got -1\.$"):
        task(retry_jitter_factor=-1)(lambda: None)


def test_retry_delay_list_is_validated() -> None:
    with pytest.raises(ValueError, match="more than 50 retry delays"):
        task(retries=1, retry_delay_seconds=[1] * 51)(lambda: None)
    with pytest.raises(TypeError, match="retry_delay_seconds must be"):
        task(retries=1, retry_delay_seconds="soon")(lambda: None)


async def test_retry_condition_fn_can_veto_retries() -> None:
    seen: list[tuple[str, int, str]] = []
    attempts: list[int] = []

    def only_value_errors(tsk: Any, task_run: Any, state: Any) -> bool:
        seen.append((tsk.name, task_run.run_count, state.type.value))
        return isinstance(state.result(raise_on_failure=False), ValueError)

    @task(retries=3, retry_condition_fn=only_value_errors)
    async def fails_differently() -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise ValueError("retry me")
        raise KeyError("do not retry me")

    @flow
    async def pipeline() -> None:
        await fails_differently()

    async with Runtime(store="memory://"):
        with pytest.raises(KeyError):
            await pipeline()
    assert len(attempts) == 2
    assert seen == [("fails_differently", 1, "FAILED"), ("fails_differently", 2, "FAILED")]


async def test_async_retry_condition_fn() -> None:
    attempts: list[int] = []

    async def retry_twice(tsk: Any, task_run: Any, state: Any) -> bool:
        await anyio.lowlevel.checkpoint()
        return bool(task_run.run_count < 2)

    @task(retries=5, retry_condition_fn=retry_twice)
    async def fails() -> None:
        attempts.append(1)
        raise Boom("x")

    @flow
    async def pipeline() -> None:
        await fails()

    async with Runtime(store="memory://"):
        assert (await pipeline(return_state=True)).is_failed()
    assert len(attempts) == 2


# -- retry_condition_fn decides for a raised exception and a returned Failed state ------


def _failed(message: str) -> Any:
    from runtime import states as S

    return S.Failed(message=message)


def _fail(how: str) -> Any:
    """Fail an attempt the way ``how`` says: raise an exception, or return a Failed state."""
    if how == "raised":
        raise Boom("gave up")
    return _failed("gave up")


_FAILED_MESSAGE = {
    "raised": "Task run encountered an exception Boom: gave up",
    "returned": "gave up",
}


def _summary(state: Any) -> tuple[str, str | None]:
    return state.type.value, state.message


@pytest.mark.parametrize("how", ["raised", "returned"])
@pytest.mark.parametrize(
    ("retry_while", "history"),
    [(0, ["Pending", "Running", "Failed"]), (2, ["Pending", "Running", "Retrying", "Failed"])],
)
def test_retry_condition_fn_decides_for_a_failed_attempt(
    how: str, retry_while: int, history: list[str], sync_runtime: Runtime
) -> None:
    seen: list[tuple[int, str | None]] = []

    def condition(tsk: Any, task_run: Any, state: Any) -> bool:
        seen.append((task_run.run_count, state.message))
        return bool(task_run.run_count < retry_while)

    @task(retries=3, retry_condition_fn=condition)
    def gives_up() -> Any:
        return _fail(how)

    @flow
    def pipeline() -> Any:
        return _summary(gives_up(return_state=True))

    assert pipeline() == ("FAILED", _FAILED_MESSAGE[how])
    attempts = len(history) - 2
    assert seen == [(count, _FAILED_MESSAGE[how]) for count in range(1, attempts + 1)]
    (run,) = task_runs_of(sync_runtime, only_flow_run(sync_runtime).id)
    assert state_names(sync_runtime, run) == history


@pytest.mark.parametrize("how", ["raised", "returned"])
def test_retry_condition_fn_that_raises_vetoes_the_retry(
    how: str, sync_runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    attempts: list[int] = []

    def broken(*args: Any) -> bool:
        raise RuntimeError("condition bug")

    @task(retries=3, retry_condition_fn=broken)
    def gives_up() -> Any:
        attempts.append(1)
        return _fail(how)

    @flow
    def pipeline() -> Any:
        return _summary(gives_up.submit(return_state=True))

    assert pipeline() == ("FAILED", _FAILED_MESSAGE[how])
    assert attempts == [1]
    assert any("retry_condition_fn" in r.getMessage() for r in caplog.records)


async def test_retry_condition_fn_vetoes_a_returned_failed_state_of_an_async_task() -> None:
    attempts: list[int] = []

    async def never(tsk: Any, task_run: Any, state: Any) -> bool:
        await anyio.lowlevel.checkpoint()
        return False

    @task(retries=2, retry_condition_fn=never)
    async def gives_up() -> Any:
        attempts.append(1)
        return _failed("async returned failure")

    @flow
    async def pipeline() -> Any:
        return _summary(gives_up.submit(return_state=True))

    async with Runtime(store="memory://"):
        assert await pipeline() == ("FAILED", "async returned failure")
    assert attempts == [1]


async def test_retry_condition_fn_vetoes_a_returned_collection_of_failed_states() -> None:
    attempts: list[int] = []
    conditions: list[str | None] = []

    @task
    async def fails() -> None:
        raise Boom("inner")

    def never(tsk: Any, task_run: Any, state: Any) -> bool:
        conditions.append(state.message)
        return False

    @task(retries=2, retry_condition_fn=never)
    async def gathers() -> Any:
        attempts.append(1)
        return [await fails(return_state=True)]

    @flow
    async def pipeline() -> Any:
        return _summary(await gathers(return_state=True))

    async with Runtime(store="memory://"):
        assert await pipeline() == ("FAILED", "1/1 states failed.")
    assert attempts == [1]
    assert conditions == ["1/1 states failed."]


async def test_task_on_failure_runs_once_after_the_last_attempt() -> None:
    failures: list[tuple[str | None, int]] = []
    completions: list[int] = []

    def on_failure(tsk: Any, task_run: Any, state: Any) -> None:
        failures.append((state.name, task_run.run_count))

    @task(retries=2, on_failure=[on_failure])
    async def always_fails() -> None:
        raise Boom("no")

    @task(retries=2, on_completion=[lambda t, r, s: completions.append(r.run_count)])
    async def flaky() -> None:
        if get_run_context().task_run.run_count < 2:  # type: ignore[union-attr]
            raise Boom("first")

    @flow
    async def pipeline() -> None:
        await flaky()
        await always_fails()

    async with Runtime(store="memory://"):
        await pipeline(return_state=True)
    assert failures == [("Failed", 3)]
    assert completions == [2]


# -- flow retries --------------------------------------------------------------------------


def test_flow_retries_rerun_the_body() -> None:
    counts: list[int] = []

    @flow(retries=2)
    def flaky_flow() -> str:
        count = get_run_context().flow_run.run_count  # type: ignore[union-attr]
        counts.append(count)
        if count < 3:
            raise Boom(f"flow attempt {count}")
        return "done"

    assert flaky_flow() == "done"
    assert counts == [1, 2, 3]


async def test_async_flow_retries_with_delay_and_hooks() -> None:
    clock = fake_clock()
    counts: list[int] = []
    failures: list[int] = []
    task_runs_per_attempt: list[int] = []

    @task
    async def step() -> int:
        return get_run_context().task_run.flow_run_run_count  # type: ignore[union-attr]

    @flow(
        retries=2, retry_delay_seconds=30, on_failure=[lambda f, r, s: failures.append(r.run_count)]
    )
    async def always_fails() -> None:
        counts.append(get_run_context().flow_run.run_count)  # type: ignore[union-attr]
        task_runs_per_attempt.append(await step())
        raise Boom("flow fails")

    async with Runtime(store="memory://", clock=clock) as rt:
        state = await always_fails(return_state=True)
        run = only_flow_run(rt)
        names = state_names(rt, run)
    assert state.is_failed()
    assert counts == [1, 2, 3]
    assert task_runs_per_attempt == [1, 2, 3]
    assert failures == [3]
    assert run.run_count == 3
    assert clock.now() == START + 60
    assert [n for n in names if n != "Running"] == [
        "Pending",
        "AwaitingRetry",
        "AwaitingRetry",
        "Failed",
    ]


# -- timeouts ------------------------------------------------------------------------------


async def test_task_timeout_fails_with_timed_out() -> None:
    @task(timeout_seconds=0.05)
    async def hangs() -> None:
        await anyio.Event().wait()

    states: list[Any] = []

    @flow
    async def pipeline() -> None:
        states.append(await hangs(return_state=True))

    async with Runtime(store="memory://"):
        await pipeline()
    (state,) = states
    assert state.is_failed()
    assert state.name == "TimedOut"
    assert state.message == "Task run exceeded timeout of 0.05 second(s)"
    error = state.result(raise_on_failure=False)
    assert isinstance(error, TaskRunTimeoutError)
    assert isinstance(error, TimeoutError)


async def test_task_timeout_raises_in_the_flow() -> None:
    @task(timeout_seconds=0.05)
    async def hangs() -> None:
        await anyio.Event().wait()

    @flow
    async def pipeline() -> None:
        await hangs()

    async with Runtime(store="memory://") as rt:
        with pytest.raises(TaskRunTimeoutError):
            await pipeline()
        run = only_flow_run(rt)
    assert run.state is not None and run.state.is_failed()


async def test_timed_out_task_is_retried() -> None:
    counts: list[int] = []

    @task(timeout_seconds=0.05, retries=1)
    async def hangs_once() -> str:
        count = get_run_context().task_run.run_count  # type: ignore[union-attr]
        counts.append(count)
        if count == 1:
            await anyio.Event().wait()
        return "second attempt"

    @flow
    async def pipeline() -> str:
        return await hangs_once()

    async with Runtime(store="memory://"):
        assert await pipeline() == "second attempt"
    assert counts == [1, 2]


def test_submitted_sync_task_timeout_abandons_the_body() -> None:
    release = threading.Event()
    finished: list[bool] = []

    @task(timeout_seconds=0.05)
    def blocks() -> str:
        release.wait(10)
        finished.append(True)
        return "late"

    states: list[Any] = []

    @flow
    def pipeline() -> None:
        future = blocks.submit()
        future.wait()
        states.append(future.state)
        release.set()  # let the abandoned body finish

    pipeline()
    (state,) = states
    assert state.name == "TimedOut"
    assert isinstance(state.result(raise_on_failure=False), TaskRunTimeoutError)


async def test_flow_timeout_fails_with_timed_out() -> None:
    @flow(timeout_seconds=0.05)
    async def hangs() -> None:
        await anyio.Event().wait()

    async with Runtime(store="memory://") as rt:
        state = await hangs(return_state=True)
        with pytest.raises(FlowRunTimeoutError):
            await hangs()
        runs = rt.backend.read_flow_runs()  # type: ignore[union-attr]
    assert state.is_failed() and state.name == "TimedOut"
    assert state.message == "Flow run exceeded timeout of 0.05 second(s)"
    error = state.result(raise_on_failure=False)
    assert isinstance(error, FlowRunTimeoutError) and isinstance(error, TimeoutError)
    assert [r.state.name for r in runs] == ["TimedOut", "TimedOut"]  # type: ignore[union-attr]


async def test_flow_timeout_stops_running_task_runs() -> None:
    @task
    async def hangs() -> None:
        await anyio.Event().wait()

    @flow(timeout_seconds=0.05)
    async def pipeline() -> None:
        hangs.submit()
        await hangs()

    async with Runtime(store="memory://") as rt:
        state = await pipeline(return_state=True)
        runs = task_runs_of(rt, only_flow_run(rt).id)
    assert state.name == "TimedOut"
    assert len(runs) == 2
    assert all(r.state is not None and r.state.is_final() for r in runs), [r.state for r in runs]


async def test_timed_out_flow_with_retries_is_retried() -> None:
    counts: list[int] = []

    @flow(timeout_seconds=0.05, retries=1)
    async def hangs_once() -> str:
        count = get_run_context().flow_run.run_count  # type: ignore[union-attr]
        counts.append(count)
        if count == 1:
            await anyio.Event().wait()
        return "recovered"

    async with Runtime(store="memory://"):
        assert await hangs_once() == "recovered"
    assert counts == [1, 2]


def test_sync_task_timeout_in_sync_flow() -> None:
    # The body runs on the flow's own thread, so it cannot be interrupted: the run is
    # TimedOut at once, and the call returns once the body gives the thread back.
    release = threading.Event()

    async def on_failure(tsk: Any, task_run: Any, state: Any) -> None:
        release.set()  # an async hook runs on the engine's loop, not on the busy thread

    @task(timeout_seconds=0.05, on_failure=[on_failure])
    def blocks() -> str:
        release.wait(10)
        return "ignored"

    @flow
    def pipeline() -> str:
        with pytest.raises(TaskRunTimeoutError):
            blocks()
        return "flow goes on"

    assert pipeline() == "flow goes on"


def test_a_timed_out_sync_flow_body_cannot_start_new_runs() -> None:
    """A body that swallows its interruption and goes on may start no run any more."""
    after_timeout: list[str] = []

    @task
    def step(x: int = 0) -> str:
        return "ran"

    @flow(timeout_seconds=0.05)
    def slow_flow() -> None:
        try:
            threading.Event().wait(10)  # interrupted after 0.05 s
        except BaseException:  # noqa: BLE001 - a body that swallows the interruption
            pass
        for call in (step, step.submit, lambda: step.map([1])):
            try:
                call()  # type: ignore[no-untyped-call]
            except FlowRunTimeoutError as exc:
                after_timeout.append(str(exc))

    state = slow_flow(return_state=True)
    assert state.name == "TimedOut"
    assert len(after_timeout) == 3
    assert all(
        m.endswith("timed out; its body can no longer start task runs or subflow runs.")
        for m in after_timeout
    )
