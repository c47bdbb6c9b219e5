"""The global-loop actor: one event loop on a daemon thread that any thread can call into.

A thread blocked in :meth:`GlobalLoop.call` waits on its own queue for either "your call
finished" or "run this callback" (see ``_calls``). So the loop can send work back to the
waiting thread, and calls nest: a callback may call into the loop again, and the inner
call's task may send work back to the same thread, to any depth. The task of a call
finds its waiting thread through a context variable, which child tasks inherit.

Records that several threads may finish (the task that ran them, or :meth:`GlobalLoop.close`)
are claimed with one atomic ``dict.pop`` on ``GlobalLoop._pending``: whoever pops a record
delivers its outcome, everybody else drops theirs.
"""

from __future__ import annotations

import atexit
import contextvars
import inspect
import logging
import os
import threading
import time
import warnings
from collections.abc import Awaitable, Callable
from concurrent.futures import CancelledError
from typing import Any, TypeVar, overload

import anyio
import outcome
import sniffio

from ._backend import BACKENDS, LoopHandle, Waiter, start_loop
from ._calls import _STOPPED_WAITING, PendingCall, _Background, _BlockingCall, _Job, _waiting, _Work
from ._exceptions import LoopClosed, LoopThreadError, NoWaitingThread

__all__ = ["GlobalLoop", "PendingCall", "global_loop"]

T = TypeVar("T")

_logger = logging.getLogger("actors")


_CALL_ON_LOOP_THREAD = (
    "GlobalLoop.call() cannot be used on the global loop's own thread: it would block the "
    "loop it waits for; await the coroutine instead of calling it through the global loop"
)
_NO_WAITING_THREAD = (
    "no thread is waiting on this task: run_in_waiting_thread() works only in a task that "
    "GlobalLoop.call() started on the global loop {name!r}, or in a child task of one"
)


