"""Running callbacks posted from any thread inside a task of one event loop.

anyio calls such as starting a task need a running task, which a bare thread-safe callback
(``call_soon_threadsafe``, ``run_sync_soon``) does not have. A flow run therefore serves
a :class:`LoopInbox` beside its body: code in other threads (a sync flow body, a store
notification) posts callbacks to it, and the inbox runs them in its own task.
"""

from __future__ import annotations

import inspect
import logging
import math
import threading
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

import anyio
import outcome

from actors import LoopWaker

__all__ = ["LoopInbox", "run_beside"]

T = TypeVar("T")

_logger = logging.getLogger("stageflow")


class LoopInbox:
    """Runs posted callbacks on the loop it was created on, inside a task (:meth:`serve`)."""

    def __init__(self) -> None:
        self._thread = threading.get_ident()
        self._waker = LoopWaker()
        self._send, self._receive = anyio.create_memory_object_stream[Callable[[], object]](
            math.inf
        )

    def post(self, fn: Callable[[], object]) -> None:
        """Run ``fn()`` in the loop: at once when called from code running on the loop's
        thread, otherwise soon, from :meth:`serve`. Dropped once the inbox closed."""
        if threading.get_ident() == self._thread:
            _run(fn)
        else:
            self._waker.schedule(partial(self._send_nowait, fn))

    def post_later(self, fn: Callable[[], object]) -> None:
        """Run ``fn()`` from :meth:`serve`, never inline; ``fn`` may be a coroutine
        function, which :meth:`serve` awaits (callbacks run one at a time)."""
        if threading.get_ident() == self._thread:
            self._send_nowait(fn)
        else:
            self._waker.schedule(partial(self._send_nowait, fn))

    def post_from_signal_handler(self, fn: Callable[[], object]) -> None:
        """Like :meth:`post`, but never runs ``fn`` inline (safe in a signal handler)."""
        self._waker.schedule(partial(self._send_nowait, fn))

    def _send_nowait(self, fn: Callable[[], object]) -> None:
        try:
            self._send.send_nowait(fn)
        except anyio.ClosedResourceError:
            pass

    def close(self) -> None:
        """Let :meth:`serve` return once it has run what was posted so far; later posts are
        dropped. Call on the loop."""
        self._send.close()

    async def serve(self) -> None:
        """Run posted callbacks until cancelled or closed; then the inbox drops whatever
        comes."""
        try:
            async for fn in self._receive:
                result = _run(fn)
                if inspect.isawaitable(result):
                    try:
                        await result
                    except Exception:
                        _logger.exception("A callback posted to a flow run's loop failed: %r", fn)
        finally:
            self._send.close()
            self._receive.close()


def _run(fn: Callable[[], object]) -> object:
    try:
        return fn()
    except Exception:
        _logger.exception("A callback posted to a flow run's loop failed: %r", fn)
        return None


async def run_beside(
    service: Callable[[], Awaitable[Any]],
    body: Callable[[], Awaitable[T]],
    stop: Callable[[], object] | None = None,
) -> T:
    """Await ``body()`` while ``service()`` runs beside it; when the body ends, call
    ``stop()`` to make the service return (cheaper than a cancellation), or cancel it if
    there is no ``stop``. The body's exception propagates as itself, not wrapped in an
    exception group."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(service)
        try:
            result: outcome.Outcome[T] = await outcome.acapture(body)
        finally:
            if stop is None:
                tg.cancel_scope.cancel()
            else:
                stop()
    return result.unwrap()
