"""Stopping a sync body that runs on a thread, as Prefect does: by raising into it.

Python cannot stop a thread. It can make a thread raise an exception at its next bytecode
(``PyThreadState_SetAsyncExc``), and on the main thread a signal handler runs between
bytecodes too, after breaking a blocking ``time.sleep``, ``select`` or read (``SIGALRM``,
from a timer). So:

- a timeout (``timeout_seconds``) or a cancellation of a run whose sync body runs on the
  main thread raises :class:`BodyInterrupted` there through ``SIGALRM``, if the program
  has not put a handler of its own on that signal; elsewhere, and as a fallback, at the
  thread's next bytecode;
- a body stuck in a C call that reaches no bytecode (a long ``time.sleep`` on a worker
  thread, a blocking socket call without a timeout) is not interrupted until that call
  returns. The engine stops waiting for a worker-thread body then (it is *abandoned*, with
  a warning, its late result ignored); a body on the caller's own thread is waited for.

:class:`InterruptibleCall` arms a thread for the duration of one call; another thread (or a
timer) calls :meth:`InterruptibleCall.interrupt`. An interruption that arrives as the call
returns is either delivered inside the call's ``try`` or cleared, never raised later in
unrelated code. One that arrives while the thread is in the kernel's critical code (an
actor's directly dispatched message: a state being decided and recorded, see
:func:`actors.critical`) is raised as that code ends.
"""

from __future__ import annotations

import ctypes
import heapq
import itertools
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from actors import defer

__all__ = ["BodyInterrupted", "InterruptibleCall", "call_interruptibly", "main_thread_in_body"]


class BodyInterrupted(BaseException):
    """Raised into a sync body's thread to stop it (a timeout or a cancellation). The engine
    catches it around the body and reports the cause; a body that catches it itself (a bare
    ``except:``) defeats the interruption."""


_MAIN = threading.main_thread().ident
_main_armed: list[Any] = []  # the interruptible calls armed on the main thread now


def main_thread_in_body() -> bool:
    """Whether the main thread is inside an interruptible call (a run's sync body) now,
    rather than in stageflow's own code (waiting on a global loop, recording a state,
    running a hook)."""
    return bool(_main_armed)