class GlobalLoop:
    """An event loop on a daemon thread that any thread can call into and block on.

    While a thread waits in :meth:`call`, the loop may send work back to it with
    :meth:`run_in_waiting_thread`; calls nest to any depth. The loop starts on first use.

    Args:
        backend: "asyncio" or "trio".
        name: the name of the loop's thread.

    Raises:
        ValueError: if ``backend`` is unknown.
    """

    def __init__(self, backend: str = "asyncio", *, name: str = "stageflow-global-loop") -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}: GlobalLoop runs on 'asyncio' or 'trio'")
        self._backend = backend
        self._name = name
        self._lock = threading.Lock()
        self._handle: LoopHandle | None = None
        self._thread: threading.Thread | None = None
        self._thread_id: int | None = None
        self._closed = False  # no new calls (any thread; set under _lock)
        self._deliver_on_close = True  # wake waiting threads with LoopClosed
        self._pending: dict[_Job, bool] = {}  # unfinished calls, claimed by pop()
        self._background: list[_Background] = []  # under _lock
        # Loop-thread state:
        self._running: set[_Job] = set()
        self._closing = False
        self._stop: Waiter | None = None
        self._all_stopped: anyio.Event | None = None

    def __repr__(self) -> str:
        if self._closed:
            state = "closed"
        elif self._handle is None:
            state = "not started"
        else:
            state = "running"
        return f"<GlobalLoop {self._name!r} backend={self._backend!r} {state}>"

    @property
    def backend(self) -> str:
        """The event loop's backend: "asyncio" or "trio"."""
        return self._backend

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (the loop accepts no more calls)."""
        return self._closed

    @property
    def thread(self) -> threading.Thread | None:
        """The loop's thread, or None before the first use."""
        return self._thread

    def is_loop_thread(self) -> bool:
        """Return True if the current thread is the loop's thread."""
        return threading.get_ident() == self._thread_id

    @overload
    def call(
        self,
        fn: Callable[..., Awaitable[T]],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> T: ...
    @overload
    def call(
        self, fn: Callable[..., T], *args: Any, context: contextvars.Context | None = None
    ) -> T: ...
    def call(
        self, fn: Callable[..., Any], *args: Any, context: contextvars.Context | None = None
    ) -> Any:
        """Run ``fn(*args)`` on the loop and block until it is done.

        A coroutine function runs as a new task; a plain function runs on the loop thread.
        While this thread waits, the task may send work back to it
        (:meth:`run_in_waiting_thread`).

        Args:
            fn: the function to run.
            *args: its positional arguments.
            context: run in a copy of this context instead of a copy of the calling
                thread's current context.

        Returns:
            What ``fn`` returned (awaited, if it returned an awaitable).

        Raises:
            LoopThreadError: if called on the loop's own thread.
            LoopClosed: if the loop is closed, or closes before the call finishes.
            BaseException: whatever ``fn`` raised, with its traceback.
        """
        if threading.get_ident() == self._thread_id:
            raise LoopThreadError(_CALL_ON_LOOP_THREAD)
        job = _BlockingCall(self, fn, args)
        q = job._queue
        try:
            self._submit(job, contextvars.copy_context() if context is None else context.copy())
            while job._outcome is None:
                item = q.get()
                if type(item) is _Work:
                    item.run()
                # Otherwise a finished call record: ours, or an outer call of this thread that
                # finished while we ran one of its callbacks (it re-checks its own outcome).
        except BaseException:
            job._thread_waiting = False
            self._cancel_job(job)
            raise
        job._thread_waiting = False
        return job._outcome.unwrap()

    @overload
    def call_soon(
        self,
        fn: Callable[..., Awaitable[T]],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> PendingCall[T]: ...
    @overload
    def call_soon(
        self, fn: Callable[..., T], *args: Any, context: contextvars.Context | None = None
    ) -> PendingCall[T]: ...
    def call_soon(
        self, fn: Callable[..., Any], *args: Any, context: contextvars.Context | None = None
    ) -> PendingCall[Any]:
        """Start ``fn(*args)`` on the loop, like :meth:`call`, without waiting for it.

        No thread waits on the task, so it cannot use :meth:`run_in_waiting_thread`.
        Callable from any thread, the loop thread included.

        Args:
            fn: the function to run.
            *args: its positional arguments.
            context: run in a copy of this context instead of a copy of the current one.

        Returns:
            A :class:`PendingCall` for the outcome.

        Raises:
            LoopClosed: if the loop is closed.
        """
        job: PendingCall[Any] = PendingCall._create(self, fn, args)
        self._submit(job, contextvars.copy_context() if context is None else context.copy())
        return job

    async def run_in_waiting_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the thread blocked in the :meth:`call` that started this task.

        ``fn`` runs in a copy of this task's context. If this task is cancelled meanwhile,
        the cancellation is raised at once and ``fn`` is abandoned: it finishes on its
        thread later and its result is dropped.

        Args:
            fn: a plain function.
            *args: its positional arguments.

        Returns:
            What ``fn`` returned.

        Raises:
            NoWaitingThread: if no thread waits on this task (it was not started by
                :meth:`call`, nor by a task that was) or that thread stopped waiting.
            BaseException: whatever ``fn`` raised, with its traceback.
        """
        call = _waiting.get()
        if call is None or call._loop is not self or threading.get_ident() != self._thread_id:
            raise NoWaitingThread(_NO_WAITING_THREAD.format(name=self._name))
        if not call._thread_waiting:
            raise NoWaitingThread(_STOPPED_WAITING.format(fn=fn))
        assert self._handle is not None
        waiter = self._handle.waiter()
        call._queue.put(_Work(fn, args, contextvars.copy_context(), waiter, call))
        result: T = (await waiter.wait()).unwrap()
        return result

    def start_background(
        self, fn: Callable[..., Awaitable[None]], *args: Any, name: str | None = None
    ) -> None:
        """Start ``fn(*args)`` as a long-lived service task on the loop.

        On :meth:`close`, background tasks are cancelled in reverse start order and awaited,
        so their ``finally`` blocks and shielded cleanup run. An exception the task raises
        is logged. Callable from any thread, the loop thread included.

        Args:
            fn: a coroutine function.
            *args: its positional arguments.
            name: a name for the task, used in logs.

        Raises:
            LoopClosed: if the loop is closed.
        """
        handle = self._started_handle()
        bg = _Background(fn, args)
        with self._lock:
            if self._closed:
                raise LoopClosed(self._closed_message())
            self._background.append(bg)
        self._spawn(handle, self._run_background, (bg, name or repr(fn)), self._fresh_context())

    def close(self, timeout: float = 5.0) -> None:
        """Stop the loop and join its thread.

        Pending calls fail with :class:`LoopClosed` (their waiting threads wake up at once);
        background tasks are cancelled in reverse start order and awaited; every other task
        is cancelled. Later calls raise :class:`LoopClosed`. Closing twice is harmless.

        Args:
            timeout: seconds to wait at most for the cleanup and the thread.

        Raises:
            LoopThreadError: if called on the loop's own thread.
        """
        self._close(timeout, deliver=True)

    # ---------------------------------------------------------------------- internals

    def _close_at_exit(self) -> None:
        # Threads still blocked in call() at exit are daemon threads (the interpreter has
        # joined the others): waking them would only let them print tracebacks while the
        # interpreter shuts down, so their calls are dropped and they stay asleep.
        self._close(5.0, deliver=False)

    def _close(self, timeout: float, *, deliver: bool) -> None:
        if self.is_loop_thread():
            raise LoopThreadError(
                "GlobalLoop.close() cannot be used on the global loop's own thread: it "
                "would wait for itself; close the loop from another thread"
            )
        deadline = time.monotonic() + timeout
        with self._lock:
            first = not self._closed
            self._closed = True
            if first:
                self._deliver_on_close = deliver
            handle, thread = self._handle, self._thread
        if handle is None:
            return
        if first:
            try:
                handle.run_sync_soon(self._request_stop, timeout)
            except LoopClosed:
                pass
        assert thread is not None
        thread.join(max(deadline - time.monotonic(), 0))
        self._fail_pending()
        if thread.is_alive():
            warnings.warn(
                f"{self!r} did not stop within {timeout} seconds; its daemon thread is left "
                "running",
                RuntimeWarning,
                stacklevel=3,
            )

    def _closed_message(self, *, pending: bool = False) -> str:
        if pending:
            return f"the global loop {self._name!r} closed before the call finished"
        return f"the global loop {self._name!r} is closed and accepts no more calls"

    def _started_handle(self) -> LoopHandle:
        handle = self._handle
        if handle is None or self._closed:
            with self._lock:
                if self._closed:
                    raise LoopClosed(self._closed_message())
                if self._handle is None:
                    self._handle, self._thread = start_loop(
                        self._backend, self._main, name=self._name, on_exit=self._fail_pending
                    )
                    self._thread_id = self._thread.ident
                handle = self._handle
        return handle

    def _fresh_context(self) -> contextvars.Context:
        context = contextvars.copy_context()
        context.run(_waiting.set, None)
        return context

    def _spawn(
        self,
        handle: LoopHandle,
        async_fn: Callable[..., Awaitable[None]],
        args: tuple[Any, ...],
        context: contextvars.Context,
    ) -> None:
        if threading.get_ident() == self._thread_id:
            handle.spawn(async_fn, args, context)
        else:
            handle.spawn_threadsafe(async_fn, args, context)

    def _submit(self, job: _Job, context: contextvars.Context) -> None:
        handle = self._started_handle()
        if context.get(sniffio.current_async_library_cvar) is not None:
            # Called from a task of another event loop: the job must not believe it runs
            # there (anyio would pick that loop's backend).
            context.run(sniffio.current_async_library_cvar.set, None)
        self._pending[job] = True
        # Re-check after registering: either close() sees this job, or we see close().
        if self._closed:
            self._pending.pop(job, None)
            raise LoopClosed(self._closed_message())
        try:
            self._spawn(handle, self._run_job, (job,), context)
        except LoopClosed:
            self._pending.pop(job, None)
            raise LoopClosed(self._closed_message()) from None

    def _finish(self, job: _Job, result: outcome.Outcome[Any]) -> None:
        if self._pending.pop(job, None) is not None:
            job._deliver(result)

    def _fail_pending(self) -> None:
        """Fail (or, at exit, drop) every unfinished call; any thread, idempotent."""
        with self._lock:
            self._closed = True
        while True:
            try:
                job, _ = self._pending.popitem()
            except KeyError:
                return
            if self._deliver_on_close:
                job._deliver(outcome.Error(LoopClosed(self._closed_message(pending=True))))

    def _cancel_job(self, job: _Job) -> None:
        if threading.get_ident() == self._thread_id:
            self._cancel_on_loop(job)
            return
        handle = self._handle
        if handle is not None:
            try:
                handle.run_sync_soon(self._cancel_on_loop, job)
            except LoopClosed:
                pass

    def _cancel_on_loop(self, job: _Job) -> None:
        job._cancel_requested = True
        if job._scope is not None:
            job._scope.cancel()

    async def _run_job(self, job: _Job) -> None:
        _waiting.set(job if type(job) is _BlockingCall else None)
        cancelled_exc = self._handle.cancelled_exc_class  # type: ignore[union-attr]
        result: outcome.Outcome[Any] | None = None
        try:
            with anyio.CancelScope() as scope:
                job._scope = scope
                self._running.add(job)
                if job._cancel_requested or self._closing:
                    scope.cancel()
                else:
                    try:
                        value = job._fn(*job._args)
                        if inspect.isawaitable(value):
                            value = await value
                        result = outcome.Value(value)
                    except cancelled_exc:
                        raise
                    except BaseException as exc:  # noqa: BLE001 - it goes to the caller
                        result = outcome.Error(exc)
        finally:
            self._running.discard(job)
            if result is None:
                if self._closing:
                    error: BaseException = LoopClosed(self._closed_message(pending=True))
                else:
                    error = CancelledError(f"the call to {job._fn!r} was cancelled")
                result = outcome.Error(error)
            self._finish(job, result)
            if self._all_stopped is not None and not self._running:
                self._all_stopped.set()

    async def _run_background(self, bg: _Background, name: str) -> None:
        cancelled_exc = self._handle.cancelled_exc_class  # type: ignore[union-attr]
        try:
            with anyio.CancelScope() as scope:
                bg.scope = scope
                if bg.cancel_requested:
                    scope.cancel()
                await bg.fn(*bg.args)
        except cancelled_exc:
            raise
        except BaseException:
            _logger.exception("background task %s on %r crashed", name, self)
        finally:
            bg.done = True
            with self._lock:
                self._background.remove(bg)
            if bg.exited is not None:
                bg.exited.set()

    def _request_stop(self, timeout: float) -> None:
        assert self._stop is not None
        self._stop.set(outcome.Value(timeout))

    async def _main(self, handle: LoopHandle) -> None:
        # Created before the first await: close() can only reach us after that.
        self._stop = handle.waiter()
        timeout: float = (await self._stop.wait()).unwrap()
        self._closing = True
        self._fail_pending()
        with anyio.move_on_after(timeout):
            with self._lock:
                background = list(self._background)
            for bg in reversed(background):
                if bg.done:
                    continue
                bg.cancel_requested = True
                bg.exited = anyio.Event()
                if bg.scope is not None:
                    bg.scope.cancel()
                await bg.exited.wait()
            if self._running:
                self._all_stopped = anyio.Event()
                for job in list(self._running):
                    self._cancel_on_loop(job)
                await self._all_stopped.wait()


_global: GlobalLoop | None = None
_global_lock = threading.Lock()


def global_loop() -> GlobalLoop:
    """Return the process-wide :class:`GlobalLoop`, creating it on first use.

    Its backend comes from the environment variable ``STAGEFLOW_GLOBAL_LOOP`` ("asyncio",
    the default, or "trio"). It is closed when the interpreter exits.

    Returns:
        The process-wide global loop.

    Raises:
        ValueError: if ``STAGEFLOW_GLOBAL_LOOP`` names no backend.
    """
    global _global
    loop = _global
    if loop is None:
        with _global_lock:
            if _global is None:
                backend = os.environ.get("STAGEFLOW_GLOBAL_LOOP") or "asyncio"
                if backend not in BACKENDS:
                    raise ValueError(
                        f"STAGEFLOW_GLOBAL_LOOP={backend!r} names no event loop backend: "
                        "set it to 'asyncio' or 'trio', or unset it"
                    )
                _global = GlobalLoop(backend)
                atexit.register(_global._close_at_exit)
            loop = _global
    return loop
