"""The future of a queued task run (``task.delay()``), which follows the run in the store.

Prefect's ``PrefectDistributedFuture``: a task worker runs the task run, in this process or
another, so no engine here can tell the future when it ends. The future watches the store
instead: ``wait``/``result`` (and ``await``) subscribe to the run's changes in the store
this process has open (a worker in this process, or on PostgreSQL a worker anywhere,
wakes them at once) and otherwise look again every ``poll_interval`` seconds (on SQLite a
look is one ``sync_external`` and one read). The result is read from the store, where
finished task results are kept (:func:`~runtime.store._results.keep_result`).

Any task-run future that goes into a queued call (a parameter of ``delay()``, or its
``wait_for``) is pickled as a reference to its run (:func:`stored_future`), and comes
back in the worker as a future of this kind, bound to the worker's store
(:func:`bind_store`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Callable, TypeVar
from uuid import UUID

from actors import SystemClock

from ..core._exceptions import StageflowError
from ..core._models import TaskRun
from ..core._states import State, StateType
from ..orchestration._runtime import current_runtime_var
from ..orchestration._waiting import wait_for_state_change
from ..store._urls import default_backend
from ._futures import TaskRunFuture

if TYPE_CHECKING:
    from ..store._backend import StoreBackend

__all__ = ["POLL_INTERVAL", "DistributedTaskRunFuture", "bind_store", "stored_future"]

R = TypeVar("R")

POLL_INTERVAL = 0.5
"""Seconds between two looks at the store while waiting for a queued run that nothing in
this process reports."""

_binding: ContextVar[StoreBackend | None] = ContextVar("stageflow_stored_futures", default=None)


def _over(state: State[Any] | None) -> bool:
    """Whether a queued run in ``state`` is over: final, or NotReady (it never starts:
    an upstream did not complete)."""
    if state is None:
        return False
    return state.is_final() or (state.type is StateType.PENDING and state.name == "NotReady")


class DistributedTaskRunFuture(TaskRunFuture[R]):
    """The eventual outcome of a queued task run (``task.delay()``/``apply_async()``), run
    by a task worker in this process or another; see the module docstring.

    ``wait(timeout)``, ``result(timeout, raise_on_failure)``, ``await future`` and
    ``add_done_callback`` work as on any :class:`~runtime.futures.TaskRunFuture`; ``state``
    reads the run's current state from the store. A result read in another process than
    the worker's comes from the store: a value the worker could not serialize cannot be
    read there (``MissingResult``). As in Prefect, waiting does not start the run: a task
    worker serving the task must (``serve_tasks``, ``stageflow worker``).

    Args:
        task_run: the queued run's record.
        store: the store the run is queued in; None: the store of the Runtime serving the
            caller when it waits, else the default store.
        poll_interval: seconds between two looks at the store (see the module docstring).
    """

    def __init__(
        self,
        task_run: TaskRun,
        store: StoreBackend | None = None,
        poll_interval: float = POLL_INTERVAL,
    ) -> None:
        super().__init__(task_run)
        self._store = store
        self.poll_interval = poll_interval
        self._watching = False

    def _backend(self) -> StoreBackend:
        if self._store is None or self._store.closed:
            runtime = current_runtime_var.get()
            backend = runtime.backend if runtime is not None else None
            self._store = backend if backend is not None and not backend.closed else None
        if self._store is None:
            self._store = default_backend()
        return self._store

    def _look(self, backend: StoreBackend) -> bool:
        """Read the run; finish the future if it is over. Return whether it is done."""
        if self.done():
            return True
        backend.sync_external()
        run = backend.read_task_run(self.task_run_id)
        self.task_run = run
        if _over(run.state):
            self.set_final_state(run.state)  # type: ignore[arg-type]
        return self.done()

    @property
    def state(self) -> State[R]:
        """The run's final state once done, else its current state in the store."""
        if not self.done():
            try:
                self._look(self._backend())
            except StageflowError:  # the store is gone: the last state known here
                pass
        return super().state

    def wait(self, timeout: float | None = None) -> None:
        """Block until the run is over, or ``timeout`` seconds passed.

        Raises:
            ObjectNotFound: the run is not in the store.
            StoreClosed, StoreError: the store cannot be read.
        """
        if self.done():
            return
        backend = self._backend()
        deadline = None if timeout is None else time.monotonic() + timeout
        changed = threading.Event()
        unsubscribe = backend.subscribe(self.task_run_id, lambda run, state: changed.set())
        try:
            while not self._look(backend):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return
                changed.wait(
                    self.poll_interval if remaining is None else min(self.poll_interval, remaining)
                )
                changed.clear()
        finally:
            unsubscribe()

    async def wait_async(self) -> None:
        """Wait until the run is over, without blocking the event loop.

        Raises:
            ObjectNotFound, StoreClosed, StoreError: as :meth:`wait`.
        """
        backend = self._backend()
        clock = SystemClock()
        while not self._look(backend):
            await wait_for_state_change(backend, self.task_run_id, clock, self.poll_interval)

    def add_done_callback(self, fn: Callable[[TaskRunFuture[R]], Any]) -> None:
        """Call ``fn(future)`` when the run is over (at once if it is): a daemon thread
        watches the store for it meanwhile (one per future)."""
        super().add_done_callback(fn)
        with self._lock:
            if self.done() or self._watching:
                return
            self._watching = True
        threading.Thread(
            target=self._watch, name=f"stageflow-watch {self.task_run_id}", daemon=True
        ).start()

    def _watch(self) -> None:
        try:
            self.wait()
        except StageflowError:
            with self._lock:
                self._watching = False  # the next callback tries again

    def __repr__(self) -> str:
        return f"DistributedTaskRunFuture({self.task_run.name!r}, state={self.state})"


@contextmanager
def bind_store(backend: StoreBackend) -> Iterator[None]:
    """Make the futures unpickled in this block (by :func:`stored_future`) wait on
    ``backend``: a task worker reads a queued call in its own store."""
    token = _binding.set(backend)
    try:
        yield
    finally:
        _binding.reset(token)


def stored_future(task_run_id: UUID, name: str) -> DistributedTaskRunFuture[Any]:
    """Rebuild a pickled task-run future: a future of the run ``task_run_id`` that follows
    it in the store (see :func:`bind_store`); its record is read on the first look."""
    placeholder = TaskRun(id=task_run_id, name=name, task_key="", dynamic_key="")
    return DistributedTaskRunFuture(placeholder, _binding.get())
