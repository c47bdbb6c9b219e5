"""Drivers: what a run's engine needs from the place it runs, in two forms.

The engine is written once, as coroutines. Everything it does outside itself goes
through its driver: asking the orchestrator, waiting as a decision says, waiting for
upstream futures, calling the body and the hooks, shielding cleanup from cancellation.

- :class:`LoopDriver` runs the engine as a task of an event loop (an async flow's loop,
  the loop of a submitted task run). Async bodies are awaited there, with timeouts as
  cancel scopes; sync bodies go where the run's :class:`~runtime.engine._body.SyncTarget`
  says (a worker thread, or the thread waiting on a global-loop call). A submitted run's
  task runner may call its body elsewhere instead (a ``remote`` body: a Dask worker).
- :class:`ThreadDriver` runs the engine right on the calling thread, with no event loop
  of its own (a sync task called from a sync flow's body, on the caller's thread).
  Every effect completes without suspending: the orchestrator is asked with a direct
  dispatch on this thread (``ActorRef.ask_here``, or ``ask_from_thread`` when it is busy),
  the body is called here, interruptible by a timeout or a cancellation
  (:mod:`runtime.engine._interrupt`), and waits block this thread. :func:`drive` runs such
  an engine coroutine to its end in one step; there is no loop to hand it to.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from actors import SystemClock, global_loop

from ..core._exceptions import TaskRunTimeoutError
from ..orchestration._waiting import wait_before_proposing_again
from ._body import CANCEL, TIMEOUT, SyncBody, SyncTarget, call_sync
from ._context import TaskRunContext
from ._interrupt import BodyInterrupted, InterruptibleCall, call_interruptibly

if TYPE_CHECKING:
    from ..orchestration._orchestrator import Transition
    from ..orchestration._runtime import Runtime
    from ._task_runners import RemoteBody

__all__ = ["Driver", "InlineRefused", "LoopDriver", "ThreadDriver", "drive"]

T = TypeVar("T")


class InlineRefused(Exception):
    """Raised by a :class:`ThreadDriver` whose first request finds the orchestrator of
    this very thread's loop busy: nothing was recorded, so the caller runs the run
    another way."""


class Driver:
    """The effects an engine uses; see the module docstring. Subclasses implement them."""

    runtime: Runtime

    async def ask(self, message: Any) -> Any:
        """Send ``message`` to the orchestrator and return its reply."""
        raise NotImplementedError

    async def wait(self, transition: Transition) -> None:
        """Wait as a WAIT decision says: its delay, or until the watched run changes."""
        raise NotImplementedError

    async def wait_for(self, futures: list[Any]) -> None:
        """Wait until every future is done."""
        raise NotImplementedError

    async def call_body(
        self,
        fn: Callable[..., Any],
        is_async: bool,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
    ) -> Any:
        """Call a run's body and return what it returned.

        Raises:
            TaskRunTimeoutError: the body ran longer than ``timeout`` seconds.
            BaseException: whatever the body raised.
        """
        raise NotImplementedError

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call a hook or a condition (sync or async) and return its result."""
        raise NotImplementedError

    def shielded(self) -> contextlib.AbstractContextManager[Any]:
        """A block that cancellation cannot interrupt (cleanup that must report)."""
        raise NotImplementedError


def _task_run_label() -> str:
    """``Task run 'name'`` for the task run whose body is called (for warnings)."""
    context = TaskRunContext.get()
    return "A task run" if context is None else f"Task run {context.task_run.name!r}"


class LoopDriver(Driver):
    """Runs an engine as a task of the current event loop; see the module docstring.

    Args:
        runtime: the runtime whose orchestrator decides the run's states.
        target: where sync bodies and sync hooks run.
        remote: calls the body elsewhere, sync or async (hooks still run here).
    """

    __slots__ = ("_ask", "body", "remote", "runtime", "target")

    def __init__(
        self, runtime: Runtime, target: SyncTarget, remote: RemoteBody | None = None
    ) -> None:
        self.runtime = runtime
        self.target = target
        self.remote = remote
        self._ask = runtime.orchestrator.ask  # type: ignore[union-attr]
        self.body: SyncBody | None = None  # the sync body being called, to interrupt it

    async def ask(self, message: Any) -> Any:
        return await self._ask(message)

    async def wait(self, transition: Transition) -> None:
        await wait_before_proposing_again(self.runtime, transition)

    async def wait_for(self, futures: list[Any]) -> None:
        for future in futures:
            await future.wait_async()

    async def call_body(
        self,
        fn: Callable[..., Any],
        is_async: bool,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
    ) -> Any:
        if self.remote is not None:
            return await self.remote(fn, is_async, args, kwargs, timeout)
        if not is_async:
            body = self.body = SyncBody(self.target, _task_run_label())
            try:
                return await body.run(fn, args, kwargs, timeout)
            except BodyInterrupted:
                if body.reason == TIMEOUT:
                    raise TaskRunTimeoutError(
                        f"Scope timed out after {timeout} second(s)."
                    ) from None
                raise
            finally:
                self.body = None
        if timeout is None:
            return await fn(*args, **kwargs)
        with anyio.CancelScope(deadline=anyio.current_time() + timeout) as scope:
            result = await fn(*args, **kwargs)
        if scope.cancelled_caught:
            raise TaskRunTimeoutError(f"Scope timed out after {timeout} second(s).")
        return result

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        if inspect.iscoroutinefunction(fn):
            return await fn(*args)
        result = await call_sync(self.target, fn, *args)
        if inspect.isawaitable(result):
            result = await result
        return result

    def shielded(self) -> contextlib.AbstractContextManager[Any]:
        return anyio.CancelScope(shield=True)


