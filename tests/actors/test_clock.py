"""Tests for actors._clock: Clock, SystemClock, FakeClock."""

from __future__ import annotations

import time

import anyio
import anyio.abc
import anyio.lowlevel
import pytest

from actors import Clock, FakeClock, SystemClock

START = 1_700_000_000.0


async def start_sleepers(
    tg: anyio.abc.TaskGroup, clock: FakeClock, woken: list[str], deadlines: dict[str, float]
) -> None:
    """Start one sleeper per name, in order: each is asleep before the next starts."""

    async def sleeper(name: str, deadline: float) -> None:
        await clock.sleep_until(deadline)
        woken.append(name)

    for name, deadline in deadlines.items():
        tg.start_soon(sleeper, name, deadline)
        await anyio.wait_all_tasks_blocked()


def test_both_clocks_are_clocks() -> None:
    """SystemClock and FakeClock satisfy the Clock protocol."""
    assert isinstance(SystemClock(), Clock)
    assert isinstance(FakeClock(), Clock)
    assert repr(SystemClock()) == "SystemClock()"
    assert repr(FakeClock(5.0, autojump=True)) == "FakeClock(now=5.0, autojump=True)"


class TestSystemClock:
    async def test_reads_and_waits_for_the_wall_clock(self) -> None:
        """now() is time.time(); a deadline in the past returns at once."""
        clock = SystemClock()
        before = time.time()
        now = clock.now()
        assert before <= now <= time.time()
        with anyio.fail_after(5):
            await clock.sleep_until(now - 60)
            await clock.sleep_until(clock.now() + 0.001)
        assert clock.now() >= now + 0.001


class TestFakeClock:
    async def test_time_stands_still_until_jump(self) -> None:
        """now() starts at ``start`` and moves only by jump()."""
        clock = FakeClock()
        assert clock.now() == START
        await anyio.lowlevel.checkpoint()
        assert clock.now() == START
        clock.jump(2.5)
        clock.jump(0)
        assert clock.now() == START + 2.5

    def test_jump_refuses_to_go_back(self) -> None:
        """Virtual time only moves forward."""
        with pytest.raises(
            ValueError, match=r"^time can only move forward: jump\(-1\) is negative$"
        ):
            FakeClock().jump(-1)

    async def test_a_deadline_that_passed_returns_at_once(self) -> None:
        """sleep_until() at or before now() does not wait for a jump."""
        clock = FakeClock(100.0)
        with anyio.fail_after(5):
            await clock.sleep_until(100.0)
            await clock.sleep_until(50.0)

    async def test_jump_wakes_the_sleepers_whose_deadline_passed_in_order(self) -> None:
        """Sleepers wake by deadline, then in the order they fell asleep."""
        clock = FakeClock(0.0)
        woken: list[str] = []
        async with anyio.create_task_group() as tg:
            await start_sleepers(tg, clock, woken, {"a": 3, "b": 1, "c": 2, "d": 1, "e": 5})
            clock.jump(0.5)
            await anyio.wait_all_tasks_blocked()
            assert woken == []
            clock.jump(0.5)
            await anyio.wait_all_tasks_blocked()
            assert woken == ["b", "d"]
            clock.jump(2.5)
            await anyio.wait_all_tasks_blocked()
            assert woken == ["b", "d", "c", "a"]
            clock.jump(10)
        assert woken == ["b", "d", "c", "a", "e"]

    async def test_equal_deadlines_wake_in_registration_order(self) -> None:
        """However the scheduler orders woken tasks, equal deadlines wake first-come first."""
        for _ in range(5):  # trio shuffles each batch of woken tasks: give it chances
            clock = FakeClock(0.0)
            woken: list[str] = []
            names = [f"s{i}" for i in range(8)]
            async with anyio.create_task_group() as tg:
                await start_sleepers(tg, clock, woken, dict.fromkeys(names, 1.0))
                clock.jump(1)
            assert woken == names

    async def test_cancelling_a_sleeper_removes_it(self) -> None:
        """A cancelled sleeper leaves cleanly; the others still wake in order."""
        clock = FakeClock(0.0)
        woken: list[str] = []

        async def cancelled_sleeper() -> None:
            await clock.sleep_until(1)
            woken.append("cancelled")

        async with anyio.create_task_group() as tg:
            await start_sleepers(tg, clock, woken, {"a": 1})
            async with anyio.create_task_group() as inner:
                inner.start_soon(cancelled_sleeper)
                await anyio.wait_all_tasks_blocked()
                inner.cancel_scope.cancel()
            await start_sleepers(tg, clock, woken, {"b": 1, "c": 2})
            clock.jump(1)
            await anyio.wait_all_tasks_blocked()
            assert woken == ["a", "b"]
            clock.jump(1)
        assert woken == ["a", "b", "c"]

    async def test_autojump_runs_a_chain_of_sleeps_at_once(self) -> None:
        """With autojump, exponential backoffs finish without real waiting, deterministically."""
        clock = FakeClock(0.0, autojump=True)
        events: list[tuple[str, float]] = []

        async def retrying(name: str, delays: list[float]) -> None:
            for delay in delays:
                await clock.sleep_until(clock.now() + delay)
                events.append((name, clock.now()))

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(retrying, "x", [1.0, 2.0, 4.0, 8.0])
                tg.start_soon(retrying, "y", [2.5, 3, 3])
        assert events == [
            ("x", 1),
            ("y", 2.5),
            ("x", 3),
            ("y", 5.5),
            ("x", 7),
            ("y", 8.5),
            ("x", 15),
        ]
        assert clock.now() == 15

    async def test_autojump_survives_a_cancelled_sleeper(self) -> None:
        """Cancelling the sleeper that drives autojump hands the job to another one."""
        clock = FakeClock(0.0, autojump=True)
        woken: list[str] = []

        async def sleeper(name: str, deadline: float, scope: anyio.CancelScope | None) -> None:
            await clock.sleep_until(deadline)
            woken.append(name)
            if scope is not None:
                scope.cancel()

        async def driver(tg: anyio.abc.TaskGroup) -> None:
            with anyio.CancelScope() as scope:
                tg.start_soon(sleeper, "canceller", 5, scope)
                tg.start_soon(sleeper, "a", 20, None)
                # Asleep before the tasks above start: this sleeper drives autojump.
                await clock.sleep_until(10)
                woken.append("driver")

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(driver, tg)
        assert woken == ["canceller", "a"]
        assert clock.now() == 20

    async def test_autojump_waits_while_tasks_are_busy(self) -> None:
        """Time does not jump while some task can still run."""
        clock = FakeClock(0.0, autojump=True)
        progress: list[float] = []

        async def busy() -> None:
            for _ in range(20):
                progress.append(clock.now())
                await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            tg.start_soon(busy)
            await clock.sleep_until(1)
        assert progress == [0.0] * 20
        assert clock.now() == 1
