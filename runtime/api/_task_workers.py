"""Background tasks: ``task.delay()`` queues a task run in the store, and task workers
(``serve_tasks``, ``aserve_tasks``, ``stageflow worker``) in any process run it.

Prefect 3's deferred tasks and task workers (``Task.delay``/``apply_async``,
``prefect.task_worker.serve``), without a server: the queue is in the store.

**Queuing.** ``delay()`` records the task run, Scheduled, with its call (parameters and
``wait_for``, pickled with cloudpickle; futures in them as references to their runs) in
one committed store transaction, and returns a
:class:`~runtime.engine._distributed.DistributedTaskRunFuture`. Nothing runs it until a
worker serving the task claims it; a worker started later finds it.

**Workers.** A worker claims the oldest queued runs of its tasks, up to ``limit`` at a
time, each in a store transaction (exactly one worker claims a run), and runs each as a
supervised actor of its Runtime, through the engine as any task run (retries, timeouts,
caching, hooks). The run's result is kept in the store, where its future finds it. It
learns of new runs at once when they are queued in its process, or, on PostgreSQL,
anywhere (``LISTEN/NOTIFY``); otherwise it looks every ``poll_interval`` seconds.

**Delivery: at least once.** A worker process holds a lease in the store while it runs
(the liveness lease every process running flows keeps). If it dies, any live process
notices once the lease expires and hands its claimed runs back to the queue
(:func:`~runtime.orchestration._ownership.requeue_claimed_task_runs`), where another
worker runs them again: a run is never lost, and may run twice if its worker died after
the body ran. A worker stopped by Ctrl-C, SIGTERM or cancellation stops claiming, lets
its runs finish within ``grace_period`` seconds, and puts the others back in the queue.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from datetime import datetime, timezone
from functools import partial
from typing import TYPE_CHECKING, Any
from uuid import UUID

import anyio

from actors import Actor, ActorRef, ActorStopped, ChildSpec, LoopWaker, Restart

from ..core import _states as S
from ..core._exceptions import ResultSerializationError
from ..core._models import evolve
from ..core._serializers import CloudpickleSerializer
from ..core._states import run_details
from ..engine._body import WORKER_THREADS
from ..engine._distributed import DistributedTaskRunFuture, bind_store
from ..engine._drivers import LoopDriver
from ..engine._task_engine import TaskRunEngine, new_task_run
from ..orchestration._liveness import lease_keeper
from ..orchestration._orchestrator import ProposeState
from ..orchestration._owners import process_owner
from ..orchestration._runtime import Runtime
from ..store._backend import TASK_QUEUED, StoreBackend
from ..store._records import QueuedTaskRun
from ._entry import inherited_backend, runtime_scope
from ._serve import DEFAULT_GRACE_PERIOD, run_until_stopped

if TYPE_CHECKING:
    from ._task import Task

__all__ = [
    "DEFAULT_LIMIT",
    "DEFAULT_POLL_INTERVAL",
    "aserve_tasks",
    "queue_task_run",
    "serve_tasks",
]

logger = logging.getLogger("stageflow.task_worker")

DEFAULT_LIMIT = 10
"""How many task runs a worker runs at once unless told (Prefect's default too)."""

DEFAULT_POLL_INTERVAL = 1.0
"""Seconds between a worker's looks at the queue when nothing wakes it (SQLite, or
PostgreSQL while its notification connection is down)."""

_CALLS = CloudpickleSerializer()


# -- queuing --------------------------------------------------------------------------------


def queue_task_run(
    task: Task[..., Any], parameters: dict[str, Any], wait_for: Any
) -> DistributedTaskRunFuture[Any]:
    """Record a Scheduled run of ``task`` with its call in the queue of the store serving
    the caller (its Runtime's, else the default store); return its future.

    Raises:
        ResultSerializationError: the parameters (or ``wait_for``) cannot be pickled.
        StoreClosed, StoreError: the store cannot be written.
    """
    backend, _ = inherited_backend()
    record = new_task_run(task, None, parameters, wait_for)
    try:
        call = _CALLS.dumps({"parameters": parameters, "wait_for": wait_for})
    except Exception as exc:
        raise ResultSerializationError(
            f"Cannot queue a run of task {task.name!r}: its parameters cannot be pickled "
            f"({type(exc).__name__}: {exc}). A task worker, maybe in another process, "
            "runs it from the store: pass values cloudpickle can serialize (for a "
            "connection or a lock, what it takes to make one)."
        ) from exc
    run = evolve(record, state=S.Scheduled(state_details=run_details(None, record.id)), version=1)
    backend.enqueue_task_run(run, QueuedTaskRun(run.id, task.task_key, call, _utcnow()))
    logger.debug("Queued task run %r of task %r in %s.", run.name, task.name, backend.url)
    return DistributedTaskRunFuture(run, backend)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


# -- serving --------------------------------------------------------------------------------


def serve_tasks(
    *tasks: Task[..., Any],
    limit: int | None = DEFAULT_LIMIT,
    timeout: float | None = None,
    grace_period: float = DEFAULT_GRACE_PERIOD,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
) -> None:
    """Run the queued runs of ``tasks`` (from ``task.delay()`` in any process sharing the
    store), here, until stopped; blocks. Prefect: ``prefect.task_worker.serve``.

    The worker runs in an event loop on the calling thread (the global loop's backend:
    asyncio unless ``STAGEFLOW_GLOBAL_LOOP=trio`` or a ``Runtime(loop="trio")`` block says
    otherwise), in a Runtime on the store of the ``Runtime`` block around the call, else on
    the default store. On the main thread, Ctrl-C (SIGINT) or SIGTERM stops it: no new run
    is claimed, runs in progress get ``grace_period`` seconds to finish, the others go
    back to the queue (a second signal puts them back at once). See the module docstring
    for claims and at-least-once delivery.

    Args:
        *tasks: the tasks whose queued runs this worker runs (matched by task key: the
            same code as the queuing process's).
        limit: the most runs in progress at once; None for no limit.
        timeout: stop (as on a signal) after this many seconds; None: run until stopped.
        grace_period: seconds runs in progress get to finish once stopped.
        poll_interval: seconds between looks at the queue when nothing wakes the worker.

    Raises:
        ValueError: no task, something that is not a task, or a bad number.
        RuntimeError: called from async code (use ``await aserve_tasks(...)``).
    """
    worker_options = _check(tasks, limit, timeout, grace_period, poll_interval)
    run_until_stopped(
        partial(_TaskWorker, tasks, **worker_options),
        "serve_tasks()",
        "await aserve_tasks(*tasks)",
    )


async def aserve_tasks(
    *tasks: Task[..., Any],
    limit: int | None = DEFAULT_LIMIT,
    timeout: float | None = None,
    grace_period: float = DEFAULT_GRACE_PERIOD,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
) -> None:
    """Run the queued runs of ``tasks`` until cancelled (or ``timeout`` seconds): the
    async form of :func:`serve_tasks`, for services. Prefect: ``prefect.task_worker.aserve``.

    The worker runs in the ``Runtime`` serving the caller (open one in your service's
    lifespan), else in an implicit one on the default store. Run it in a task of your own
    and cancel that task to stop: no new run is claimed, runs in progress get
    ``grace_period`` seconds to finish, the others go back to the queue, then the
    cancellation goes on. It takes the arguments of :func:`serve_tasks`.

    Raises:
        ValueError: no task, something that is not a task, or a bad number.
    """
    worker_options = _check(tasks, limit, timeout, grace_period, poll_interval)
    async with runtime_scope() as runtime:
        await _TaskWorker(tasks, runtime, **worker_options).run()


def _check(
    tasks: Sequence[Any],
    limit: int | None,
    timeout: float | None,
    grace_period: float,
    poll_interval: float,
) -> dict[str, Any]:
    """The worker's options, checked.

    Raises:
        ValueError: what is wrong, and what to pass instead.
    """
    from ._task import Task

    if not tasks:
        raise ValueError(
            "Nothing to serve: give at least one task, such as serve_tasks(send_email)."
        )
    for task in tasks:
        if not isinstance(task, Task):
            raise ValueError(f"serve_tasks() takes tasks (made with @task), got {task!r}.")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a whole number >= 1, or None for no limit; got {limit!r}.")
    if timeout is not None:
        _seconds("timeout", timeout, zero=False)
    _seconds("grace_period", grace_period, zero=True)
    _seconds("poll_interval", poll_interval, zero=False)
    return {
        "limit": limit,
        "timeout": timeout,
        "grace_period": float(grace_period),
        "poll_interval": float(poll_interval),
    }


def _seconds(name: str, value: Any, *, zero: bool) -> None:
    """Check that ``value`` is a number of seconds, > 0 (or >= 0 with ``zero``).

    Raises:
        ValueError: it is not.
    """
    number = not isinstance(value, bool) and isinstance(value, (int, float))
    if not number or not (value >= 0 if zero else value > 0):
        least = ">= 0" if zero else "> 0"
        raise ValueError(f"{name} must be a number of seconds {least}, got {value!r}.")


class _TaskWorker:
    """One task worker in a runtime; see the module docstring. ``run`` claims and starts
    runs until cancelled (or its timeout), then drains; ``hurry`` ends the drain now."""

    after_grace = "they go back to the queue"
    logger = logger

    def __init__(
        self,
        tasks: Sequence[Task[..., Any]],
        runtime: Runtime,
        *,
        limit: int | None,
        timeout: float | None,
        grace_period: float,
        poll_interval: float,
    ) -> None:
        self.runtime = runtime
        self.tasks = {task.task_key: task for task in tasks}
        self.limit = limit
        self.timeout = timeout
        self.grace_period = grace_period
        self.poll_interval = poll_interval
        self.owner = process_owner()
        self._running: dict[UUID, ActorRef | None] = {}
        self._changed = anyio.Event()
        self._hurry = anyio.Event()

    async def run(self) -> None:
        """Claim and run queued runs until cancelled or timed out; then drain."""
        backend = self.runtime.backend
        assert backend is not None
        waker = LoopWaker()

        def queued(run: Any, state: Any) -> None:
            waker.wake(self._poke)

        unsubscribe = backend.subscribe(TASK_QUEUED, queued)
        names = ", ".join(sorted(task.name for task in self.tasks.values()))
        logger.info("Serving the queued runs of task(s) %s in %s.", names, backend.url)
        self._warn_of_other_versions(backend)
        try:
            with anyio.move_on_after(math.inf if self.timeout is None else self.timeout):
                await self._claim_forever(backend)
            logger.info("Task worker timed out after %g s; stopping.", self.timeout)
        finally:
            unsubscribe()
            with anyio.CancelScope(shield=True):
                await self._drain()
            logger.info("Task worker stopped.")

    def _warn_of_other_versions(self, backend: StoreBackend) -> None:
        """Say so when the queue holds runs of a served task queued by another version of
        its code: a queued run is matched by its task key, which changes with the code, so
        this worker leaves them waiting for a worker with that code."""
        served = {key.rpartition("-")[0]: task for key, task in self.tasks.items()}
        others: dict[str, int] = {}
        for entry in backend.read_task_queue():
            name = entry.task_key.rpartition("-")[0]
            if entry.task_key not in self.tasks and name in served:
                others[name] = others.get(name, 0) + 1
        for name, count in sorted(others.items()):
            logger.warning(
                "%d queued run(s) of task %r were queued by another version of its code; "
                "this worker does not run them. Serve them with a worker running that code, "
                "or queue them again.",
                count,
                served[name].name,
            )

    def hurry(self) -> None:
        """Put the runs still in progress back in the queue now, not after the grace period."""
        self._hurry.set()

    def _poke(self) -> None:
        self._changed.set()

    async def _claim_forever(self, backend: StoreBackend) -> None:
        keeper = None
        if backend.shared_across_processes:
            keeper = lease_keeper(backend, self.runtime.lease_seconds)
        keys = list(self.tasks)
        while True:
            self._changed = anyio.Event()
            free = math.inf if self.limit is None else self.limit - len(self._running)
            claimed: list[QueuedTaskRun] = []
            batch = 0
            if free > 0:
                if keeper is not None:  # a claim is never older than its claimer's lease
                    keeper.take(backend)
                batch = 100 if free == math.inf else int(free)
                claimed = backend.claim_task_runs(keys, self.owner, _utcnow(), batch)
                for entry in claimed:
                    await self._start(entry)
            if claimed and len(claimed) == batch:
                await anyio.lowlevel.checkpoint()
                continue  # more may be waiting
            with anyio.move_on_after(self.poll_interval):
                await self._changed.wait()

    async def _start(self, entry: QueuedTaskRun) -> None:
        task = self.tasks[entry.task_key]
        logger.info("Received task run %s of task %r.", entry.task_run_id, task.name)
        self._running[entry.task_run_id] = None
        try:
            ref = await self.runtime.spawn(
                ChildSpec(
                    f"queued task run {entry.task_run_id}",
                    partial(_QueuedRunActor, self, task, entry),
                    restart=Restart.TEMPORARY,
                    shutdown_timeout=0,  # the worker's drain is the grace period
                )
            )
        except BaseException:
            self._running.pop(entry.task_run_id, None)
            self.runtime.backend.release_task_run(entry.task_run_id, self.owner, done=False)  # type: ignore[union-attr]
            raise
        if entry.task_run_id in self._running:  # not over already
            self._running[entry.task_run_id] = ref

    def finished(self, task_run_id: UUID) -> None:
        """A run's actor is done with it (on the loop)."""
        self._running.pop(task_run_id, None)
        self._poke()

    async def _drain(self) -> None:
        """Let the runs in progress finish within the grace period; stop the others (their
        actors put them back in the queue)."""
        if self._running:
            logger.info(
                "Stopping: %d task run(s) in progress get %g s to finish.",
                len(self._running),
                self.grace_period,
            )
        with anyio.move_on_after(self.grace_period):
            while self._running and not self._hurry.is_set():
                self._changed = anyio.Event()
                async with anyio.create_task_group() as tg:

                    async def hurried() -> None:
                        await self._hurry.wait()
                        tg.cancel_scope.cancel()

                    tg.start_soon(hurried)
                    await self._changed.wait()
                    tg.cancel_scope.cancel()
        for ref in [ref for ref in self._running.values() if ref is not None]:
            try:
                await ref.stop()
            except ActorStopped:
                pass


class _QueuedRunActor(Actor):
    """One claimed run: runs it through the engine, then releases its queue entry (done),
    or, stopped before the run is over (the worker is stopping), puts it back in the
    queue, Scheduled again."""

    def __init__(self, worker: _TaskWorker, task: Task[..., Any], entry: QueuedTaskRun) -> None:
        self._worker = worker
        self._task = task
        self._entry = entry

    async def run(self) -> None:
        """Run the claimed task run; see the class docstring."""
        worker = self._worker
        runtime = worker.runtime
        backend = runtime.backend
        assert backend is not None and runtime.orchestrator is not None
        entry = self._entry
        over = True
        try:
            run = backend.read_task_run(entry.task_run_id)
            if run.state is not None and run.state.is_final():
                return  # it finished before its worker could release it
            try:
                with bind_store(backend):
                    call = _CALLS.loads(entry.call)
            except Exception as exc:  # noqa: BLE001 - the call's pickle is the user's
                message = f"The queued call of this task run cannot be read here: {exc!r}"
                logger.error("Task run %s: %s", entry.task_run_id, message)
                await runtime.orchestrator.ask(
                    ProposeState("task", run.id, S.Failed(message=message), force=True)
                )
                return
            engine = TaskRunEngine(
                self._task,
                run,
                call["parameters"],
                call["wait_for"],
                runtime,
                None,
                LoopDriver(runtime, WORKER_THREADS),
            )
            await engine.run()
        except anyio.get_cancelled_exc_class():
            over = False  # stopped with the worker: back to the queue
            raise
        except Exception:  # the engine recorded what it could; the entry is done with
            logger.exception("Task run %s could not be run.", entry.task_run_id)
        finally:
            with anyio.CancelScope(shield=True):
                await self._release(over)

    async def _release(self, over: bool) -> None:
        worker = self._worker
        runtime = worker.runtime
        backend = runtime.backend
        assert backend is not None and runtime.orchestrator is not None
        entry = self._entry
        try:
            if not over:  # unless it finished just then (not Crashed by the stop itself)
                state = backend.read_task_run(entry.task_run_id).state
                over = state is not None and state.is_final() and not state.is_crashed()
            if not over:
                requeued = S.Scheduled(
                    name="Requeued",
                    message="The task worker running it stopped; a task worker runs it again.",
                )
                await runtime.orchestrator.ask(
                    ProposeState("task", entry.task_run_id, requeued, force=True)
                )
            backend.release_task_run(entry.task_run_id, worker.owner, done=over)
        except Exception:  # the store is gone: the run's lease expiry hands it over
            logger.exception("Could not release task run %s.", entry.task_run_id)
        finally:
            worker.finished(entry.task_run_id)
