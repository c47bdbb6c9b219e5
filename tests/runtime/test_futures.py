"""Futures: submit, map, wait_for, allow_failure, upstream failures, wait/as_completed."""

from __future__ import annotations

import dataclasses
import re
import threading
from typing import Any

import anyio
import pydantic
import pytest
from engine_support import isolated_home, only_flow_run, task_runs_of  # noqa: F401

from runtime import (
    Runtime,
    State,
    TaskRunFuture,
    allow_failure,
    as_completed,
    flow,
    quote,
    task,
    unmapped,
    wait,
)
from runtime.exceptions import MappingLengthMismatch, MappingMissingIterable, UpstreamTaskError


class Boom(ValueError):
    pass


@task
def add(x: int, y: int = 0) -> int:
    return x + y


@task
async def async_add(x: int, y: int = 0) -> int:
    return x + y


@task
def explode(message: str = "upstream boom") -> int:
    raise Boom(message)


@task
async def async_explode(message: str = "upstream boom") -> int:
    raise Boom(message)


@task
def identity(x: Any) -> Any:
    return x


# -- submit --------------------------------------------------------------------------


def test_submit_returns_a_future_with_result_and_wait() -> None:
    @flow
    def pipeline() -> tuple[Any, ...]:
        future = add.submit(1, 2)
        assert isinstance(future, TaskRunFuture)
        future.wait()
        assert future.done()
        state = future.state
        return future.result(), state.is_completed(), state.result()

    assert pipeline() == (3, True, 3)


def test_future_result_raises_the_task_exception() -> None:
    @flow
    def pipeline() -> Any:
        future = explode.submit("in future")
        with pytest.raises(Boom, match=r"^in future$"):
            future.result()
        error = future.result(raise_on_failure=False)
        assert isinstance(error, Boom)
        assert future.state.is_failed()
        return "survived"

    assert pipeline() == "survived"


async def test_await_future_in_async_flow() -> None:
    @flow
    async def pipeline() -> tuple[int, int]:
        first = async_add.submit(1, 1)
        second = add.submit(2, 2)  # a sync task submitted from an async flow
        return await first, await second.aresult()

    async with Runtime(store="memory://") as rt:
        assert await pipeline() == (2, 4)
        run = only_flow_run(rt)
        assert len(task_runs_of(rt, run.id)) == 2


async def test_await_failed_future_raises() -> None:
    @flow
    async def pipeline() -> str:
        future = async_explode.submit("awaited")
        with pytest.raises(Boom, match=r"^awaited$"):
            await future
        await future.wait_async()
        return "ok"

    async with Runtime(store="memory://"):
        assert await pipeline() == "ok"


def test_submit_return_state() -> None:
    @flow
    def pipeline() -> State[Any]:
        return add.submit(1, 1, return_state=True)  # type: ignore[no-any-return]

    state = pipeline()
    assert isinstance(state, State) and state.result() == 2


def test_add_done_callback() -> None:
    seen: list[Any] = []

    @flow
    def pipeline() -> None:
        future = add.submit(5)
        future.add_done_callback(lambda f: seen.append(f.state.result()))
        future.wait()
        # Called at once once done.
        future.add_done_callback(lambda f: seen.append("late"))

    pipeline()
    assert seen == [5, "late"]


def test_one_final_state_wakes_every_blocked_thread_and_callback_once() -> None:
    import weakref

    from runtime.states import Completed
    from runtime.core._models import TaskRun

    future: TaskRunFuture[int] = TaskRunFuture(TaskRun(name="t-0", task_key="t", dynamic_key="0"))
    assert weakref.ref(future)() is future
    calls: list[int] = []
    future.add_done_callback(lambda f: calls.append(f.result()))
    results: list[int] = []
    waiting = threading.Barrier(4)

    def blocked() -> None:
        waiting.wait(timeout=10)
        results.append(future.result(timeout=10))

    threads = [threading.Thread(target=blocked) for _ in range(3)]
    for thread in threads:
        thread.start()
    waiting.wait(timeout=10)
    assert not future.done()
    future.set_final_state(Completed(data=7))
    future.set_final_state(Completed(data=8))  # a second final state is ignored
    for thread in threads:
        thread.join(timeout=10)
    assert results == [7, 7, 7] and calls == [7]
    assert future.done() and future.result(timeout=0) == 7


