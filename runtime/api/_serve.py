"""Serving schedules: ``serve(*schedules)`` blocks, ``await aserve(*schedules)`` runs in a
service's event loop; ``flow.serve(...)`` serves one.

Like Prefect's ``flow.serve``/``serve``, without a server: the schedules run in this
process, as supervised actors of a :class:`~runtime.Runtime` (:mod:`runtime.api._schedule_actors`),
and the store holds what processes must agree on: each schedule (its anchor), the slots
claimed, the process leases (which schedules each live process serves). A restarted
``serve`` picks up where the last one stopped (catch-up), runs again the crashed runs of
its schedules (recovery, like DBOS), and never fires a slot twice; several ``serve``
processes on one store fire each slot exactly once.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
from datetime import datetime, timezone
from functools import partial
from typing import Any, Callable, Protocol
from uuid import uuid4

import anyio
import sniffio
from anyio.abc import TaskStatus

from actors import (
    ActorRef,
    ActorStopped,
    ChildSpec,
    CrashReport,
    StopChild,
    Supervisor,
    WhichChildren,
    global_loop,
)
from actors import Restart as ChildRestart

from ..core._exceptions import ConfigurationError, SchedulesFailed
from ..core._parameters import serialize_parameters
from ..core._triggers import Trigger
from ..orchestration._liveness import lease_keeper
from ..orchestration._owners import process_owner
from ..orchestration._runtime import Runtime
from ..store._records import SCHEDULE_FAILED, SCHEDULE_SERVING, SCHEDULE_STOPPED, ScheduleRecord
from ._entry import ambient_runtime, inherited_backend, runtime_scope
from ._schedule_actors import ScheduleContext, ServeState, schedule_supervisor
from ._schedules import Schedule

__all__ = ["DEFAULT_GRACE_PERIOD", "Server", "aserve", "run_until_stopped", "serve"]

logger = logging.getLogger("stageflow.schedules")

DEFAULT_GRACE_PERIOD = 30.0
"""Seconds in-flight runs get to finish when a serve stops, before they are cancelled."""


def serve(*schedules: Schedule, grace_period: float = DEFAULT_GRACE_PERIOD) -> None:
    """Run the flows of ``schedules`` on their schedules, here, until stopped; blocks.

    The schedules run in an event loop on the calling thread (the backend of the global
    loop: asyncio unless ``STAGEFLOW_GLOBAL_LOOP=trio`` or a ``Runtime(loop="trio")``
    block says otherwise), in a Runtime on the store of the ``Runtime`` block around the
    call, else on the default store. On the main thread, Ctrl-C (SIGINT) or SIGTERM stops
    it: no new run starts, in-flight runs get ``grace_period`` seconds to finish and are
    then cancelled; a second signal cancels them at once. (Prefect: ``prefect.serve``.)

    Args:
        *schedules: what to serve, from ``flow.to_schedule(...)``; names must differ.
        grace_period: seconds in-flight runs get to finish once stopped.

    Raises:
        ValueError: no schedule, two with one name, or a negative ``grace_period``.
        RuntimeError: called from async code (use ``await aserve(...)``).
        SchedulesFailed: every schedule stopped, its runs having crashed more often than
            its restart policy allows.
    """
    _check(schedules, grace_period)
    run_until_stopped(
        partial(_Serve, schedules=schedules, grace_period=grace_period),
        "serve()",
        "await aserve(*schedules)",
    )


class Server(Protocol):
    """What :func:`run_until_stopped` runs: a serve, a task worker."""

    grace_period: float
    after_grace: str
    """What happens to in-flight runs at the end of the grace period, for the log."""
    logger: logging.Logger

    async def run(self) -> None:
        """Serve until cancelled, then drain (within the grace period)."""

    def hurry(self) -> None:
        """End the grace period now."""


def run_until_stopped(make: Callable[[Runtime], Server], what: str, async_form: str) -> None:
    """Run ``make(runtime).run()`` in an event loop on this thread, in a Runtime on the
    store of the ``Runtime`` block around the call (else the default store), until a
    signal stops it (on the main thread: SIGINT or SIGTERM; a second one hurries it).

    Raises:
        RuntimeError: called from async code (``what`` blocks; ``async_form`` is the
            way there).
        Exception: whatever the server's ``run`` raised.
    """
    try:
        sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        pass
    else:
        raise RuntimeError(
            f"{what} blocks until it is stopped, so it cannot run in an event loop; from "
            f"async code, use `{async_form}` (in a task of your own to stop it by "
            "cancelling)."
        )
    runtime = ambient_runtime()
    backend, clock = inherited_backend()
    loop = runtime.sync_loop if runtime is not None else None
    backend_name = (loop if loop is not None and not loop.closed else global_loop()).backend
    lease_seconds = None if runtime is None else runtime.lease_seconds
    anyio.run(_serve_here, make, backend, clock, lease_seconds, backend=backend_name)


async def aserve(*schedules: Schedule, grace_period: float = DEFAULT_GRACE_PERIOD) -> None:
    """Run the flows of ``schedules`` on their schedules until cancelled: the async form
    of :func:`serve`, for services.

    The schedules run in the ``Runtime`` serving the caller (open one in your service's
    lifespan), else in an implicit one on the default store. Run it in a task of your own
    and cancel that task to stop: no new run starts, in-flight runs get ``grace_period``
    seconds to finish and are then cancelled, and the cancellation goes on once they have.

    Args:
        *schedules: what to serve, from ``flow.to_schedule(...)``; names must differ.
        grace_period: seconds in-flight runs get to finish once cancelled.

    Raises:
        ValueError: no schedule, two with one name, or a negative ``grace_period``.
        SchedulesFailed: every schedule stopped, its runs having crashed more often than
            its restart policy allows.
    """
    _check(schedules, grace_period)
    async with runtime_scope() as runtime:
        await _Serve(runtime, schedules, grace_period).run()


def _check(schedules: tuple[Schedule, ...], grace_period: float) -> None:
    if not schedules:
        raise ValueError(
            "Nothing to serve: give at least one schedule, such as "
            "serve(my_flow.to_schedule(interval=60))."
        )
    for schedule in schedules:
        if not isinstance(schedule, Schedule):
            raise ValueError(
                f"serve() takes schedules from flow.to_schedule(...), got {schedule!r}."
            )
    names = [schedule.name for schedule in schedules]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ValueError(
            f"Several schedules are named {', '.join(map(repr, twice))}; give each its own "
            "name: flow.to_schedule(name=...)."
        )
    if isinstance(grace_period, bool) or not grace_period >= 0:
        raise ValueError(f"grace_period must be a number of seconds >= 0, got {grace_period!r}.")


async def _serve_here(
    make: Callable[[Runtime], Server], backend: Any, clock: Any, lease_seconds: float | None
) -> None:
    """The body of :func:`run_until_stopped`: a Runtime, the server, and (on the main
    thread) the signals that stop it."""
    async with Runtime(store=backend, clock=clock, lease_seconds=lease_seconds) as runtime:
        server = make(runtime)
        failure: Exception | None = None
        async with anyio.create_task_group() as tg:
            serving = anyio.CancelScope()
            if threading.current_thread() is threading.main_thread():
                await tg.start(_stop_on_signals, server, serving)
            with serving:
                try:
                    await server.run()
                except Exception as exc:  # kept out of the task group, unwrapped
                    failure = exc
            tg.cancel_scope.cancel()
    if failure is not None:
        raise failure


async def _stop_on_signals(
    server: Server,
    serving: anyio.CancelScope,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Stop serving on the first SIGINT or SIGTERM; cancel in-flight runs on the next."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for signum in signals:
            name = signal.Signals(signum).name
            if not serving.cancel_called:
                server.logger.warning(
                    "%s: stopping. No new run starts; in-flight runs have %g s to finish, then "
                    "%s (send %s again to do it now).",
                    name,
                    server.grace_period,
                    server.after_grace,
                    name,
                )
                serving.cancel()
            else:
                server.logger.warning("%s again: the in-flight runs are not waited for.", name)
                server.hurry()


class _Serve:
    """One ``serve``: registers its schedules, runs their supervisors, drains at the end."""

    after_grace = "they are cancelled"
    logger = logger

    def __init__(
        self, runtime: Runtime, schedules: tuple[Schedule, ...], grace_period: float
    ) -> None:
        self.runtime = runtime
        self.schedules = schedules
        self.grace_period = grace_period
        self._state: ServeState | None = None
        self._failed: set[str] = set()
        self._all_failed = anyio.Event()

    async def run(self) -> None:
        """Serve until cancelled (then drain) or until every schedule failed.

        Raises:
            SchedulesFailed: every schedule failed.
        """
        runtime = self.runtime
        backend = runtime.backend
        assert backend is not None
        self._state = state = ServeState(runtime, self.grace_period)
        for schedule in self.schedules:
            self._refuse_a_name_served_otherwise(schedule)
        contexts = [ScheduleContext(s, self._register(s), state) for s in self.schedules]
        names = {s.name for s in self.schedules}
        specs = [
            ChildSpec(
                f"schedule {ctx.schedule.name}",
                partial(schedule_supervisor, ctx),
                restart=ChildRestart.TEMPORARY,
                shutdown_timeout=math.inf,
            )
            for ctx in contexts
        ]
        ref = await runtime.spawn(
            ChildSpec(
                f"serve {uuid4()}",
                lambda: Supervisor(
                    specs, name="serve", on_crash=self._on_crash, clock=runtime.clock
                ),
                restart=ChildRestart.TEMPORARY,
                shutdown_timeout=math.inf,
            )
        )
        keeper = None
        if backend.shared_across_processes:  # its lease says what it serves
            keeper = lease_keeper(backend, runtime.lease_seconds)
            keeper.set_serving(backend, names, True)
        for ctx in contexts:
            logger.info(
                "Serving flow %r on schedule %r (%s) in %s.",
                ctx.schedule.flow.name,
                ctx.schedule.name,
                ctx.trigger.describe(),
                backend.url,
            )
        try:
            await self._all_failed.wait()
        finally:
            with anyio.CancelScope(shield=True):
                await self._drain(ref)
                if keeper is not None:
                    keeper.set_serving(backend, names, False)
                self._mark_stopped(names - self._failed)
        raise SchedulesFailed(
            f"Every schedule stopped ({', '.join(sorted(self._failed))}): their runs crashed "
            "more often than their restart policies allow. `stageflow schedules ls` shows "
            "why; fix the flows, then serve them again."
        )

    def hurry(self) -> None:
        """Cancel the in-flight runs now rather than at the end of the grace period."""
        if self._state is not None:
            self._state.drain(self.runtime.clock.now())

    async def _drain(self, ref: ActorRef) -> None:
        """Stop the tickers, give in-flight runs the grace period, stop everything."""
        assert self._state is not None
        self._state.drain(self.runtime.clock.now() + self.grace_period)
        try:
            children = await ref.ask(WhichChildren())
        except ActorStopped:
            children = []
        for _, supervisor in children:
            try:
                await supervisor.ask(StopChild("ticker"))
            except (LookupError, ActorStopped):
                pass  # its ticker stopped already, or the schedule failed meanwhile
        await ref.stop()

    def _refuse_a_name_served_otherwise(self, schedule: Schedule) -> None:
        """A schedule's name is unique in the store: refuse to serve ``schedule`` if a live
        process serves a schedule of its name with another flow, trigger or parameters
        (the two would share, and overwrite, one record and one set of slots).

        Raises:
            ConfigurationError: another live process serves it otherwise.
        """
        backend = self.runtime.backend
        assert backend is not None
        existing = backend.read_schedule(schedule.name)
        if existing is None or not backend.shared_across_processes:
            return
        if (
            existing.flow_name == schedule.flow.name
            and (existing.interval, existing.cron, existing.timezone)
            == (schedule.interval, schedule.cron, schedule.timezone)
            and existing.parameters == serialize_parameters(schedule.parameters)
        ):
            return  # the same schedule: served side by side, sharing its slots
        now = datetime.now(timezone.utc)
        mine = process_owner()
        if not any(
            lease.expires > now and lease.owner != mine and schedule.name in lease.serving
            for lease in backend.read_leases()
        ):
            return  # nobody serves it now: this serve redefines it
        trigger = Trigger(existing.interval, existing.cron, existing.timezone, existing.anchor)
        raise ConfigurationError(
            f"Schedule {schedule.name!r} is served by another process, as flow "
            f"{existing.flow_name!r} {trigger.describe()} with parameters "
            f"{existing.parameters}; a schedule's name is unique in the store. Give this one "
            "another name (flow.to_schedule(name=...), stageflow serve --name), or stop that "
            "serve first."
        )

    def _register(self, schedule: Schedule) -> ScheduleRecord:
        """Store the schedule (keeping its anchor if it was served before with the same
        trigger); return it as stored."""
        now = _now(self.runtime)
        flow = schedule.flow
        record = ScheduleRecord(
            name=schedule.name,
            flow_name=flow.name,
            entrypoint=flow.entrypoint,
            interval=schedule.interval,
            cron=schedule.cron,
            timezone=schedule.timezone,
            anchor=now,
            parameters=serialize_parameters(schedule.parameters),
            tags=schedule.tags,
            overlap=schedule.overlap,
            catchup=schedule.catchup,
            restart=schedule.restart.type,
            status=SCHEDULE_SERVING,
            created=now,
            updated=now,
        )
        assert self.runtime.backend is not None
        return self.runtime.backend.register_schedule(record)

    def _on_crash(self, report: CrashReport) -> None:
        """A schedule's supervisor gave up: say so, in the log and in the store."""
        name = report.child.removeprefix("schedule ")
        cause = report.exception.__cause__ or report.exception
        message = f"Stopped: {report.exception}"
        logger.error(
            "Schedule %r stopped: its runs crashed more often than its restart policy allows "
            "(last: %s). The other schedules go on; fix the flow, then serve it again.",
            name,
            cause,
        )
        assert self.runtime.backend is not None
        self.runtime.backend.set_schedule_status(name, SCHEDULE_FAILED, message, _now(self.runtime))
        self._failed.add(name)
        if len(self._failed) == len(self.schedules):
            self._all_failed.set()

    def _mark_stopped(self, names: set[str]) -> None:
        """Mark ``names`` stopped, unless another live process serves them."""
        backend = self.runtime.backend
        assert backend is not None
        now = datetime.now(timezone.utc)
        served_elsewhere = {
            name for lease in backend.read_leases() if lease.expires > now for name in lease.serving
        }
        for name in sorted(names - served_elsewhere):
            backend.set_schedule_status(name, SCHEDULE_STOPPED, None, _now(self.runtime))


def _now(runtime: Runtime) -> datetime:
    return datetime.fromtimestamp(runtime.clock.now(), timezone.utc)
