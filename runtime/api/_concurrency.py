"""Tag concurrency limits: at most N task runs carrying a tag run at once.

A limit lives in the store, so with the SQLite store it holds across every process that
shares the file. A task run whose tags are at their limit waits in the state
``AwaitingConcurrencySlot`` and starts when a slot frees up::

    from runtime.concurrency import set_concurrency_limit

    set_concurrency_limit("database", 2)

    @task(tags=["database"])
    def query(sql: str) -> list[tuple]: ...

The same limits are managed from the shell with ``stageflow limits set TAG N`` and
``stageflow limits ls``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from uuid import UUID

import attrs

from ..store._backend import StoreBackend
from ..store._urls import open_backend
from ._entry import inherited_backend

__all__ = [
    "ConcurrencyLimit",
    "delete_concurrency_limit",
    "read_concurrency_limits",
    "set_concurrency_limit",
]


@attrs.frozen
class ConcurrencyLimit:
    """A tag's limit and the task runs holding its slots right now."""

    tag: str
    limit: int
    active_slots: tuple[UUID, ...]


@contextmanager
def _backend(store: str | None) -> Iterator[StoreBackend]:
    """The store named by ``store``, or the current one; a store opened here is closed."""
    if store is None:
        yield inherited_backend()[0]
        return
    backend, owned = open_backend(store)
    try:
        yield backend
    finally:
        if owned:
            backend.close()


def set_concurrency_limit(tag: str, limit: int, *, store: str | None = None) -> None:
    """Allow at most ``limit`` task runs tagged ``tag`` to run at once.

    Args:
        tag: the tag.
        limit: a number of slots, 0 or more (0 holds every such run back).
        store: a store URL; the current (or default) store when None.

    Raises:
        ValueError: ``tag`` is empty or ``limit`` is negative or not an integer.
    """
    if not isinstance(tag, str) or not tag:
        raise ValueError(f"A concurrency limit needs a non-empty tag, got {tag!r}.")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValueError(f"A concurrency limit must be an integer >= 0, got {limit!r}.")
    with _backend(store) as backend:
        backend.set_concurrency_limit(tag, limit)


def delete_concurrency_limit(tag: str, *, store: str | None = None) -> None:
    """Remove the limit on ``tag`` (its task runs no longer wait for slots)."""
    with _backend(store) as backend:
        backend.set_concurrency_limit(tag, None)


def read_concurrency_limits(*, store: str | None = None) -> list[ConcurrencyLimit]:
    """Return every tag's limit and its current slot holders, sorted by tag."""
    with _backend(store) as backend:
        limits = backend.read_concurrency_limits()
    return [
        ConcurrencyLimit(tag, limit, tuple(holders))
        for tag, (limit, holders) in sorted(limits.items())
    ]
