"""Generator tasks and flows: the run yields its items to the code iterating its call.

As in Prefect 3: calling a generator task or flow returns a generator (async for an async
one) that runs the run as it is iterated; the body runs inside its own run (its context,
its transaction), the run is Running while the iteration goes on, Completed once it is
exhausted (or stopped early) and Failed if the body raises. ``return_state=True``,
``submit``, ``map`` and ``delay`` are refused for them.
"""

from __future__ import annotations

import types
from contextlib import aclosing
from typing import Any

import pytest
from engine_support import isolated_home, only_flow_run, state_names, task_runs_of  # noqa: F401

from runtime import (
    FlowRunContext,
    Runtime,
    TaskRunContext,
    flow,
    get_run_context,
    get_transaction,
    task,
)
from runtime.exceptions import UpstreamTaskError


class Boom(ValueError):
    pass


def _run_state(rt: Runtime, run_id: Any) -> str:
    """The recorded state name of task run or flow run ``run_id`` in ``rt``'s store."""
    assert rt.backend is not None
    for run in [*rt.backend.read_task_runs(), *rt.backend.read_flow_runs()]:
        if run.id == run_id:
            return run.state.name  # type: ignore[union-attr, return-value]
    raise LookupError(run_id)


def _assert_yielded_one_at_a_time_inside(run: Any, names: list[str], events: list[Any]) -> None:
    """The body yielded each item only when asked, inside ``run`` (its context), which was
    Running while the iteration went on and Completed when it ended."""
    assert [e[:2] for e in events[:-1]] == [
        ("yield", 0),
        ("got", 0),
        ("yield", 1),
        ("got", 10),
        ("yield", 2),
        ("got", 20),
    ]
    assert {e[2] for e in events if e[0] == "yield"} == {run.id}
    assert [e[2] for e in events if e[0] == "got"] == ["Running"] * 3
    assert events[-1] == ("after", "Completed")
    assert names == ["Pending", "Running", "Completed"]


# -- generator tasks ------------------------------------------------------------------


def test_sync_generator_task_runs_inside_its_run(sync_runtime: Runtime) -> None:
    events: list[Any] = []

    @task
    def numbers(n: int) -> Any:
        ctx = get_run_context()
        assert isinstance(ctx, TaskRunContext)
        for i in range(n):
            events.append(("yield", i, ctx.task_run.id))
            yield i * 10
        return "all numbers"

    @flow
    def pipeline() -> list[int]:
        items = numbers(3)
        assert isinstance(items, types.GeneratorType)
        received = []
        for item in items:
            run_id = events[-1][2]
            events.append(("got", item, _run_state(sync_runtime, run_id)))
            received.append(item)
        events.append(("after", _run_state(sync_runtime, run_id)))
        return received

    assert pipeline() == [0, 10, 20]
    (run,) = task_runs_of(sync_runtime, only_flow_run(sync_runtime).id)
    _assert_yielded_one_at_a_time_inside(run, state_names(sync_runtime, run), events)
    assert run.state.result() == "all numbers"  # type: ignore[union-attr]


async def test_async_generator_task_runs_inside_its_run() -> None:
    events: list[Any] = []

    @task
    async def numbers(n: int) -> Any:
        for i in range(n):
            ctx = get_run_context()
            assert isinstance(ctx, TaskRunContext)
            events.append(("yield", i, ctx.task_run.id))
            yield i * 10

    async with Runtime(store="memory://") as rt:

        @flow
        async def pipeline() -> list[int]:
            items = numbers(3)
            assert isinstance(items, types.AsyncGeneratorType)
            received = []
            async for item in items:
                run_id = events[-1][2]
                events.append(("got", item, _run_state(rt, run_id)))
                received.append(item)
            events.append(("after", _run_state(rt, run_id)))
            return received

        assert await pipeline() == [0, 10, 20]
        (run,) = task_runs_of(rt, only_flow_run(rt).id)
        names = state_names(rt, run)
    _assert_yielded_one_at_a_time_inside(run, names, events)


