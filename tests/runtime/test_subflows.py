"""Subflows: a flow called inside a flow, linked to its parent through a task run."""

from __future__ import annotations

from typing import Any

import pytest
from engine_support import flow_run_named, isolated_home, task_runs_of  # noqa: F401

from runtime import FlowRunContext, Runtime, flow, get_run_context, task
from runtime.exceptions import UpstreamTaskError


class Boom(ValueError):
    pass


@flow
async def child(x: int) -> int:
    return x * 10


@flow
async def failing_child(message: str = "child failed") -> None:
    raise Boom(message)


@flow
def sync_child(x: int) -> int:
    return x + 100


@flow
def sync_failing_child() -> None:
    raise Boom("sync child failed")


@task
async def add_one(x: int) -> int:
    return x + 1


@task
async def explode() -> int:
    raise Boom("upstream")


async def test_subflow_is_linked_to_its_parent_through_a_task_run() -> None:
    @flow
    async def parent() -> int:
        return await child(4)

    async with Runtime(store="memory://") as rt:
        assert await parent() == 40
        parent_run = flow_run_named(rt, "parent")
        child_run = flow_run_named(rt, "child")
        (link,) = task_runs_of(rt, parent_run.id)
    assert parent_run.parent_task_run_id is None
    assert child_run.parent_task_run_id == link.id
    assert link.flow_run_id == parent_run.id
    assert link.name == "child-0"
    assert link.task_key == child.flow_key
    # The linking task run mirrors the subflow's state.
    assert link.state is not None and link.state.is_completed()
    assert link.state.state_details.child_flow_run_id == child_run.id
    assert child_run.state is not None and child_run.state.is_completed()
    assert child_run.parameters == {"x": 4}


async def test_each_subflow_call_is_its_own_run() -> None:
    @flow
    async def parent() -> list[int]:
        return [await child(1), await child(2)]

    async with Runtime(store="memory://") as rt:
        assert await parent() == [10, 20]
        parent_run = flow_run_named(rt, "parent")
        links = task_runs_of(rt, parent_run.id)
        children = rt.backend.read_flow_runs(flow_name="child")  # type: ignore[union-attr]
    assert sorted(link.dynamic_key for link in links) == ["0", "1"]
    assert {c.parent_task_run_id for c in children} == {link.id for link in links}


async def test_subflow_exception_propagates_to_the_parent_body() -> None:
    caught: list[str] = []

    @flow
    async def parent() -> str:
        try:
            await failing_child("caught by parent")
        except Boom as exc:
            caught.append(str(exc))
        return "parent survived"

    async with Runtime(store="memory://") as rt:
        assert await parent() == "parent survived"
        parent_run = flow_run_named(rt, "parent")
        child_run = flow_run_named(rt, "failing-child")
        (link,) = task_runs_of(rt, parent_run.id)
    assert caught == ["caught by parent"]
    assert child_run.state is not None and child_run.state.is_failed()
    assert link.state is not None and link.state.is_failed()
    assert parent_run.state is not None and parent_run.state.is_completed()


async def test_uncaught_subflow_exception_fails_the_parent() -> None:
    @flow
    async def parent() -> None:
        await failing_child("uncaught")

    async with Runtime(store="memory://") as rt:
        with pytest.raises(Boom, match="^uncaught$"):
            await parent()
        parent_run = flow_run_named(rt, "parent")
    assert parent_run.state is not None and parent_run.state.is_failed()


async def test_subflow_return_state() -> None:
    @flow
    async def parent() -> tuple[bool, bool]:
        ok = await child(1, return_state=True)
        bad = await failing_child(return_state=True)
        return ok.is_completed() and ok.result() == 10, bad.is_failed()

    async with Runtime(store="memory://"):
        assert await parent() == (True, True)


def test_sync_subflow_in_sync_parent() -> None:
    seen: list[Any] = []

    @flow
    def parent() -> int:
        seen.append(get_run_context().flow_run.id)  # type: ignore[union-attr]
        return sync_child(1)

    @flow
    def inspects_parent() -> None:
        ctx = FlowRunContext.get()
        assert ctx is not None
        seen.append(ctx.flow_run.parent_task_run_id)

    @flow
    def parent_of_inspector() -> None:
        inspects_parent()

    assert parent() == 101
    parent_of_inspector()
    assert seen[1] is not None


def test_sync_subflow_exception_propagates() -> None:
    @flow
    def parent() -> str:
        try:
            sync_failing_child()
        except Boom as exc:
            return f"caught: {exc}"
        return "not reached"

    assert parent() == "caught: sync child failed"


async def test_sync_subflow_in_async_parent_lands_in_the_same_store() -> None:
    @flow
    async def parent() -> int:
        return sync_child(2)

    async with Runtime(store="memory://") as rt:
        assert await parent() == 102
        parent_run = flow_run_named(rt, "parent")
        child_run = flow_run_named(rt, "sync-child")
        (link,) = task_runs_of(rt, parent_run.id)
    assert child_run.parent_task_run_id == link.id


