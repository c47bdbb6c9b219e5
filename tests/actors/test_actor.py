"""Tests for actors._actor and actors._cell: messaging, direct dispatch, lifecycle."""

from __future__ import annotations

import threading
import traceback
from typing import Any

import anyio
import attrs
import pytest
from anyio.lowlevel import checkpoint
from hypothesis import given, settings
from hypothesis import strategies as st

from actors import (
    Actor,
    ActorRef,
    ActorStopped,
    ChildSpec,
    CrashReport,
    ExitKind,
    ExitReason,
    FakeClock,
    ForeignThreadError,
    LoopThreadError,
    Restart,
    open_actor_system,
)


@attrs.frozen
class Ping:
    n: int


def current_task_id() -> int:
    return anyio.get_current_task().id


class Recorder(Actor):
    """Sync receive: records (message, task id); answers "dump" with the record."""

    mailbox_size = 3

    def __init__(self) -> None:
        self.calls: list[tuple[Any, int]] = []

    def receive(self, message: Any) -> Any:
        if message == "dump":
            return list(self.calls)
        self.calls.append((message, current_task_id()))
        if message == "tell-self":
            self.ref.tell_nowait("from-self")
        return message


class QueueOnce(Actor):
    """Sync receive; "queue one" queues a message to itself, whose handling sets
    ``handled``."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, int]] = []
        self.handled = anyio.Event()

    def receive(self, message: Any) -> Any:
        self.calls.append((message, current_task_id()))
        if message == "queue one":
            self.ref.tell_nowait("queued")
        if message == "queued":
            self.handled.set()
        return message


class AsyncRecorder(Recorder):
    """Async receive: always goes through the mailbox."""

    async def receive(self, message: Any) -> Any:
        await checkpoint()
        return super().receive(message)


class Gated(Actor):
    """Async receive that logs each message, then waits for ``gate`` before finishing it."""

    mailbox_size = 2

    def __init__(self, gate: anyio.Event, log: list[Any]) -> None:
        self.gate = gate
        self.log = log

    async def receive(self, message: Any) -> Any:
        self.log.append(("begin", message))
        await self.gate.wait()
        self.log.append(("end", message))
        return message


def _explode(message: Any) -> None:
    raise ValueError(f"cannot handle {message!r}")


class Exploder(Actor):
    def __init__(self) -> None:
        self.seen: list[Any] = []

    def receive(self, message: Any) -> Any:
        self.seen.append(message)
        if message == "boom":
            _explode(message)
        return message


class AsyncExploder(Exploder):
    async def receive(self, message: Any) -> Any:
        await checkpoint()
        return super().receive(message)


FOREIGN_THREAD = (
    r"^ActorRef 'rec' was used from thread \d+, but its actor runs on the event loop of thread "
    r"\d+; send from that loop's thread, or hop there first \(e\.g\. through "
    r"actors\.global_loop\(\) or anyio\.from_thread\)$"
)


class TestOrdering:
    @pytest.mark.parametrize("backend", ["asyncio", "trio"])
    @settings(max_examples=20, deadline=None)
    @given(
        kind=st.sampled_from([Recorder, AsyncRecorder]),
        plans=st.lists(
            st.lists(st.sampled_from(["tell", "tell_nowait", "ask", "yield"]), max_size=10),
            min_size=1,
            max_size=4,
        ),
    )
    def test_each_senders_messages_arrive_in_order(
        self, backend: str, kind: type[Recorder], plans: list[list[str]]
    ) -> None:
        """Concurrent senders mixing tell/ask (direct and mailbox): each sender's order holds."""

        async def sender(ref: ActorRef, index: int, plan: list[str]) -> None:
            seq = 0
            for op in plan:
                if op == "yield":
                    await checkpoint()
                    continue
                message = (index, seq)
                seq += 1
                if op == "tell":
                    await ref.tell(message)
                elif op == "ask":
                    assert await ref.ask(message) == message
                else:
                    try:
                        ref.tell_nowait(message)
                    except anyio.WouldBlock:
                        await ref.tell(message)

        async def scenario() -> list[tuple[Any, int]]:
            async with open_actor_system(clock=FakeClock()) as system:
                ref = await system.spawn(ChildSpec("rec", kind))
                async with anyio.create_task_group() as tg:
                    for index, plan in enumerate(plans):
                        tg.start_soon(sender, ref, index, plan)
                calls: list[tuple[Any, int]] = await ref.ask("dump")
                return calls

        calls = anyio.run(scenario, backend=backend)
        for index, plan in enumerate(plans):
            sent = sum(op != "yield" for op in plan)
            assert [m[1] for m, _ in calls if m[0] == index] == list(range(sent))


