"""Generator tasks and flows: a run whose body yields items to the code iterating its call.

Calling a generator task or flow returns a generator (an async generator for an async
one). Iterating it starts the run: the run's engine runs as an actor of the runtime, and
its body is a *pump* that advances the user's generator one item at a time, only when the
iterating code asks for the next one, inside the run (its context, its timeout, its
transaction). The items travel through a :class:`GeneratorChannel`. The run is Running
while the iteration goes on and reaches its final state before the iteration ends: an
exception raised while iterating fails the run (retries start the generator again), and
an iteration stopped early (``break``, ``close()``) closes the generator and completes
the run. A sync generator's steps run on worker threads, each in the same context.

Every :class:`GeneratorChannel` method runs on the engine's loop: async code iterating a
call awaits them there, sync code reaches them through the global loop.
"""

from __future__ import annotations

import contextvars
from typing import Any, Awaitable, Callable

import anyio
import outcome

from actors import Actor

from ..core._exceptions import CancelledRun
from ..orchestration._runtime import Runtime
from ..orchestration._runtime import current_runtime_var as _current_runtime

__all__ = ["END", "GeneratorChannel", "GeneratorRunActor", "generator_body"]

END: Any = object()
"""What :meth:`GeneratorChannel.receive` returns once the run is over."""

_NOTHING: Any = object()


class GeneratorChannel:
    """Hands the items of a generator body from its run's engine to the iterating code,
    one at a time, each when it is asked for; then the run's outcome."""

    def __init__(self) -> None:
        self._wanted = False
        self._closed = False
        self._item: Any = _NOTHING
        self._outcome: outcome.Outcome[Any] | None = None
        self._to_engine = anyio.Event()
        self._to_consumer = anyio.Event()
        self._finished = anyio.Event()

    # -- the iterating side -----------------------------------------------------------

    async def receive(self) -> Any:
        """Ask for the next item and return it, or :data:`END` once the run is over."""
        if self._finished.is_set():
            return END
        self._to_consumer = anyio.Event()
        self._wanted = True
        self._to_engine.set()
        await self._to_consumer.wait()
        item, self._item = self._item, _NOTHING
        return END if item is _NOTHING else item

    async def stop(self) -> None:
        """Stop iterating (if the run still goes on, its generator is closed and the run
        completes) and wait until the run is over."""
        self._closed = True
        self._to_engine.set()
        await self._finished.wait()

    def result(self) -> Any:
        """Return the run's result (the generator's return value, or None); call once the
        run is over.

        Raises:
            CancelledRun: the run was stopped from outside before it finished.
            BaseException: the run's exception, if it failed.
        """
        if self._outcome is None:
            raise CancelledRun("The run was stopped before it finished.")
        return self._outcome.unwrap()

    # -- the engine's side ------------------------------------------------------------

    async def wanted(self) -> bool:
        """Wait until the iterating code asks for an item (True) or stops (False)."""
        while not (self._wanted or self._closed):
            self._to_engine = anyio.Event()
            await self._to_engine.wait()
        return not self._closed

    def put(self, item: Any) -> None:
        """Hand ``item`` to the iterating code, which asked for it."""
        self._wanted = False
        self._item = item
        self._to_consumer.set()

    def finish(self, result: outcome.Outcome[Any] | None) -> None:
        """The run is over, with ``result`` (None if it was stopped from outside)."""
        self._outcome = result
        self._finished.set()
        self._to_consumer.set()


def generator_body(
    fn: Callable[..., Any], is_async: bool, channel: GeneratorChannel
) -> Callable[[tuple[Any, ...], dict[str, Any]], Awaitable[Any]]:
    """Return the body an engine calls for the generator function ``fn``: it pumps the
    generator's items into ``channel`` and returns the generator's return value (None for
    an async generator, or for one closed early)."""

    async def body(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        generator = fn(*args, **kwargs)
        if is_async:
            return await _pump_async(generator, channel)
        # One context for every step, made here, inside the run: the body sees its run,
        # and what it sets in a step (a `with` block around a yield) is there in the next.
        return await _pump_sync(generator, channel, contextvars.copy_context())

    return body


async def _pump_async(generator: Any, channel: GeneratorChannel) -> Any:
    try:
        while await channel.wanted():
            try:
                item = await generator.__anext__()
            except StopAsyncIteration:
                return None
            channel.put(item)
        return None
    finally:
        await generator.aclose()  # nothing to do unless it is paused at a yield


async def _pump_sync(generator: Any, channel: GeneratorChannel, ctx: contextvars.Context) -> Any:
    while await channel.wanted():
        done, value = await anyio.to_thread.run_sync(
            ctx.run, _advance, generator, abandon_on_cancel=True
        )
        if done:
            return value
        channel.put(value)
    await anyio.to_thread.run_sync(ctx.run, generator.close)
    return None


def _advance(generator: Any) -> tuple[bool, Any]:
    """``(False, item)`` for the generator's next item, ``(True, value)`` once it returned."""
    try:
        return False, next(generator)
    except StopIteration as stop:
        return True, stop.value


class GeneratorRunActor(Actor):
    """Runs the engine of a generator task or flow run, beside the code iterating it, and
    hands its outcome to the run's channel.

    Args:
        work: runs the run to its end and returns what the call returns (or raises).
        channel: the run's channel.
        runtime: the runtime the run belongs to (the current one for code the body calls).
    """

    def __init__(
        self,
        work: Callable[[], Awaitable[Any]],
        channel: GeneratorChannel,
        runtime: Runtime,
    ) -> None:
        self._work = work
        self._channel = channel
        self._runtime = runtime

    async def run(self) -> None:
        """Run the run; its outcome, even an interrupt, goes to whoever iterates it."""
        _current_runtime.set(self._runtime)
        result: outcome.Outcome[Any] | None = None
        try:
            result = outcome.Value(await self._work())
        except anyio.get_cancelled_exc_class():
            raise
        except BaseException as exc:  # noqa: BLE001 - re-raised where the run is iterated
            result = outcome.Error(exc)
        finally:
            self._channel.finish(result)
