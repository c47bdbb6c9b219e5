"""Where a flow or task body runs, and calling it there.

Async bodies run in the engine's own task. Sync bodies run either on the thread that is
waiting for the engine (a sync flow's caller, a sync task called from a sync flow: no
thread hop) or on a worker thread (submitted sync tasks). Either way the body runs in a
copy of the engine task's context, so it sees its run context.

A sync body on another thread is interruptible (:class:`SyncBody`): a timeout or a
cancellation raises into its thread (:mod:`runtime.engine._interrupt`). A body that does
not stop (stuck in a C call that reaches no bytecode) is abandoned after a grace period,
with a warning: the engine stops waiting, the body finishes on its thread later and its
result is ignored.
"""

from __future__ import annotations

import enum
import logging
import math
import threading
from typing import Any, Awaitable, Callable

import anyio
import attrs

from actors import GlobalLoop

from ._interrupt import BodyInterrupted, InterruptibleCall, call_interruptibly

__all__ = [
    "ABANDON_GRACE",
    "CANCEL",
    "TIMEOUT",
    "Body",
    "abandoned_bodies",
    "BodyPlacement",
    "SyncBody",
    "call_body",
    "call_sync",
]

_logger = logging.getLogger("stageflow.engine")

TIMEOUT = "timeout"
"""The reason of an interruption by the run's timeout."""
CANCEL = "cancel"
"""The reason of an interruption by a cancellation of the run."""

ABANDON_GRACE = 1.0
"""Seconds an interrupted sync body on another thread has to stop before it is abandoned."""

_abandoned_lock = threading.Lock()
_abandoned: set[SyncBody] = set()  # abandoned bodies whose call has not returned yet


def abandoned_bodies() -> int:
    """How many abandoned sync bodies are still running on their threads.

    Their threads may be worker threads the interpreter waits for at exit (asyncio's are
    not daemon threads): a command that is done can exit without them
    (``stageflow serve`` and ``stageflow worker`` do)."""
    with _abandoned_lock:
        return len(_abandoned)


Body = Callable[[tuple[Any, ...], dict[str, Any]], Awaitable[Any]]
"""A body that replaces a run's function (a generator's pump): called with the call's
``(args, kwargs)``."""


class BodyPlacement(enum.Enum):
    """Where sync bodies of a run go."""

    WAITING_THREAD = "waiting-thread"
    WORKER_THREAD = "worker-thread"


@attrs.frozen
class SyncTarget:
    """Where sync code of a run executes: the waiting thread of ``loop``, or a worker
    thread limited by ``limiter``."""

    placement: BodyPlacement
    loop: GlobalLoop | None = None
    limiter: anyio.CapacityLimiter | None = None


WORKER_THREADS = SyncTarget(BodyPlacement.WORKER_THREAD)