def _raise_in(thread_id: int, exc_type: type[BaseException] | None) -> None:
    """Make ``thread_id`` raise ``exc_type`` at its next bytecode; None clears a pending one."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), None if exc_type is None else ctypes.py_object(exc_type)
    )


class InterruptibleCall:
    """One sync call on the current thread that other threads may interrupt.

    Use :func:`call_interruptibly`, or: create on the thread that makes the call, then
    ``with call.armed(): ...``.

    Args:
        on_interrupt: called with the reason when an interruption is sent, on the
            interrupting thread (the engine marks its run as no longer running its body).

    Attributes:
        reason: what the first :meth:`interrupt` said (None until then).
    """

    def __init__(self, on_interrupt: Callable[[Any], None] | None = None) -> None:
        self.thread_id = threading.get_ident()
        self.reason: Any = None
        self._on_interrupt = on_interrupt
        self._lock = threading.Lock()
        self._armed = False
        self._done = False  # the call returned: later interruptions are ignored
        self._pending = False  # an exception was raised into the thread, not yet seen
        self._alarm = False  # interrupt through SIGALRM (main thread, handler installed)

    def interrupt(self, reason: Any) -> bool:
        """Raise :class:`BodyInterrupted` in the call's thread, once; any thread may call.

        Returns whether the interruption was sent (False: the call has returned, or was
        interrupted already). One sent before the call started stops it from starting.
        """
        with self._lock:
            if self._done or self.reason is not None:
                return False
            self.reason = reason
            if self._on_interrupt is not None:
                self._on_interrupt(reason)
            if not self._armed:
                return True  # before the call: _arm raises instead
            self._pending = True
            if self._alarm:
                signal.pthread_kill(self.thread_id, signal.SIGALRM)
            elif not defer(self.thread_id, BodyInterrupted):
                _raise_in(self.thread_id, BodyInterrupted)
            return True

    def _arm(self) -> None:
        with self._lock:
            if self.reason is not None:  # interrupted before the call started
                self._done = True
                raise BodyInterrupted
        self._alarm = self.thread_id == _MAIN and _alarms.install(self)
        with self._lock:
            self._armed = True
        if self.thread_id == _MAIN:
            _main_armed.append(self)

    def _disarm(self) -> None:
        if self.thread_id == _MAIN and self in _main_armed:
            _main_armed.remove(self)
        with self._lock:
            self._armed = False
            self._done = True
            if self._pending and not self._alarm:
                _raise_in(self.thread_id, None)  # clear one not raised yet
            self._pending = False
        if self._alarm:
            _alarms.remove(self)

    def _on_alarm(self) -> None:
        """SIGALRM on the main thread: raise if an interruption is pending for this call."""
        with self._lock:
            raise_now = self._armed and self._pending
            self._pending = False
        if raise_now and not defer(_MAIN, BodyInterrupted):  # type: ignore[arg-type]
            raise BodyInterrupted


def call_interruptibly(
    call: InterruptibleCall,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    timeout: float | None = None,
    on_timeout: Any = None,
) -> Any:
    """Call ``fn(*args, **kwargs)`` on this thread; another thread may interrupt it through
    ``call`` (created on this thread), and so does a timer after ``timeout`` seconds, with
    ``on_timeout`` as the reason. After an interruption ``call.reason`` is set, whether the
    body let :class:`BodyInterrupted` out or swallowed it.

    Raises:
        BodyInterrupted: the call was interrupted (an interruption arriving as the call
            returns surfaces here too, or not at all).
        BaseException: whatever ``fn`` raised.
    """
    timer = None
    call._arm()
    try:
        if timeout is not None:
            timer = _timers.add(time.monotonic() + timeout, call, on_timeout)
        return fn(*args, **kwargs)
    finally:
        if timer is not None:
            _timers.cancel(timer)
        call._disarm()


# -- SIGALRM on the main thread ----------------------------------------------------------


class _Alarms:
    """The interruptible calls on the main thread, and the SIGALRM handler that serves them
    while any is armed (installed only where the program has none of its own)."""

    def __init__(self) -> None:
        self._calls: list[InterruptibleCall] = []
        self._previous: Any = None

    def install(self, call: InterruptibleCall) -> bool:
        if not self._calls:
            try:
                current = signal.getsignal(signal.SIGALRM)
            except ValueError:
                return False
            if current not in (signal.SIG_DFL, signal.SIG_IGN, None):
                return False  # the program's own handler: leave it alone
            try:
                signal.signal(signal.SIGALRM, self._handler)
            except ValueError:  # not the main thread after all
                return False
            self._previous = current
        self._calls.append(call)
        return True

    def remove(self, call: InterruptibleCall) -> None:
        if call in self._calls:
            self._calls.remove(call)
        if not self._calls and self._previous is not None:
            signal.signal(signal.SIGALRM, self._previous)
            self._previous = None

    def _handler(self, signum: int, frame: Any) -> None:
        for call in reversed(self._calls):  # the innermost armed call first
            call._on_alarm()


_alarms = _Alarms()


# -- deadlines ----------------------------------------------------------------------------


class _Timers:
    """Deadlines of interruptible calls, served by one daemon thread (started on first use)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, InterruptibleCall, Any]] = []
        self._cancelled: set[int] = set()
        self._counter = itertools.count()
        self._wakeup = threading.Condition()
        self._thread: threading.Thread | None = None

    def add(self, deadline: float, call: InterruptibleCall, reason: Any) -> int:
        with self._wakeup:
            handle = next(self._counter)
            heapq.heappush(self._heap, (deadline, handle, call, reason))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._serve, name="stageflow-body-timeouts", daemon=True
                )
                self._thread.start()
            self._wakeup.notify()
            return handle

    def cancel(self, handle: int) -> None:
        with self._wakeup:
            self._cancelled.add(handle)

    def _serve(self) -> None:
        while True:
            with self._wakeup:
                while True:
                    while self._heap and self._heap[0][1] in self._cancelled:
                        self._cancelled.discard(heapq.heappop(self._heap)[1])
                    if self._heap and self._heap[0][0] <= time.monotonic():
                        _, handle, call, reason = heapq.heappop(self._heap)
                        break
                    delay = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._wakeup.wait(delay)
            call.interrupt(reason)


_timers = _Timers()
