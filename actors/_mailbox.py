"""A bounded FIFO mailbox: many producers, one consumer, anyio only.

Every blocking operation is a synchronous ``*_nowait`` core plus a park, as in trio's
channels: ``put_nowait`` holds the logic and ``put`` checkpoints, tries it, and otherwise
parks until there is room.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar, final

import anyio
from anyio.lowlevel import cancel_shielded_checkpoint, checkpoint, checkpoint_if_cancelled

__all__ = ["Mailbox"]

T = TypeVar("T")


@final
class Mailbox(Generic[T]):
    """A bounded FIFO queue with one consumer (an actor's loop) and any number of producers.

    Producers that find the mailbox full park in arrival order; when the consumer takes an
    item, the oldest parked producer's item moves into the queue, so a blocked producer is
    never overtaken by later ``put_nowait`` calls.

    Args:
        capacity: How many items the mailbox holds before producers must wait.

    Raises:
        ValueError: If ``capacity`` is less than 1.
    """

    __slots__ = ("_capacity", "_closed", "_items", "_receiver", "_senders")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"mailbox capacity must be at least 1, got {capacity!r}")
        self._capacity = capacity
        self._items: deque[T] = deque()
        # Parked producers and their items, oldest first (dicts keep insertion order).
        self._senders: dict[anyio.Event, T] = {}
        self._receiver: anyio.Event | None = None
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Mailbox {state} {len(self._items)}/{self._capacity}>"

    @property
    def capacity(self) -> int:
        """How many items the mailbox holds before producers must wait."""
        return self._capacity

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed

    def put_nowait(self, item: T) -> None:
        """Queue ``item`` if there is room, without waiting.

        Raises:
            anyio.WouldBlock: If the mailbox is full.
            anyio.ClosedResourceError: If the mailbox is closed.
        """
        if self._closed:
            raise anyio.ClosedResourceError
        if len(self._items) >= self._capacity:
            raise anyio.WouldBlock
        self._items.append(item)
        receiver = self._receiver
        if receiver is not None:
            self._receiver = None
            receiver.set()

    async def put(self, item: T) -> None:
        """Queue ``item``, waiting for room if the mailbox is full.

        Always a checkpoint. If the call is cancelled while it waits for room, the item may
        already have been queued (as with anyio's memory object streams).

        Raises:
            anyio.ClosedResourceError: If the mailbox is closed, or closes while waiting.
        """
        await checkpoint()
        try:
            self.put_nowait(item)
        except anyio.WouldBlock:
            pass
        else:
            return
        waiter = anyio.Event()
        self._senders[waiter] = item
        try:
            await waiter.wait()
        finally:
            # get_nowait() removes the entry when it takes the item; close() leaves it.
            undelivered = waiter in self._senders
            if undelivered:
                del self._senders[waiter]
        if undelivered:
            raise anyio.ClosedResourceError

    def get_nowait(self) -> T:
        """Take the oldest item, without waiting.

        Raises:
            anyio.WouldBlock: If the mailbox is empty.
            anyio.EndOfStream: If the mailbox is empty and closed.
        """
        items = self._items
        if items:
            item = items.popleft()
            if self._senders:
                waiter = next(iter(self._senders))
                items.append(self._senders.pop(waiter))
                waiter.set()
            return item
        if self._closed:
            raise anyio.EndOfStream
        raise anyio.WouldBlock

    async def get(self) -> T:
        """Take the oldest item, waiting for one if the mailbox is empty.

        Always a checkpoint.

        Raises:
            anyio.EndOfStream: If the mailbox is empty and closed.
            anyio.BusyResourceError: If another task is already waiting in :meth:`get` or
                :meth:`wait_readable`.
        """
        await checkpoint_if_cancelled()
        try:
            item = self.get_nowait()
        except anyio.WouldBlock:
            while True:
                await self.wait_readable()
                try:
                    return self.get_nowait()
                except anyio.WouldBlock:
                    continue
        await cancel_shielded_checkpoint()
        return item

    async def wait_readable(self) -> None:
        """Wait until the mailbox holds an item or is closed, or :meth:`wake` is called.

        Always a checkpoint. This is the park under :meth:`get`, for a consumer that must
        also wake for reasons of its own (an actor's loop wakes for stop and crash signals).

        Raises:
            anyio.BusyResourceError: If another task is already waiting.
        """
        if self._items or self._closed:
            await checkpoint()
            return
        if self._receiver is not None:
            raise anyio.BusyResourceError("waiting on")
        receiver = self._receiver = anyio.Event()
        try:
            await receiver.wait()
        finally:
            if self._receiver is receiver:
                self._receiver = None

    def wake(self) -> None:
        """Make a pending :meth:`wait_readable` return, even though nothing was queued."""
        receiver = self._receiver
        if receiver is not None:
            self._receiver = None
            receiver.set()

    def close(self) -> list[T]:
        """Refuse further items and drop the queued ones.

        Parked producers raise :exc:`anyio.ClosedResourceError`; the consumer's next
        ``get`` raises :exc:`anyio.EndOfStream`. Closing twice does nothing.

        Returns:
            The items that were queued, oldest first, so the caller can fail them.
        """
        if self._closed:
            return []
        self._closed = True
        dropped = list(self._items)
        self._items.clear()
        # Parked producers find their item still registered and raise ClosedResourceError.
        for waiter in self._senders:
            waiter.set()
        self.wake()
        return dropped
