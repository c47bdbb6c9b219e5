"""Where a flow or task body runs, and calling it there.

Async bodies run in the engine's own task. Sync bodies run either on the thread that is
waiting for the engine (a sync flow's caller, a sync task called from a sync flow: no
thread hop) or on a worker thread (submitted sync tasks). Either way the body runs in a
copy of the engine task's context, so it sees its run context.

A sync body cannot be interrupted: when its run times out or is cancelled, the engine
stops waiting for it and the body is abandoned; it finishes on its thread later and its
result is ignored.
"""

from __future__ import annotations

import enum
from typing import Any, Awaitable, Callable

import anyio
import attrs

from actors import GlobalLoop

__all__ = ["Body", "BodyPlacement", "call_body", "call_sync"]


Body = Callable[[tuple[Any, ...], dict[str, Any]], Awaitable[Any]]
"""A body that replaces a run's function (a generator's pump): called with the call's
``(args, kwargs)``."""


class BodyPlacement(enum.Enum):
    """Where sync bodies of a run go."""

    WAITING_THREAD = "waiting-thread"
    WORKER_THREAD = "worker-thread"


@attrs.frozen
class SyncTarget:
    """Where sync code of a run executes: the waiting thread of ``loop``, or a worker
    thread limited by ``limiter``."""

    placement: BodyPlacement
    loop: GlobalLoop | None = None
    limiter: anyio.CapacityLimiter | None = None


WORKER_THREADS = SyncTarget(BodyPlacement.WORKER_THREAD)


async def call_sync(target: SyncTarget, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call the sync function ``fn`` where ``target`` says, in a copy of this context."""
    if kwargs:
        args = (_KwargsCall(fn, kwargs), *args)
        fn = _call_with_kwargs
    if target.placement is BodyPlacement.WAITING_THREAD:
        assert target.loop is not None
        return await target.loop.run_in_waiting_thread(fn, *args)
    return await anyio.to_thread.run_sync(fn, *args, limiter=target.limiter, abandon_on_cancel=True)


async def call_body(
    is_async: bool,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    target: SyncTarget,
) -> Any:
    """Call a flow or task body: await it if async, else run it per ``target``."""
    if is_async:
        coro: Awaitable[Any] = fn(*args, **kwargs)
        return await coro
    return await call_sync(target, fn, *args, **kwargs)


@attrs.frozen
class _KwargsCall:
    fn: Callable[..., Any]
    kwargs: dict[str, Any]


def _call_with_kwargs(call: _KwargsCall, *args: Any) -> Any:
    return call.fn(*args, **call.kwargs)