def test_future_passed_to_a_task_is_resolved() -> None:
    @flow
    def pipeline() -> int:
        first = add.submit(1, 1)
        second = add.submit(first, 10)
        return add(second, first)  # type: ignore[no-any-return]

    assert pipeline() == 14


async def test_upstream_links_are_recorded() -> None:
    @flow
    async def pipeline() -> int:
        first = async_add.submit(1)
        return await async_add(first, 1)  # type: ignore[no-any-return]

    async with Runtime(store="memory://") as rt:
        assert await pipeline() == 2
        run = only_flow_run(rt)
        first, second = task_runs_of(rt, run.id)
    assert [i.id for i in second.task_inputs["x"]] == [first.id]
    assert second.task_inputs["y"] == []


def test_futures_in_nested_collections_are_resolved() -> None:
    @flow
    def pipeline() -> Any:
        a = add.submit(1)
        b = add.submit(2)
        c = add.submit(3)
        return identity({"list": [a, (b, {"deep": c})], "set": frozenset({1}), "plain": "x"})

    assert pipeline() == {"list": [1, (2, {"deep": 3})], "set": frozenset({1}), "plain": "x"}


def test_quote_passes_futures_untouched() -> None:
    @flow
    def pipeline() -> Any:
        a = add.submit(1)
        a.wait()
        received = identity(quote([a]))
        return received[0] is a

    assert pipeline() is True


def test_states_passed_to_a_task_are_resolved() -> None:
    @flow
    def pipeline() -> int:
        state = add(2, 3, return_state=True)
        return add(state, 1)  # type: ignore[no-any-return]

    assert pipeline() == 6


# -- upstream failures -----------------------------------------------------------------


def upstream_message(run: Any, state: str) -> str:
    """The pattern of the UpstreamTaskError for upstream ``run`` in ``state`` (its str);
    ``run`` is a task run, or the id of one known only by its state."""
    run_id, who = (
        (run.id, f"task run '{re.escape(run.name)}'") if hasattr(run, "id") else (run, "it")
    )
    return (
        rf"^Upstream task run '{run_id}' did not reach a 'COMPLETED' state: {who} is "
        rf"{re.escape(state)}\. Fix the upstream failure, or pass the upstream wrapped in "
        r"allow_failure\(\) to run anyway\.$"
    )


BOOM_FAILED = "Failed('Task run encountered an exception Boom: upstream boom')"


async def test_upstream_failure_leaves_downstream_not_ready() -> None:
    @flow
    async def pipeline() -> tuple[Any, ...]:
        bad = async_explode.submit()
        downstream = async_add.submit(bad, 1)
        await downstream.wait_async()
        with pytest.raises(UpstreamTaskError) as raised:
            await downstream
        assert isinstance(raised.value.__cause__, Boom)
        return downstream.state.name, downstream.state.type.value, str(raised.value)

    async with Runtime(store="memory://") as rt:
        name, state_type, message = await pipeline()
        run = only_flow_run(rt)
        runs = {r.name.split("-")[0]: r for r in task_runs_of(rt, run.id)}
        bad, downstream = runs["async_explode"], runs["async_add"]
    assert (name, state_type) == ("NotReady", "PENDING")
    assert re.match(upstream_message(bad, BOOM_FAILED), message)
    assert run.state is not None and run.state.is_completed()
    assert downstream.state is not None and downstream.state.name == "NotReady"
    assert downstream.run_count == 0
    assert downstream.state.message == message


def test_called_task_with_failed_upstream_raises(sync_runtime: Runtime) -> None:
    ran: list[int] = []

    @task
    def record(x: int) -> int:
        ran.append(x)
        return x

    @flow
    def pipeline() -> Any:
        bad = explode.submit()
        state = record(bad, return_state=True)
        with pytest.raises(UpstreamTaskError, match=upstream_message(bad.task_run, BOOM_FAILED)):
            state.result()
        assert isinstance(state.result(raise_on_failure=False), UpstreamTaskError)
        with pytest.raises(UpstreamTaskError) as raised:
            record(bad)
        assert isinstance(raised.value.__cause__, Boom)
        return state.name

    assert pipeline() == "NotReady"
    assert ran == []


# -- a run that cannot start never returns None --------------------------------------


@task
def parse(x: int) -> int:
    if x == 2:
        raise Boom(f"cannot parse item {x}")
    return x * 10


@task
async def async_parse(x: int) -> int:
    if x == 2:
        raise Boom(f"cannot parse item {x}")
    return x * 10


