"""Clocks: the engine reads time only through a :class:`Clock`.

:class:`SystemClock` is real time. :class:`FakeClock` is virtual time for tests, after
trio's ``MockClock``: it moves only when told to (:meth:`FakeClock.jump`), or, with
``autojump=True``, jumps to the next deadline whenever every task is blocked, so retry
delays and backoffs finish at once and in a deterministic order, on asyncio and on trio.
"""

from __future__ import annotations

import heapq
import itertools
import time
from typing import Protocol, runtime_checkable

import anyio
import anyio.lowlevel

__all__ = ["Clock", "FakeClock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """Where the engine reads the time and waits for it."""

    def now(self) -> float:
        """Return the current wall-clock time, in seconds since the epoch."""
        ...

    async def sleep_until(self, deadline: float) -> None:
        """Wait until :meth:`now` reaches ``deadline`` (at once if it already has)."""
        ...


class SystemClock:
    """Real time: :func:`time.time` and :func:`anyio.sleep`."""

    def __repr__(self) -> str:
        return "SystemClock()"

    def now(self) -> float:
        """Return :func:`time.time`."""
        return time.time()

    async def sleep_until(self, deadline: float) -> None:
        """Sleep until ``deadline`` (epoch seconds); a deadline in the past only checkpoints."""
        await anyio.sleep(max(0.0, deadline - time.time()))


class _Sleeper:
    __slots__ = ("event", "woken")

    def __init__(self) -> None:
        self.event: anyio.Event | None = None  # what the sleeping task awaits right now
        self.woken = False  # its deadline passed and it was released

    def poke(self) -> None:
        if self.event is not None:
            self.event.set()


class FakeClock:
    """Virtual time for tests.

    Time stands still until :meth:`jump` moves it, or, with ``autojump=True``, until every
    task is blocked (:func:`anyio.wait_all_tasks_blocked`): then it jumps to the earliest
    pending deadline. Sleepers wake in deadline order, and sleepers with equal deadlines
    in the order they started sleeping: each woken sleeper releases the next one only once
    it runs, so the order holds on trio too, whose scheduler shuffles tasks woken together.

    A FakeClock serves sleepers of one event loop and is not thread-safe: call
    :meth:`jump` from a task (or synchronous code) of that loop.

    Autojump is driven by one of the sleeping tasks, which waits in
    :func:`anyio.wait_all_tasks_blocked`. So, as with trio's ``MockClock``, a task waiting
    for real I/O or a thread counts as blocked; and a test that itself awaits
    ``wait_all_tasks_blocked()`` while autojump is on may see time jump meanwhile.

    Args:
        start: the initial time, in epoch seconds.
        autojump: jump to the next deadline whenever all tasks are blocked.
    """

    def __init__(self, start: float = 1_700_000_000.0, *, autojump: bool = False) -> None:
        self._now = start
        self._autojump = autojump
        self._heap: list[tuple[float, int, _Sleeper]] = []
        self._counter = itertools.count()
        self._releasing = False  # a woken sleeper has not run yet; it wakes the next one
        self._driver: _Sleeper | None = None  # the sleeper that performs autojumps

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now!r}, autojump={self._autojump!r})"

    def now(self) -> float:
        """Return the virtual time, in epoch seconds."""
        return self._now

    def jump(self, seconds: float) -> None:
        """Advance virtual time by ``seconds`` and wake the sleepers whose deadline passed.

        Args:
            seconds: how far to move; zero is allowed.

        Raises:
            ValueError: if ``seconds`` is negative.
        """
        if seconds < 0:
            raise ValueError(f"time can only move forward: jump({seconds!r}) is negative")
        self._now += seconds
        if not self._releasing:
            self._release_next()

    async def sleep_until(self, deadline: float) -> None:
        """Wait until virtual time reaches ``deadline``; a past deadline only checkpoints.

        Args:
            deadline: the virtual time to wake at, in epoch seconds.
        """
        if deadline <= self._now:
            await anyio.lowlevel.checkpoint()
            return
        sleeper = _Sleeper()
        entry = (deadline, next(self._counter), sleeper)
        heapq.heappush(self._heap, entry)
        try:
            while not sleeper.woken:
                if self._autojump and self._driver is None:
                    self._driver = sleeper
                if self._driver is sleeper:
                    await anyio.wait_all_tasks_blocked()
                    if not sleeper.woken and not self._releasing and self._heap:
                        self.jump(max(0.0, self._heap[0][0] - self._now))
                else:
                    sleeper.event = anyio.Event()
                    await sleeper.event.wait()
        finally:
            sleeper.event = None
            if sleeper.woken:
                self._release_next()
            else:  # cancelled while asleep
                self._heap.remove(entry)
                heapq.heapify(self._heap)
            if self._driver is sleeper:
                self._driver = None
                if self._heap:  # hand autojumping over to a sleeper that stays asleep
                    self._heap[0][2].poke()

    def _release_next(self) -> None:
        if self._heap and self._heap[0][0] <= self._now:
            _, _, sleeper = heapq.heappop(self._heap)
            sleeper.woken = True
            sleeper.poke()
            self._releasing = True
        else:
            self._releasing = False
