"""Tests for actors._global_loop: GlobalLoop, PendingCall and global_loop()."""

from __future__ import annotations

import contextvars
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError
from typing import Any, Generic, TypeVar

import anyio
import anyio.abc
import anyio.lowlevel
import outcome
import pytest

from actors import (
    GlobalLoop,
    LoopClosed,
    LoopThreadError,
    NoWaitingThread,
    _global_loop,
    global_loop,
)
from actors._global_loop import PendingCall

T = TypeVar("T")

BACKENDS = ["asyncio", "trio"]
HANG_GUARD = 10.0  # seconds; only ever reached when a test is about to fail

var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

NO_WAITING_THREAD = (
    r"^no thread is waiting on this task: run_in_waiting_thread\(\) works only in a task that "
    r"GlobalLoop\.call\(\) started on the global loop 'test-loop', or in a child task of one$"
)


@pytest.fixture(params=BACKENDS)
def loop(request: pytest.FixtureRequest) -> Iterator[GlobalLoop]:
    gl = GlobalLoop(request.param, name="test-loop")
    yield gl
    gl.close()


class InThread(Generic[T]):
    """Run ``fn(*args)`` on a new daemon thread and keep its outcome."""

    def __init__(self, fn: Callable[..., T], *args: Any) -> None:
        self.outcome: outcome.Outcome[T] | None = None
        self.thread = threading.Thread(target=self._run, args=(fn, args), daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[..., T], args: tuple[Any, ...]) -> None:
        self.outcome = outcome.capture(fn, *args)

    def result(self) -> T:
        self.thread.join(HANG_GUARD)
        assert not self.thread.is_alive(), "the thread hangs"
        assert self.outcome is not None
        return self.outcome.unwrap()


class Countdown:
    """A latch: wait() returns once arrive() was called ``n`` times; arrive() never blocks."""

    def __init__(self, n: int) -> None:
        self._n = n
        self._lock = threading.Lock()
        self._done = threading.Event()

    def arrive(self) -> None:
        with self._lock:
            self._n -= 1
            if self._n == 0:
                self._done.set()

    def wait(self) -> None:
        assert self._done.wait(HANG_GUARD), "not everybody arrived"


