"""Futures: the eventual outcome of a submitted task run.

``task.submit()`` returns a :class:`TaskRunFuture` and ``task.map()`` a
:class:`TaskRunFutureList`; ``task.delay()`` returns a
:class:`~runtime.engine._distributed.DistributedTaskRunFuture`, which follows its run in
the store. Their ``wait()`` and ``result()`` block the calling thread;
in async code, ``await future`` (or ``await future.aresult()``) waits without blocking the
event loop. :func:`wait` and :func:`as_completed` work on any iterable of futures.
"""

from __future__ import annotations

import threading
import time
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Generator,
    Generic,
    Iterable,
    Iterator,
    NamedTuple,
    TypeVar,
)

import anyio

from actors import LoopWaker

from ..core import _states as S
from ..core._states import State

if TYPE_CHECKING:
    from ..core._models import TaskRun

__all__ = [
    "DoneAndNotDoneFutures",
    "TaskRunFuture",
    "TaskRunFutureList",
    "as_completed",
    "wait",
]

R = TypeVar("R")


class TaskRunFuture(Generic[R]):
    """The eventual outcome of a submitted task run.

    Attributes:
        task_run: the task run record (id, name, current state, ...).
    """

    __slots__ = (
        "task_run",
        "_final",
        "_waiter",
        "_lock",
        "_callbacks",
        "_home_thread",
        "_transaction",
        "__dict__",  # subclasses and users may add attributes
        "__weakref__",
    )

    def __init__(self, task_run: TaskRun) -> None:
        self.task_run = task_run
        self._final: State[R] | None = None  # set once: the future is done
        # Made only when a thread blocks on the future: most futures are awaited, or
        # done before anyone asks, and a threading.Event costs ~1 KiB per future.
        self._waiter: threading.Event | None = None
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[TaskRunFuture[R]], Any]] | None = None
        self._home_thread: int | None = None
        self._transaction: Any = None  # the transaction it was submitted in, until done

    @property
    def task_run_id(self) -> Any:
        """The id of the task run."""
        return self.task_run.id

    @property
    def state(self) -> State[R]:
        """The task run's final state once done, else its current state."""
        if self._final is not None:
            return self._final
        return self.task_run.state or S.Pending()

    def done(self) -> bool:
        """Whether the task run reached its final outcome."""
        return self._final is not None

    def wait(self, timeout: float | None = None) -> None:
        """Block until the task run is done, or ``timeout`` seconds passed."""
        if self._final is not None:
            return
        self._avoid_self_deadlock()
        with self._lock:
            if self._final is not None:
                return
            if self._waiter is None:
                self._waiter = threading.Event()
            waiter = self._waiter
        waiter.wait(timeout)

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> R:
        """Block until done and return the task run's result.

        Raises:
            TimeoutError: the run was not done after ``timeout`` seconds.
            BaseException: the task run's exception, for a failed run with
                ``raise_on_failure=True``.
        """
        self.wait(timeout)
        if self._final is None:
            raise TimeoutError(
                f"Task run {self.task_run_id} did not complete within {timeout} seconds"
            )
        return self._final.result(raise_on_failure=raise_on_failure)  # type: ignore[union-attr, return-value]

    async def wait_async(self) -> None:
        """Wait until the task run is done, without blocking the event loop."""
        if self._final is not None:
            return
        event = anyio.Event()
        waker = LoopWaker()
        self.add_done_callback(lambda _: waker.wake(event.set))
        await event.wait()

    async def aresult(self, raise_on_failure: bool = True) -> R:
        """Wait (without blocking the loop) and return the result; see :meth:`result`."""
        await self.wait_async()
        return self._final.result(raise_on_failure=raise_on_failure)  # type: ignore[union-attr, return-value]

    def __await__(self) -> Generator[Any, None, R]:
        return self.aresult().__await__()

    def add_done_callback(self, fn: Callable[[TaskRunFuture[R]], Any]) -> None:
        """Call ``fn(future)`` when the run is done (at once if it already is).

        The callback runs on the thread that finishes the run; keep it quick.
        """
        with self._lock:
            if self._final is None:
                if self._callbacks is None:
                    self._callbacks = []
                self._callbacks.append(fn)
                return
        fn(self)

    # -- engine side --------------------------------------------------------------------

    def set_final_state(self, state: State[R]) -> None:
        """Record the run's final state and wake every waiter (the engine calls this once)."""
        with self._lock:
            if self._final is not None:
                return
            self._final = state
            self._transaction = None
            waiter, self._waiter = self._waiter, None
            callbacks, self._callbacks = self._callbacks or (), None
        if waiter is not None:
            waiter.set()
        for callback in callbacks:
            callback(self)

    def set_home_thread(self, thread_id: int) -> None:
        """Say which event-loop thread runs this future's task run, so a blocking wait on
        that very thread fails clearly instead of waiting for itself."""
        self._home_thread = thread_id

    def _avoid_self_deadlock(self) -> None:
        if self._home_thread == threading.get_ident() and self._final is None:
            raise RuntimeError(
                f"Blocking on task run {self.task_run.name!r} from the event loop that runs it "
                "would deadlock (a task body waiting for a run it submitted). In async code, "
                "use `await future` (or `await future.aresult()`) instead of .result()/.wait()."
            )

    def __repr__(self) -> str:
        return f"TaskRunFuture({self.task_run.name!r}, state={self.state})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled (into a queued task run's call) as a reference to its run, which the
        # unpickling process follows in its store.
        from ._distributed import stored_future

        return (stored_future, (self.task_run_id, self.task_run.name))


