"""Running a service beside a piece of work, in one event loop."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import outcome

__all__ = ["run_beside"]

T = TypeVar("T")


async def run_beside(
    service: Callable[[], Awaitable[Any]],
    body: Callable[[], Awaitable[T]],
    stop: Callable[[], object] | None = None,
) -> T:
    """Await ``body()`` while ``service()`` runs beside it; when the body ends, call
    ``stop()`` to make the service return (cheaper than a cancellation), or cancel it if
    there is no ``stop``. The body's exception propagates as itself, not wrapped in an
    exception group."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(service)
        try:
            result: outcome.Outcome[T] = await outcome.acapture(body)
        finally:
            if stop is None:
                tg.cancel_scope.cancel()
            else:
                stop()
    return result.unwrap()
