"""The one module in ``actors`` and ``runtime`` that imports asyncio and trio.

Everything else is written once on anyio. The global loop needs a few primitives below
anyio's level, because the engine pays for them on every sync call:

- :func:`start_loop` runs an event loop of either backend on a daemon thread;
- a :class:`LoopHandle` runs a callback on that loop from any thread and spawns a task on it
  in a given :class:`contextvars.Context`;
- a :class:`Waiter` is awaited by one loop task and completed with an ``outcome.Outcome``
  from any thread, at the cost of one ``call_soon_threadsafe`` / ``run_sync_soon``.
  The awaiting task stays cancellable by anyio cancel scopes: cancellation abandons the
  waiter and a late result is dropped.

trio is imported only when a trio loop starts: importing it costs ~0.2 s.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

import outcome

from ._exceptions import LoopClosed

if TYPE_CHECKING:
    import trio

__all__ = ["BACKENDS", "LoopHandle", "LoopWaker", "Waiter", "current_task", "start_loop"]

BACKENDS = ("asyncio", "trio")

_logger = logging.getLogger("actors")

AsyncFn = Callable[..., Awaitable[object]]


def current_task() -> object:
    """The running task (asyncio's or trio's own object), compared by identity; cheaper
    than ``anyio.get_current_task()``, which builds a record of it."""
    import sniffio

    if sniffio.current_async_library() == "trio":
        import trio

        return trio.lowlevel.current_task()
    return asyncio.current_task()


class Waiter(Protocol):
    """A one-shot slot that one loop task awaits and any thread may fill."""

    async def wait(self) -> outcome.Outcome[Any]:
        """Wait (cancellably) for the outcome. Call once, from a task on the loop."""

    def set(self, result: outcome.Outcome[Any]) -> None:
        """Fill the slot from the loop thread; ignored if filled or abandoned already."""

    def set_threadsafe(self, result: outcome.Outcome[Any]) -> None:
        """Fill the slot from any thread; ignored if the loop has stopped or nobody waits."""


class LoopHandle(Protocol):
    """A running event loop, as seen from any thread."""

    backend: str
    cancelled_exc_class: type[BaseException]

    def run_sync_soon(self, fn: Callable[..., object], *args: object) -> None:
        """Schedule ``fn(*args)`` on the loop thread; callable from any thread.

        ``fn`` runs outside any task and must not raise.

        Raises:
            LoopClosed: if the loop has stopped.
        """

    def spawn(self, async_fn: AsyncFn, args: tuple[Any, ...], context: contextvars.Context) -> None:
        """Start ``async_fn(*args)`` as a task running in ``context``; loop thread only.

        Once the main task has returned, the task is silently not started. Tasks must not
        let exceptions escape: on trio they would crash the whole run.
        """

    def spawn_threadsafe(
        self, async_fn: AsyncFn, args: tuple[Any, ...], context: contextvars.Context
    ) -> None:
        """:meth:`spawn` from any thread.

        Raises:
            LoopClosed: if the loop has stopped.
        """

    def waiter(self) -> Waiter:
        """Return a new :class:`Waiter`; loop thread only."""


def start_loop(
    backend: str,
    main: Callable[[LoopHandle], Awaitable[None]],
    *,
    name: str,
    on_exit: Callable[[], None],
) -> tuple[LoopHandle, threading.Thread]:
    """Start a ``backend`` event loop on a new daemon thread, with ``main(handle)`` as its main task.

    Returns once the loop runs. The loop stops when ``main`` returns. ``on_exit()`` then runs
    on the loop thread, however the loop stopped (it must not raise).

    Args:
        backend: "asyncio" or "trio".
        main: the main task; it receives the loop's handle.
        name: the thread's name.
        on_exit: called on the loop thread once the loop has stopped.

    Returns:
        The loop's handle and its thread.

    Raises:
        ValueError: if ``backend`` is not one of :data:`BACKENDS`.
        Exception: whatever stopped the loop from starting.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: expected 'asyncio' or 'trio'")
    started = threading.Event()
    box: list[Any] = []  # the handle, or the exception that prevented the start

    async def run_main(handle: _AsyncioHandle | _TrioHandle) -> None:
        box.append(handle)
        started.set()
        try:
            await main(handle)
        finally:
            handle.accepting = False

    def target() -> None:
        try:
            if backend == "asyncio":
                asyncio.run(_asyncio_main(run_main, name))
            else:
                import trio

                trio.run(_trio_main, run_main, name)
        except BaseException as exc:
            if not box:
                box.append(exc)
            else:
                _logger.critical("the %s loop on thread %r crashed", backend, name, exc_info=True)
        finally:
            try:
                if isinstance(box[0], _Handle):
                    on_exit()
            finally:
                started.set()

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    started.wait()
    if isinstance(box[0], BaseException):
        raise box[0]
    handle: LoopHandle = box[0]
    return handle, thread


