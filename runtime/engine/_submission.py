"""Where submitted task runs run: a task-runner loop, never the flow body's own loop.

``task.submit()`` and ``task.map()`` hand task runs to the flow run attempt's
:class:`TaskRunHost`. As with Prefect's ``ThreadPoolTaskRunner``, they do not run on the
thread of the code that submitted them: the host starts them as children of a
supervisor on a *task-runner loop* (an event loop on a daemon thread, which is not the
submitting thread's loop), with the runtime that serves the flow run's store there. Where
their bodies run is the flow's task runner's choice (its :class:`Placement`, opened at the
first submit and closed when the attempt ends): by default async bodies run concurrently
on that loop and sync bodies on its worker threads; a ``DaskTaskRunner`` sends them to a
Dask cluster.

So a flow body may block on a future (``future.result()``, ``wait(...)``,
``as_completed(...)``) even from inside an async flow, whose loop it then blocks: the task
runs elsewhere and completes. Called tasks (``task(...)``, ``await task(...)``) are not
affected: they run in the caller.

Submitting only posts the runs to the task-runner loop; nothing waits there. The
supervisor is started on the first submit of an attempt, and stopped when the attempt
ends: runs still running are cancelled, and runs that never started end Cancelled.
"""

from __future__ import annotations

import logging
import threading
from functools import partial
from typing import Any

import anyio

from actors import (
    ChildSpec,
    GlobalLoop,
    LoopWaker,
    PendingCall,
    Restart,
    StartChild,
    Supervisor,
    global_loop,
)

from ..core import _states as S
from ..orchestration._runtime import Runtime, background_runtime, report_crash
from ._drivers import LoopDriver
from ._run_actors import TaskRunActor
from ._task_engine import TaskRunEngine, run_submitted
from ._task_runners import Placement, TaskRunner

__all__ = ["TaskRunHost", "task_runner_loop"]

NEVER_STARTED = "The flow run attempt ended before this task run started."

_logger = logging.getLogger("stageflow.engine")


class _RunSupervisor(Supervisor):
    """The supervisor of one flow run attempt's submitted task runs (``task.map`` may
    start thousands at once: the mailbox is sized for that)."""

    mailbox_size = 1_000_000


_loops: list[GlobalLoop] = []
_loops_lock = threading.Lock()


def task_runner_loop(avoid: tuple[GlobalLoop, ...] = ()) -> GlobalLoop:
    """Return a loop for submitted task runs that the calling thread does not run (nor any
    loop in ``avoid``): the global loop, or else another loop kept for that."""
    primary = global_loop()
    if not primary.is_loop_thread() and primary not in avoid:
        return primary
    with _loops_lock:
        _loops[:] = [loop for loop in _loops if not loop.closed]
        for loop in _loops:
            if not loop.is_loop_thread() and loop not in avoid:
                return loop
        loop = GlobalLoop(primary.backend, name=f"stageflow-task-runner-{len(_loops)}")
        _loops.append(loop)
        return loop


