"""Tests for actors._supervisor: strategies, restart types, intensity, shutdown, backoff."""

from __future__ import annotations

import contextvars
import logging
from functools import partial
from typing import Any

import anyio
import pytest
from anyio.lowlevel import checkpoint

from actors import (
    Actor,
    ActorRef,
    ActorStopped,
    Backoff,
    ChildSpec,
    CrashReport,
    ExitKind,
    ExitReason,
    FakeClock,
    Restart,
    StartChild,
    StopChild,
    Strategy,
    Supervisor,
    SupervisorFailed,
    WhichChildren,
    open_actor_system,
)


async def settle() -> None:
    """Wait until every other task is blocked.

    A few checkpoints first let ready tasks run, so anyio's asyncio implementation (which
    polls every 0.1 s while any task is runnable) usually finds them blocked at once.
    """
    for _ in range(20):
        await checkpoint()
    await anyio.wait_all_tasks_blocked()


class Board:
    """Shared record of child incarnations; tests drive the children through it."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str]] = []
        self.live: dict[str, Child] = {}

    def spec(self, name: str, **kwargs: Any) -> ChildSpec:
        return ChildSpec(name, partial(Child, self, name), **kwargs)


class Child(Actor):
    """A process actor that runs until ordered to "exit" or "crash", or asked to stop."""

    def __init__(self, board: Board, name: str) -> None:
        self.board = board
        self.name = name
        self.command = "stop"
        self.wake = anyio.Event()

    def order(self, command: str) -> None:
        self.command = command
        self.wake.set()

    async def on_start(self) -> None:
        self.board.log.append(("start", self.name))
        self.board.live[self.name] = self

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:

            async def forward_stop_request() -> None:
                await self.stop_requested.wait()
                self.wake.set()

            tg.start_soon(forward_stop_request)
            await self.wake.wait()
            tg.cancel_scope.cancel()
        if self.command == "crash":
            raise RuntimeError(f"{self.name} crashed")

    async def on_stop(self) -> None:
        self.board.log.append(("stop", self.name))


async def names(ref: ActorRef) -> list[str]:
    return [name for name, _ in await ref.ask(WhichChildren())]


def _ignore(report: CrashReport) -> None:
    pass


class TestStrategies:
    @pytest.mark.parametrize("strategy", list(Strategy))
    @pytest.mark.parametrize("restart", list(Restart))
    @pytest.mark.parametrize("ending", ["exit", "crash"])
    async def test_matrix(self, strategy: Strategy, restart: Restart, ending: str) -> None:
        """Child b of [a, b, c] exits or crashes: who stops and restarts, in which order."""
        board = Board()
        reports: list[CrashReport] = []
        clock = FakeClock()
        specs = [board.spec(name, restart=restart) for name in "abc"]
        sup = Supervisor(specs, strategy=strategy, clock=clock, on_crash=reports.append)
        async with open_actor_system(clock=clock) as system:
            ref = await system.spawn(ChildSpec("sup", lambda: sup))
            await settle()
            assert board.log == [("start", "a"), ("start", "b"), ("start", "c")]
            board.log.clear()
            board.live["b"].order(ending)
            await settle()

            restarted = restart is Restart.PERMANENT or (
                restart is Restart.TRANSIENT and ending == "crash"
            )
            if not restarted:
                expected = [("stop", "b")]
            elif strategy is Strategy.ONE_FOR_ONE:
                expected = [("stop", "b"), ("start", "b")]
            elif strategy is Strategy.ONE_FOR_ALL:
                expected = [("stop", "b"), ("stop", "c"), ("stop", "a")]
                expected += [("start", "a"), ("start", "b"), ("start", "c")]
            else:
                expected = [("stop", "b"), ("stop", "c"), ("start", "b"), ("start", "c")]
            assert board.log == expected
            assert await names(ref) == (["a", "b", "c"] if restarted else ["a", "c"])
        if ending == "crash":
            assert len(reports) == 1
            assert reports[0].child == "b"
            assert str(reports[0].exception) == "b crashed"
        else:
            assert reports == []

    async def test_one_for_all_removes_temporary_siblings(self) -> None:
        board = Board()
        clock = FakeClock()
        specs = [board.spec("a"), board.spec("t", restart=Restart.TEMPORARY), board.spec("c")]
        sup = Supervisor(specs, strategy=Strategy.ONE_FOR_ALL, clock=clock, on_crash=_ignore)
        async with open_actor_system(clock=clock) as system:
            ref = await system.spawn(ChildSpec("sup", lambda: sup))
            await settle()
            temporary = board.live["t"].ref
            board.log.clear()
            board.live["a"].order("crash")
            await settle()
            assert board.log == [
                ("stop", "a"),
                ("stop", "c"),
                ("stop", "t"),
                ("start", "a"),
                ("start", "c"),
            ]
            assert await names(ref) == ["a", "c"]
            assert temporary.exit_reason == ExitReason(
                ExitKind.SHUTDOWN, None, "restarting with 'a' (one_for_all)"
            )

    async def test_restarted_child_keeps_its_ref_and_mailbox(self) -> None:
        """Messages queued at the crash are handled by the next incarnation."""
        board = Board()
        clock = FakeClock()
        sup = Supervisor([board.spec("a")], clock=clock, on_crash=_ignore)
        async with open_actor_system(clock=clock) as system:
            await system.spawn(ChildSpec("sup", lambda: sup))
            await settle()
            first = board.live["a"]
            ref = first.ref
            first.order("crash")
            await settle()
            assert board.live["a"] is not first
            assert board.live["a"].ref is ref
            assert ref.is_alive


class TestIntensity:
    async def test_too_many_restarts_escalate_to_the_parent(self) -> None:
        board = Board()
        clock = FakeClock()
        inner_reports: list[CrashReport] = []
        outer_reports: list[CrashReport] = []
        inner = Supervisor(
            [board.spec(name) for name in "abc"],
            name="inner",
            max_restarts=2,
            period=5,
            clock=clock,
            on_crash=inner_reports.append,
        )
        async with open_actor_system(clock=clock, on_crash=outer_reports.append) as system:
            ref = await system.spawn(ChildSpec("inner", lambda: inner, restart=Restart.TEMPORARY))
            await settle()
            for _ in range(3):
                board.log.clear()
                board.live["b"].order("crash")
                await settle()
            reason = await ref.wait()
        assert board.log == [("stop", "b"), ("stop", "c"), ("stop", "a")]
        assert [report.restart_count for report in inner_reports] == [0, 1, 2]
        assert [report.restarting for report in inner_reports] == [True, True, False]
        failure = reason.exception
        assert isinstance(failure, SupervisorFailed)
        assert str(failure) == (
            "supervisor 'inner' gave up: more than max_restarts=2 restarts within period=5 s; "
            "last, child 'b' exited (crashed: RuntimeError('b crashed'))"
        )
        assert failure.report == inner_reports[-1]
        assert failure.__cause__ is inner_reports[-1].exception
        assert outer_reports == [CrashReport("system", "inner", failure, 0, restarting=False)]

    async def test_restarts_outside_the_period_do_not_count(self) -> None:
        board = Board()
        clock = FakeClock()
        sup = Supervisor([board.spec("a")], max_restarts=1, period=5, clock=clock, on_crash=_ignore)
        async with open_actor_system(clock=clock) as system:
            ref = await system.spawn(ChildSpec("sup", lambda: sup, restart=Restart.TEMPORARY))
            await settle()
            for _ in range(3):
                board.live["a"].order("crash")
                await settle()
                clock.jump(5)
            assert ref.is_alive
            for _ in range(2):
                board.live["a"].order("crash")
                await settle()
            assert (await ref.wait()).kind is ExitKind.CRASHED

    async def test_crashes_during_a_group_restart_exhaust_the_intensity(self) -> None:
        """A child that crashes again while its group restarts still counts, and ends it."""
        board = Board()
        clock = FakeClock()
        reports: list[CrashReport] = []

        class FailsToRestart(Child):
            async def on_start(self) -> None:
                await super().on_start()
                if self.board.log.count(("start", self.name)) > 1:
                    raise RuntimeError("cannot restart")

        specs = [board.spec("a"), ChildSpec("b", partial(FailsToRestart, board, "b"))]
        sup = Supervisor(
            specs,
            strategy=Strategy.ONE_FOR_ALL,
            max_restarts=3,
            clock=clock,
            on_crash=reports.append,
        )
        async with open_actor_system(clock=clock) as system:
            ref = await system.spawn(ChildSpec("sup", lambda: sup, restart=Restart.TEMPORARY))
            await settle()
            board.live["b"].order("crash")
            reason = await ref.wait()
        assert isinstance(reason.exception, SupervisorFailed)
        assert [str(r.exception) for r in reports] == ["b crashed"] + ["cannot restart"] * 3
        assert board.log.count(("start", "a")) == 4
        assert board.log[-1] == ("stop", "a")

    async def test_factory_must_build_a_new_actor(self) -> None:
        reports: list[CrashReport] = []
        board = Board()
        same = Child(board, "a")
        async with open_actor_system(clock=FakeClock(), on_crash=reports.append) as system:
            sup = Supervisor([ChildSpec("a", lambda: same)], max_restarts=1, clock=FakeClock())
            ref = await system.spawn(ChildSpec("sup", lambda: sup, restart=Restart.TEMPORARY))
            await settle()
            same.order("crash")
            await ref.wait()
        inner = reports[0].exception
        assert isinstance(inner, SupervisorFailed)
        assert str(inner.__cause__) == (
            "the factory of actor 'a' returned an actor that was already started; "
            "a factory must build a new actor every time"
        )

    def test_arguments_are_validated(self) -> None:
        spec = ChildSpec("a", Actor)
        with pytest.raises(ValueError, match=r"^supervisor 's': duplicate child names \['a'\]$"):
            Supervisor([spec, spec], name="s")
        with pytest.raises(ValueError, match=r"^max_restarts must be >= 0, got -1$"):
            Supervisor(max_restarts=-1)
        with pytest.raises(ValueError, match=r"^period must be > 0, got 0$"):
            Supervisor(period=0)


class Slow(Actor):
    """Takes a few checkpoints to start; logs start and stop."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    async def on_start(self) -> None:
        self.log.append(f"begin {self.name}")
        for _ in range(3):
            await checkpoint()
        self.log.append(f"end {self.name}")

    async def receive(self, message: Any) -> Any:
        return message

    async def on_stop(self) -> None:
        self.log.append(f"stop {self.name}")


