"""SIGTERM in a flow process: the running flow runs are reported, not silently lost.

While a top-level flow call runs on the main thread (``capture_sigterm``), SIGTERM
interrupts every flow run this process drives. Each ends Cancelled if a cancellation was
requested (it is Cancelling), Crashed otherwise, and the flow call then raises
:class:`~runtime.exceptions.TerminationSignal`, so the process still terminates.

A handler the program installed itself is left alone: stageflow only takes SIGTERM over
while it has its default action (terminate without cleanup), and SIGINT while it has
Python's own handler. Ctrl-C then still raises ``KeyboardInterrupt`` where the main thread
is, except inside the kernel's critical code (a state being decided and recorded,
:func:`actors.critical`), where it is raised as that code ends; so is SIGTERM.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from actors import ActorStopped, defer

from ..core._exceptions import TerminationSignal
from ._interrupt import main_thread_in_body
from ._run_actors import Terminate

__all__ = ["capture_sigterm", "interruptible"]


class _Interruptible(Protocol):
    ref: Any  # the run's actor (ActorRef), None until it runs


_engines: set[Any] = set()
_raise_in_main: list[bool] = []  # one entry per capture_sigterm block on the main thread


@contextmanager
def interruptible(engine: _Interruptible) -> Iterator[None]:
    """Let SIGTERM reach ``engine`` while the block runs."""
    _engines.add(engine)
    try:
        yield
    finally:
        _engines.discard(engine)


def _on_sigterm(signum: int, frame: Any) -> None:
    exc = TerminationSignal(signum)
    for engine in list(_engines):
        if engine.ref is not None:
            with contextlib.suppress(ActorStopped):
                engine.ref.tell_soon(Terminate(exc))
    if (_raise_in_main and _raise_in_main[-1] and main_thread_in_body()) or _waits_on_a_future(
        frame
    ):
        # A sync flow body (or a sync task body) is running right here, on the main
        # thread, where no cancel scope can reach it; or an async flow body blocks its
        # event loop in future.result()/wait()/as_completed(), so the Terminate told to its
        # engine above cannot arrive until the future is done. Anywhere else (the main
        # thread waits for a global loop, or records a state, or runs a hook) the engines
        # told above end their runs and the flow call raises the signal: raised there, it
        # would leave the thread that runs the run's hooks and write its state. Inside
        # the kernel's critical code (a state being decided and recorded) it is raised as
        # that code ends.
        if not defer(threading.get_ident(), lambda: exc):
            raise exc


def _on_sigint(signum: int, frame: Any) -> None:
    """Ctrl-C as Python's own handler does (``KeyboardInterrupt`` where the main thread
    is), except inside the kernel's critical code, where it is raised as that code ends."""
    if not defer(threading.get_ident(), KeyboardInterrupt):
        raise KeyboardInterrupt


_FUTURES_MODULE = f"{__package__}._futures"


def _waits_on_a_future(frame: Any) -> bool:
    """Whether the main thread, interrupted at ``frame``, is in a blocking wait on futures."""
    while frame is not None:
        if frame.f_globals.get("__name__") == _FUTURES_MODULE:
            return True
        frame = frame.f_back
    return False


@contextmanager
def capture_sigterm(*, raise_in_main_thread: bool, top_level: bool = True) -> Iterator[None]:
    """Handle SIGTERM as described in the module docstring while the block runs.

    Args:
        raise_in_main_thread: also raise :class:`TerminationSignal` where the main thread
            is (for sync flow calls; never for a call made inside an event loop).
        top_level: False for a subflow call, which the enclosing top-level call covers
            (the block then changes nothing).
    """
    if not top_level or threading.current_thread() is not threading.main_thread():
        yield
        return
    with _sigint_held_back_in_critical_code():
        with _sigterm_captured(raise_in_main_thread):
            yield


@contextmanager
def _sigint_held_back_in_critical_code() -> Iterator[None]:
    """Put :func:`_on_sigint` on SIGINT while the block runs, if it has Python's own."""
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@contextmanager
def _sigterm_captured(raise_in_main_thread: bool) -> Iterator[None]:
    previous = signal.getsignal(signal.SIGTERM)
    if previous is not signal.SIG_DFL and previous is not _on_sigterm:
        yield
        return
    signal.signal(signal.SIGTERM, _on_sigterm)
    _raise_in_main.append(raise_in_main_thread)
    try:
        yield
    finally:
        _raise_in_main.pop()
        if not _raise_in_main:
            signal.signal(signal.SIGTERM, previous)