@task
def total(values: Any) -> int:
    return sum(_flatten(values))


@task
async def async_total(values: Any) -> int:
    return sum(_flatten(values))


def _flatten(values: Any) -> list[int]:
    if isinstance(values, dict):
        values = list(values.values())
    if isinstance(values, (list, tuple, set)):
        return [x for v in values for x in _flatten(v)]
    return [values]


PARSE_FAILED = "Failed('Task run encountered an exception Boom: cannot parse item 2')"


def test_called_task_over_a_failed_map_fails_the_flow(sync_runtime: Runtime) -> None:
    @flow
    def pipeline() -> int:
        return total(parse.map([1, 2, 3]))  # type: ignore[no-any-return]

    with pytest.raises(UpstreamTaskError) as raised:
        pipeline()
    rt = sync_runtime
    flow_run = only_flow_run(rt)
    runs = task_runs_of(rt, flow_run.id)
    failed = next(r for r in runs if r.state is not None and r.state.is_failed())
    (downstream,) = [r for r in runs if r.task_key.startswith("total")]
    assert re.match(upstream_message(failed, PARSE_FAILED), str(raised.value))
    assert isinstance(raised.value.__cause__, Boom)
    assert str(raised.value.__cause__) == "cannot parse item 2"
    assert downstream.state is not None and downstream.state.name == "NotReady"
    assert downstream.run_count == 0
    assert flow_run.state is not None and flow_run.state.is_failed()
    assert (
        flow_run.state.message
        == f"Flow run encountered an exception: UpstreamTaskError: {raised.value}"
    )


def test_future_result_over_a_failed_map_names_the_upstream(sync_runtime: Runtime) -> None:
    @flow
    def pipeline() -> Any:
        futures = parse.map([1, 2, 3])
        downstream = total.submit(futures)
        with pytest.raises(UpstreamTaskError) as raised:
            downstream.result()
        assert downstream.state.name == "NotReady"
        assert isinstance(downstream.result(raise_on_failure=False), UpstreamTaskError)
        return futures[1].task_run, raised.value

    upstream, error = pipeline()
    assert re.match(upstream_message(upstream, PARSE_FAILED), str(error))
    assert isinstance(error.__cause__, Boom)


def test_failed_upstream_in_nested_collections(sync_runtime: Runtime) -> None:
    @flow
    def pipeline() -> Any:
        good, bad = parse.submit(1), parse.submit(2)
        errors = []
        for nested in ({"a": [good, (bad,)]}, [[good], {bad}], ({"k": {"deep": [bad]}},)):
            with pytest.raises(UpstreamTaskError) as raised:
                total(nested)
            errors.append(raised.value)
        return bad.task_run, errors

    upstream, errors = pipeline()
    assert len(errors) == 3
    for error in errors:
        assert re.match(upstream_message(upstream, PARSE_FAILED), str(error))
        assert isinstance(error.__cause__, Boom)


def test_failed_wait_for_raises_when_called_or_resolved(sync_runtime: Runtime) -> None:
    @flow
    def pipeline() -> Any:
        bad = parse.submit(2)
        with pytest.raises(UpstreamTaskError) as called:
            total(1, wait_for=[bad])
        future = total.submit(1, wait_for=[parse.submit(1), bad])
        with pytest.raises(UpstreamTaskError) as resolved:
            future.result()
        return bad.task_run, called.value, resolved.value

    upstream, called, resolved = pipeline()
    for error in (called, resolved):
        assert re.match(upstream_message(upstream, PARSE_FAILED), str(error))
        assert isinstance(error.__cause__, Boom)


async def test_failed_upstream_in_an_async_flow() -> None:
    @flow
    async def pipeline() -> int:
        futures = async_parse.map([1, 2, 3])
        with pytest.raises(UpstreamTaskError) as submitted:
            await async_total.submit(futures)
        with pytest.raises(UpstreamTaskError) as waited:
            await async_total(0, wait_for=futures)
        assert isinstance(submitted.value.__cause__, Boom)
        assert isinstance(waited.value.__cause__, Boom)
        return await async_total(futures)  # type: ignore[no-any-return]

    async with Runtime(store="memory://") as rt:
        with pytest.raises(UpstreamTaskError) as raised:
            await pipeline()
        flow_run = only_flow_run(rt)
        runs = task_runs_of(rt, flow_run.id)
    failed = next(r for r in runs if r.state is not None and r.state.is_failed())
    assert re.match(upstream_message(failed, PARSE_FAILED), str(raised.value))
    assert flow_run.state is not None and flow_run.state.is_failed()
    not_ready = [r.state.name for r in runs if r.task_key.startswith("async_total")]
    assert not_ready == ["NotReady", "NotReady", "NotReady"]


