"""Tests for attached children (actors._attach, AttachChild) and for actors that receive
control messages while their run() is active."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import pytest

from actors import (
    Actor,
    ActorStopped,
    AttachChild,
    ChildSpec,
    CrashReport,
    ExitKind,
    FakeClock,
    StartChild,
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

    async def test_a_sync_call_on_the_loop_thread_reports_its_exit(self) -> None:
        """A thread incarnation run on the supervisor's own loop thread (a sync call made
        there) still reaches the supervisor when it ends: the child is not kept."""
        async with open_actor_system(clock=FakeClock()) as system:
            sup = await _supervisor(system, [])
            attachment = await sup.ask(AttachChild("inline", Work(), lambda reason: None))
            assert attachment.run_on_thread(lambda: "done") == "done"
            assert await sup.ask(WhichChildren()) == []
            assert attachment.ref.exit_reason is not None
            assert attachment.ref.exit_reason.kind is ExitKind.NORMAL


class Host(Supervisor):
    """An attach-only supervisor whose run() is its own work: children attach to it
    while it runs, and it takes control messages meanwhile."""

    attach_only = True
    receives_while_running = True

    def __init__(self, work: Any) -> None:
        super().__init__(name="host", on_crash=self.reports.append)
        self.work = work
        self.received: list[Any] = []

    reports: list[CrashReport] = []

    def receive(self, message: Any) -> Any:
        if isinstance(message, str):
            self.received.append(message)
            return None
        return super().receive(message)

    async def run(self) -> None:
        await self.work(self)


class TestAttachOnlySupervisors:
    async def test_children_attach_while_it_runs(self) -> None:
        async def work(host: Host) -> None:
            child = await host.ref.ask(AttachChild("child", Work()))
            names = [name for name, _ in await host.ref.ask(WhichChildren())]
            assert names == ["child"]
            await child.ref.tell("finish")
            await child.run()
            assert await host.ref.ask(WhichChildren()) == []

        async with open_actor_system(clock=FakeClock()) as system:
            attachment = await system.root.ask(AttachChild("host", Host(work)))
            await attachment.run()
            assert attachment.ref.exit_reason is not None
            assert attachment.ref.exit_reason.kind is ExitKind.NORMAL

    async def test_it_starts_no_child_of_its_own(self) -> None:
        async def work(host: Host) -> None:
            with pytest.raises(TypeError, match="only attaches children"):
                await host.ref.ask(StartChild(ChildSpec("c", Work)))

        async with open_actor_system(clock=FakeClock()) as system:
            await (await system.root.ask(AttachChild("host", Host(work)))).run()
        with pytest.raises(ValueError, match="only attaches children"):

            class Starting(Supervisor):
                attach_only = True

            Starting([ChildSpec("c", Work)])

    async def test_its_exceptions_are_not_wrapped(self) -> None:
        """No task group stands between its run() and its caller."""

        async def work(host: Host) -> None:
            raise KeyError("mine")

        async with open_actor_system(clock=FakeClock()) as system:
            attachment = await system.root.ask(AttachChild("host", Host(work)))
            with pytest.raises(KeyError, match="mine"):
                await attachment.run()

    async def test_when_it_ends_a_child_stuck_on_a_thread_is_asked_to_stop_not_awaited(
        self,
    ) -> None:
        """A thread cannot be cancelled: the child's on_cancel is called and the host
        ends without waiting for the thread; the child's exit is noted when it returns."""
        asked: list[Any] = []
        release = threading.Event()
        attached = threading.Event()
        children: list[Any] = []

        async def work(host: Host) -> None:
            def on_thread() -> None:
                child = host.ref.ask_from_thread(AttachChild("stuck", Work(), asked.append))
                children.append(child)
                attached.set()
                child.run_on_thread(lambda: release.wait(30))

            thread = threading.Thread(target=on_thread)
            thread.start()
            assert await anyio.to_thread.run_sync(attached.wait, 30)
            children.append(thread)

        async with open_actor_system(clock=FakeClock()) as system:
            await (await system.root.ask(AttachChild("host", Host(work)))).run()
            assert [reason.kind for reason in asked] == [ExitKind.CANCELLED]
            release.set()
            await anyio.to_thread.run_sync(children[1].join, 30)
            assert children[0].ref.exit_reason is not None


