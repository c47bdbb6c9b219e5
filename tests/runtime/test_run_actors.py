"""Every run is an actor: flow runs and task runs have refs, live under supervisors, take
control messages and produce crash reports (runtime.engine._run_actors)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import anyio
import pytest

from actors import ActorRef, ForeignThreadError, WhichChildren
from runtime import Runtime, flow, get_run_context, task
from runtime.engine._run_actors import CancelRun


def _children(ref: ActorRef) -> list[str]:
    """The names of a supervisor's children, asked from wherever the caller is."""
    try:
        return [name for name, _ in ref.ask_here(WhichChildren())]
    except ForeignThreadError:
        return [name for name, _ in ref.ask_from_thread(WhichChildren())]


class TestSupervision:
    async def test_a_flow_run_and_the_task_runs_it_calls_are_supervised(self) -> None:
        """A top-level flow run is a child of the runtime's root; a task run it calls is a
        child of the flow run's actor while it runs, and is gone once it ended."""
        seen: dict[str, Any] = {}

        @task
        async def look() -> None:
            seen["during"] = _children(seen["actor"])

        @flow
        async def outer() -> None:
            ctx = get_run_context()
            seen["actor"] = ctx.actor  # type: ignore[attr-defined]
            seen["root"] = [name for name, _ in await runtime.root.ask(WhichChildren())]
            seen["flow"] = f"flow-run-{ctx.flow_run.id}"
            await look()
            seen["after"] = [name for name, _ in await ctx.actor.ask(WhichChildren())]

        async with Runtime(store="memory://") as runtime:
            await outer()
        assert seen["flow"] in seen["root"]
        assert len(seen["during"]) == 1 and seen["during"][0].startswith("task-run-")
        assert seen["after"] == []

    def test_a_sync_task_on_the_flow_body_thread_is_supervised(
        self, sync_runtime: Runtime
    ) -> None:
        """A sync task called in a sync flow runs on the body's thread and is still a
        child of the flow run's actor meanwhile."""
        seen: dict[str, Any] = {}

        @task
        def look() -> None:
            seen["thread"] = threading.get_ident()
            seen["during"] = _children(seen["actor"])

        @flow
        def outer() -> None:
            seen["body"] = threading.get_ident()
            seen["actor"] = get_run_context().actor  # type: ignore[attr-defined]
            look()
            seen["after"] = _children(seen["actor"])

        outer()
        assert seen["thread"] == seen["body"]
        assert len(seen["during"]) == 1 and seen["during"][0].startswith("task-run-")
        assert seen["after"] == []

    async def test_a_subflow_is_a_child_of_its_parent(self) -> None:
        seen: dict[str, Any] = {}

        @flow
        async def inner() -> None:
            parent_actor = seen["parent_actor"]
            seen["siblings"] = [name for name, _ in await parent_actor.ask(WhichChildren())]
            seen["inner"] = f"flow-run-{get_run_context().flow_run.id}"

        @flow
        async def outer() -> None:
            seen["parent_actor"] = get_run_context().actor  # type: ignore[attr-defined]
            await inner()

        async with Runtime(store="memory://"):
            await outer()
        assert seen["siblings"] == [seen["inner"]]


class TestControlMessages:
    async def test_cancel_run_ends_a_flow_run_cancelled_with_its_hooks(self) -> None:
        hooks: list[str] = []
        started = anyio.Event()
        refs: list[ActorRef] = []

        @flow(on_cancellation=[lambda f, r, s: hooks.append(f"on_cancellation {s.message}")])
        async def waits() -> None:
            refs.append(get_run_context().actor)  # type: ignore[attr-defined]
            started.set()
            await anyio.sleep_forever()

        async with Runtime(store="memory://"):
            async with anyio.create_task_group() as tg:
                states: list[Any] = []

                async def call() -> None:
                    states.append(await waits(return_state=True))

                tg.start_soon(call)
                await started.wait()
                await refs[0].tell(CancelRun("Stopped by its supervisor."))
        assert states[0].is_cancelled()
        assert states[0].message == "Stopped by its supervisor."
        assert hooks == ["on_cancellation Stopped by its supervisor."]

    async def test_cancel_run_ends_a_called_task_run_cancelled(self) -> None:
        started = anyio.Event()

        @task
        async def waits() -> None:
            started.set()
            await anyio.sleep_forever()

        @flow
        async def outer() -> str:
            flow_actor = get_run_context().actor  # type: ignore[attr-defined]
            async with anyio.create_task_group() as tg:

                async def cancel() -> None:
                    await started.wait()
                    ((_, task_actor),) = await flow_actor.ask(WhichChildren())
                    await task_actor.tell(CancelRun())

                tg.start_soon(cancel)
                state = await waits(return_state=True)
            return f"{state.name}: {state.message}"

        async with Runtime(store="memory://"):
            assert await outer() == "Cancelled: The task run was cancelled."

    def test_cancel_run_interrupts_a_sync_task_on_the_flow_body_thread(
        self, sync_runtime: Runtime
    ) -> None:
        started = threading.Event()

        @task
        def sleeps() -> None:
            started.set()
            for _ in range(3000):
                time.sleep(0.01)

        @flow
        def outer() -> str:
            flow_actor = get_run_context().actor  # type: ignore[attr-defined]

            def cancel() -> None:
                assert started.wait(30)
                ((_, task_actor),) = flow_actor.ask_from_thread(WhichChildren())
                task_actor.tell_from_thread(CancelRun("enough"))

            canceller = threading.Thread(target=cancel)
            canceller.start()
            state = sleeps(return_state=True)
            canceller.join(30)
            return f"{state.name}: {state.message}"

        assert outer() == "Cancelled: enough"


class TestCrashReports:
    async def test_a_crashed_task_run_reports_to_its_flow_runs_actor(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        class Fatal(BaseException):
            pass

        @task
        async def dies() -> None:
            raise Fatal("gone")

        @flow
        async def outer() -> None:
            await dies()

        caplog.set_level(logging.DEBUG, logger="stageflow.engine")
        async with Runtime(store="memory://"):
            with pytest.raises(Fatal):
                await outer()
        reports = [r.getMessage() for r in caplog.records if "Run actor" in r.getMessage()]
        assert any(m.startswith("Run actor 'task-run-") and "gone" in m for m in reports)
        assert any(m.startswith("Run actor 'flow-run-") and "gone" in m for m in reports)
        assert all(r.levelno == logging.DEBUG for r in caplog.records if "Run actor" in r.getMessage())


class TestShutdown:
    async def test_a_runtime_that_closes_under_a_running_flow_leaves_it_crashed(
        self, tmp_path: Any
    ) -> None:
        """The root supervisor stops its children (flow runs first, the orchestrator
        last): the run is recorded Crashed, not left Running."""
        started = anyio.Event()
        states: list[Any] = []
        store = f"sqlite:///{tmp_path / 'runs.db'}"

        @flow
        async def waits() -> None:
            started.set()
            await anyio.sleep_forever()

        async with anyio.create_task_group() as tg:
            async with Runtime(store=store):

                async def call() -> None:
                    states.append(await waits(return_state=True))

                tg.start_soon(call)
                await started.wait()
        assert states and states[0].is_crashed()
        with Runtime(store=store) as runtime:
            (run,) = runtime.backend.read_flow_runs()  # type: ignore[union-attr]
        assert run.state is not None and run.state.is_crashed()