async def test_not_ready_runs_chain_their_errors() -> None:
    @flow
    async def pipeline() -> Any:
        first = async_parse.submit(2)
        second = async_total.submit(first)
        third = async_total.submit([second])
        with pytest.raises(UpstreamTaskError) as raised:
            await third
        return first.task_run, second.task_run, raised.value

    async with Runtime(store="memory://"):
        first, second, error = await pipeline()
    middle = error.__cause__
    assert isinstance(middle, UpstreamTaskError)
    assert re.match(upstream_message(first, PARSE_FAILED), str(middle))
    assert isinstance(middle.__cause__, Boom)
    assert str(error).startswith(
        f"Upstream task run '{second.id}' did not reach a 'COMPLETED' state: task run "
        f"'{second.name}' is NotReady("
    )


def test_flow_returning_a_not_ready_future_raises_its_error(sync_runtime: Runtime) -> None:
    @flow
    def pipeline() -> Any:
        return total.submit(parse.submit(2))

    with pytest.raises(UpstreamTaskError) as raised:
        pipeline()
    assert isinstance(raised.value.__cause__, Boom)
    assert only_flow_run(sync_runtime).state.is_failed()  # type: ignore[union-attr]


def test_failed_state_passed_as_an_upstream(sync_runtime: Runtime) -> None:
    @flow
    def pipeline() -> Any:
        state = parse(2, return_state=True)
        with pytest.raises(UpstreamTaskError) as raised:
            total([state])
        return state, raised.value

    state, error = pipeline()
    assert re.match(upstream_message(state.state_details.task_run_id, PARSE_FAILED), str(error))
    assert isinstance(error.__cause__, Boom)


def test_task_called_outside_a_flow_with_a_failed_upstream_state(sync_runtime: Runtime) -> None:
    state = parse(2, return_state=True)
    with pytest.raises(UpstreamTaskError) as raised:
        total([state])
    assert isinstance(raised.value.__cause__, Boom)
    assert total([state], return_state=True).name == "NotReady"


def test_allow_failure_passes_the_exception_downstream() -> None:
    @task
    def receive(value: Any) -> Any:
        return value

    @flow
    def pipeline() -> Any:
        bad = explode.submit("tolerated")
        return receive(allow_failure(bad))

    received = pipeline()
    assert isinstance(received, Boom)
    assert str(received) == "tolerated"


def test_allow_failure_inside_a_collection() -> None:
    @task
    def receive(values: list[Any]) -> list[Any]:
        return values

    @flow
    def pipeline() -> Any:
        good = add.submit(1)
        bad = explode.submit("in list")
        return receive(allow_failure([good, bad]))

    good, bad = pipeline()
    assert good == 1 and isinstance(bad, Boom)


def test_wait_for_orders_runs() -> None:
    order: list[str] = []
    release = threading.Event()

    @task
    def first() -> None:
        # Blocks until the flow has submitted the second run, so only wait_for orders them.
        release.wait(5)
        order.append("first")

    @task
    def second() -> None:
        order.append("second")

    @flow
    def pipeline() -> None:
        a = first.submit()
        b = second.submit(wait_for=[a])
        release.set()
        b.wait()

    pipeline()
    assert order == ["first", "second"]


def test_wait_for_failed_upstream_blocks_downstream() -> None:
    @flow
    def pipeline() -> Any:
        bad = explode.submit()
        blocked = add.submit(1, wait_for=[bad])
        tolerant = add.submit(2, wait_for=[allow_failure(bad)])
        blocked.wait()
        return blocked.state.name, tolerant.result()

    assert pipeline() == ("NotReady", 2)


def test_wait_for_on_a_called_task() -> None:
    @flow
    def pipeline() -> int:
        a = add.submit(1)
        return add(2, wait_for=[a])  # type: ignore[no-any-return]

    assert pipeline() == 2


# -- map ---------------------------------------------------------------------------------


def test_map_over_one_iterable_with_static_args() -> None:
    @flow
    def pipeline() -> list[int]:
        futures = add.map([1, 2, 3], 10)
        assert all(isinstance(f, TaskRunFuture) for f in futures)
        return futures.result()  # type: ignore[no-any-return]

    assert pipeline() == [11, 12, 13]