class ThreadDriver(Driver):
    """Runs an engine on the calling thread, without an event loop; see the module
    docstring.

    Args:
        runtime: the runtime whose orchestrator decides the run's states (it may run on
            this very thread's loop, blocked while this engine runs, or on another thread).
    """

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._orchestrator = runtime.orchestrator
        self._asked = False
        self._cancelled = False
        self.body: InterruptibleCall | None = None  # the body being called, to interrupt it

    def cancel(self, reason: Any = None) -> None:
        """Stop the run's body, from any thread (the run actor's ``on_cancel``): interrupt
        it if it runs, else keep it from starting. A run waiting here (for upstreams, a
        retry's delay) notices once the wait ends."""
        self._cancelled = True
        body = self.body
        if body is not None:
            body.interrupt(CANCEL)

    async def ask(self, message: Any) -> Any:
        orchestrator = self._orchestrator
        assert orchestrator is not None
        try:
            reply = orchestrator.ask_here(message)
            self._asked = True
            return reply
        except anyio.WouldBlock:
            if self.runtime.is_local():
                if not self._asked:
                    raise InlineRefused from None
                raise RuntimeError(
                    "The orchestrator of this thread's event loop is busy and a sync call "
                    "cannot wait for it here; this is a bug in stageflow, please report it."
                ) from None
            self._asked = True
            return orchestrator.ask_from_thread(message)

    async def wait(self, transition: Transition) -> None:
        runtime = self.runtime
        if isinstance(runtime.clock, SystemClock) or transition.delay <= 0:
            self._wait_here(transition)
            return
        # Another clock (a test's fake one) is driven by a loop: wait there.
        loop = runtime.sync_loop or global_loop()
        loop.call(wait_before_proposing_again, runtime, transition)

    def _wait_here(self, transition: Transition) -> None:
        woken = threading.Event()
        backend = self.runtime.backend
        assert backend is not None
        unsubscribe = (
            backend.subscribe(transition.watch, lambda run, state: woken.set())
            if transition.watch is not None
            else None
        )
        try:
            woken.wait(max(0.0, transition.delay))
        finally:
            if unsubscribe is not None:
                unsubscribe()

    async def wait_for(self, futures: list[Any]) -> None:
        for future in futures:
            future.wait()

    async def call_body(
        self,
        fn: Callable[..., Any],
        is_async: bool,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
    ) -> Any:
        if is_async:
            # No loop here to await it on: the body goes to a global loop, as a call.
            loop = self.runtime.sync_loop or global_loop()
            return loop.call(_with_timeout, fn, args, kwargs, timeout)
        call = self.body = InterruptibleCall()
        if self._cancelled:
            call.interrupt(CANCEL)  # the call will not start
        try:
            return call_interruptibly(call, fn, args, kwargs, timeout, TIMEOUT)
        except BodyInterrupted:
            if call.reason == TIMEOUT:
                raise TaskRunTimeoutError(f"Scope timed out after {timeout} second(s).") from None
            raise
        finally:
            self.body = None

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        if inspect.iscoroutinefunction(fn):
            loop = self.runtime.sync_loop or global_loop()
            return loop.call(fn, *args)
        result = fn(*args)
        if inspect.isawaitable(result):
            loop = self.runtime.sync_loop or global_loop()
            return loop.call(_await, result)
        return result

    def shielded(self) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()


async def _with_timeout(
    fn: Callable[..., Awaitable[Any]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    timeout: float | None,
) -> Any:
    if timeout is None:
        return await fn(*args, **kwargs)
    with anyio.CancelScope(deadline=anyio.current_time() + timeout) as scope:
        result = await fn(*args, **kwargs)
    if scope.cancelled_caught:
        raise TaskRunTimeoutError(f"Scope timed out after {timeout} second(s).")
    return result


async def _await(awaitable: Awaitable[T]) -> T:
    return await awaitable


def drive(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run an engine coroutine whose driver is a :class:`ThreadDriver` to its end, on this
    thread, and return its result.

    Raises:
        BaseException: whatever the coroutine raised.
        RuntimeError: the coroutine tried to suspend (an effect that needs an event loop
            was used with a ThreadDriver: a bug).
    """
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coroutine.close()
    raise RuntimeError(
        "A run driven on the calling thread tried to suspend on an event loop; this is a bug "
        "in stageflow, please report it."
    )
