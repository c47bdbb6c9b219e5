"""LoopWaker: callbacks from any thread onto the loop that created the waker."""

from __future__ import annotations

import threading

import anyio
import pytest

from actors import GlobalLoop, LoopWaker


async def test_wake_on_the_loop_thread_runs_at_once() -> None:
    waker = LoopWaker()
    ran: list[int] = []
    assert waker.wake(lambda: ran.append(1))
    assert ran == [1]


async def test_wake_from_another_thread_runs_on_the_loop() -> None:
    waker = LoopWaker()
    done = anyio.Event()
    seen: list[int] = []
    loop_thread = threading.get_ident()

    def from_thread() -> None:
        waker.wake(lambda: (seen.append(threading.get_ident()), done.set()))

    thread = threading.Thread(target=from_thread)
    thread.start()
    await done.wait()
    thread.join()
    assert seen == [loop_thread]


async def test_schedule_never_runs_inline() -> None:
    waker = LoopWaker()
    done = anyio.Event()
    ran: list[str] = []
    waker.schedule(lambda: (ran.append("later"), done.set()))
    ran.append("now")
    await done.wait()
    assert ran == ["now", "later"]


def test_a_waker_of_a_stopped_loop_drops_the_callback() -> None:
    wakers: list[LoopWaker] = []

    async def make() -> None:
        wakers.append(LoopWaker())

    anyio.run(make)
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(wakers[0].wake(lambda: None)))
    thread.start()
    thread.join()
    assert result == [False]


def test_outside_a_loop_it_cannot_be_created() -> None:
    with pytest.raises(Exception):
        LoopWaker()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_call_from_a_task_of_another_loop_runs_on_the_global_loops_backend(backend: str) -> None:
    """The caller's loop must not leak into the call (anyio would pick its backend)."""
    loop = GlobalLoop("asyncio", name="test-foreign-caller")

    async def on_global_loop() -> str:
        await anyio.sleep(0)
        import sniffio

        return sniffio.current_async_library()

    async def caller() -> str:
        return loop.call(on_global_loop)

    try:
        assert anyio.run(caller, backend=backend) == "asyncio"
    finally:
        loop.close()


async def test_callbacks_from_other_threads_can_use_anyio() -> None:
    """A callback scheduled from another thread runs outside any task; anyio calls that
    need no task (the loop's time, cancelling a scope) still work there, on both
    backends."""
    waker = LoopWaker()
    seen: list[float] = []
    done = anyio.Event()
    with anyio.CancelScope() as scope:

        def callback() -> None:
            seen.append(anyio.current_time())
            scope.cancel()
            done.set()

        await anyio.to_thread.run_sync(waker.wake, callback)
        await done.wait()
        await anyio.sleep_forever()
    assert scope.cancelled_caught
    assert len(seen) == 1