def test_map_over_several_iterables_and_keywords() -> None:
    @flow
    def pipeline() -> list[int]:
        return add.map(x=[1, 2], y=(10, 20)).result()  # type: ignore[no-any-return]

    assert pipeline() == [11, 22]


def test_map_with_unmapped_iterable() -> None:
    @task
    def count(item: int, pool: list[int]) -> int:
        return item + len(pool)

    @flow
    def pipeline() -> list[int]:
        return count.map([1, 2, 3], unmapped([0, 0, 0, 0])).result()  # type: ignore[no-any-return]

    assert pipeline() == [5, 6, 7]


def test_map_with_quoted_iterable_is_mapped_but_not_searched() -> None:
    @task
    def kind(item: Any) -> str:
        return type(item).__name__

    @flow
    def pipeline() -> list[str]:
        future = add.submit(1)
        future.wait()
        return kind.map(quote([future, 2])).result()  # type: ignore[no-any-return]

    assert pipeline() == ["TaskRunFuture", "int"]


def test_map_over_a_future_of_a_list() -> None:
    @task
    def numbers() -> list[int]:
        return [1, 2, 3]

    @flow
    def pipeline() -> list[int]:
        return add.map(numbers.submit(), 1).result()  # type: ignore[no-any-return]

    assert pipeline() == [2, 3, 4]


def test_map_over_futures() -> None:
    @flow
    def pipeline() -> list[int]:
        first = add.map([1, 2])
        return add.map(first, unmapped(100)).result()  # type: ignore[no-any-return]

    assert pipeline() == [101, 102]


def test_map_length_mismatch() -> None:
    @flow
    def pipeline() -> None:
        add.map([1, 2, 3], [1, 2])

    with pytest.raises(MappingLengthMismatch, match=r"Got lengths: \{'x': 3, 'y': 2\}$"):
        pipeline()


def test_map_missing_iterable() -> None:
    @flow
    def pipeline() -> None:
        add.map(1, 2)

    with pytest.raises(MappingMissingIterable, match="^No iterable parameters were received"):
        pipeline()


def test_map_strings_are_not_iterated() -> None:
    @task
    def join(prefix: str, item: int) -> str:
        return f"{prefix}{item}"

    @flow
    def pipeline() -> list[str]:
        return join.map("n", [1, 2]).result()  # type: ignore[no-any-return]

    assert pipeline() == ["n1", "n2"]


def test_map_return_state() -> None:
    @flow
    def pipeline() -> list[State[Any]]:
        return add.map([1, 2], return_state=True)  # type: ignore[no-any-return]

    states = pipeline()
    assert [s.result() for s in states] == [1, 2]


def test_map_with_a_failure_fails_the_flow_that_returns_the_futures() -> None:
    @task
    def maybe(x: int) -> int:
        if x == 2:
            raise Boom("two")
        return x

    @flow
    def pipeline() -> Any:
        return maybe.map([1, 2, 3])

    state = pipeline(return_state=True)
    assert state.is_failed()
    assert state.message == "1/3 states failed."
    with pytest.raises(Boom, match="^two$"):
        pipeline()


async def test_map_in_async_flow() -> None:
    @flow
    async def pipeline() -> list[int]:
        futures = async_add.map([1, 2, 3], unmapped(1))
        return [await f for f in futures]

    async with Runtime(store="memory://") as rt:
        assert await pipeline() == [2, 3, 4]
        run = only_flow_run(rt)
        runs = task_runs_of(rt, run.id)
    assert sorted(r.dynamic_key for r in runs) == ["0", "1", "2"]


# -- wait / as_completed -----------------------------------------------------------------


def test_wait_returns_done_and_not_done() -> None:
    @flow
    def pipeline() -> tuple[int, int]:
        futures = [add.submit(i) for i in range(4)]
        done, not_done = wait(futures)
        return len(done), len(not_done)

    assert pipeline() == (4, 0)


def test_wait_with_timeout_reports_unfinished() -> None:
    release = threading.Event()

    @task
    def blocked() -> None:
        release.wait(5)

    @flow
    def pipeline() -> tuple[int, int]:
        future = blocked.submit()
        try:
            done, not_done = wait([future], timeout=0.01)
            with pytest.raises(TimeoutError):
                future.result(timeout=0.01)
        finally:
            release.set()
        return len(done), len(not_done)

    assert pipeline() == (0, 1)


