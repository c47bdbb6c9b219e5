"""Task runners: where the bodies of *submitted* task runs execute.

Every submitted task run is an actor under its flow run attempt's supervisor, on the
task-runner loop (:mod:`runtime.engine._submission`). The task runner decides where its
body goes. :class:`ThreadPoolTaskRunner` (and :class:`ConcurrentTaskRunner`): async bodies
run in the actor's task, sync bodies on worker threads, at most ``max_workers`` at a time.
``DaskTaskRunner`` (:mod:`runtime.engine._dask`) sends the bodies to a Dask cluster.

A runner is configuration only: :meth:`TaskRunner.open` makes a :class:`Placement` for one
flow run attempt (starting whatever the runner needs, e.g. a cluster), which the attempt's
task run host closes when the attempt ends.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

import anyio

from ._body import BodyPlacement, SyncTarget

__all__ = [
    "ConcurrentTaskRunner",
    "Placement",
    "RemoteBody",
    "TaskRunner",
    "ThreadPoolTaskRunner",
]

RemoteBody = Callable[
    [Callable[..., Any], bool, tuple[Any, ...], dict[str, Any], "float | None"], Awaitable[Any]
]
"""Calls one task run's body elsewhere: ``(fn, is_async, args, kwargs, timeout)`` → what the
body returned (or raises what it raised, ``TaskRunTimeoutError`` past ``timeout`` seconds)."""


class Placement:
    """Where the bodies of one flow run attempt's submitted task runs go.

    Made by :meth:`TaskRunner.open` on the task-runner loop; closed by :meth:`aclose` when
    the attempt ends. This base places bodies locally: async bodies in the task run's own
    task, sync bodies (and every hook) where :attr:`target` says.

    Args:
        target: where sync bodies and sync hooks run.
    """

    def __init__(self, target: SyncTarget) -> None:
        self.target = target

    def remote_body(self, parameters: dict[str, Any], future: Any) -> RemoteBody | None:
        """Return what calls the body of the task run of ``future`` (whose call had
        ``parameters``, futures unresolved) elsewhere, or None to call it locally."""
        return None

    async def aclose(self) -> None:
        """Release what :meth:`TaskRunner.open` started (on the task-runner loop)."""


class TaskRunner:
    """Base class: says where the bodies of submitted task runs run.

    Args:
        max_workers: how many sync bodies run at once (None: anyio's thread limit).

    Raises:
        ValueError: ``max_workers`` is not a positive integer or None.
    """

    def __init__(self, max_workers: int | None = None) -> None:
        if max_workers is not None and (not isinstance(max_workers, int) or max_workers < 1):
            raise ValueError(
                f"max_workers must be a positive integer or None, got {max_workers!r}."
            )
        self.max_workers = max_workers

    def duplicate(self) -> TaskRunner:
        """Return a fresh runner with the same settings, for one flow run."""
        return type(self)(max_workers=self.max_workers)

    def sync_target(self) -> SyncTarget:
        """Return where sync bodies go; call inside the flow run's event loop."""
        limiter = None if self.max_workers is None else anyio.CapacityLimiter(self.max_workers)
        return SyncTarget(BodyPlacement.WORKER_THREAD, limiter=limiter)

    async def open(self) -> Placement:
        """Start what this runner needs for one flow run attempt and return where its
        bodies go; called on the task-runner loop when the attempt first submits a run.

        Raises:
            Exception: the runner could not start (the attempt's submitted runs then end
                Crashed with this error).
        """
        return Placement(self.sync_target())

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.max_workers == other.max_workers  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), self.max_workers))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_workers={self.max_workers!r})"


class ThreadPoolTaskRunner(TaskRunner):
    """Sync bodies on a pool of at most ``max_workers`` worker threads (default: anyio's
    thread limit); async bodies concurrently on the task-runner loop (never the loop of
    the flow body that submitted them, which may block on their futures). The default
    runner, as in Prefect 3."""


class ConcurrentTaskRunner(TaskRunner):
    """Async bodies run concurrently on the task-runner loop; sync bodies on worker
    threads (anyio's thread limit, or ``max_workers``). Kept for Prefect 2 code: it
    places bodies as :class:`ThreadPoolTaskRunner` does."""
