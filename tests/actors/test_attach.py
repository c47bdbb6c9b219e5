"""Tests for attached children (actors._attach, AttachChild) and for actors that receive
control messages while their run() is active."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import pytest

from actors import (
    Actor,
    AttachChild,
    ChildSpec,
    CrashReport,
    ExitKind,
    FakeClock,
    Supervisor,
    WhichChildren,
    open_actor_system,
)


class Work(Actor):
    """A process actor: run() records its task and waits until told to finish; control
    messages are handled while it runs."""

    receives_while_running = True
    dispatch_from_threads = True

    def __init__(self) -> None:
        self.received: list[Any] = []
        self.task: int | None = None
        self.finish = anyio.Event()

    def receive(self, message: Any) -> Any:
        if message == "boom":
            raise ValueError("boom")
        self.received.append(message)
        if message == "finish":
            self.finish.set()
        return f"got {message}"

    async def run(self) -> None:
        self.task = anyio.get_current_task().id
        await self.finish.wait()


async def _supervisor(system: Any, reports: list[CrashReport]) -> Any:
    return await system.spawn(
        ChildSpec("sup", lambda: Supervisor(name="sup", on_crash=reports.append))
    )


class TestAttachedChildren:
    async def test_the_incarnation_runs_in_the_callers_task(self) -> None:
        """No task is spawned: run() runs in the task that awaits the attachment, and the
        supervisor lists the child only while it runs."""
        work = Work()
        async with open_actor_system(clock=FakeClock()) as system:
            sup = await _supervisor(system, [])
            attachment = await sup.ask(AttachChild("work", work))
            async with anyio.create_task_group() as tg:
                tg.start_soon(attachment.run)
                await anyio.wait_all_tasks_blocked()
                assert [name for name, _ in await sup.ask(WhichChildren())] == ["work"]
                assert await attachment.ref.ask("hello") == "got hello"
                await attachment.ref.tell("finish")
            assert await sup.ask(WhichChildren()) == []
            assert attachment.ref.exit_reason is not None
            assert attachment.ref.exit_reason.kind is ExitKind.NORMAL
        assert work.received == ["hello", "finish"]

    async def test_run_is_awaited_in_place(self) -> None:
        work = Work()
        async with open_actor_system(clock=FakeClock()) as system:
            sup = await _supervisor(system, [])
            attachment = await sup.ask(AttachChild("work", work))
            work.finish.set()
            await attachment.run()
        assert work.task == anyio.get_current_task().id

    async def test_a_crash_is_reported_and_raised_to_the_caller(self) -> None:
        reports: list[CrashReport] = []

        class Crashing(Actor):
            async def run(self) -> None:
                raise KeyError("lost")

        async with open_actor_system(clock=FakeClock()) as system:
            sup = await _supervisor(system, reports)
            attachment = await sup.ask(AttachChild("bad", Crashing()))
            with pytest.raises(KeyError):
                await attachment.run()
            assert await sup.ask(WhichChildren()) == []
        assert [(r.child, type(r.exception)) for r in reports] == [("bad", KeyError)]

    async def test_a_failing_control_message_crashes_the_incarnation(self) -> None:
        reports: list[CrashReport] = []
        async with open_actor_system(clock=FakeClock()) as system:
            sup = await _supervisor(system, reports)
            attachment = await sup.ask(AttachChild("work", Work()))
            async with anyio.create_task_group() as tg:

                async def run() -> None:
                    with pytest.raises(ValueError, match="^boom$"):
                        await attachment.run()

                tg.start_soon(run)
                await anyio.wait_all_tasks_blocked()
                await attachment.ref.tell("boom")
        assert [r.child for r in reports] == ["work"]

    async def test_the_supervisor_stops_its_attached_children(self) -> None:
        async with open_actor_system(clock=FakeClock()) as system:
            sup = await _supervisor(system, [])
            attachment = await sup.ask(AttachChild("work", Work()))
            async with anyio.create_task_group() as tg:
                tg.start_soon(attachment.run)
                await anyio.wait_all_tasks_blocked()
                await sup.stop()
            assert attachment.ref.exit_reason is not None
            assert attachment.ref.exit_reason.kind in (ExitKind.SHUTDOWN, ExitKind.CANCELLED)

    async def test_names_are_unique_among_siblings(self) -> None:
        async with open_actor_system(clock=FakeClock()) as system:
            sup = await _supervisor(system, [])
            await sup.ask(AttachChild("work", Work()))
            with pytest.raises(ValueError, match="already has a child named 'work'"):
                await sup.ask(AttachChild("work", Work()))


class TestThreadIncarnations:
    async def test_work_on_a_thread_is_supervised(self) -> None:
        """A thread with no loop attaches itself, runs, takes control messages on the
        sending thread, and its exit reaches the supervisor."""
        stopped: list[Any] = []
        seen: list[Any] = []
        work = Work()
        async with open_actor_system(clock=FakeClock()) as system:
            sup = await _supervisor(system, [])
            ready = threading.Event()
            go_on = threading.Event()
            refs: list[Any] = []

            def on_thread() -> str:
                attachment = sup.ask_from_thread(AttachChild("thread-work", work, stopped.append))
                refs.append(attachment.ref)

                def body() -> str:
                    ready.set()
                    assert go_on.wait(30)
                    return "done"

                return attachment.run_on_thread(body)  # type: ignore[no-any-return]

            async with anyio.create_task_group() as tg:

                async def call() -> None:
                    seen.append(await anyio.to_thread.run_sync(on_thread))

                tg.start_soon(call)
                assert await anyio.to_thread.run_sync(ready.wait, 30)
                assert [name for name, _ in await sup.ask(WhichChildren())] == ["thread-work"]
                await anyio.to_thread.run_sync(refs[0].tell_from_thread, "ping")
                go_on.set()
            assert await sup.ask(WhichChildren()) == []
        assert seen == ["done"]
        assert work.received == ["ping"]
        assert stopped == []