class TestCall:
    def test_runs_a_coroutine_function_as_a_task_on_the_loop(self, loop: GlobalLoop) -> None:
        """A coroutine function's value comes back to the calling thread."""

        async def add(a: int, b: int) -> tuple[int, int]:
            await anyio.lowlevel.checkpoint()
            return a + b, threading.get_ident()

        assert loop.call(add, 1, 2) == (3, loop.thread.ident)  # type: ignore[union-attr]

    def test_runs_a_plain_function_on_the_loop_thread(self, loop: GlobalLoop) -> None:
        """A plain function runs on the loop thread, where is_loop_thread() is True."""
        assert loop.call(lambda: (threading.get_ident(), loop.is_loop_thread())) == (
            loop.thread.ident,  # type: ignore[union-attr]
            True,
        )
        assert not loop.is_loop_thread()

    def test_awaits_what_a_plain_function_returns(self, loop: GlobalLoop) -> None:
        """An awaitable returned by a plain function is awaited."""

        async def seven() -> int:
            return 7

        assert loop.call(lambda: seven()) == 7

    def test_starts_lazily_on_a_daemon_thread(self) -> None:
        """Nothing starts until the first call; the loop runs on a named daemon thread."""
        gl = GlobalLoop("asyncio", name="lazy-loop")
        try:
            assert gl.thread is None
            assert repr(gl) == "<GlobalLoop 'lazy-loop' backend='asyncio' not started>"
            gl.call(int)
            assert gl.thread is not None and gl.thread.daemon and gl.thread.name == "lazy-loop"
            assert repr(gl) == "<GlobalLoop 'lazy-loop' backend='asyncio' running>"
        finally:
            gl.close()
        assert repr(gl) == "<GlobalLoop 'lazy-loop' backend='asyncio' closed>"
        assert not gl.thread.is_alive()

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_many_threads_racing_to_first_use_start_one_loop(self, backend: str) -> None:
        """Threads that race to the first call all reach the same, single loop thread."""
        gl = GlobalLoop(backend, name="race-loop")
        barrier = threading.Barrier(16)

        def first_use() -> int:
            barrier.wait(HANG_GUARD)
            return gl.call(threading.get_ident)

        try:
            callers = [InThread(first_use) for _ in range(16)]
            idents = {caller.result() for caller in callers}
            assert idents == {gl.thread.ident}  # type: ignore[union-attr]
            assert [t.name for t in threading.enumerate()].count("race-loop") == 1
        finally:
            gl.close()

    def test_rejects_an_unknown_backend(self) -> None:
        """The backend is checked when the loop is created."""
        with pytest.raises(
            ValueError, match=r"^unknown backend 'curio': GlobalLoop runs on 'asyncio' or 'trio'$"
        ):
            GlobalLoop("curio")

    def test_reraises_the_exception_with_its_traceback(self, loop: GlobalLoop) -> None:
        """An exception raised on the loop reaches the caller with the frames that raised it."""

        async def failing_task() -> None:
            await anyio.lowlevel.checkpoint()
            raise ValueError("bad value")

        with pytest.raises(ValueError, match=r"^bad value$") as info:
            loop.call(failing_task)
        assert "failing_task" in [frame.name for frame in traceback.extract_tb(info.tb)]
        assert loop.call(int) == 0  # the loop is unharmed

    def test_an_interrupted_caller_cancels_its_task(self, loop: GlobalLoop) -> None:
        """Ctrl-C in the waiting thread propagates there and cancels the call's task."""
        if threading.current_thread() is not threading.main_thread():
            pytest.skip("interrupt_main() interrupts the main thread only")
        cleaned_up = threading.Event()

        async def task() -> None:
            try:
                # A real signal, unlike _thread.interrupt_main(), wakes the blocked wait.
                signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
                await anyio.sleep_forever()
            finally:
                cleaned_up.set()

        with pytest.raises(KeyboardInterrupt):
            loop.call(task)
        assert cleaned_up.wait(HANG_GUARD)
        assert loop.call(int) == 0

    def test_from_the_loop_thread_raises_instead_of_deadlocking(self, loop: GlobalLoop) -> None:
        """call() made on the loop thread fails at once, from a task or a plain function."""
        message = (
            r"^GlobalLoop\.call\(\) cannot be used on the global loop's own thread: it would "
            r"block the loop it waits for; await the coroutine instead of calling it through "
            r"the global loop$"
        )

        async def task() -> None:
            loop.call(int)

        with pytest.raises(LoopThreadError, match=message):
            loop.call(task)
        with pytest.raises(LoopThreadError, match=message):
            loop.call(lambda: loop.call(int))


class TestContext:
    def test_the_task_runs_in_a_copy_of_the_calling_threads_context(self, loop: GlobalLoop) -> None:
        """The task sees the caller's context variables; its own changes stay in the task."""

        async def task() -> str:
            seen = var.get()
            var.set("set by task")
            return seen

        token = var.set("set by thread")
        try:
            assert loop.call(task) == "set by thread"
            assert var.get() == "set by thread"
        finally:
            var.reset(token)

    def test_an_explicit_context_is_used_and_left_untouched(self, loop: GlobalLoop) -> None:
        """With context=, the task runs in a copy of that context instead."""
        context = contextvars.copy_context()
        context.run(var.set, "explicit")

        async def task() -> str:
            seen = var.get()
            var.set("set by task")
            return seen

        assert loop.call(task, context=context) == "explicit"
        assert loop.call_soon(task, context=context).result(HANG_GUARD) == "explicit"
        assert context[var] == "explicit"

    def test_a_callback_runs_in_a_copy_of_the_awaiting_tasks_context(
        self, loop: GlobalLoop
    ) -> None:
        """The callback sees what the task set; what the callback sets stays on its side."""

        def callback() -> str:
            seen = var.get()
            var.set("set by callback")
            return seen

        async def task() -> tuple[str, str]:
            var.set("set by task")
            seen = await loop.run_in_waiting_thread(callback)
            return seen, var.get()

        assert loop.call(task) == ("set by task", "set by task")