class TaskRunHost:
    """The submitted task runs of one flow run attempt; see the module docstring.

    Args:
        runtime: the runtime of the flow run (its store and clock are the task runs').
        name: the attempt's name, for its supervisor.
        task_runner: the flow's task runner, which places the bodies.
    """

    def __init__(
        self,
        runtime: Runtime,
        name: str,
        task_runner: TaskRunner,
        avoid: tuple[GlobalLoop, ...] = (),
    ) -> None:
        assert runtime.backend is not None
        self._flow_runtime = runtime
        self._avoid = avoid  # loops blocked by the bodies that submit here (see _nested_host)
        self._nested: TaskRunHost | None = None
        self._backend = runtime.backend
        self._clock = runtime.clock
        self._name = name
        self._task_runner = task_runner
        self._lock = threading.Lock()
        self._loop: GlobalLoop | None = None
        self._closed = False
        self._unfinished = 0
        self._on_idle: Any = None
        # On the task-runner loop:
        self._started: anyio.Lock | None = None
        self._ref: Any = None
        self._runtime: Runtime | None = None
        self._placement: Placement | None = None
        self._not_started: S.State[Any] | None = None  # why runs cannot start (no placement)
        self._stopped = False

    def submit(self, items: list[tuple[Any, ...]]) -> None:
        """Start task runs: ``items`` of ``(task, parameters, wait_for, future, flow_ctx)``.
        Any thread; returns at once. After :meth:`stop`, the runs end Cancelled.

        The host counts the runs not finished yet and keeps nothing of the finished ones
        (a flow submitting 100,000 runs holds only the futures its own code keeps)."""
        nested = self._nested_host()
        if nested is not None:
            nested.submit(items)
            return
        with self._lock:
            self._unfinished += len(items)
        for item in items:
            item[3].add_done_callback(self._finished)
        with self._lock:
            if self._closed:
                loop = None
            else:
                loop = self._loop = self._loop or task_runner_loop(self._avoid)
        if loop is None:
            _never_started(items)
            return
        loop.call_soon(self._start, items)

    def _nested_host(self) -> TaskRunHost | None:
        """The host for runs submitted by a body that runs on this host's loop (an async
        task body submitting tasks): they go to a host on another loop, so that body may
        block on their futures without blocking the loop they need (as with Prefect, where
        each submitted async task has a loop of its own). None for other callers."""
        with self._lock:
            loop = self._loop
            if self._closed or loop is None or not loop.is_loop_thread():
                return None
            if self._nested is None:
                self._nested = TaskRunHost(
                    self._flow_runtime,
                    f"{self._name}-nested",
                    self._task_runner,
                    avoid=(*self._avoid, loop),
                )
            return self._nested

    async def _start(self, items: list[tuple[Any, ...]]) -> None:
        if self._started is None:
            self._started = anyio.Lock()
        async with self._started:
            if self._stopped:
                _never_started(items)
                return
            if self._ref is None and self._not_started is None:
                await self._open()
            if self._not_started is not None:
                for item in items:
                    item[3].set_final_state(self._not_started)
                return
        runtime = self._runtime
        placement = self._placement
        assert runtime is not None and placement is not None
        home = threading.get_ident()
        for task, parameters, wait_for, future, flow_ctx in items:
            engine_factory = partial(
                TaskRunEngine,
                task,
                future.task_run,
                parameters,
                wait_for,
                runtime,
                flow_ctx,
                LoopDriver(runtime, placement.target, placement.remote_body(parameters, future)),
                future._transaction,
                future,
            )
            future.set_home_thread(home)
            spec = ChildSpec(
                f"task-run-{future.task_run.id}",
                partial(TaskRunActor, engine_factory, partial(run_submitted, future=future)),
                restart=Restart.TEMPORARY,
                shutdown_timeout=0,
            )
            self._ref.tell_nowait(StartChild(spec))

    async def _open(self) -> None:
        """Open the task runner's placement, then the supervisor of the task runs; a runner
        that cannot start leaves every run of the attempt Crashed, saying why."""
        try:
            self._placement = await self._task_runner.open()
        except Exception as exc:
            _logger.error("The task runner %r could not start: %r", self._task_runner, exc)
            self._not_started = S.Crashed(
                message=f"The task runner {self._task_runner!r} could not start: {exc!r}",
                data=exc,
            )
            return
        runtime = self._runtime = await background_runtime(
            self._backend,
            self._clock,
            self._loop,  # type: ignore[arg-type]
        )
        name = self._name
        self._ref = await runtime.spawn(
            ChildSpec(
                name,
                lambda: _RunSupervisor(name=name, on_crash=report_crash),
                restart=Restart.TEMPORARY,
            )
        )

    def _finished(self, future: Any) -> None:
        with self._lock:
            self._unfinished -= 1
            on_idle = self._on_idle if self._unfinished == 0 else None
        if on_idle is not None:
            on_idle()

    async def wait_idle(self) -> None:
        """Wait until every task run submitted so far has finished (from the flow run's
        loop, without blocking it)."""
        idle = anyio.Event()
        waker = LoopWaker()
        with self._lock:
            if self._unfinished != 0:
                self._on_idle = lambda: waker.wake(idle.set)
            else:
                idle.set()
        await idle.wait()
        with self._lock:
            nested = self._nested
        if nested is not None:
            await nested.wait_idle()

    async def stop(self) -> None:
        """Stop the task runs still running (they end Cancelled or Crashed as their engines
        decide); those that never started end Cancelled. Call from the flow run's loop."""
        with self._lock:
            self._closed = True
            loop = self._loop
            nested = self._nested
        if nested is not None:
            # First: a body of this host may be blocking this host's loop on their futures.
            await nested.stop()
        if loop is not None:
            pending: PendingCall[None] = loop.call_soon(self._stop)
            with anyio.CancelScope(shield=True):
                await pending.aresult()

    async def _stop(self) -> None:
        if self._started is None:
            self._started = anyio.Lock()
        async with self._started:
            self._stopped = True
            if self._ref is not None:
                await self._ref.stop()
            placement, self._placement = self._placement, None
            if placement is not None:
                try:
                    await placement.aclose()
                except Exception as exc:
                    _logger.warning("The task runner %r did not close: %r", self._task_runner, exc)


def _never_started(items: list[tuple[Any, ...]]) -> None:
    for item in items:
        item[3].set_final_state(S.Cancelled(message=NEVER_STARTED))
