"""Tests for actors._backend: loops on threads, spawning with a context, thread-safe waiters."""

from __future__ import annotations

import contextvars
import queue
import threading
from collections.abc import Iterator
from typing import Any

import anyio
import outcome
import pytest

from actors import LoopClosed
from actors._backend import LoopHandle, Waiter, start_loop

HANG_GUARD = 10.0

var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")


class Loop:
    """A started loop whose main task waits until stop() is called."""

    def __init__(self, backend: str) -> None:
        self.exited_on: list[int] = []
        self._stop: Waiter | None = None
        self.handle, self.thread = start_loop(
            backend, self._main, name=f"test-{backend}", on_exit=self._on_exit
        )

    async def _main(self, handle: LoopHandle) -> None:
        self._stop = handle.waiter()
        await self._stop.wait()

    def _on_exit(self) -> None:
        self.exited_on.append(threading.get_ident())

    def stop(self) -> None:
        assert self._stop is not None
        self._stop.set_threadsafe(outcome.Value(None))
        self.thread.join(HANG_GUARD)
        assert not self.thread.is_alive()

    def spawn(self, async_fn: Any, *args: Any) -> None:
        self.handle.spawn_threadsafe(async_fn, args, contextvars.copy_context())


@pytest.fixture(params=["asyncio", "trio"])
def loop(request: pytest.FixtureRequest) -> Iterator[Loop]:
    started = Loop(request.param)
    yield started
    if started.thread.is_alive():
        started.stop()


def test_start_loop_rejects_an_unknown_backend() -> None:
    """Only asyncio and trio loops can be started."""
    with pytest.raises(
        ValueError, match=r"^unknown backend 'curio': expected 'asyncio' or 'trio'$"
    ):
        start_loop("curio", lambda handle: anyio.sleep_forever(), name="x", on_exit=print)


def test_the_loop_runs_on_a_named_daemon_thread(loop: Loop) -> None:
    """Callbacks run on the loop's daemon thread; on_exit runs there once it stops."""
    seen: queue.SimpleQueue[int] = queue.SimpleQueue()
    loop.handle.run_sync_soon(lambda: seen.put(threading.get_ident()))
    assert seen.get(timeout=HANG_GUARD) == loop.thread.ident
    assert loop.thread.daemon and loop.thread.name == f"test-{loop.handle.backend}"
    loop.stop()
    assert loop.exited_on == [loop.thread.ident]


def test_spawn_runs_the_task_in_the_given_context(loop: Loop) -> None:
    """A spawned task sees the variables of the context it was given."""
    seen: queue.SimpleQueue[str] = queue.SimpleQueue()

    async def task() -> None:
        seen.put(var.get())

    context = contextvars.copy_context()
    context.run(var.set, "given")
    loop.handle.spawn_threadsafe(task, (), context)
    assert seen.get(timeout=HANG_GUARD) == "given"


def test_a_waiter_is_completed_from_another_thread(loop: Loop) -> None:
    """A task awaiting a waiter receives the outcome another thread sets."""
    waiters: queue.SimpleQueue[Waiter] = queue.SimpleQueue()
    results: queue.SimpleQueue[outcome.Outcome[Any]] = queue.SimpleQueue()

    async def task() -> None:
        waiter = loop.handle.waiter()
        waiters.put(waiter)
        results.put(await waiter.wait())

    loop.spawn(task)
    waiters.get(timeout=HANG_GUARD).set_threadsafe(outcome.Value(42))
    assert results.get(timeout=HANG_GUARD) == outcome.Value(42)


def test_a_waiter_set_before_it_is_awaited(loop: Loop) -> None:
    """set() before wait() makes wait() return at once."""
    results: queue.SimpleQueue[outcome.Outcome[Any]] = queue.SimpleQueue()

    async def task() -> None:
        waiter = loop.handle.waiter()
        waiter.set(outcome.Value("early"))
        waiter.set(outcome.Value("ignored"))
        results.put(await waiter.wait())

    loop.spawn(task)
    assert results.get(timeout=HANG_GUARD) == outcome.Value("early")


def test_cancelling_the_awaiting_task_abandons_the_waiter(loop: Loop) -> None:
    """An anyio cancel scope interrupts wait(); a late outcome is dropped."""
    waiting: queue.SimpleQueue[tuple[anyio.CancelScope, Waiter]] = queue.SimpleQueue()
    results: queue.SimpleQueue[str] = queue.SimpleQueue()

    async def task() -> None:
        waiter = loop.handle.waiter()
        with anyio.CancelScope() as scope:
            waiting.put((scope, waiter))
            await waiter.wait()
        results.put("cancelled" if scope.cancelled_caught else "not cancelled")

    loop.spawn(task)
    scope, waiter = waiting.get(timeout=HANG_GUARD)
    loop.handle.run_sync_soon(scope.cancel)
    assert results.get(timeout=HANG_GUARD) == "cancelled"
    waiter.set_threadsafe(outcome.Value("late"))
    loop.handle.run_sync_soon(results.put, "still running")
    assert results.get(timeout=HANG_GUARD) == "still running"


def test_a_stopped_loop_refuses_work(loop: Loop) -> None:
    """After the loop stops, run_sync_soon raises LoopClosed and waiters ignore outcomes."""
    waiter: list[Waiter] = []
    loop.handle.run_sync_soon(lambda: waiter.append(loop.handle.waiter()))
    loop.stop()
    message = (
        rf"^the {loop.handle.backend} loop on thread 'test-{loop.handle.backend}' has stopped$"
    )
    with pytest.raises(LoopClosed, match=message):
        loop.handle.run_sync_soon(print)
    with pytest.raises(LoopClosed, match=message):
        loop.spawn(anyio.sleep_forever)
    waiter[0].set_threadsafe(outcome.Value(None))
