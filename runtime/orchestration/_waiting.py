"""Waiting as the orchestrator asked: for a delay, or for a watched run to change."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio

from actors import Clock, LoopWaker

if TYPE_CHECKING:
    from ..store._backend import StoreBackend
    from ._orchestrator import Transition
    from ._runtime import Runtime

__all__ = ["wait_before_proposing_again", "wait_for_state_change"]


async def wait_before_proposing_again(runtime: Runtime, transition: Transition) -> None:
    """Sleep the WAIT's delay on the runtime's clock, waking early if the watched run's
    state changes."""
    assert runtime.backend is not None
    if transition.watch is None:
        clock = runtime.clock
        await clock.sleep_until(clock.now() + transition.delay)
        return
    await wait_for_state_change(runtime.backend, transition.watch, runtime.clock, transition.delay)


async def wait_for_state_change(
    backend: StoreBackend, run_id: Any, clock: Clock, timeout: float | None
) -> None:
    """Return after the next state change of ``run_id``, or after ``timeout`` seconds."""
    changed = anyio.Event()
    waker = LoopWaker()
    unsubscribe = backend.subscribe(run_id, lambda run, state: waker.wake(changed.set))
    try:
        if timeout is None:
            await changed.wait()
            return
        async with anyio.create_task_group() as tg:

            async def sleep() -> None:
                await clock.sleep_until(clock.now() + timeout)
                tg.cancel_scope.cancel()

            tg.start_soon(sleep)
            await changed.wait()
            tg.cancel_scope.cancel()
    finally:
        unsubscribe()
