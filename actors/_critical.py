"""Critical sections: code that an asynchronous exception must not land in.

Python raises some exceptions *into* a thread, at whatever bytecode it is running: a signal
handler's (``KeyboardInterrupt`` on Ctrl-C, or a handler of the program's), and
``PyThreadState_SetAsyncExc``. Landing inside an actor's directly dispatched message, one
would leave its dispatch lock held (a later ask waits for ever) or a state change half
made. A thread inside :func:`critical` holds such exceptions back: a signal handler, or the
thread that wants to interrupt it, calls :func:`defer` with what to raise, and the
outermost ``critical`` block raises it as it ends (the handled message is complete).

This is the kernel's small part of a rule the workflow engine needs (a signal may stop a
run's body, never the bookkeeping around it), as ``trio`` keeps ``KeyboardInterrupt`` out
of its own scheduler code.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

__all__ = ["critical", "defer", "in_critical"]


class _ThreadState:
    __slots__ = ("depth", "deferred")

    def __init__(self) -> None:
        self.depth = 0
        self.deferred: Callable[[], BaseException] | None = None


_lock = threading.Lock()
_states: dict[int, _ThreadState] = {}  # by thread id, for the threads that entered one
_local = threading.local()


def _state() -> _ThreadState:
    state: _ThreadState | None = getattr(_local, "state", None)
    if state is None:
        state = _local.state = _ThreadState()
        with _lock:
            _states[threading.get_ident()] = state
    return state


class _Critical:
    """The context manager :func:`critical` returns (one object: it keeps no state of its
    own, the thread's is in a thread-local)."""

    __slots__ = ()

    def __enter__(self) -> None:
        state: _ThreadState | None = getattr(_local, "state", None)
        if state is None:
            state = _state()
        state.depth += 1

    def __exit__(self, *exc_info: object) -> None:
        state: _ThreadState = _local.state
        state.depth -= 1
        if state.depth == 0 and state.deferred is not None:
            with _lock:
                make, state.deferred = state.deferred, None
            if make is not None:
                raise make()


_CRITICAL = _Critical()


def critical() -> _Critical:
    """Hold back asynchronous exceptions deferred to this thread (:func:`defer`) until the
    outermost ``with critical():`` block ends; then raise the first one held back.

    Raises:
        BaseException: what a :func:`defer` call held back, as the block ends.
    """
    return _CRITICAL


def in_critical(thread_id: int | None = None) -> bool:
    """Whether the thread (this one by default) is inside a :func:`critical` block."""
    if thread_id is None:
        state = getattr(_local, "state", None)
    else:
        with _lock:
            state = _states.get(thread_id)
    return state is not None and state.depth > 0


def defer(thread_id: int, make: Callable[[], BaseException]) -> bool:
    """Hold ``make()`` back for ``thread_id`` if it is inside a :func:`critical` block: its
    outermost block raises it as it ends (a first one held back wins). Return whether it
    was held back (False: the caller raises it now, as it would have)."""
    with _lock:
        state = _states.get(thread_id)
        if state is None or state.depth == 0:
            return False
        if state.deferred is None:
            state.deferred = make
        return True
