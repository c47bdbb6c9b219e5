"""The records of calls into the global loop, shared by the loop and the calling threads.

A thread blocked in :meth:`GlobalLoop.call` waits on its own ``queue.SimpleQueue`` for one
of two things: "your call finished" (its :class:`_BlockingCall` record) or "run this
callback" (a :class:`_Work` item sent by :meth:`GlobalLoop.run_in_waiting_thread`).
A :class:`PendingCall` is the record of :meth:`GlobalLoop.call_soon`, which nobody waits on.
"""

from __future__ import annotations

import contextvars
import logging
import queue
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import anyio
import outcome

from ._backend import LoopWaker
from ._exceptions import LoopThreadError, NoWaitingThread

if TYPE_CHECKING:
    from ._backend import Waiter
    from ._global_loop import GlobalLoop

__all__ = ["PendingCall"]

T = TypeVar("T")

_logger = logging.getLogger("actors")

_STOPPED_WAITING = (
    "the thread that called GlobalLoop.call() for this task has stopped waiting (its call "
    "returned or failed), so there is no thread to run {fn!r} on"
)


# The blocking call whose thread waits on the current task (None: nobody waits).
_waiting: contextvars.ContextVar[_BlockingCall | None] = contextvars.ContextVar(
    "actors.global_loop.waiting", default=None
)
_thread_state = threading.local()
_callbacks_lock = threading.Lock()


def _thread_queue() -> queue.SimpleQueue[Any]:
    try:
        q: queue.SimpleQueue[Any] = _thread_state.queue
    except AttributeError:
        q = _thread_state.queue = queue.SimpleQueue()
    return q