class TestRunInWaitingThread:
    def test_callbacks_go_back_to_each_of_eight_waiting_threads(self, loop: GlobalLoop) -> None:
        """Eight threads wait at once; each one's callbacks run on that thread only."""
        arrived: list[int] = []
        all_arrived = loop.call(anyio.Event)

        async def task() -> list[int]:
            arrived.append(1)
            if len(arrived) == 8:
                all_arrived.set()
            await all_arrived.wait()  # all eight tasks are on the loop at once
            idents = []
            for _ in range(5):
                idents.append(await loop.run_in_waiting_thread(threading.get_ident))
                await anyio.lowlevel.checkpoint()
            return idents

        def caller() -> tuple[int, list[int]]:
            return threading.get_ident(), loop.call(task)

        for ident, idents in [c.result() for c in [InThread(caller) for _ in range(8)]]:
            assert idents == [ident] * 5

    def test_calls_and_callbacks_nest(self, loop: GlobalLoop) -> None:
        """A callback calls into the loop again, whose task sends the next callback back..."""
        other = GlobalLoop("trio" if loop.backend == "asyncio" else "asyncio", name="other")
        seen: list[tuple[int, int, str]] = []

        def level(n: int) -> int:
            seen.append((n, threading.get_ident(), var.get()))
            if n == 0:
                return 0
            into = other if n % 2 else loop  # alternate between two loops
            return 1 + into.call(task, into, n)

        async def task(into: GlobalLoop, n: int) -> int:
            var.set(f"task {n}")
            await anyio.lowlevel.checkpoint()
            return await into.run_in_waiting_thread(level, n - 1)

        try:
            assert loop.call(task, loop, 6) == 5
        finally:
            other.close()
        ident = threading.get_ident()
        assert seen == [(n, ident, f"task {n + 1}") for n in range(5, -1, -1)]

    def test_a_child_task_reaches_its_parents_waiting_thread(self, loop: GlobalLoop) -> None:
        """Task-group children of a call's task inherit its waiting thread."""

        async def task() -> list[int]:
            idents: list[int] = []

            async def child() -> None:
                idents.append(await loop.run_in_waiting_thread(threading.get_ident))

            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(child)
            return idents

        assert loop.call(task) == [threading.get_ident()] * 3

    def test_reraises_the_callbacks_exception_with_its_traceback(self, loop: GlobalLoop) -> None:
        """The task sees the callback's exception and frames, and so does the caller."""

        def failing_callback() -> None:
            raise KeyError("missing")

        async def task() -> None:
            try:
                await loop.run_in_waiting_thread(failing_callback)
            except KeyError as exc:
                frames = [frame.name for frame in traceback.extract_tb(exc.__traceback__)]
                assert "failing_callback" in frames
                raise

        with pytest.raises(KeyError, match=r"^'missing'$") as info:
            loop.call(task)
        frames = [frame.name for frame in traceback.extract_tb(info.tb)]
        assert "failing_callback" in frames and "task" in frames

    def test_a_base_exception_travels_without_stopping_the_loop(self, loop: GlobalLoop) -> None:
        """A BaseException raised by a callback reaches the caller; the loop keeps running."""

        class Interrupt(BaseException):
            pass

        def callback() -> None:
            raise Interrupt

        async def task() -> None:
            await loop.run_in_waiting_thread(callback)

        with pytest.raises(Interrupt):
            loop.call(task)
        assert loop.call(int) == 0

    def test_needs_a_waiting_thread(self, loop: GlobalLoop) -> None:
        """Tasks from call_soon() and start_background() have no waiting thread."""

        async def task() -> int:
            return await loop.run_in_waiting_thread(int)

        with pytest.raises(NoWaitingThread, match=NO_WAITING_THREAD):
            loop.call_soon(task).result(HANG_GUARD)

        failures: list[outcome.Outcome[int]] = []
        done = threading.Event()

        async def service() -> None:
            failures.append(await outcome.acapture(task))
            done.set()

        loop.start_background(service)
        assert done.wait(HANG_GUARD)
        with pytest.raises(NoWaitingThread, match=NO_WAITING_THREAD):
            failures[0].unwrap()

    def test_needs_to_run_on_the_loop(self, loop: GlobalLoop) -> None:
        """Awaited in another event loop, even inside a callback, it refuses."""
        with pytest.raises(NoWaitingThread, match=NO_WAITING_THREAD):
            anyio.run(loop.run_in_waiting_thread, int, backend=loop.backend)

        def callback() -> None:  # runs in the task's context, but not on the loop
            anyio.run(loop.run_in_waiting_thread, int, backend=loop.backend)

        async def task() -> None:
            await loop.run_in_waiting_thread(callback)

        with pytest.raises(NoWaitingThread, match=NO_WAITING_THREAD):
            loop.call(task)

    def test_a_task_outliving_its_call_has_no_waiting_thread(self, loop: GlobalLoop) -> None:
        """A child started in a service's task group keeps the context but not the thread."""
        groups: list[anyio.abc.TaskGroup] = []
        ready = threading.Event()
        failures: list[outcome.Outcome[int]] = []
        failed = threading.Event()

        async def service() -> None:
            async with anyio.create_task_group() as tg:
                groups.append(tg)
                ready.set()
                await anyio.sleep_forever()

        async def orphan(go: anyio.Event) -> None:
            await go.wait()
            failures.append(await outcome.acapture(loop.run_in_waiting_thread, int))
            failed.set()

        async def task(go: anyio.Event) -> None:
            groups[0].start_soon(orphan, go)  # inherits this task's context

        loop.start_background(service)
        assert ready.wait(HANG_GUARD)
        go = loop.call(anyio.Event)
        loop.call(task, go)
        loop.call(go.set)
        assert failed.wait(HANG_GUARD)
        with pytest.raises(
            NoWaitingThread,
            match=(
                r"^the thread that called GlobalLoop\.call\(\) for this task has stopped "
                r"waiting \(its call returned or failed\), so there is no thread to run "
                r"<class 'int'> on$"
            ),
        ):
            failures[0].unwrap()

    def test_cancelling_the_task_abandons_the_callback(self, loop: GlobalLoop) -> None:
        """Cancellation is raised in the task at once; the callback's late result is dropped."""
        scopes: list[anyio.CancelScope] = []
        task_finished = threading.Event()

        def blocking_callback() -> str:
            loop.call_soon(scopes[0].cancel)
            # The task finishes while this callback still runs on the waiting thread.
            assert task_finished.wait(HANG_GUARD)
            return "late"

        async def task() -> str:
            try:
                with anyio.CancelScope() as scope:
                    scopes.append(scope)
                    await loop.run_in_waiting_thread(blocking_callback)
                return "cancelled" if scope.cancelled_caught else "not cancelled"
            finally:
                task_finished.set()

        assert loop.call(task) == "cancelled"
        # The thread waits and receives callbacks as before.
        assert loop.call(self._echo_back, loop, "next") == "next"

    def test_a_timeout_abandons_the_callback(self, loop: GlobalLoop) -> None:
        """An anyio timeout in the task fires while the callback blocks its thread."""
        task_finished = threading.Event()

        def blocking_callback() -> None:
            assert task_finished.wait(HANG_GUARD)

        async def task() -> None:
            try:
                with anyio.fail_after(0.01):
                    await loop.run_in_waiting_thread(blocking_callback)
            finally:
                task_finished.set()

        with pytest.raises(TimeoutError):
            loop.call(task)
        assert loop.call(self._echo_back, loop, "next") == "next"

    @staticmethod
    async def _echo_back(loop: GlobalLoop, value: str) -> str:
        return await loop.run_in_waiting_thread(lambda: value)