def test_as_completed_yields_in_finishing_order() -> None:
    second_may_finish = threading.Event()

    @task
    def slow() -> str:
        second_may_finish.wait(5)
        return "slow"

    @task
    def fast() -> str:
        return "fast"

    @flow
    def pipeline() -> list[str]:
        futures = [slow.submit(), fast.submit()]
        order = []
        for future in as_completed(futures):
            order.append(future.result())
            second_may_finish.set()
        return order

    assert pipeline() == ["fast", "slow"]


def test_map_futures_wait() -> None:
    @flow
    def pipeline() -> bool:
        futures = add.map([1, 2, 3])
        futures.wait()
        return all(f.done() for f in futures)

    assert pipeline() is True


async def test_many_submissions_in_async_flow() -> None:
    @flow
    async def pipeline(n: int) -> int:
        futures = [async_add.submit(i) for i in range(n)]
        total = 0
        for future in futures:
            total += await future
        return total

    async with Runtime(store="memory://"):
        assert await pipeline(50) == sum(range(50))


async def test_async_task_waits_on_event_set_by_another_task() -> None:
    """A submitted run waits while the flow goes on and calls a task that releases it (the
    submitted run runs on the task runner's loop, as in Prefect: a thread-safe event)."""

    @flow
    async def pipeline() -> str:
        event = threading.Event()

        @task
        async def waiter() -> str:
            assert await anyio.to_thread.run_sync(event.wait, 30)
            return "released"

        @task
        async def releaser() -> None:
            event.set()

        future = waiter.submit()
        await releaser()
        return await future  # type: ignore[no-any-return]

    async with Runtime(store="memory://"):
        assert await pipeline() == "released"


def test_states_as_inputs_and_in_wait_for() -> None:
    from runtime import states as S

    @task
    def fails() -> Any:
        return S.Failed(message="manual failure")

    @flow
    def pipeline() -> tuple[Any, ...]:
        ok = identity(1, return_state=True)
        bad = fails(return_state=True)
        return (
            identity(ok),
            identity(2, wait_for=[ok]),
            identity(allow_failure(bad)),
            identity(3, wait_for=[bad], return_state=True).name,
        )

    first, second, tolerated, blocked = pipeline()
    assert (first, second, blocked) == (1, 2, "NotReady")
    assert str(tolerated) == "manual failure"


# -- blocking on futures inside an async flow (the work runs on the task runner's loop) ------


async def test_blocking_result_after_the_run_started_in_an_async_flow() -> None:
    @task
    async def double(x: int) -> int:
        await anyio.sleep(0)
        return 2 * x

    @flow
    async def pipeline() -> int:
        future = double.submit(1)
        await anyio.sleep(0)
        return future.result()  # type: ignore[no-any-return]

    async with Runtime(store="memory://"):
        assert await pipeline() == 2


async def test_a_blocking_map_result_in_an_async_flow_runs_the_tasks_concurrently() -> None:
    """Five runs that each wait for all five to have started: run one after another, they
    would never get there."""
    started = threading.Barrier(5, timeout=30)

    @task
    async def meet(i: int) -> int:
        await anyio.to_thread.run_sync(started.wait)
        return i

    @flow
    async def pipeline() -> list[int]:
        return meet.map(range(5)).result()  # type: ignore[no-any-return]

    async with Runtime(store="memory://"):
        assert await pipeline() == [0, 1, 2, 3, 4]


async def test_a_sync_task_takes_an_async_tasks_future_in_an_async_flow() -> None:
    @task
    async def produce(x: int) -> int:
        return x + 1

    @task
    def consume(x: int) -> int:
        return x * 10

    @flow
    async def pipeline() -> tuple[int, int]:
        called = consume(produce.submit(5))
        submitted = consume.submit(produce.submit(5)).result()
        return called, submitted  # type: ignore[return-value]

    async with Runtime(store="memory://"):
        assert await pipeline() == (60, 60)


async def test_blocking_waits_in_an_async_flow() -> None:
    @task
    async def value(x: int) -> int:
        return x

    @flow
    async def pipeline() -> list[int]:
        futures = [value.submit(i) for i in range(3)]
        futures[0].wait()
        done, not_done = wait(futures)
        assert not not_done and done == set(futures)
        return sorted(future.result() for future in as_completed(futures))

    async with Runtime(store="memory://"):
        assert await pipeline() == [0, 1, 2]