class _Handle:
    """What both backends' handles share."""

    __slots__ = ("accepting", "thread_name")

    backend: str
    cancelled_exc_class: type[BaseException]

    def __init__(self, thread_name: str) -> None:
        self.thread_name = thread_name
        self.accepting = True

    def _stopped(self) -> LoopClosed:
        return LoopClosed(f"the {self.backend} loop on thread {self.thread_name!r} has stopped")


async def _asyncio_main(run_main: Callable[[Any], Awaitable[None]], name: str) -> None:
    await run_main(_AsyncioHandle(asyncio.get_running_loop(), name))


async def _trio_main(run_main: Callable[[Any], Awaitable[None]], name: str) -> None:
    await run_main(_TrioHandle(name))


# ---------------------------------------------------------------------------------- asyncio


class _AsyncioHandle(_Handle):
    __slots__ = ("_loop", "_tasks")

    backend = "asyncio"
    cancelled_exc_class: type[BaseException] = asyncio.CancelledError

    def __init__(self, loop: asyncio.AbstractEventLoop, thread_name: str) -> None:
        super().__init__(thread_name)
        self._loop = loop
        # The loop keeps only weak references to tasks: hold them until they finish.
        self._tasks: set[asyncio.Task[object]] = set()

    def run_sync_soon(self, fn: Callable[..., object], *args: object) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed
            raise self._stopped() from None

    def spawn(self, async_fn: AsyncFn, args: tuple[Any, ...], context: contextvars.Context) -> None:
        if not self.accepting:
            return
        coro: Coroutine[Any, Any, object] = async_fn(*args)  # type: ignore[assignment]
        task: asyncio.Task[object]
        if sys.version_info >= (3, 11):
            task = self._loop.create_task(coro, context=context)
        else:  # pragma: no cover - Python 3.10: the task runs in a copy of context
            task = context.run(self._loop.create_task, coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def spawn_threadsafe(
        self, async_fn: AsyncFn, args: tuple[Any, ...], context: contextvars.Context
    ) -> None:
        self.run_sync_soon(self.spawn, async_fn, args, context)

    def waiter(self) -> Waiter:
        return _AsyncioWaiter(self._loop)


class _AsyncioWaiter:
    __slots__ = ("_future", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._future: asyncio.Future[outcome.Outcome[Any]] = loop.create_future()

    async def wait(self) -> outcome.Outcome[Any]:
        # A cancelled task cancels the future it awaits, so a late set() is a no-op.
        return await self._future

    def set(self, result: outcome.Outcome[Any]) -> None:
        if not self._future.done():
            self._future.set_result(result)

    def set_threadsafe(self, result: outcome.Outcome[Any]) -> None:
        try:
            self._loop.call_soon_threadsafe(self.set, result)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass


# ------------------------------------------------------------------------------------- trio


class _TrioHandle(_Handle):
    __slots__ = ("_lowlevel", "_run_finished", "_token", "cancelled_exc_class")

    backend = "trio"

    def __init__(self, thread_name: str) -> None:
        import trio

        super().__init__(thread_name)
        self._lowlevel = trio.lowlevel
        self._token = trio.lowlevel.current_trio_token()
        self._run_finished = trio.RunFinishedError
        self.cancelled_exc_class = trio.Cancelled

    def run_sync_soon(self, fn: Callable[..., object], *args: object) -> None:
        try:
            self._token.run_sync_soon(fn, *args)
        except self._run_finished:
            raise self._stopped() from None

    def spawn(self, async_fn: AsyncFn, args: tuple[Any, ...], context: contextvars.Context) -> None:
        if self.accepting:
            self._lowlevel.spawn_system_task(async_fn, *args, context=context)

    def spawn_threadsafe(
        self, async_fn: AsyncFn, args: tuple[Any, ...], context: contextvars.Context
    ) -> None:
        self.run_sync_soon(self.spawn, async_fn, args, context)

    def waiter(self) -> Waiter:
        return _TrioWaiter(self)


class _TrioWaiter:
    __slots__ = ("_done", "_handle", "_result", "_task")

    def __init__(self, handle: _TrioHandle) -> None:
        self._handle = handle
        self._task: trio.lowlevel.Task | None = None
        self._result: outcome.Outcome[Any] | None = None
        self._done = False  # filled or abandoned

    async def wait(self) -> outcome.Outcome[Any]:
        if self._result is not None:
            return self._result
        lowlevel = self._handle._lowlevel
        self._task = lowlevel.current_task()
        result: outcome.Outcome[Any] = await lowlevel.wait_task_rescheduled(self._abort)
        return result

    def _abort(self, raise_cancel: object) -> trio.lowlevel.Abort:
        self._task = None
        self._done = True
        succeeded: trio.lowlevel.Abort = self._handle._lowlevel.Abort.SUCCEEDED
        return succeeded

    def set(self, result: outcome.Outcome[Any]) -> None:
        if self._done:
            return
        self._done = True
        task, self._task = self._task, None
        if task is None:  # not waiting yet
            self._result = result
        else:
            self._handle._lowlevel.reschedule(task, outcome.Value(result))

    def set_threadsafe(self, result: outcome.Outcome[Any]) -> None:
        try:
            self._handle.run_sync_soon(self.set, result)
        except LoopClosed:  # nobody waits any more
            pass


# ------------------------------------------------------------------------------- LoopWaker


def _call_soon_threadsafe(
    call_soon_threadsafe: Callable[..., Any], context: contextvars.Context, fn: Callable[[], object]
) -> None:
    call_soon_threadsafe(fn, context=context.copy())


class LoopWaker:
    """Runs callbacks on the event loop that was running where the waker was created.

    Create it in a task of a running loop (asyncio or trio). Any thread may then call
    :meth:`wake`: on the loop's own thread the callback runs at once; from any other thread
    it is scheduled on the loop without blocking. The engine uses it to let store
    notifications, future callbacks and resumers in other threads set loop-local events.

    Raises:
        RuntimeError: when created outside a running event loop.
    """

    __slots__ = ("_run_sync_soon", "_run_finished", "_thread_id")

    def __init__(self) -> None:
        import sniffio

        self._thread_id = threading.get_ident()
        backend = sniffio.current_async_library()
        if backend == "trio":
            import trio

            self._run_sync_soon = trio.lowlevel.current_trio_token().run_sync_soon
            self._run_finished: type[BaseException] = trio.RunFinishedError
        else:
            # A bare asyncio callback runs outside any task, where sniffio (so anyio) cannot
            # tell which library runs: callbacks get a context that says it.
            context = contextvars.copy_context()
            context.run(sniffio.current_async_library_cvar.set, "asyncio")
            self._run_sync_soon = partial(
                _call_soon_threadsafe, asyncio.get_running_loop().call_soon_threadsafe, context
            )
            self._run_finished = RuntimeError

    def wake(self, fn: Callable[[], object]) -> bool:
        """Run ``fn()`` on the loop: now if this is the loop's thread, else soon (where
        anyio calls that need no task work: ``anyio.current_time()``, cancelling a scope,
        setting an event).

        ``fn`` must not raise. Returns False (and drops ``fn``) if the loop has stopped.
        """
        if threading.get_ident() == self._thread_id:
            fn()
            return True
        return self.schedule(fn)

    def schedule(self, fn: Callable[[], object]) -> bool:
        """Schedule ``fn()`` on the loop, never running it inline; safe in signal handlers.

        Returns False (and drops ``fn``) if the loop has stopped.
        """
        try:
            self._run_sync_soon(fn)
        except self._run_finished:
            return False
        return True