class TestAsk:
    @pytest.mark.parametrize("kind", [Recorder, AsyncRecorder])
    async def test_ask_returns_the_reply(self, kind: type[Recorder]) -> None:
        async with open_actor_system(clock=FakeClock()) as system:
            ref = await system.spawn(ChildSpec("rec", kind))
            assert await ref.ask(Ping(1)) == Ping(1)
            assert await ref.ask(Ping(2), timeout=60) == Ping(2)

    @pytest.mark.parametrize(
        ("kind", "settle"), [(Exploder, True), (Exploder, False), (AsyncExploder, True)]
    )
    async def test_error_is_reraised_with_its_traceback(
        self, kind: type[Exploder], settle: bool
    ) -> None:
        """Handler errors reach the asker with the raising frame; the actor keeps running.

        ``settle`` lets the actor park first (direct dispatch for a sync receive); otherwise
        the ask queues before the actor starts and travels as an outcome.Error.
        """
        async with open_actor_system(clock=FakeClock()) as system:
            ref = await system.spawn(ChildSpec("x", kind))
            if settle:
                await anyio.wait_all_tasks_blocked()
            with pytest.raises(ValueError, match=r"^cannot handle 'boom'$") as info:
                await ref.ask("boom")
            frames = [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
            assert "_explode" in frames
            assert await ref.ask("ok") == "ok"
            assert ref.is_alive

    async def test_timeout_drops_the_late_reply(self) -> None:
        """A timed-out ask raises TimeoutError; the actor still handles it and stays fine."""
        gate = anyio.Event()
        log: list[Any] = []
        async with open_actor_system(clock=FakeClock()) as system:
            ref = await system.spawn(ChildSpec("g", lambda: Gated(gate, log)))
            with pytest.raises(TimeoutError, match=r"^actor 'g' did not answer int within 0 s$"):
                await ref.ask(1, timeout=0)
            await anyio.wait_all_tasks_blocked()
            assert log == [("begin", 1)]
            gate.set()
            assert await ref.ask(2, timeout=60) == 2
            assert log == [("begin", 1), ("end", 1), ("begin", 2), ("end", 2)]

    async def test_timeout_covers_waiting_for_room(self) -> None:
        """With a full mailbox, the timeout runs out while waiting for room."""
        gate = anyio.Event()
        log: list[Any] = []
        async with open_actor_system(clock=FakeClock()) as system:
            ref = await system.spawn(ChildSpec("g", lambda: Gated(gate, log)))
            await ref.tell(0)
            await anyio.wait_all_tasks_blocked()
            ref.tell_nowait(1)
            ref.tell_nowait(2)
            with pytest.raises(TimeoutError, match=r"^actor 'g' did not answer int within 0 s$"):
                await ref.ask(3, timeout=0)
            gate.set()
            assert await ref.ask(4) == 4
        assert [message for step, message in log if step == "end"] == [0, 1, 2, 4]

    async def test_base_actor_does_not_handle_messages(self) -> None:
        async with open_actor_system(clock=FakeClock()) as system:
            ref = await system.spawn(ChildSpec("plain", Actor))
            with pytest.raises(
                NotImplementedError,
                match=r"^Actor got str but does not override receive\(\); "
                r"override receive\(\) to handle messages$",
            ):
                await ref.ask("hello")


class TestTellCrash:
    @pytest.mark.parametrize(
        ("kind", "settle"), [(Exploder, True), (Exploder, False), (AsyncExploder, True)]
    )
    async def test_tell_error_crashes_the_actor(self, kind: type[Exploder], settle: bool) -> None:
        """A tell whose handler raises crashes the actor; the sender is not affected."""
        reports: list[CrashReport] = []
        async with open_actor_system(clock=FakeClock(), on_crash=reports.append) as system:
            ref = await system.spawn(ChildSpec("x", kind, restart=Restart.TEMPORARY))
            if settle:
                await anyio.wait_all_tasks_blocked()
            await ref.tell("boom")
            reason = await ref.wait()
        assert reason.kind is ExitKind.CRASHED
        assert isinstance(reason.exception, ValueError)
        assert str(reason) == "crashed: ValueError(\"cannot handle 'boom'\")"
        assert reports == [CrashReport("system", "x", reason.exception, 0, restarting=False)]

    async def test_direct_crash_stops_the_actor_before_its_next_message(self) -> None:
        """After a directly dispatched tell raises, later messages wait for the restart."""
        instances: list[Exploder] = []

        def factory() -> Exploder:
            instances.append(Exploder())
            return instances[-1]

        async with open_actor_system(clock=FakeClock(), on_crash=lambda report: None) as system:
            ref = await system.spawn(ChildSpec("x", factory))
            await anyio.wait_all_tasks_blocked()
            await ref.tell("boom")
            ref.tell_nowait("after")
            assert await ref.ask("ask") == "ask"
        assert [actor.seen for actor in instances] == [["boom"], ["after", "ask"]]


class TestDirectDispatch:
    async def test_runs_in_the_senders_task_without_a_checkpoint(self) -> None:
        """An idle sync actor handles tell/ask inline: same task, no checkpoint."""
        async with open_actor_system(clock=FakeClock()) as system:
            ref = await system.spawn(ChildSpec("rec", Recorder))
            await anyio.wait_all_tasks_blocked()
            me = current_task_id()
            with anyio.CancelScope() as scope:
                scope.cancel()
                assert await ref.ask("a") == "a"
                await ref.tell("b")
                ref.tell_nowait("c")
            assert not scope.cancelled_caught
            assert await ref.ask("dump") == [("a", me), ("b", me), ("c", me)]

    async def test_mailbox_ask_is_a_checkpoint(self) -> None:
        """Contrast: an ask through the mailbox checks for cancellation and sends nothing."""
        async with open_actor_system(clock=FakeClock()) as system:
            ref = await system.spawn(ChildSpec("rec", AsyncRecorder))
            await anyio.wait_all_tasks_blocked()
            with anyio.CancelScope() as scope:
                scope.cancel()
                await ref.ask("a")
            assert scope.cancelled_caught
            assert await ref.ask("dump") == []

    async def test_after_a_queued_message_it_is_direct_again_at_once(self) -> None:
        """Once the receive loop has handled the queued messages, the next sender is
        dispatched directly, even before the loop's task has parked again: under load,
        one queued message must not keep every later one queued."""
        actors: list[QueueOnce] = []

        def make() -> QueueOnce:
            actors.append(QueueOnce())
            return actors[-1]

        async with open_actor_system(clock=FakeClock()) as system:
            ref = await system.spawn(ChildSpec("q", make))
            await anyio.wait_all_tasks_blocked()
            me = current_task_id()
            await ref.ask("queue one")  # handled here; it queues "queued" for the loop
            await actors[0].handled.wait()
            await ref.ask("next")
            tasks = dict(actors[0].calls)
            assert tasks["queue one"] == me and tasks["queued"] != me
            assert tasks["next"] == me

    async def test_busy_actor_falls_back_to_the_mailbox(self) -> None:
        """A message sent from inside a direct handler queues, and is handled after it."""
        async with open_actor_system(clock=FakeClock()) as system:
            ref = await system.spawn(ChildSpec("rec", Recorder))
            await anyio.wait_all_tasks_blocked()
            me = current_task_id()
            await ref.ask("tell-self")
            calls = await ref.ask("dump")
            assert [message for message, _ in calls] == ["tell-self", "from-self"]
            assert calls[0][1] == me
            assert calls[1][1] != me

    async def test_non_empty_mailbox_falls_back_and_keeps_order(self) -> None:
        """Messages queued before the actor runs go first; then direct dispatch resumes."""
        async with open_actor_system(clock=FakeClock()) as system:
            ref = await system.spawn(ChildSpec("rec", Recorder))
            ref.tell_nowait(1)
            ref.tell_nowait(2)
            assert await ref.ask(3) == 3
            await anyio.wait_all_tasks_blocked()
            assert await ref.ask(4) == 4
            calls = await ref.ask("dump")
        me = current_task_id()
        assert [message for message, _ in calls] == [1, 2, 3, 4]
        assert [task == me for _, task in calls] == [False, False, False, True]


class ThreadRecorder(Actor):
    """Sync receive that records which thread ran it and whether another call overlapped."""

    dispatch_from_threads = True

    def __init__(self) -> None:
        self.threads: list[int] = []
        self.active = 0
        self.overlapped = False

    def receive(self, message: Any) -> Any:
        self.active += 1
        self.overlapped = self.overlapped or self.active > 1
        try:
            if message == "boom":
                raise ValueError("boom")
            self.threads.append(threading.get_ident())
            return message
        finally:
            self.active -= 1


class TestFromThread:
    async def test_an_idle_actor_is_dispatched_on_the_calling_thread(self) -> None:
        """ask_from_thread on an idle sync actor runs receive right on the caller's thread."""
        actor = ThreadRecorder()
        async with open_actor_system(clock=FakeClock()) as system:
            ref = await system.spawn(ChildSpec("rec", lambda: actor))
            await anyio.wait_all_tasks_blocked()

            def call() -> tuple[Any, int]:
                return ref.ask_from_thread("a"), threading.get_ident()

            answer, caller = await anyio.to_thread.run_sync(call)
        assert answer == "a" and actor.threads == [caller]
        assert caller != threading.get_ident()

    async def test_errors_reach_the_calling_thread(self) -> None:
        async with open_actor_system(clock=FakeClock()) as system:
            ref = await system.spawn(ChildSpec("rec", ThreadRecorder))
            await anyio.wait_all_tasks_blocked()
            with pytest.raises(ValueError, match="^boom$"):
                await anyio.to_thread.run_sync(ref.ask_from_thread, "boom")
            assert await ref.ask("still alive") == "still alive"

    async def test_a_busy_actor_answers_through_its_loop_in_order(self) -> None:
        """An actor that is not thread-dispatchable (or has an async receive) gets the
        message through its mailbox, after what was queued; the caller blocks for the
        reply."""
        async with open_actor_system(clock=FakeClock()) as system:
            ref = await system.spawn(ChildSpec("rec", Recorder))  # loop-bound: never direct
            ref.tell_nowait(1)
            answer = await anyio.to_thread.run_sync(ref.ask_from_thread, 2)
            calls = await ref.ask("dump")
            async_ref = await system.spawn(ChildSpec("async", AsyncRecorder))
            assert await anyio.to_thread.run_sync(async_ref.ask_from_thread, 3) == 3
        assert answer == 2 and [message for message, _ in calls] == [1, 2]

    async def test_threads_never_overlap_in_receive(self) -> None:
        """Many threads and the loop asking at once: one message at a time, none lost."""
        actor = ThreadRecorder()
        async with open_actor_system(clock=FakeClock()) as system:
            ref = await system.spawn(ChildSpec("rec", lambda: actor))

            def hammer(n: int) -> list[Any]:
                return [ref.ask_from_thread((n, i)) for i in range(200)]

            results: list[list[Any]] = []

            async def worker(n: int) -> None:
                results.append(await anyio.to_thread.run_sync(hammer, n))

            async with anyio.create_task_group() as tg:
                for n in range(4):
                    tg.start_soon(worker, n)
                for i in range(200):
                    assert await ref.ask(("loop", i)) == ("loop", i)
        assert not actor.overlapped
        assert sorted(len(r) for r in results) == [200] * 4
        assert len(actor.threads) == 1000

    async def test_ask_here_handles_now_or_refuses(self) -> None:
        """ask_here runs receive at once on the loop thread (or, for a thread-dispatchable
        actor, on any thread), and refuses with WouldBlock rather than wait for the loop."""
        actor = ThreadRecorder()
        async with open_actor_system(clock=FakeClock()) as system:
            ref = await system.spawn(ChildSpec("rec", lambda: actor))
            await anyio.wait_all_tasks_blocked()
            assert ref.ask_here("here") == "here"
            assert await anyio.to_thread.run_sync(ref.ask_here, "there") == "there"
            with pytest.raises(ValueError, match="^boom$"):
                ref.ask_here("boom")
            plain = await system.spawn(ChildSpec("plain", Recorder))
            plain.tell_nowait("queued")  # not handled yet: the loop has not run
            with pytest.raises(anyio.WouldBlock):
                plain.ask_here("now")
            with pytest.raises(ForeignThreadError):
                await anyio.to_thread.run_sync(plain.ask_here, "from a thread")
        assert actor.threads[0] == threading.get_ident() != actor.threads[1]

    async def test_tell_from_thread_and_misuse(self) -> None:
        actor = ThreadRecorder()
        async with open_actor_system(clock=FakeClock()) as system:
            ref = await system.spawn(ChildSpec("rec", lambda: actor))
            await anyio.to_thread.run_sync(ref.tell_from_thread, "told")
            assert await ref.ask("after") == "after"
            with pytest.raises(LoopThreadError, match=r"^ActorRef\.ask_from_thread\(\) was called"):
                ref.ask_from_thread("x")
            with pytest.raises(
                LoopThreadError, match=r"^ActorRef\.tell_from_thread\(\) was called"
            ):
                ref.tell_from_thread("x")
            await ref.stop()
            with pytest.raises(ActorStopped):
                await anyio.to_thread.run_sync(ref.ask_from_thread, "late")
        assert len(actor.threads) == 2


class TestBackpressure:
    async def test_full_mailbox_blocks_tell_and_refuses_tell_nowait(self) -> None:
        gate = anyio.Event()
        log: list[Any] = []
        told = anyio.Event()
        async with open_actor_system(clock=FakeClock()) as system:
            ref = await system.spawn(ChildSpec("g", lambda: Gated(gate, log)))
            await ref.tell(0)
            await anyio.wait_all_tasks_blocked()  # 0 is in hand, the mailbox is empty
            ref.tell_nowait(1)
            ref.tell_nowait(2)
            with pytest.raises(anyio.WouldBlock):
                ref.tell_nowait(3)

            async def tell_three() -> None:
                await ref.tell(3)
                told.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(tell_three)
                await anyio.wait_all_tasks_blocked()
                assert not told.is_set()
                gate.set()
            assert await ref.ask(4) == 4
        assert [message for step, message in log if step == "end"] == [0, 1, 2, 3, 4]


class TestStopped:
    async def test_sending_to_a_stopped_actor_fails_at_once(self) -> None:
        async with open_actor_system(clock=FakeClock()) as system:
            ref = await system.spawn(ChildSpec("rec", Recorder))
            reason = await ref.stop()
            assert reason == ExitReason(ExitKind.SHUTDOWN, None, "stopped by ActorRef.stop()")
            assert not ref.is_alive
            assert ref.exit_reason == reason
            message = (
                r"^cannot send Ping to actor 'rec': it has exited "
                r"\(shutdown: stopped by ActorRef\.stop\(\)\)$"
            )
            with pytest.raises(ActorStopped, match=message):
                await ref.tell(Ping(1))
            with pytest.raises(ActorStopped, match=message):
                ref.tell_nowait(Ping(1))
            with pytest.raises(ActorStopped, match=message):
                await ref.ask(Ping(1))
            assert await ref.stop() == reason
            assert await ref.wait() == reason
            assert repr(ref) == "<ActorRef 'rec' exited (shutdown: stopped by ActorRef.stop())>"

    async def test_stop_finishes_the_current_message_and_fails_queued_asks(self) -> None:
        gate = anyio.Event()
        log: list[Any] = []
        failures: list[str] = []
        stopped: list[ExitReason] = []
        async with open_actor_system(clock=FakeClock()) as system:
            ref = await system.spawn(ChildSpec("g", lambda: Gated(gate, log)))

            async def ask(n: int) -> None:
                with pytest.raises(ActorStopped) as info:
                    await ref.ask(n)
                failures.append(str(info.value))

            async def stop() -> None:
                stopped.append(await ref.stop())

            await ref.tell(0)
            async with anyio.create_task_group() as tg:
                tg.start_soon(ask, 1)
                tg.start_soon(ask, 2)
                await anyio.wait_all_tasks_blocked()
                tg.start_soon(stop)
                await anyio.wait_all_tasks_blocked()
                assert failures == [
                    "actor 'g' stopped before handling int: stopped by ActorRef.stop()",
                    "actor 'g' stopped before handling int: stopped by ActorRef.stop()",
                ]
                assert ref.is_alive and not stopped
                with pytest.raises(
                    ActorStopped,
                    match=r"^cannot send int to actor 'g': it is stopping "
                    r"\(stopped by ActorRef\.stop\(\)\)$",
                ):
                    ref.tell_nowait(3)
                gate.set()
        assert log == [("begin", 0), ("end", 0)]
        assert stopped == [ExitReason(ExitKind.SHUTDOWN, None, "stopped by ActorRef.stop()")]

    async def test_tell_waiting_for_room_fails_when_the_actor_stops(self) -> None:
        gate = anyio.Event()
        log: list[Any] = []
        async with open_actor_system(clock=FakeClock()) as system:
            ref = await system.spawn(ChildSpec("g", lambda: Gated(gate, log)))
            await ref.tell(0)
            await anyio.wait_all_tasks_blocked()
            ref.tell_nowait(1)
            ref.tell_nowait(2)

            async def tell() -> None:
                with pytest.raises(
                    ActorStopped,
                    match=r"^cannot send int to actor 'g': it is stopping "
                    r"\(stopped by ActorRef\.stop\(\)\)$",
                ):
                    await ref.tell(3)

            async with anyio.create_task_group() as tg:
                tg.start_soon(tell)
                await anyio.wait_all_tasks_blocked()
                tg.start_soon(ref.stop)
                await anyio.wait_all_tasks_blocked()
                gate.set()
        assert log == [("begin", 0), ("end", 0)]


class TestThreads:
    async def test_foreign_thread_is_refused(self) -> None:
        async with open_actor_system(clock=FakeClock()) as system:
            ref = await system.spawn(ChildSpec("rec", Recorder))

            def use_from_thread() -> None:
                with pytest.raises(ForeignThreadError, match=FOREIGN_THREAD):
                    ref.tell_nowait(1)
                for method in (ref.tell, ref.ask):
                    with pytest.raises(ForeignThreadError, match=FOREIGN_THREAD):
                        anyio.run(method, 1)
                for wait in (ref.stop, ref.wait):
                    with pytest.raises(ForeignThreadError, match=FOREIGN_THREAD):
                        anyio.run(wait)

            await anyio.to_thread.run_sync(use_from_thread)
            assert ref.is_alive
            assert await ref.ask("dump") == []


class Hooks(Actor):
    def __init__(self, log: list[tuple[str, int]], fail: str | None = None) -> None:
        self.log = log
        self.fail = fail

    async def on_start(self) -> None:
        self.log.append(("on_start", current_task_id()))

    async def receive(self, message: Any) -> Any:
        self.log.append(("receive", current_task_id()))
        if message == "boom":
            raise RuntimeError("boom")
        return message

    async def on_stop(self) -> None:
        await checkpoint()
        self.log.append(("on_stop", current_task_id()))
        if self.fail == "on_stop":
            raise RuntimeError("on_stop failed")


class TestLifecycle:
    @pytest.mark.parametrize("ending", ["stop", "crash"])
    async def test_hooks_run_in_the_actors_own_task(self, ending: str) -> None:
        log: list[tuple[str, int]] = []
        async with open_actor_system(clock=FakeClock(), on_crash=lambda r: None) as system:
            ref = await system.spawn(ChildSpec("h", lambda: Hooks(log), restart=Restart.TEMPORARY))
            assert await ref.ask("hi") == "hi"
            if ending == "stop":
                assert (await ref.stop()).kind is ExitKind.SHUTDOWN
            else:
                await ref.tell("boom")
                assert (await ref.wait()).kind is ExitKind.CRASHED
        receives = ["receive"] if ending == "stop" else ["receive", "receive"]
        assert [step for step, _ in log] == ["on_start", *receives, "on_stop"]
        assert len({task for _, task in log}) == 1
        assert log[0][1] != current_task_id()

    async def test_on_stop_error_turns_the_exit_into_a_crash(self) -> None:
        log: list[tuple[str, int]] = []
        async with open_actor_system(clock=FakeClock(), on_crash=lambda r: None) as system:
            ref = await system.spawn(
                ChildSpec("h", lambda: Hooks(log, fail="on_stop"), restart=Restart.TEMPORARY)
            )
            reason = await ref.stop()
        assert reason.kind is ExitKind.CRASHED
        assert reason.detail == "on_stop() raised RuntimeError('on_stop failed')"

    async def test_process_actor_exits(self) -> None:
        """A run() override: returning is NORMAL, raising is CRASHED, stop_requested is SHUTDOWN."""

        class Returns(Actor):
            async def run(self) -> None:
                await checkpoint()

        class Raises(Actor):
            async def run(self) -> None:
                raise KeyError("gone")

        class Waits(Actor):
            async def run(self) -> None:
                await self.stop_requested.wait()

        async with open_actor_system(clock=FakeClock(), on_crash=lambda r: None) as system:
            refs = [
                await system.spawn(ChildSpec(kind.__name__, kind, restart=Restart.TEMPORARY))
                for kind in (Returns, Raises, Waits)
            ]
            assert await refs[0].wait() == ExitReason(ExitKind.NORMAL, None, "run() returned")
            crashed = await refs[1].wait()
            assert crashed.kind is ExitKind.CRASHED
            assert isinstance(crashed.exception, KeyError)
            assert await refs[2].stop() == ExitReason(
                ExitKind.SHUTDOWN, None, "stopped by ActorRef.stop()"
            )


class TestMisuse:
    async def test_an_actor_cannot_await_its_own_exit(self) -> None:
        errors: list[str] = []

        class SelfStopper(Actor):
            async def receive(self, message: Any) -> Any:
                for wait in (self.ref.stop, self.ref.wait):
                    with pytest.raises(RuntimeError) as info:
                        await wait()
                    errors.append(str(info.value))
                return message

        async with open_actor_system(clock=FakeClock()) as system:
            ref = await system.spawn(ChildSpec("me", SelfStopper))
            assert await ref.ask("hi") == "hi"
            assert ref.is_alive
        assert errors == [
            f"ActorRef.{method}() of actor 'me' was awaited in that actor's own task, where it "
            "would wait for itself forever; a process actor stops by returning from run(), "
            "anything else must stop it from another task"
            for method in ("stop", "wait")
        ]

    def test_unstarted_actor_has_no_ref(self) -> None:
        message = (
            r"^Recorder has not been started: actors get a ref when a supervisor starts them "
            r"\(ChildSpec, StartChild or ActorSystem\.spawn\)$"
        )
        with pytest.raises(RuntimeError, match=message):
            _ = Recorder().ref
        with pytest.raises(RuntimeError, match=message):
            _ = Recorder().stop_requested

    def test_refs_have_no_public_constructor(self) -> None:
        with pytest.raises(
            TypeError,
            match=r"^ActorRef has no public constructor; "
            r"refs come from StartChild, ChildSpec or ActorSystem\.spawn\(\)$",
        ):
            ActorRef()  # type: ignore[call-arg]

    def test_mailbox_size_is_validated(self) -> None:
        with pytest.raises(
            ValueError,
            match=r"^TestMisuse\.test_mailbox_size_is_validated\.<locals>\.Bad\.mailbox_size must be an "
            r"int >= 1, got 0$",
        ):

            class Bad(Actor):
                mailbox_size = 0

    def test_receive_kind_is_decided_per_class(self) -> None:
        assert Recorder._actor_async_receive is False
        assert AsyncRecorder._actor_async_receive is True

    def test_exit_reason_str(self) -> None:
        reason = ExitReason(ExitKind.TIMEOUT, None, "too slow")
        assert str(reason) == "timeout: too slow"