async def test_nested_subflows() -> None:
    @flow
    async def middle(x: int) -> int:
        return await child(x) + 1

    @flow
    async def top() -> int:
        return await middle(2)

    async with Runtime(store="memory://") as rt:
        assert await top() == 21
        top_run = flow_run_named(rt, "top")
        middle_run = flow_run_named(rt, "middle")
        child_run = flow_run_named(rt, "child")
        (top_link,) = task_runs_of(rt, top_run.id)
        (middle_link,) = task_runs_of(rt, middle_run.id)
    assert middle_run.parent_task_run_id == top_link.id
    assert child_run.parent_task_run_id == middle_link.id


async def test_subflow_parameters_may_be_futures() -> None:
    @flow
    async def parent() -> int:
        return await child(add_one.submit(1))  # type: ignore[no-any-return]

    async with Runtime(store="memory://") as rt:
        assert await parent() == 20
        child_run = flow_run_named(rt, "child")
    assert child_run.parameters == {"x": "<TaskRunFuture>"}


async def test_subflow_with_failed_wait_for_is_not_ready() -> None:
    ran: list[bool] = []

    @flow
    async def guarded() -> None:
        ran.append(True)

    @flow
    async def parent() -> tuple[str | None, bool]:
        state = await guarded(wait_for=[explode.submit()], return_state=True)
        with pytest.raises(UpstreamTaskError) as raised:
            state.result()
        assert isinstance(raised.value.__cause__, Boom)
        return state.name, state.is_pending()

    async with Runtime(store="memory://") as rt:
        assert await parent() == ("NotReady", True)
        guarded_run = flow_run_named(rt, "guarded")
    assert ran == []
    assert guarded_run.state is not None and guarded_run.state.name == "NotReady"


async def test_async_subflow_with_a_failed_upstream_raises_when_called() -> None:
    ran: list[bool] = []

    @flow
    async def guarded(x: int = 0) -> None:
        ran.append(True)

    @flow
    async def parent() -> None:
        bad = explode.submit()
        with pytest.raises(UpstreamTaskError) as waited:
            await guarded(wait_for=[bad])
        assert isinstance(waited.value.__cause__, Boom)
        await guarded(bad)

    async with Runtime(store="memory://") as rt:
        with pytest.raises(UpstreamTaskError) as raised:
            await parent()
        parent_run = flow_run_named(rt, "parent")
    assert ran == []
    assert isinstance(raised.value.__cause__, Boom)
    assert str(raised.value).startswith("Upstream task run '")
    assert "task run 'explode-0' is Failed('Task run encountered an exception Boom: " in str(
        raised.value
    )
    assert parent_run.state is not None and parent_run.state.is_failed()
    assert parent_run.state.message == (
        f"Flow run encountered an exception: UpstreamTaskError: {raised.value}"
    )


def test_sync_subflow_with_a_failed_upstream_raises_when_called(sync_runtime: Runtime) -> None:
    ran: list[bool] = []

    @task
    def sync_explode() -> int:
        raise Boom("sync upstream")

    @flow
    def guarded(x: int = 0) -> None:
        ran.append(True)

    @flow
    def parent() -> None:
        bad = sync_explode.submit()
        state = guarded(bad, return_state=True)
        assert state.name == "NotReady"
        with pytest.raises(UpstreamTaskError):
            guarded(wait_for=[bad])
        guarded(x=bad)

    with pytest.raises(UpstreamTaskError) as raised:
        parent()
    assert ran == []
    assert isinstance(raised.value.__cause__, Boom)
    assert str(raised.value.__cause__) == "sync upstream"
    runs = sync_runtime.backend.read_flow_runs(flow_name="guarded")  # type: ignore[union-attr]
    assert sorted(run.state.name for run in runs) == ["NotReady"] * 3  # type: ignore[union-attr]


async def test_subflow_waits_for_its_upstreams() -> None:
    @flow
    async def after() -> str:
        return "after"

    @flow
    async def parent() -> str:
        upstream = add_one.submit(1)
        result = await after(wait_for=[upstream])
        assert upstream.done()
        return result  # type: ignore[no-any-return]

    async with Runtime(store="memory://"):
        assert await parent() == "after"


def test_wait_for_outside_a_flow_is_refused() -> None:
    with pytest.raises(
        ValueError, match=r"^Only flows run as subflows can wait for dependencies\.$"
    ):
        sync_child(1, wait_for=[])


async def test_subflow_inherits_log_prints(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    @flow
    async def chatty_child() -> None:
        print("printed in child")

    @flow(log_prints=True)
    async def parent() -> None:
        await chatty_child()

    async with Runtime(store="memory://"):
        with caplog.at_level(logging.INFO, logger="stageflow"):
            await parent()
    (record,) = [r for r in caplog.records if r.getMessage() == "printed in child"]
    assert record.flow_name == "chatty-child"  # type: ignore[attr-defined]