def test_an_exception_while_iterating_fails_a_sync_generator_task(sync_runtime: Runtime) -> None:
    failures: list[str | None] = []

    @task(on_failure=[lambda tsk, run, state: failures.append(state.message)])
    def numbers() -> Any:
        yield 1
        raise Boom("no second number")

    @flow
    def pipeline() -> None:
        received = []
        with pytest.raises(Boom, match=r"^no second number$"):
            for item in numbers():
                received.append(item)
        assert received == [1]

    pipeline()
    (run,) = task_runs_of(sync_runtime, only_flow_run(sync_runtime).id)
    assert state_names(sync_runtime, run) == ["Pending", "Running", "Failed"]
    assert failures == ["Task run encountered an exception Boom: no second number"]


async def test_an_exception_while_iterating_fails_an_async_generator_task() -> None:
    @task
    async def numbers() -> Any:
        yield 1
        raise Boom("no second number")

    @flow
    async def pipeline() -> list[int]:
        return [item async for item in numbers()]

    async with Runtime(store="memory://") as rt:
        with pytest.raises(Boom, match=r"^no second number$"):
            await pipeline()
        flow_run = only_flow_run(rt)
        (run,) = task_runs_of(rt, flow_run.id)
        run_states = state_names(rt, run)
    assert run_states == ["Pending", "Running", "Failed"]
    assert flow_run.state is not None and flow_run.state.is_failed()


async def test_a_retried_generator_task_yields_again_from_the_start() -> None:
    @task(retries=1)
    async def numbers() -> Any:
        count = get_run_context().task_run.run_count  # type: ignore[union-attr]
        yield f"first of attempt {count}"
        if count == 1:
            raise Boom("first attempt")
        yield f"second of attempt {count}"

    @flow
    async def pipeline() -> list[str]:
        return [item async for item in numbers()]

    async with Runtime(store="memory://") as rt:
        assert await pipeline() == [
            "first of attempt 1",
            "first of attempt 2",
            "second of attempt 2",
        ]
        (run,) = task_runs_of(rt, only_flow_run(rt).id)
        run_states = state_names(rt, run)
    assert run_states == ["Pending", "Running", "Retrying", "Completed"]


def test_stopping_early_closes_a_sync_generator_task_and_completes_it(
    sync_runtime: Runtime,
) -> None:
    closed: list[str] = []
    completed: list[str | None] = []

    @task(on_completion=[lambda tsk, run, state: completed.append(state.name)])
    def forever() -> Any:
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.append(type(get_run_context()).__name__)

    @flow
    def pipeline() -> list[int]:
        items = forever()
        received = [next(items), next(items)]
        items.close()
        return received

    assert pipeline() == [0, 1]
    assert closed == ["TaskRunContext"]
    assert completed == ["Completed"]
    (run,) = task_runs_of(sync_runtime, only_flow_run(sync_runtime).id)
    assert state_names(sync_runtime, run) == ["Pending", "Running", "Completed"]


async def test_stopping_early_closes_an_async_generator_task_and_completes_it() -> None:
    closed: list[str] = []

    @task
    async def forever() -> Any:
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.append(type(get_run_context()).__name__)

    @flow
    async def pipeline() -> list[int]:
        received = []
        async with aclosing(forever()) as items:
            async for item in items:
                received.append(item)
                if item == 2:
                    break
        return received

    async with Runtime(store="memory://") as rt:
        assert await pipeline() == [0, 1, 2]
        (run,) = task_runs_of(rt, only_flow_run(rt).id)
        run_states = state_names(rt, run)
    assert closed == ["TaskRunContext"]
    assert run_states == ["Pending", "Running", "Completed"]