async def call_sync(target: SyncTarget, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call the sync function ``fn`` where ``target`` says, in a copy of this context."""
    if kwargs:
        args = (_KwargsCall(fn, kwargs), *args)
        fn = _call_with_kwargs
    if target.placement is BodyPlacement.WAITING_THREAD:
        assert target.loop is not None
        return await target.loop.run_in_waiting_thread(fn, *args)
    return await anyio.to_thread.run_sync(fn, *args, limiter=target.limiter, abandon_on_cancel=True)


async def call_body(
    is_async: bool,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    target: SyncTarget,
) -> Any:
    """Call a flow or task body: await it if async, else run it per ``target``."""
    if is_async:
        coro: Awaitable[Any] = fn(*args, **kwargs)
        return await coro
    return await call_sync(target, fn, *args, **kwargs)


@attrs.frozen
class _KwargsCall:
    fn: Callable[..., Any]
    kwargs: dict[str, Any]


def _call_with_kwargs(call: _KwargsCall, *args: Any) -> Any:
    return call.fn(*args, **call.kwargs)


class SyncBody:
    """One call of a sync body on another thread (a worker thread, or the thread waiting on
    a global-loop call), which the engine may interrupt.

    :meth:`run` awaits the call. A timeout (``timeout`` seconds, measured on the body's
    thread) or :meth:`interrupt` raises :class:`BodyInterrupted` into the body's thread;
    :attr:`reason` then says why (:data:`TIMEOUT`, :data:`CANCEL`, or what ``interrupt``
    was given), and :meth:`run` raises ``BodyInterrupted``. A body that has not stopped
    :data:`ABANDON_GRACE` seconds later is abandoned, with a warning naming ``what``.

    Args:
        target: where the body runs.
        what: the run, for the warning (e.g. "Task run 'load-0'").
        on_interrupt: called with the reason as soon as an interruption is sent (from the
            interrupting thread), before the body has stopped.
    """

    def __init__(
        self,
        target: SyncTarget,
        what: str,
        on_interrupt: Callable[[Any], None] | None = None,
    ) -> None:
        self.target = target
        self.what = what
        self.on_interrupt = on_interrupt
        self.reason: Any = None
        self._call: InterruptibleCall | None = None
        self._scope: anyio.CancelScope | None = None
        # Under _abandoned_lock: the body's thread took the call, and has returned from it;
        # the engine stopped waiting for it (a body not started by then never starts).
        self._started = False
        self._returned = False
        self._left = False

    async def run(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
    ) -> Any:
        """Call the body where ``target`` says and return its result.

        Raises:
            BodyInterrupted: the body was interrupted (see :attr:`reason`), or abandoned.
            BaseException: whatever the body raised.
        """
        deadline = math.inf if timeout is None else anyio.current_time() + timeout + ABANDON_GRACE
        with anyio.CancelScope(deadline=deadline) as scope:
            self._scope = scope
            try:
                result = await call_sync(self.target, self._on_thread, fn, args, kwargs, timeout)
            except anyio.get_cancelled_exc_class():  # from outside: the thread is left to it
                self._abandon()
                raise
            except Exception:
                if self.reason is not None:  # what the body raised as it was stopped
                    raise BodyInterrupted from None
                raise
            finally:
                self._scope = None
        if scope.cancelled_caught:
            self.reason = self.reason or TIMEOUT
            self._abandon()
            _logger.warning(
                "%s did not stop when it was interrupted (%s): its body is stuck in a call "
                "that cannot be interrupted. It is abandoned on its thread, and its result "
                "will be ignored.",
                self.what,
                self.reason,
            )
            raise BodyInterrupted
        if self.reason is not None:
            raise BodyInterrupted  # the body caught the interruption and returned: too late
        return result

    def _abandon(self) -> None:
        """Count the body among :func:`abandoned_bodies` until its call returns."""
        with _abandoned_lock:
            self._left = True
            if self._started and not self._returned:
                _abandoned.add(self)

    def interrupt(self, reason: Any) -> None:
        """Stop the body (call on the engine's loop): raise into its thread now, abandon it
        if it has not stopped :data:`ABANDON_GRACE` seconds later."""
        if self.reason is None:
            self.reason = reason
            if self.on_interrupt is not None:
                self.on_interrupt(reason)
        call = self._call
        if call is not None:
            call.interrupt(reason)
        scope = self._scope
        if scope is not None:
            scope.deadline = min(scope.deadline, anyio.current_time() + ABANDON_GRACE)

    def _on_thread(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
    ) -> Any:
        with _abandoned_lock:
            if self._left:
                raise BodyInterrupted  # its engine stopped waiting before it started
            self._started = True
        try:
            if self.reason is not None:
                raise BodyInterrupted  # interrupted before it started
            call = self._call = InterruptibleCall(self.on_interrupt)
            try:
                return call_interruptibly(call, fn, args, kwargs, timeout, TIMEOUT)
            finally:
                self._call = None
                if call.reason is not None and self.reason is None:
                    self.reason = call.reason
        finally:
            with _abandoned_lock:
                self._returned = True
                _abandoned.discard(self)