class TestTellSoon:
    async def test_it_is_never_handled_inline(self) -> None:
        """Sent on the actor's own loop thread (as a signal handler would), the message
        waits for the loop: the sender's code goes on first."""
        order: list[str] = []

        async def work(host: Host) -> None:
            host.ref.tell_soon("soon")
            order.append("sender went on")
            while not host.received:
                await anyio.lowlevel.checkpoint()
            order.append(host.received[0])

        async with open_actor_system(clock=FakeClock()) as system:
            await (await system.root.ask(AttachChild("host", Host(work)))).run()
        assert order == ["sender went on", "soon"]

    async def test_a_message_from_another_thread_that_needs_the_loop_is_handled(
        self,
    ) -> None:
        """A message the actor does not take on other threads goes through its loop and is
        handled there while run() is active."""
        threads: list[int] = []

        async def work(host: Host) -> None:
            await anyio.to_thread.run_sync(host.ref.tell_from_thread, "from a thread")
            while not host.received:
                await anyio.lowlevel.checkpoint()
            threads.append(threading.get_ident())

        async with open_actor_system(clock=FakeClock()) as system:
            host = Host(work)
            await (await system.root.ask(AttachChild("host", host))).run()
        assert host.received == ["from a thread"]

    async def test_after_the_actor_stopped_it_raises(self) -> None:
        async with open_actor_system(clock=FakeClock()) as system:
            attachment = await system.root.ask(AttachChild("host", Host(_nothing)))
            await attachment.run()
            with pytest.raises(ActorStopped):
                attachment.ref.tell_soon("late")


async def _nothing(host: Host) -> None:
    return None


class SelfCancelling(Work):
    def receive(self, message: Any) -> Any:
        if message == "cancel yourself":
            self.ref.cancel("asked to")
            return None
        return super().receive(message)


class TestCancel:
    async def test_a_handler_cancels_its_own_incarnation(self) -> None:
        """ActorRef.cancel() from the actor's own handler: its run() is cancelled, it
        exits CANCELLED, and the caller running the attachment just returns."""
        async with open_actor_system(clock=FakeClock()) as system:
            sup = await _supervisor(system, [])
            attachment = await sup.ask(AttachChild("work", SelfCancelling()))
            async with anyio.create_task_group() as tg:
                tg.start_soon(attachment.run)
                await anyio.wait_all_tasks_blocked()
                await attachment.ref.tell("cancel yourself")
            reason = attachment.ref.exit_reason
            assert reason is not None and reason.kind is ExitKind.CANCELLED
            assert reason.detail == "asked to"

    async def test_a_cancelled_child_is_not_restarted(self) -> None:
        async with open_actor_system(clock=FakeClock()) as system:
            sup = await _supervisor(system, [])
            ref = await sup.ask(StartChild(ChildSpec("work", SelfCancelling)))
            await anyio.wait_all_tasks_blocked()
            await ref.tell("cancel yourself")
            reason = await ref.wait()
            assert reason.kind is ExitKind.CANCELLED
            assert await sup.ask(WhichChildren()) == []

    async def test_a_thread_incarnation_is_asked_through_on_cancel(self) -> None:
        asked: list[Any] = []
        async with open_actor_system(clock=FakeClock()) as system:
            sup = await _supervisor(system, [])
            attachment = await sup.ask(AttachChild("inline", Work(), asked.append))
            attachment.run_on_thread(lambda: attachment.ref.cancel("stop"))
        assert [(r.kind, r.detail) for r in asked] == [(ExitKind.CANCELLED, "stop")]

    async def test_it_does_nothing_once_the_actor_ended(self) -> None:
        async with open_actor_system(clock=FakeClock()) as system:
            attachment = await system.root.ask(AttachChild("host", Host(_nothing)))
            await attachment.run()
            attachment.ref.cancel()
            assert attachment.ref.exit_reason is not None
            assert attachment.ref.exit_reason.kind is ExitKind.NORMAL