def test_generator_task_bodies_call_tasks_and_use_their_transaction(
    sync_runtime: Runtime,
) -> None:
    @task
    def double(x: int) -> int:
        return 2 * x

    @task
    def doubled(n: int) -> Any:
        txn = get_transaction()
        assert txn is not None
        for i in range(n):
            txn.set("last", i)
            yield double(i), txn.get("last")

    @flow
    def pipeline() -> list[Any]:
        return list(doubled(2))

    assert pipeline() == [(0, 0), (2, 1)]
    runs = task_runs_of(sync_runtime, only_flow_run(sync_runtime).id)
    assert sorted(run.name for run in runs) == ["double-0", "double-1", "doubled-0"]


def test_generator_task_outside_a_flow(sync_runtime: Runtime) -> None:
    @task
    def letters() -> Any:
        assert FlowRunContext.get() is None
        yield from "ab"

    assert list(letters()) == ["a", "b"]
    (run,) = task_runs_of(sync_runtime, None)
    assert state_names(sync_runtime, run) == ["Pending", "Running", "Completed"]


async def test_async_generator_task_outside_a_flow() -> None:
    @task
    async def letters() -> Any:
        for letter in "ab":
            yield letter

    async with Runtime(store="memory://") as rt:
        assert [letter async for letter in letters()] == ["a", "b"]
        (run,) = task_runs_of(rt, None)
        run_states = state_names(rt, run)
    assert run_states == ["Pending", "Running", "Completed"]


def test_generator_task_with_a_failed_upstream_raises(sync_runtime: Runtime) -> None:
    ran: list[bool] = []

    @task
    def explode() -> int:
        raise Boom("upstream")

    @task
    def numbers(start: int) -> Any:
        ran.append(True)
        yield start

    @flow
    def pipeline() -> None:
        with pytest.raises(UpstreamTaskError) as raised:
            list(numbers(explode.submit()))
        assert isinstance(raised.value.__cause__, Boom)

    pipeline()
    assert ran == []


GENERATOR_REFUSED = (
    r"^Generator task 'numbers' cannot {action}: its run yields its items to the code that "
    r"iterates over its call\. Call it{how} and iterate over the call "
    r"\(`{each} item in \.\.\.`\)\.$"
)


@pytest.mark.parametrize("is_async", [False, True])
def test_generator_tasks_refuse_states_submit_map_and_delay(is_async: bool) -> None:
    if is_async:

        async def numbers(n: int = 1) -> Any:
            yield n

    else:

        def numbers(n: int = 1) -> Any:  # type: ignore[misc]
            yield n

    generator_task = task(numbers)
    each = "async for" if is_async else "for"
    refusals = {
        "be submitted": lambda: generator_task.submit(),
        "be mapped": lambda: generator_task.map([1, 2]),
        "run in the background": lambda: generator_task.delay(),
    }
    for action, attempt in refusals.items():
        with pytest.raises(
            ValueError, match=GENERATOR_REFUSED.format(action=action, how="", each=each)
        ):
            attempt()
    refused_state = GENERATOR_REFUSED.format(
        action="return its final state", how=" without return_state=True", each=each
    )
    prefect_words = r"^The return_type for a generator task must be 'result'\. "
    with pytest.raises(ValueError, match=prefect_words + refused_state[1:]):
        generator_task(return_state=True)


# -- generator flows ------------------------------------------------------------------


@task
def plus_one(x: int) -> int:
    return x + 1


def test_sync_generator_flow_runs_inside_its_run(sync_runtime: Runtime) -> None:
    seen: list[Any] = []

    @flow
    def numbers(n: int) -> Any:
        ctx = get_run_context()
        assert isinstance(ctx, FlowRunContext)
        for i in range(n):
            yield plus_one(i), ctx.flow_run.id

    items = numbers(2)
    assert isinstance(items, types.GeneratorType)
    for value, run_id in items:
        seen.append((value, _run_state(sync_runtime, run_id)))
    flow_run = only_flow_run(sync_runtime)
    assert seen == [(1, "Running"), (2, "Running")]
    assert flow_run.id == run_id
    assert state_names(sync_runtime, flow_run) == ["Pending", "Running", "Completed"]
    runs = task_runs_of(sync_runtime, flow_run.id)
    assert [run.name for run in runs] == ["plus_one-0", "plus_one-1"]