class TestCallSoon:
    def test_returns_at_once_and_result_waits(self, loop: GlobalLoop) -> None:
        """call_soon() does not wait; result() and done() follow the call."""
        go = loop.call(anyio.Event)

        async def task() -> str:
            await go.wait()
            return "done"

        pending = loop.call_soon(task)
        assert not pending.done()
        with pytest.raises(
            TimeoutError, match=r"^<PendingCall .*task.* pending> did not finish within 0 seconds$"
        ):
            pending.result(timeout=0)
        loop.call(go.set)
        assert pending.result(HANG_GUARD) == "done"
        assert pending.done() and pending.result() == "done"
        assert repr(pending).endswith(" done>")

    def test_result_reraises_the_exception(self, loop: GlobalLoop) -> None:
        """result() raises the function's exception, every time it is asked."""

        async def task() -> None:
            raise ValueError("bad value")

        pending = loop.call_soon(task)
        for _ in range(2):
            with pytest.raises(ValueError, match=r"^bad value$"):
                pending.result(HANG_GUARD)

    def test_done_callbacks(self, loop: GlobalLoop) -> None:
        """Callbacks run on the loop thread when the call finishes, or at once if it has."""
        go = loop.call(anyio.Event)
        calls: list[tuple[str, PendingCall[Any], int]] = []
        called = threading.Event()

        async def task() -> None:
            await go.wait()

        def callback(name: str) -> Callable[[PendingCall[Any]], None]:
            def record(call: PendingCall[Any]) -> None:
                calls.append((name, call, threading.get_ident()))
                called.set()

            return record

        pending = loop.call_soon(task)
        pending.add_done_callback(callback("early"))
        loop.call(go.set)
        assert called.wait(HANG_GUARD)
        pending.add_done_callback(callback("late"))
        assert calls == [
            ("early", pending, loop.thread.ident),  # type: ignore[union-attr]
            ("late", pending, threading.get_ident()),
        ]

    def test_a_failing_done_callback_is_logged(
        self, loop: GlobalLoop, caplog: pytest.LogCaptureFixture
    ) -> None:
        """An exception in a done callback is logged and does not stop the others."""
        ran = threading.Event()

        def failing(call: PendingCall[Any]) -> None:
            raise RuntimeError("callback failed")

        pending = loop.call_soon(int)
        pending.result(HANG_GUARD)
        with caplog.at_level(logging.ERROR, logger="actors"):
            pending.add_done_callback(failing)
            pending.add_done_callback(lambda call: ran.set())
        assert ran.is_set()
        assert "callback failed" in caplog.text

    def test_cancel(self, loop: GlobalLoop) -> None:
        """cancel() cancels the task; result() then raises CancelledError."""
        cleaned_up = threading.Event()

        async def task() -> None:
            try:
                await anyio.sleep_forever()
            finally:
                cleaned_up.set()

        started = loop.call_soon(task)
        assert started.cancel() is True
        with pytest.raises(
            CancelledError, match=r"^the call to <function .*task.*> was cancelled$"
        ):
            started.result(HANG_GUARD)
        assert started.cancel() is False

        finished = loop.call_soon(int)
        assert finished.result(HANG_GUARD) == 0
        assert finished.cancel() is False

    def test_cancel_running_task_runs_its_cleanup(self, loop: GlobalLoop) -> None:
        """A task cancelled while it runs gets to run its finally block."""
        running = threading.Event()
        cleaned_up = threading.Event()

        async def task() -> None:
            try:
                running.set()
                await anyio.sleep_forever()
            finally:
                cleaned_up.set()

        pending = loop.call_soon(task)
        assert running.wait(HANG_GUARD)
        pending.cancel()
        with pytest.raises(CancelledError):
            pending.result(HANG_GUARD)
        assert cleaned_up.is_set()

    def test_result_on_the_loop_thread_refuses_to_block(self, loop: GlobalLoop) -> None:
        """Waiting for a PendingCall on the loop thread would deadlock."""
        go = loop.call(anyio.Event)

        async def task() -> None:
            await go.wait()

        pending = loop.call_soon(task)
        with pytest.raises(
            LoopThreadError,
            match=(
                r"^PendingCall\.result\(\) cannot wait on the global loop's own thread: it "
                r"would block the loop that runs the call; use add_done_callback\(\) instead$"
            ),
        ):
            loop.call(pending.result)
        loop.call(go.set)
        pending.result(HANG_GUARD)

    def test_works_from_the_loop_thread(self, loop: GlobalLoop) -> None:
        """A task may start calls with call_soon() and await their outcome by callback."""

        async def task() -> int:
            done = anyio.Event()
            pending = loop.call_soon(lambda: 42)
            pending.add_done_callback(lambda call: done.set())
            await done.wait()
            return pending.result()

        assert loop.call(task) == 42

    def test_has_no_public_constructor(self) -> None:
        """PendingCalls come from call_soon() only."""
        with pytest.raises(
            TypeError,
            match=r"^PendingCall has no public constructor; use GlobalLoop\.call_soon\(\)$",
        ):
            PendingCall()