def test_blocking_waits_in_a_sync_flow_on_async_tasks(sync_runtime: Runtime) -> None:
    started = threading.Barrier(3, timeout=30)

    @task
    async def meet(i: int) -> int:
        await anyio.to_thread.run_sync(started.wait)
        return i

    @flow
    def pipeline() -> list[int]:
        futures = meet.map(range(3))
        return sorted(future.result() for future in as_completed(futures))

    assert pipeline() == [0, 1, 2]


# -- a submitted async task that blocks on runs it submitted itself ----------------------


@task
async def _leaf(x: int) -> int:
    await anyio.sleep(0)
    return 2 * x


@task
async def _fan_out_and_block(n: int) -> list[int]:
    """An async task body that submits runs and blocks on them: it runs on the task
    runner's loop, so its own submissions must run elsewhere (as with Prefect, where each
    submitted async task has a loop of its own)."""
    futures = _leaf.map(range(n))
    first = futures[0].result()
    wait(futures)
    rest = sorted(future.result() for future in as_completed(futures))
    return [first, *rest]


async def test_a_submitted_async_task_may_block_on_runs_it_submitted() -> None:
    @flow
    async def pipeline() -> list[list[int]]:
        return [_fan_out_and_block.submit(3).result(), *_fan_out_and_block.map([2, 2]).result()]

    async with Runtime(store="memory://"):
        with anyio.fail_after(30):
            assert await pipeline() == [[0, 0, 2, 4], [0, 0, 2], [0, 0, 2]]


def test_a_submitted_async_task_may_block_on_runs_it_submitted_in_a_sync_flow(
    sync_runtime: Runtime,
) -> None:
    @flow
    def pipeline() -> list[int]:
        return _fan_out_and_block.submit(3).result()  # type: ignore[no-any-return]

    assert pipeline() == [0, 0, 2, 4]


# -- futures inside dataclasses and pydantic models (Prefect's visit_collection) ---------


@dataclasses.dataclass
class _Pair:
    left: Any
    right: Any


class _Order(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(arbitrary_types_allowed=True)

    id: int
    items: Any


@task
def _unpack(value: Any) -> Any:
    if isinstance(value, _Pair):
        return ("pair", value.left, value.right)
    return ("order", value.id, value.items)


def test_futures_inside_dataclasses_and_models_are_resolved(sync_runtime: Runtime) -> None:
    @flow
    def pipeline() -> tuple[Any, Any]:
        pair = _Pair(add.submit(1), [add.submit(2)])
        order = _Order(id=7, items={"n": add.submit(3)})
        return _unpack(pair), _unpack.submit(order).result()

    assert pipeline() == (("pair", 1, [2]), ("order", 7, {"n": 3}))


async def test_a_failed_future_inside_a_dataclass_or_model_blocks_the_run() -> None:
    @flow
    async def pipeline() -> list[str]:
        names = []
        for value in (_Pair(1, explode.submit()), _Order(id=1, items=[explode.submit()])):
            state = _unpack(value, return_state=True)
            assert isinstance(state.data, UpstreamTaskError)
            names.append(state.name)
        return names

    async with Runtime(store="memory://"):
        assert await pipeline() == ["NotReady", "NotReady"]


async def test_a_flow_timeout_stops_a_submitted_task_blocked_on_its_own_runs() -> None:
    """The flow run times out while a submitted async task blocks its loop on runs it
    submitted (which never end): those runs are stopped first, so the blocked body wakes,
    its loop is free and the flow call returns TimedOut instead of hanging."""

    @task
    async def forever(x: int) -> int:
        await anyio.sleep_forever()
        return x

    @task
    async def fan_out() -> list[int]:
        return [future.result() for future in forever.map(range(2))]

    @flow(timeout_seconds=0.5)
    async def pipeline() -> list[int]:
        return await fan_out.submit()  # type: ignore[no-any-return]

    async with Runtime(store="memory://") as rt:
        with anyio.fail_after(30):
            state = await pipeline(return_state=True)
        assert state.name == "TimedOut"
        names = {
            run.name: run.state_type for run in task_runs_of(rt, state.state_details.flow_run_id)
        }
        assert set(names) == {"fan_out-0", "forever-0", "forever-1"}
        assert not any(state_type.value == "COMPLETED" for state_type in names.values())