async def test_async_generator_flow_runs_inside_its_run() -> None:
    @task
    async def async_plus_one(x: int) -> int:
        return x + 1

    @flow
    async def numbers(n: int) -> Any:
        for i in range(n):
            ctx = get_run_context()
            assert isinstance(ctx, FlowRunContext)
            yield await async_plus_one(i), ctx.flow_run.id

    async with Runtime(store="memory://") as rt:
        seen = [(value, _run_state(rt, run_id)) async for value, run_id in numbers(2)]
        flow_run = only_flow_run(rt)
        runs = task_runs_of(rt, flow_run.id)
        flow_run_states = state_names(rt, flow_run)
    assert seen == [(1, "Running"), (2, "Running")]
    assert flow_run_states == ["Pending", "Running", "Completed"]
    assert [run.name for run in runs] == ["async_plus_one-0", "async_plus_one-1"]


def test_an_exception_while_iterating_fails_a_sync_generator_flow(sync_runtime: Runtime) -> None:
    @flow
    def numbers() -> Any:
        yield 1
        raise Boom("flow gave up")

    received = []
    with pytest.raises(Boom, match=r"^flow gave up$"):
        for item in numbers():
            received.append(item)
    assert received == [1]
    flow_run = only_flow_run(sync_runtime)
    assert state_names(sync_runtime, flow_run) == ["Pending", "Running", "Failed"]


async def test_an_exception_while_iterating_fails_an_async_generator_flow() -> None:
    @flow
    async def numbers() -> Any:
        yield 1
        raise Boom("flow gave up")

    async with Runtime(store="memory://") as rt:
        received = []
        with pytest.raises(Boom, match=r"^flow gave up$"):
            async for item in numbers():
                received.append(item)
        flow_run = only_flow_run(rt)
        flow_run_states = state_names(rt, flow_run)
    assert received == [1]
    assert flow_run_states == ["Pending", "Running", "Failed"]


async def test_stopping_early_completes_an_async_generator_flow() -> None:
    @flow
    async def forever() -> Any:
        i = 0
        while True:
            yield i
            i += 1

    async with Runtime(store="memory://") as rt:
        async with aclosing(forever()) as items:
            assert [await items.__anext__(), await items.__anext__()] == [0, 1]
        flow_run = only_flow_run(rt)
        flow_run_states = state_names(rt, flow_run)
    assert flow_run_states == ["Pending", "Running", "Completed"]


def test_generator_subflow_is_linked_to_its_parent(sync_runtime: Runtime) -> None:
    @flow
    def child(n: int) -> Any:
        yield from range(n)

    @flow
    def parent() -> int:
        return sum(child(4))

    assert parent() == 6
    assert sync_runtime.backend is not None
    (parent_run,) = sync_runtime.backend.read_flow_runs(flow_name="parent")
    (child_run,) = sync_runtime.backend.read_flow_runs(flow_name="child")
    (link,) = task_runs_of(sync_runtime, parent_run.id)
    assert child_run.parent_task_run_id == link.id
    assert state_names(sync_runtime, child_run) == ["Pending", "Running", "Completed"]


@pytest.mark.parametrize("is_async", [False, True])
def test_generator_flows_refuse_return_state(is_async: bool) -> None:
    if is_async:

        async def numbers() -> Any:
            yield 1

    else:

        def numbers() -> Any:  # type: ignore[misc]
            yield 1

    each = "async for" if is_async else "for"
    with pytest.raises(
        ValueError,
        match=(
            r"^The return_type for a generator flow must be 'result'\. Generator flow 'numbers' "
            r"cannot return its final state: its run yields its items to the code that iterates "
            r"over its call\. Call it without return_state=True and iterate over the call "
            rf"\(`{each} item in \.\.\.`\)\.$"
        ),
    ):
        flow(numbers)(return_state=True)
