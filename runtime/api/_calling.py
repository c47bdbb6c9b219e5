"""How the run-control and run-reading functions answer sync and async callers.

Like Prefect's ``prefect.flow_runs`` functions, each public function is one name for both
kinds of caller: inside an async flow or task, or in any coroutine outside a run, it
returns an awaitable; in sync code (a sync flow or task, a plain script) it does the work
and returns the value.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, TypeVar
from uuid import UUID

import anyio
import sniffio

from ..core._exceptions import ObjectNotFound
from ..engine._context import FlowRunContext, TaskRunContext
from ._entry import run_sync

__all__ = ["as_run_id", "read_sync_or_async", "run_sync_or_async", "wants_awaitable"]

T = TypeVar("T")


def wants_awaitable() -> bool:
    """Whether the caller is async code: an async task or flow, or a coroutine outside
    any run (a sync task or flow called from async code is sync code)."""
    task_ctx = TaskRunContext.get()
    if task_ctx is not None:
        return task_ctx.task.is_async
    flow_ctx = FlowRunContext.get()
    if flow_ctx is not None:
        return flow_ctx.flow.is_async
    try:
        sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        return False
    return True


async def _on_loop(loop: Any, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    return await fn(*args)


def run_sync_or_async(fn: Callable[..., Awaitable[T]], *args: Any) -> Any:
    """Return the coroutine ``fn(*args)`` to async callers; run it on a global loop for
    sync callers and return its result."""
    if wants_awaitable():
        return fn(*args)
    return run_sync(_on_loop, fn, *args)


def read_sync_or_async(fn: Callable[..., T], *args: Any) -> Any:
    """Return ``fn(*args)`` (a blocking store read) to sync callers; to async callers, an
    awaitable that runs it on a worker thread, so the event loop goes on meanwhile."""
    if wants_awaitable():
        return anyio.to_thread.run_sync(fn, *args)
    return fn(*args)


def as_run_id(value: UUID | str, kind: str = "flow run") -> UUID:
    """Return ``value`` as a run id.

    Raises:
        ObjectNotFound: ``value`` is not a UUID, so no run has it as id.
    """
    if isinstance(value, UUID):
        return value
    try:
        return UUID(str(value))
    except ValueError:
        raise ObjectNotFound(f"{value!r} is not a {kind} id (a UUID).") from None