class Stubborn(Actor):
    """Ignores stop requests; its on_stop still runs (and may await) when it is cancelled."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def run(self) -> None:
        await anyio.sleep_forever()

    async def on_stop(self) -> None:
        await checkpoint()
        self.log.append("on_stop ran")


class TestStartAndShutdown:
    async def test_start_in_order_stop_in_reverse(self) -> None:
        log: list[str] = []
        clock = FakeClock()
        inner = partial(Supervisor, [ChildSpec("x", partial(Slow, "x", log))], clock=clock)
        specs = [
            ChildSpec("a", partial(Slow, "a", log)),
            ChildSpec("inner", inner),
            ChildSpec("b", partial(Slow, "b", log)),
        ]
        async with open_actor_system(clock=clock) as system:
            await system.spawn(ChildSpec("sup", partial(Supervisor, specs, clock=clock)))
            await settle()
            assert log == ["begin a", "end a", "begin x", "end x", "begin b", "end b"]
            log.clear()
        assert log == ["stop b", "stop x", "stop a"]

    async def test_shutdown_timeout_cancels_a_stubborn_child(self) -> None:
        log: list[str] = []
        clock = FakeClock()
        stopped: list[ExitReason] = []
        async with open_actor_system(clock=clock) as system:
            ref = await system.spawn(ChildSpec("s", partial(Stubborn, log), shutdown_timeout=5))
            await settle()

            async def stop() -> None:
                stopped.append(await ref.stop())

            async with anyio.create_task_group() as tg:
                tg.start_soon(stop)
                await settle()
                clock.jump(4.5)
                await settle()
                assert ref.is_alive
                clock.jump(0.5)
        assert stopped == [
            ExitReason(
                ExitKind.TIMEOUT,
                None,
                "still running 5 s after a stop request (stopped by ActorRef.stop()), "
                "so it was cancelled",
            )
        ]
        assert log == ["on_stop ran"]

    async def test_supervisor_shutdown_applies_the_timeout(self) -> None:
        log: list[str] = []
        clock = FakeClock()
        async with open_actor_system(clock=clock) as system:
            ref = await system.spawn(ChildSpec("s", partial(Stubborn, log), shutdown_timeout=1))
            async with anyio.create_task_group() as tg:
                tg.start_soon(system.root.stop)
                await settle()
                clock.jump(1)
        assert ref.exit_reason is not None
        assert ref.exit_reason.kind is ExitKind.TIMEOUT
        assert "(supervisor 'system' shut down)" in ref.exit_reason.detail

    async def test_ask_in_flight_fails_when_its_actor_is_cancelled(self) -> None:
        clock = FakeClock()

        class Hangs(Actor):
            async def receive(self, message: Any) -> Any:
                await anyio.sleep_forever()

        async with open_actor_system(clock=clock) as system:
            ref = await system.spawn(ChildSpec("h", Hangs, shutdown_timeout=2))

            async def ask() -> None:
                with pytest.raises(
                    ActorStopped,
                    match=r"^actor 'h' stopped before handling int: timeout: still running 2 s "
                    r"after a stop request \(stopped by ActorRef\.stop\(\)\), so it was cancelled$",
                ):
                    await ref.ask(1)

            async with anyio.create_task_group() as tg:
                tg.start_soon(ask)
                await settle()
                tg.start_soon(ref.stop)
                await settle()
                clock.jump(2)


class TestCrashReports:
    async def test_reports_count_restarts(self) -> None:
        board = Board()
        reports: list[CrashReport] = []
        clock = FakeClock()
        sup = Supervisor([board.spec("a")], name="s", clock=clock, on_crash=reports.append)
        async with open_actor_system(clock=clock) as system:
            await system.spawn(ChildSpec("s", lambda: sup))
            await settle()
            crashed = []
            for _ in range(3):
                crashed.append(board.live["a"])
                board.live["a"].order("crash")
                await settle()
        assert [(r.supervisor, r.child, r.restart_count) for r in reports] == [
            ("s", "a", 0),
            ("s", "a", 1),
            ("s", "a", 2),
        ]
        assert all(isinstance(r.exception, RuntimeError) for r in reports)

    async def test_default_handler_logs_at_error(self, caplog: pytest.LogCaptureFixture) -> None:
        board = Board()
        clock = FakeClock()
        with caplog.at_level(logging.ERROR, logger="actors"):
            async with open_actor_system(clock=clock) as system:
                await system.spawn(board.spec("a"))
                await settle()
                board.live["a"].order("crash")
                await settle()
        [record] = caplog.records
        assert record.name == "actors"
        assert (
            record.getMessage()
            == "child 'a' of supervisor 'system' crashed (restarted 0 times before)"
        )
        assert record.exc_info is not None
        assert str(record.exc_info[1]) == "a crashed"

    async def test_failing_handler_is_logged_and_restarts_go_on(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        board = Board()

        def handler(report: CrashReport) -> None:
            raise OSError("disk full")

        with caplog.at_level(logging.ERROR, logger="actors"):
            async with open_actor_system(clock=FakeClock(), on_crash=handler) as system:
                await system.spawn(board.spec("a"))
                await settle()
                board.live["a"].order("crash")
                await settle()
                assert board.log == [("start", "a"), ("stop", "a"), ("start", "a")]
        assert [r.getMessage() for r in caplog.records] == [
            "on_crash handler of supervisor 'system' raised"
        ]


class TestBackoff:
    def test_delay(self) -> None:
        backoff = Backoff(1, 10, jitter=0)
        assert [backoff.delay(n) for n in range(6)] == [1, 2, 4, 8, 10, 10]
        assert backoff.delay(10_000) == 10
        assert Backoff(1, 10, jitter=0.5).delay(1, rand=lambda: 0.5) == 2.5

    def test_validation(self) -> None:
        with pytest.raises(ValueError, match=r"^min_seconds must be >= 0, got -1$"):
            Backoff(-1, 1)
        with pytest.raises(ValueError, match=r"^max_seconds \(1\) must be >= min_seconds \(2\)$"):
            Backoff(2, 1)

    @pytest.mark.parametrize("strategy", [Strategy.ONE_FOR_ONE, Strategy.ONE_FOR_ALL])
    async def test_restarts_wait_on_the_clock(self, strategy: Strategy) -> None:
        board = Board()
        clock = FakeClock()
        sup = Supervisor(
            [board.spec("a"), board.spec("b")],
            strategy=strategy,
            max_restarts=10,
            backoff=Backoff(1, 4, jitter=0),
            clock=clock,
            on_crash=_ignore,
        )
        async with open_actor_system(clock=clock) as system:
            await system.spawn(ChildSpec("sup", lambda: sup))
            await settle()
            for delay in (1, 2, 4, 4):
                board.log.clear()
                board.live["b"].order("crash")
                await settle()
                clock.jump(delay * 0.99)
                await settle()
                assert ("start", "b") not in board.log
                clock.jump(delay * 0.01)
                await settle()
                assert board.log[-1] == ("start", "b")

    async def test_stop_during_backoff_cancels_the_restart(self) -> None:
        board = Board()
        clock = FakeClock()
        sup = Supervisor(
            [board.spec("a")], backoff=Backoff(1, 1, jitter=0), clock=clock, on_crash=_ignore
        )
        async with open_actor_system(clock=clock) as system:
            sup_ref = await system.spawn(ChildSpec("sup", lambda: sup))
            await settle()
            ref = board.live["a"].ref
            board.live["a"].order("crash")
            await settle()
            assert await ref.stop() == ExitReason(
                ExitKind.SHUTDOWN, None, "stopped by ActorRef.stop()"
            )
            clock.jump(1)
            await settle()
            assert board.log == [("start", "a"), ("stop", "a")]
            assert await names(sup_ref) == []


class TestControlMessages:
    async def test_start_child_returns_a_ref_at_once(self) -> None:
        gate = anyio.Event()
        replies: list[str] = []

        class Late(Actor):
            async def on_start(self) -> None:
                await gate.wait()

            def receive(self, message: Any) -> Any:
                return message

        async with open_actor_system(clock=FakeClock()) as system:
            ref = await system.root.ask(StartChild(ChildSpec("late", Late)))
            async with anyio.create_task_group() as tg:

                async def ask() -> None:
                    replies.append(await ref.ask("hello"))

                tg.start_soon(ask)
                await settle()
                assert replies == []
                gate.set()
        assert replies == ["hello"]

    async def test_start_child_errors_go_to_the_asker(self) -> None:
        def broken() -> Actor:
            raise OSError("no such actor")

        async with open_actor_system(clock=FakeClock()) as system:
            await system.spawn(ChildSpec("x", Actor))
            with pytest.raises(
                ValueError,
                match=r"^supervisor 'system' already has a child named 'x'; "
                r"child names must be unique among siblings$",
            ):
                await system.spawn(ChildSpec("x", Actor))
            with pytest.raises(OSError, match=r"^no such actor$"):
                await system.spawn(ChildSpec("y", broken))
            with pytest.raises(
                TypeError,
                match=r"^supervisor 'system' does not understand str; "
                r"send StartChild, AttachChild, StopChild or WhichChildren$",
            ):
                await system.root.ask("hello")
            assert await names(system.root) == ["x"]

    async def test_stop_child(self) -> None:
        async with open_actor_system(clock=FakeClock()) as system:
            a = await system.spawn(ChildSpec("a", Actor))
            await system.spawn(ChildSpec("b", Actor))
            assert await system.root.ask(StopChild("a")) is None
            assert await a.wait() == ExitReason(
                ExitKind.SHUTDOWN, None, "stopped by StopChild('a')"
            )
            assert await names(system.root) == ["b"]
            with pytest.raises(LookupError, match=r"^supervisor 'system' has no child named 'a'$"):
                await system.root.ask(StopChild("a"))

    async def test_many_temporary_children_are_removed(self) -> None:
        class Quick(Actor):
            async def run(self) -> None:
                pass

        async with open_actor_system(clock=FakeClock()) as system:
            refs = [
                await system.spawn(ChildSpec(f"t{i}", Quick, restart=Restart.TEMPORARY))
                for i in range(300)
            ]
            await settle()
            assert await names(system.root) == []
            assert {ref.exit_reason for ref in refs} == {
                ExitReason(ExitKind.NORMAL, None, "run() returned")
            }

    async def test_children_run_in_the_supervisors_context(self) -> None:
        var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
        seen: list[str] = []

        class Peek(Actor):
            async def on_start(self) -> None:
                seen.append(var.get())

        async with open_actor_system(clock=FakeClock()) as system:
            await settle()
            var.set("sender's")
            await system.spawn(ChildSpec("p", Peek))
            await settle()
        assert seen == ["unset"]

    async def test_start_child_refused_while_shutting_down(self) -> None:
        log: list[str] = []
        clock = FakeClock()
        async with open_actor_system(clock=clock) as system:
            await system.spawn(ChildSpec("s", partial(Stubborn, log), shutdown_timeout=1))
            async with anyio.create_task_group() as tg:
                tg.start_soon(system.root.stop)
                await settle()
                with pytest.raises(
                    ActorStopped,
                    match=r"^cannot send StartChild to actor 'system': it is stopping "
                    r"\(stopped by ActorRef\.stop\(\)\)$",
                ):
                    await system.spawn(ChildSpec("late", Actor))
                clock.jump(1)
