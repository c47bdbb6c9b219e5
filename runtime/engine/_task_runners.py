"""Task runners: where the bodies of *submitted* task runs execute.

Every submitted task run is an actor under its flow run's supervisor. The task runner
decides where its body goes: async bodies always run in the actor's task, in the flow
run's event loop; sync bodies run on worker threads, at most ``max_workers`` at a time.
"""

from __future__ import annotations

import anyio

from ._body import BodyPlacement, SyncTarget

__all__ = ["ConcurrentTaskRunner", "TaskRunner", "ThreadPoolTaskRunner"]


class TaskRunner:
    """Base class: says where the sync bodies of submitted task runs run."""

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

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.max_workers == other.max_workers  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), self.max_workers))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_workers={self.max_workers!r})"


class ThreadPoolTaskRunner(TaskRunner):
    """Sync bodies on a pool of at most ``max_workers`` worker threads (default: anyio's
    thread limit); async bodies in the flow run's event loop. The default runner."""


class ConcurrentTaskRunner(TaskRunner):
    """Async bodies run concurrently in the flow run's event loop; sync bodies on worker
    threads (anyio's thread limit, or ``max_workers``)."""