class TaskRunFutureList(list[TaskRunFuture[R]]):
    """The futures of ``task.map()``: a list with ``wait()`` and ``result()`` for all."""

    def wait(self, timeout: float | None = None) -> None:
        """Block until every run is done, or ``timeout`` seconds passed."""
        wait(self, timeout=timeout)

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> list[R]:
        """Block until every run is done and return their results in order.

        Raises:
            TimeoutError: not all runs were done after ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        results = []
        for future in self:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            results.append(future.result(remaining, raise_on_failure))
        return results


class DoneAndNotDoneFutures(NamedTuple):
    """What :func:`wait` returns: the futures that finished and those that did not."""

    done: set[TaskRunFuture[Any]]
    not_done: set[TaskRunFuture[Any]]


def wait(
    futures: Iterable[TaskRunFuture[Any]], timeout: float | None = None
) -> DoneAndNotDoneFutures:
    """Block until every future is done, or ``timeout`` seconds passed."""
    futures = list(futures)
    deadline = None if timeout is None else time.monotonic() + timeout
    for future in futures:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        future.wait(remaining)
    done = {f for f in futures if f.done()}
    return DoneAndNotDoneFutures(done, {f for f in futures if f not in done})


def as_completed(
    futures: Iterable[TaskRunFuture[R]], timeout: float | None = None
) -> Iterator[TaskRunFuture[R]]:
    """Yield futures as they finish (first finished, first yielded).

    Raises:
        TimeoutError: some futures were not done after ``timeout`` seconds.
    """
    pending = list(dict.fromkeys(futures))
    finished: list[TaskRunFuture[R]] = []
    ready = threading.Condition()

    def on_done(future: TaskRunFuture[R]) -> None:
        with ready:
            finished.append(future)
            ready.notify()

    for future in pending:
        future._avoid_self_deadlock()
        future.add_done_callback(on_done)
    deadline = None if timeout is None else time.monotonic() + timeout
    for _ in range(len(pending)):
        with ready:
            while not finished:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    left = len([f for f in pending if not f.done()])
                    raise TimeoutError(f"{left} (of {len(pending)}) futures unfinished")
                ready.wait(remaining)
            future = finished.pop(0)
        yield future
