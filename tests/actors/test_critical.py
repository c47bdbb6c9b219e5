"""Critical sections hold back exceptions raised into a thread until they end."""

from __future__ import annotations

import signal
import threading
from typing import Any

import pytest

from actors import critical, defer, in_critical
from runtime.engine._interrupt import BodyInterrupted, InterruptibleCall, call_interruptibly


class Held(Exception):
    pass


def test_a_deferred_exception_is_raised_as_the_outermost_block_ends() -> None:
    me = threading.get_ident()
    done: list[str] = []
    assert not in_critical() and not defer(me, Held)  # outside: the caller raises it
    with pytest.raises(Held, match="first"):
        with critical():
            with critical():
                assert in_critical() and in_critical(me)
                assert defer(me, lambda: Held("first"))
                assert defer(me, lambda: Held("second"))  # the first one held back wins
                done.append("inner")
            done.append("outer")  # the inner block's end raises nothing
    assert done == ["inner", "outer"]
    assert not in_critical()
    with critical():  # nothing is left over for the next block
        pass


def test_a_signal_handler_defers_while_the_main_thread_is_in_critical_code() -> None:
    def on_sigint(signum: int, frame: Any) -> None:
        if not defer(threading.get_ident(), KeyboardInterrupt):
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    done: list[str] = []
    try:
        with pytest.raises(KeyboardInterrupt):
            with critical():
                signal.raise_signal(signal.SIGINT)  # the handler runs right here
                done.append("rest of the critical code")
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)  # outside: at once
    finally:
        signal.signal(signal.SIGINT, previous)
    assert done == ["rest of the critical code"]


def test_an_interruption_waits_for_the_critical_code_of_the_call() -> None:
    """A body interrupted (a timeout, a cancellation) while its thread is in critical code
    gets BodyInterrupted once that code ends, not inside it."""
    inside, go = threading.Event(), threading.Event()
    seen: list[Any] = []
    calls: list[InterruptibleCall] = []

    def body() -> None:
        with critical():
            inside.set()
            assert go.wait(10)
            seen.append("critical code finished")
        seen.append("not reached")

    def worker() -> None:
        call = InterruptibleCall()
        calls.append(call)
        try:
            call_interruptibly(call, body, (), {})
        except BodyInterrupted:
            seen.append("interrupted")

    thread = threading.Thread(target=worker)
    thread.start()
    assert inside.wait(10)
    assert calls[0].interrupt("cancel")
    go.set()
    thread.join(10)
    assert seen == ["critical code finished", "interrupted"]
