"""Tests for actors._mailbox.Mailbox."""

from __future__ import annotations

from collections import deque

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors._mailbox import Mailbox


class TestNowait:
    def test_fifo_within_capacity(self) -> None:
        """Items come out in the order they went in."""
        mailbox: Mailbox[int] = Mailbox(3)
        for i in range(3):
            mailbox.put_nowait(i)
        assert len(mailbox) == 3
        assert [mailbox.get_nowait() for _ in range(3)] == [0, 1, 2]

    def test_full_raises_would_block(self) -> None:
        """put_nowait on a full mailbox raises WouldBlock and queues nothing."""
        mailbox: Mailbox[int] = Mailbox(1)
        mailbox.put_nowait(1)
        with pytest.raises(anyio.WouldBlock):
            mailbox.put_nowait(2)
        assert len(mailbox) == 1

    def test_empty_raises_would_block(self) -> None:
        """get_nowait on an empty mailbox raises WouldBlock."""
        with pytest.raises(anyio.WouldBlock):
            Mailbox[int](1).get_nowait()

    def test_capacity_must_be_positive(self) -> None:
        """A mailbox holds at least one item."""
        with pytest.raises(ValueError, match=r"^mailbox capacity must be at least 1, got 0$"):
            Mailbox[int](0)

    def test_repr(self) -> None:
        mailbox: Mailbox[int] = Mailbox(2)
        mailbox.put_nowait(1)
        assert repr(mailbox) == "<Mailbox open 1/2>"
        mailbox.close()
        assert repr(mailbox) == "<Mailbox closed 0/2>"

    @given(st.lists(st.one_of(st.integers(), st.none()), max_size=60), st.integers(1, 5))
    def test_matches_a_bounded_deque(self, ops: list[int | None], capacity: int) -> None:
        """Any sequence of put_nowait (int) and get_nowait (None) behaves like a bounded deque."""
        mailbox: Mailbox[int] = Mailbox(capacity)
        model: deque[int] = deque()
        for op in ops:
            if op is None:
                if model:
                    assert mailbox.get_nowait() == model.popleft()
                else:
                    with pytest.raises(anyio.WouldBlock):
                        mailbox.get_nowait()
            elif len(model) < capacity:
                mailbox.put_nowait(op)
                model.append(op)
            else:
                with pytest.raises(anyio.WouldBlock):
                    mailbox.put_nowait(op)
            assert len(mailbox) == len(model)


class TestClose:
    def test_close_returns_queued_items_and_refuses_more(self) -> None:
        """close() hands back what was queued; later puts fail and gets hit end of stream."""
        mailbox: Mailbox[int] = Mailbox(3)
        mailbox.put_nowait(1)
        mailbox.put_nowait(2)
        assert mailbox.close() == [1, 2]
        assert mailbox.closed
        assert mailbox.close() == []
        with pytest.raises(anyio.ClosedResourceError):
            mailbox.put_nowait(3)
        with pytest.raises(anyio.EndOfStream):
            mailbox.get_nowait()

    async def test_close_wakes_parked_sender_and_receiver(self) -> None:
        """A producer parked on a full mailbox and a parked consumer both wake on close."""
        full: Mailbox[int] = Mailbox(1)
        full.put_nowait(0)
        empty: Mailbox[int] = Mailbox(1)
        errors: list[type[BaseException]] = []

        async def put() -> None:
            with pytest.raises(anyio.ClosedResourceError):
                await full.put(1)
            errors.append(anyio.ClosedResourceError)

        async def get() -> None:
            with pytest.raises(anyio.EndOfStream):
                await empty.get()
            errors.append(anyio.EndOfStream)

        async with anyio.create_task_group() as tg:
            tg.start_soon(put)
            tg.start_soon(get)
            await anyio.wait_all_tasks_blocked()
            assert full.close() == [0]
            empty.close()
        assert sorted(e.__name__ for e in errors) == ["ClosedResourceError", "EndOfStream"]


class TestWaiting:
    async def test_put_waits_for_room(self) -> None:
        """put parks while the mailbox is full and completes when an item is taken."""
        mailbox: Mailbox[str] = Mailbox(1)
        mailbox.put_nowait("a")
        done = anyio.Event()

        async def put() -> None:
            await mailbox.put("b")
            done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(put)
            await anyio.wait_all_tasks_blocked()
            assert not done.is_set()
            assert mailbox.get_nowait() == "a"
            await done.wait()
        assert mailbox.get_nowait() == "b"

    async def test_parked_senders_are_not_overtaken(self) -> None:
        """Room freed by a get goes to the oldest parked producer, not to a later put_nowait."""
        mailbox: Mailbox[str] = Mailbox(1)
        mailbox.put_nowait("first")
        async with anyio.create_task_group() as tg:
            tg.start_soon(mailbox.put, "parked-1")
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(mailbox.put, "parked-2")
            await anyio.wait_all_tasks_blocked()
            assert mailbox.get_nowait() == "first"
            with pytest.raises(anyio.WouldBlock):
                mailbox.put_nowait("late")
            assert mailbox.get_nowait() == "parked-1"
            assert mailbox.get_nowait() == "parked-2"

    async def test_cancelled_put_does_not_deliver(self) -> None:
        """A put cancelled while parked withdraws its item."""
        mailbox: Mailbox[str] = Mailbox(1)
        mailbox.put_nowait("a")
        with anyio.move_on_after(0):
            await mailbox.put("b")
        assert mailbox.get_nowait() == "a"
        with pytest.raises(anyio.WouldBlock):
            mailbox.get_nowait()

    async def test_put_is_a_checkpoint_before_queueing(self) -> None:
        """put in a cancelled scope raises before queueing anything."""
        mailbox: Mailbox[str] = Mailbox(1)
        with anyio.CancelScope() as scope:
            scope.cancel()
            await mailbox.put("a")
        assert scope.cancelled_caught
        assert len(mailbox) == 0

    async def test_get_waits_for_an_item(self) -> None:
        """get parks on an empty mailbox until something is put."""
        mailbox: Mailbox[int] = Mailbox(1)
        got: list[int] = []

        async def get() -> None:
            got.append(await mailbox.get())

        async with anyio.create_task_group() as tg:
            tg.start_soon(get)
            await anyio.wait_all_tasks_blocked()
            assert got == []
            mailbox.put_nowait(7)
        assert got == [7]

    async def test_wake_releases_wait_readable_without_an_item(self) -> None:
        """wake() makes a parked wait_readable return; get keeps waiting for a real item."""
        mailbox: Mailbox[int] = Mailbox(1)
        woken = anyio.Event()

        async def wait() -> None:
            await mailbox.wait_readable()
            woken.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)
            await anyio.wait_all_tasks_blocked()
            mailbox.wake()
            await woken.wait()
        mailbox.wake()  # no waiter: nothing happens
        assert len(mailbox) == 0

    async def test_one_consumer_at_a_time(self) -> None:
        """A second consumer waiting at the same time is refused."""
        mailbox: Mailbox[int] = Mailbox(1)
        async with anyio.create_task_group() as tg:
            tg.start_soon(mailbox.get)
            await anyio.wait_all_tasks_blocked()
            with pytest.raises(
                anyio.BusyResourceError, match=r"^Another task is already waiting on this resource$"
            ):
                await mailbox.get()
            mailbox.put_nowait(1)