class _Job:
    """A function to run as a task on the loop; one record per call."""

    __slots__ = ("_args", "_cancel_requested", "_fn", "_loop", "_outcome", "_scope")

    _loop: GlobalLoop
    _fn: Callable[..., Any]
    _args: tuple[Any, ...]
    _scope: anyio.CancelScope | None
    _cancel_requested: bool
    _outcome: outcome.Outcome[Any] | None

    def _setup(self, loop: GlobalLoop, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self._loop = loop
        self._fn = fn
        self._args = args
        self._scope = None
        self._cancel_requested = False
        self._outcome = None

    def _deliver(self, result: outcome.Outcome[Any]) -> None:
        raise NotImplementedError


class _BlockingCall(_Job):
    __slots__ = ("_queue", "_thread_waiting")

    def __init__(self, loop: GlobalLoop, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self._setup(loop, fn, args)
        self._queue = _thread_queue()
        self._thread_waiting = True  # False once call() stopped waiting for this record

    def _deliver(self, result: outcome.Outcome[Any]) -> None:
        self._outcome = result
        self._queue.put(self)


class _Work:
    """A callback sent to a thread that waits in :meth:`GlobalLoop.call`."""

    __slots__ = ("args", "call", "context", "fn", "waiter")

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        context: contextvars.Context,
        waiter: Waiter,
        call: _BlockingCall,
    ) -> None:
        self.fn = fn
        self.args = args
        self.context = context
        self.waiter = waiter
        self.call = call

    def run(self) -> None:
        if self.call._thread_waiting:
            result = outcome.capture(self.context.run, self.fn, *self.args)
        else:  # a stale item: its call returned (or failed) before the item arrived
            result = outcome.Error(NoWaitingThread(_STOPPED_WAITING.format(fn=self.fn)))
        self.waiter.set_threadsafe(result)


class PendingCall(_Job, Generic[T]):
    """A call started by :meth:`GlobalLoop.call_soon`, which nobody waits on yet.

    Created only by :meth:`GlobalLoop.call_soon`.
    """

    __slots__ = ("_callbacks", "_done_lock")

    _callbacks: list[Callable[[PendingCall[T]], object]] | None
    _done_lock: threading.Lock

    def __init__(self) -> None:
        raise TypeError("PendingCall has no public constructor; use GlobalLoop.call_soon()")

    @classmethod
    def _create(
        cls, loop: GlobalLoop, fn: Callable[..., Any], args: tuple[Any, ...]
    ) -> PendingCall[T]:
        self = object.__new__(cls)
        self._setup(loop, fn, args)
        self._callbacks = []
        # Held until the call is done: waiters acquire it, then release it for the next one.
        self._done_lock = threading.Lock()
        self._done_lock.acquire()
        return self

    def __repr__(self) -> str:
        state = "pending" if self._outcome is None else "done"
        return f"<PendingCall {self._fn!r} {state}>"

    def done(self) -> bool:
        """Return True once the call has finished (with a value, an error, or cancelled)."""
        return self._outcome is not None

    def result(self, timeout: float | None = None) -> T:
        """Wait for the call to finish and return its value.

        Args:
            timeout: seconds to wait at most; ``None`` waits for as long as it takes.

        Returns:
            The function's return value.

        Raises:
            TimeoutError: if the call did not finish within ``timeout`` seconds.
            concurrent.futures.CancelledError: if :meth:`cancel` stopped the call.
            LoopClosed: if the loop was closed before the call finished.
            LoopThreadError: if called on the loop thread before the call is done.
            BaseException: whatever the function raised, with its traceback.
        """
        if self._outcome is None:
            if self._loop.is_loop_thread():
                raise LoopThreadError(
                    "PendingCall.result() cannot wait on the global loop's own thread: it "
                    "would block the loop that runs the call; use add_done_callback() instead"
                )
            if not self._done_lock.acquire(timeout=-1 if timeout is None else max(timeout, 0)):
                raise TimeoutError(f"{self!r} did not finish within {timeout} seconds")
            self._done_lock.release()
        result = self._outcome
        if isinstance(result, outcome.Value):
            value: T = result.value
            return value
        assert isinstance(result, outcome.Error)
        error = result.error
        try:
            raise error
        finally:
            del error, result  # no cycle through this frame's traceback

    def add_done_callback(self, callback: Callable[[PendingCall[T]], object]) -> None:
        """Call ``callback(self)`` when the call finishes.

        The callback runs on the loop thread, or at once in this thread if the call is
        already done. An exception it raises is logged and otherwise ignored.

        Args:
            callback: a cheap, non-blocking function of the PendingCall.
        """
        with _callbacks_lock:
            if self._callbacks is not None:
                self._callbacks.append(callback)
                return
        _run_callback(callback, self)

    async def aresult(self) -> T:
        """Wait for the call to finish, from a task of any event loop (another loop's,
        or this loop's own), without blocking that loop, and return its value.

        Raises:
            concurrent.futures.CancelledError, LoopClosed, BaseException: as :meth:`result`.
        """
        if self._outcome is None:
            done = anyio.Event()
            waker = LoopWaker()
            self.add_done_callback(lambda _: waker.wake(done.set))
            await done.wait()
        return self.result()

    def cancel(self) -> bool:
        """Cancel the call's task on the loop.

        Returns:
            False if the call had already finished; True if cancellation was requested.
            A call that finishes before the request reaches the loop keeps its outcome.
        """
        if self._outcome is not None:
            return False
        self._loop._cancel_job(self)
        return True

    def _deliver(self, result: outcome.Outcome[Any]) -> None:
        with _callbacks_lock:
            self._outcome = result
            callbacks, self._callbacks = self._callbacks, None
        self._done_lock.release()
        for callback in callbacks or ():
            _run_callback(callback, self)


def _run_callback(callback: Callable[[PendingCall[Any]], object], call: PendingCall[Any]) -> None:
    try:
        callback(call)
    except Exception:
        _logger.exception("done callback %r of %r raised", callback, call)


class _Background:
    __slots__ = ("args", "cancel_requested", "done", "exited", "fn", "scope")

    def __init__(self, fn: Callable[..., Awaitable[None]], args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args
        self.scope: anyio.CancelScope | None = None
        self.cancel_requested = False
        self.done = False
        self.exited: anyio.Event | None = None