class TestClose:
    CLOSED = r"^the global loop 'test-loop' is closed and accepts no more calls$"
    CLOSED_WHILE_PENDING = r"^the global loop 'test-loop' closed before the call finished$"

    def test_refuses_new_calls(self, loop: GlobalLoop) -> None:
        """After close(), every entry point raises LoopClosed; closing again is harmless."""
        loop.call(int)
        loop.close()
        loop.close()
        with pytest.raises(LoopClosed, match=self.CLOSED):
            loop.call(int)
        with pytest.raises(LoopClosed, match=self.CLOSED):
            loop.call_soon(int)
        with pytest.raises(LoopClosed, match=self.CLOSED):
            loop.start_background(anyio.sleep_forever)
        assert not loop.thread.is_alive()  # type: ignore[union-attr]

    def test_a_loop_that_never_started(self) -> None:
        """Closing a loop that never ran starts nothing."""
        gl = GlobalLoop("trio", name="test-loop")
        gl.close()
        assert gl.thread is None
        with pytest.raises(LoopClosed, match=self.CLOSED):
            gl.call(int)

    def test_wakes_every_waiting_thread(self, loop: GlobalLoop) -> None:
        """Threads blocked in call() or PendingCall.result() get LoopClosed; none hangs."""
        started = Countdown(4)
        in_callback = threading.Event()
        release_callback = threading.Event()

        async def forever() -> None:
            started.arrive()
            await anyio.sleep_forever()

        def blocking_callback() -> None:
            in_callback.set()
            assert release_callback.wait(HANG_GUARD)

        async def sends_callback() -> None:
            await loop.run_in_waiting_thread(blocking_callback)

        callers = [InThread(loop.call, forever) for _ in range(3)]
        soon = loop.call_soon(forever)
        in_callback_caller = InThread(loop.call, sends_callback)
        started.wait()
        assert in_callback.wait(HANG_GUARD)

        loop.close()
        for caller in callers:
            with pytest.raises(LoopClosed, match=self.CLOSED_WHILE_PENDING):
                caller.result()
        with pytest.raises(LoopClosed, match=self.CLOSED_WHILE_PENDING):
            soon.result(HANG_GUARD)
        # The thread busy in a callback finishes it, then sees the loop is gone.
        release_callback.set()
        with pytest.raises(LoopClosed, match=self.CLOSED_WHILE_PENDING):
            in_callback_caller.result()

    def test_cancels_tasks_and_background_tasks_in_reverse_order(self, loop: GlobalLoop) -> None:
        """Background tasks stop last-started first, with their shielded cleanup complete."""
        events: list[str] = []
        running = Countdown(3)

        async def service(name: str) -> None:
            try:
                running.arrive()
                await anyio.sleep_forever()
            finally:
                with anyio.CancelScope(shield=True):
                    await anyio.lowlevel.checkpoint()
                    events.append(f"{name} cleaned up")

        async def call_task() -> None:
            try:
                running.arrive()
                await anyio.sleep_forever()
            finally:
                events.append("call task cleaned up")

        for name in ["first", "second"]:
            loop.start_background(service, name, name=name)
        caller = InThread(loop.call, call_task)
        running.wait()
        loop.close()
        assert events == ["second cleaned up", "first cleaned up", "call task cleaned up"]
        with pytest.raises(LoopClosed):
            caller.result()

    def test_a_crashing_background_task_is_logged(
        self, loop: GlobalLoop, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A background task's exception is logged; the loop keeps running."""
        crashed = threading.Event()

        async def service() -> None:
            try:
                raise RuntimeError("service failed")
            finally:
                crashed.set()

        with caplog.at_level(logging.ERROR, logger="actors"):
            loop.start_background(service, name="the-service")
            assert crashed.wait(HANG_GUARD)
            assert loop.call(int) == 0  # the log record is written before this returns
        assert "background task the-service on <GlobalLoop 'test-loop'" in caplog.text
        assert "service failed" in caplog.text

    def test_from_the_loop_thread_raises(self, loop: GlobalLoop) -> None:
        """A loop cannot close itself: it would wait for its own thread."""
        with pytest.raises(
            LoopThreadError,
            match=(
                r"^GlobalLoop\.close\(\) cannot be used on the global loop's own thread: it "
                r"would wait for itself; close the loop from another thread$"
            ),
        ):
            loop.call(loop.close)


class TestGlobalLoop:
    def test_is_one_instance(self) -> None:
        """global_loop() always returns the same loop."""
        assert global_loop() is global_loop()
        assert isinstance(global_loop(), GlobalLoop)

    def test_rejects_an_unknown_backend_in_the_environment(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """STAGEFLOW_GLOBAL_LOOP must name a backend."""
        monkeypatch.setattr(_global_loop, "_global", None)
        monkeypatch.setenv("STAGEFLOW_GLOBAL_LOOP", "curio")
        with pytest.raises(
            ValueError,
            match=(
                r"^STAGEFLOW_GLOBAL_LOOP='curio' names no event loop backend: set it to "
                r"'asyncio' or 'trio', or unset it$"
            ),
        ):
            global_loop()

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_a_process_exits_cleanly_with_the_loop_busy(self, backend: str) -> None:
        """At exit, background tasks are cleaned up and a daemon thread blocked in call()
        does not make noise."""
        script = textwrap.dedent(
            """
            import threading, anyio
            from actors import global_loop

            blocked_started = threading.Event()
            service_started = threading.Event()

            async def blocked():
                blocked_started.set()
                await anyio.sleep_forever()

            async def service():
                try:
                    service_started.set()
                    await anyio.sleep_forever()
                finally:
                    print("service cleaned up", global_loop().backend, flush=True)

            global_loop().start_background(service)
            threading.Thread(target=global_loop().call, args=(blocked,), daemon=True).start()
            assert blocked_started.wait(10) and service_started.wait(10)
            """
        )
        env = {**os.environ, "STAGEFLOW_GLOBAL_LOOP": backend}
        result = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        assert result.stdout == f"service cleaned up {backend}\n"
