"""Task-run writes of the PostgreSQL store, kept in memory and written together.

A task run has one writing process (see the store contract), so the store checks the
versions of the task runs it writes against the versions it wrote last, here, and keeps
their rows in a batch: new runs, new states, and each run's latest columns (a run's
current state is written once per batch, not once per state). A batch is written in one
transaction, each statement once for all its rows (``executemany``, which psycopg sends
in one pipeline: one round trip), when the store's group commit asks for it, before any
other statement of the store (so reads see it and flow-run writes follow it), and at
most ``commit_delay`` seconds after its first write (a helper thread). A task run this
store has not written (another process's, or one read back) is checked in the database
like a flow run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

__all__ = ["Batch", "TaskRunBatch", "Update"]

Update = tuple[UUID, bool, tuple[Any, ...]]
"""A run's latest columns: ``(run id, all its columns?, the columns)``."""
Batch = tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[Update]]
"""``(new runs' rows, new states' rows, updates)``, in the order written."""


class TaskRunBatch:
    """The batch of one store; see the module docstring.

    Args:
        flush: writes the pending batch (called on the helper thread when it is due).
        commit_delay: longest time, in seconds, a write waits in the batch.
    """

    def __init__(self, flush: Callable[[], None], commit_delay: float) -> None:
        self._flush = flush
        self.commit_delay = commit_delay
        self.lock = threading.Lock()  # the buffers
        self.flushing = threading.Lock()  # one batch written at a time, in order
        self._due = threading.Condition(self.lock)
        self._versions: dict[UUID, int] = {}
        self._runs: list[tuple[Any, ...]] = []
        self._states: list[tuple[Any, ...]] = []
        self._updates: dict[UUID, tuple[bool, Callable[[bool], tuple[Any, ...]]]] = {}
        self._since: float | None = None
        self._thread: threading.Thread | None = None
        self.closed = False

    @property
    def pending(self) -> bool:
        """Whether writes wait in the batch, or a batch is being written (a write that
        must follow it, or the end of the process, waits for it)."""
        return self._since is not None or self.flushing.locked()

    def create(
        self, run_id: UUID, version: int, row: tuple[Any, ...], state: tuple[Any, ...] | None
    ) -> None:
        """Add a new task run (and its first state) to the batch."""
        with self.lock:
            self._versions[run_id] = version
            self._runs.append(row)
            if state is not None:
                self._states.append(state)
            self._started()

    def write(
        self,
        run_id: UUID,
        version: int,
        finished: bool,
        full: bool,
        columns: Callable[[bool], tuple[Any, ...]],
        state: tuple[Any, ...] | None,
    ) -> bool | None:
        """Add a write of a task run this store wrote last, checked against the version it
        wrote: None if it is not one of them, False if the write is stale, True if added.
        ``columns(full)`` makes the run's row when the batch is written: all its columns
        if ``full`` (for this write or an earlier one of the batch), else those that change
        with a state."""
        with self.lock:
            known = self._versions.get(run_id)
            if known is None:
                return None
            if known != version - 1:
                return False
            if finished:
                del self._versions[run_id]
            else:
                self._versions[run_id] = version
            if state is not None:
                self._states.append(state)
            earlier = self._updates.get(run_id)
            self._updates[run_id] = (full or (earlier is not None and earlier[0]), columns)
            self._started()
            return True

    def _started(self) -> None:
        if self._since is not None:
            return
        self._since = time.monotonic()
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._flush_when_due, name="stageflow-postgres-batch", daemon=True
            )
            self._thread.start()
        else:
            self._due.notify()

    def take(self) -> Batch:
        """Empty the batch; return what it held (call with :attr:`flushing` held)."""
        with self.lock:
            batch: Batch = (
                self._runs,
                self._states,
                [(run_id, full, make(full)) for run_id, (full, make) in self._updates.items()],
            )
            self._runs, self._states, self._updates = [], [], {}
            self._since = None
            return batch

    def put_back(self, batch: Batch) -> None:
        """Return a batch that could not be written, ahead of what came since."""
        runs, states, updates = batch
        with self.lock:
            self._runs[:0] = runs
            self._states[:0] = states
            for run_id, full, row in updates:
                newer = self._updates.get(run_id)
                if newer is None:
                    self._updates[run_id] = (full, lambda _, row=row: row)  # type: ignore[misc]
                else:  # made since: it wins, writing every column if either had to
                    self._updates[run_id] = (full or newer[0], newer[1])
            self._started()

    def forget(self) -> None:
        """Drop the batch and the versions (a forked child's copy of its parent's)."""
        with self.lock:
            self._versions.clear()
            self._runs, self._states, self._updates = [], [], {}
            self._since = None
        self._thread = None
        self.lock = threading.Lock()
        self.flushing = threading.Lock()
        self._due = threading.Condition(self.lock)

    def close(self) -> None:
        """Stop the helper thread (the store wrote the batch first)."""
        with self.lock:
            self.closed = True
            self._due.notify_all()

    def _flush_when_due(self) -> None:
        while True:
            with self._due:
                while True:
                    if self.closed:
                        return
                    since = self._since
                    delay = None if since is None else since + self.commit_delay - time.monotonic()
                    if delay is not None and delay <= 0:
                        break
                    self._due.wait(delay)
            self._flush()
