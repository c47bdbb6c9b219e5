"""The actors of a served schedule: a ticker that fires its slots, and one actor per run.

::

    serve supervisor           one per serve(); one-for-one, its children are temporary
     └─ schedule supervisor    "schedule <name>": the schedule's restart intensity, backoff
         ├─ ticker             claims each due slot in the store, starts its run
         └─ run <slot>         runs one flow run; a restart (per the schedule's Restart
                               type) runs the crashed run again, reusing its task results

A slot is fired by the process that claims it in the store (a unique key), so a restarted
``serve`` or a second one never fires it twice. Overlap is judged on the store too: a run
of the schedule that has not finished, in any process, is "the previous run".

A run's actor *crashes* when an exception escapes the engine; it marks the run Crashed
first (the engine does for a ``BaseException``; a store error it cannot record) and its
supervisor restarts it, or, past the intensity, gives up: the schedule stops, the others
go on. Runs that end Failed, Cancelled or Completed exit normally.

At shutdown the serve drains: tickers stop, each run has until the shared deadline (the
grace period) to finish, then it is cancelled through ``cancel_flow_run`` (its engine ends
it Cancelled); a run still going ``CANCEL_SECONDS`` later is cancelled by its supervisor
(a foreign cancellation: Crashed). No run is left Running.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from functools import partial
from typing import Any
from uuid import UUID

import anyio
import attrs

from actors import Actor, ActorRef, ChildSpec, Clock, CrashReport, StartChild, Supervisor

from ..core import _states as S
from ..core._exceptions import StageflowError
from ..core._states import StateType
from ..core._triggers import Trigger
from ..engine._body import WORKER_THREADS
from ..engine._context import tags
from ..engine._flow_engine import FlowRunEngine
from ..orchestration._orchestrator import ProposeState
from ..orchestration._owners import process_owner
from ..orchestration._runtime import Runtime, current_runtime_var
from ..orchestration._waiting import wait_for_state_change
from ..store._records import ScheduleRecord, ScheduleSlot
from ._flow_runs import cancel_flow_run
from ._recovery import crashed_runs, may_recover, run_again
from ._registry import register_run_flow
from ._schedules import Schedule, schedule_tag, slot_tag, tagged_slot

__all__ = ["CANCEL_SECONDS", "RunCrashed", "ScheduleContext", "ServeState", "schedule_supervisor"]

logger = logging.getLogger("stageflow.schedules")

CANCEL_SECONDS = 30.0
"""Seconds a run cancelled at shutdown gets to end Cancelled before its actor is cancelled."""
ON_TIME_SECONDS = 1.0
"""A slot at most this late when a ticker starts is on time, not missed (catch-up)."""
POLL_SECONDS = 2.0
"""How often a queued slot looks for the end of a previous run of another process."""

_IN_FLIGHT = (
    StateType.SCHEDULED,
    StateType.PENDING,
    StateType.RUNNING,
    StateType.CANCELLING,
    StateType.PAUSED,
)


def _at(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, timezone.utc)


class RunCrashed(Exception):
    """Raised by a run's actor when an exception escaped the engine; its supervisor then
    restarts it (per the schedule's Restart type) or gives up."""


@attrs.define(eq=False)
class ServeState:
    """What every actor of one ``serve`` shares: its runtime and its shutdown.

    Attributes:
        runtime: the runtime the schedules run in.
        grace_period: seconds in-flight runs get to finish at shutdown.
        draining: set when the serve stops: runs count down to ``deadline``.
        deadline: when in-flight runs are cancelled (runtime clock), once draining.
    """

    runtime: Runtime
    grace_period: float
    draining: anyio.Event = attrs.field(factory=anyio.Event)
    deadline: float | None = None
    _changed: anyio.Event = attrs.field(factory=anyio.Event)

    def drain(self, deadline: float) -> None:
        """Start (or hurry) the shutdown: in-flight runs are cancelled at ``deadline``."""
        self.deadline = deadline if self.deadline is None else min(self.deadline, deadline)
        self.draining.set()
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for_deadline(self, fallback: float) -> None:
        """Sleep until the shutdown deadline (``fallback`` if there is none), waking
        earlier if it is moved closer."""
        clock = self.runtime.clock
        while (deadline := fallback if self.deadline is None else self.deadline) > clock.now():
            await _sleep_or(clock, deadline, self._changed)


async def _sleep_or(clock: Clock, deadline: float, event: anyio.Event) -> None:
    """Sleep until ``deadline`` or until ``event`` is set, whichever comes first."""
    async with anyio.create_task_group() as tg:

        async def wake() -> None:
            await event.wait()
            tg.cancel_scope.cancel()

        tg.start_soon(wake)
        await clock.sleep_until(deadline)
        tg.cancel_scope.cancel()


async def _first_of(*events: anyio.Event) -> None:
    """Wait until one of ``events`` is set."""
    async with anyio.create_task_group() as tg:
        for event in events:

            async def wait(event: anyio.Event = event) -> None:
                await event.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(wait)


@attrs.define(eq=False)
class ScheduleContext:
    """One schedule, as served: its definition, its stored record, its trigger, and the
    runs this process started for it (by run id, and those not created yet).

    Attributes:
        schedule: the schedule.
        record: the schedule as the store holds it (its anchor).
        serve: the serve it belongs to.
    """

    schedule: Schedule
    record: ScheduleRecord
    serve: ServeState
    supervisor: Supervisor | None = None
    runs: list[ActorRef] = attrs.field(factory=list)
    run_ids: dict[UUID, ActorRef] = attrs.field(factory=dict)

    @property
    def trigger(self) -> Trigger:
        """When the schedule fires."""
        record = self.record
        return Trigger(record.interval, record.cron, record.timezone, record.anchor)

    def tags(self, slot: datetime) -> tuple[str, ...]:
        """The tags of the run fired for ``slot``."""
        return (*self.schedule.tags, schedule_tag(self.schedule.name), slot_tag(slot))

    async def start_run(self, name: str, fire: _Fire) -> None:
        """Start the actor of one run under the schedule's supervisor."""
        schedule = self.schedule
        spec = ChildSpec(
            name,
            partial(_RunActor, self, fire),
            restart=schedule.restart.child_restart(),
            shutdown_timeout=self.serve.grace_period + CANCEL_SECONDS,
        )
        assert self.supervisor is not None
        ref: ActorRef = await self.supervisor.ref.ask(StartChild(spec))
        self.runs.append(ref)
        if fire.run_id is not None:
            self.run_ids[fire.run_id] = ref


def schedule_supervisor(ctx: ScheduleContext) -> Supervisor:
    """Build the supervisor of one schedule, its ticker as first child (see the module
    docstring); its intensity and backoff come from the schedule's :class:`Restart`."""
    restart = ctx.schedule.restart
    supervisor = Supervisor(
        [ChildSpec("ticker", partial(_Ticker, ctx), shutdown_timeout=0)],
        name=f"schedule {ctx.schedule.name}",
        max_restarts=restart.max_restarts,
        period=restart.period,
        backoff=restart.kernel_backoff(),
        on_crash=partial(_report_crash, ctx),
        clock=ctx.serve.runtime.clock,
    )
    ctx.supervisor = supervisor
    return supervisor


def _report_crash(ctx: ScheduleContext, report: CrashReport) -> None:
    restart = ctx.schedule.restart
    if restart.type == "temporary" and report.child != "ticker":
        then = "it is not restarted (restart type 'temporary')"
    elif not report.restarting:
        then = (
            f"it is not restarted (more than {restart.max_restarts} restarts within "
            f"{restart.period:g} s, or the schedule is stopping)"
        )
    else:
        then = (
            f"restarting it (restart {report.restart_count + 1}; at most "
            f"{restart.max_restarts} within {restart.period:g} s)"
        )
    logger.error(
        "Schedule %r: %s crashed: %s; %s.", ctx.schedule.name, report.child, report.exception, then
    )


@attrs.define(eq=False)
class _Fire:
    """One run of a schedule: its slot, and its run id once the run exists."""

    slot: datetime | None
    run_id: UUID | None = None


class _Ticker(Actor):
    """Fires a schedule's slots on the runtime's clock (see the module docstring)."""

    def __init__(self, ctx: ScheduleContext) -> None:
        self._ctx = ctx
        self._runtime = ctx.serve.runtime
        self._backend: Any = ctx.serve.runtime.backend
        self._clock = ctx.serve.runtime.clock

    async def run(self) -> None:
        """Run the crashed runs of the schedule again, catch up with the slots missed
        since the last claimed one, then fire each slot when it comes."""
        current_runtime_var.set(self._runtime)
        await self._recover()
        trigger = self._ctx.trigger
        now = _at(self._clock.now())
        backlog = self._ctx.schedule.catchup == "all"  # asked for: every slot, in turn
        for slot in self._due_now(trigger, now):
            await self._fire(slot, queue=backlog)
        slot = trigger.next_after(now)
        while True:
            await self._clock.sleep_until(slot.timestamp())
            await self._fire(slot)
            slot = trigger.next_after(slot)

    def _due_now(self, trigger: Trigger, now: datetime) -> list[datetime]:
        """The slots to fire at start: after the last one claimed (or from the anchor), up
        to now, as the catch-up policy says; a slot at most ON_TIME_SECONDS old is on time."""
        claimed = self._backend.read_schedule_slots(self._ctx.schedule.name, limit=1)
        start = self._ctx.record.anchor - timedelta(microseconds=1)
        if claimed:
            start = max(start, claimed[0].slot)
        latest = trigger.last_at_or_before(now)
        if latest <= start:
            return []
        catchup = self._ctx.schedule.catchup
        if catchup == "all":
            slots = [trigger.next_after(start)]
            while slots[-1] < latest:
                slots.append(trigger.next_after(slots[-1]))
            return slots
        on_time = (now - latest).total_seconds() <= ON_TIME_SECONDS
        return [latest] if catchup == "latest" or on_time else []

    async def _fire(self, slot: datetime, *, queue: bool = False) -> None:
        """Fire ``slot`` if the overlap policy lets it (``queue``: wait for the previous
        run even if the policy skips: a catch-up of all missed slots runs each in turn)."""
        await self._recover()
        if not await self._room_for_a_run(slot, queue) or not self._claim(slot, fired=True):
            return
        await self._ctx.start_run(f"run {slot.isoformat()}", _Fire(slot))

    def _claim(self, slot: datetime, *, fired: bool) -> bool:
        now = _at(self._clock.now())
        claim = ScheduleSlot(self._ctx.schedule.name, slot, process_owner(), now, fired)
        return bool(self._backend.claim_schedule_slot(claim))

    async def _room_for_a_run(self, slot: datetime, queue: bool = False) -> bool:
        """Whether a run may start for ``slot`` now, per the overlap policy (waiting, to
        queue it, or if ``queue`` and the policy skips); a skipped slot is claimed as
        skipped."""
        overlap = self._ctx.schedule.overlap
        if queue and overlap == "skip":
            overlap = "queue"
        while overlap != "allow" and (busy := self._previous_run()) is not None:
            if overlap == "skip":
                if self._claim(slot, fired=False):
                    logger.info(
                        "Schedule %r skips its slot %s: its previous run is still running.",
                        self._ctx.schedule.name,
                        slot.isoformat(),
                    )
                return False
            if isinstance(busy, UUID):
                await wait_for_state_change(self._backend, busy, self._clock, POLL_SECONDS)
            else:
                await busy.wait()
        return True

    def _previous_run(self) -> ActorRef | UUID | None:
        """A run of the schedule that has not finished: one started here (its actor), or
        one in the store (its id), in any process; None if there is none."""
        ctx = self._ctx
        ctx.runs[:] = [ref for ref in ctx.runs if ref.is_alive]
        if ctx.runs:
            return ctx.runs[0]
        tag = schedule_tag(ctx.schedule.name)
        for run in self._backend.read_flow_runs(
            state_types=_IN_FLIGHT, flow_name=ctx.schedule.flow.name
        ):
            state = run.state
            if tag in run.tags and not state.state_details.pause_reschedule:
                return run.id  # type: ignore[no-any-return]
        return None

    async def _recover(self) -> None:
        """Run again the crashed runs of the schedule that no actor here restarts already
        (a process that died, a serve stopped before a restart): the next ``serve`` resumes
        them, like DBOS, unless their restart type is temporary."""
        ctx = self._ctx
        if ctx.schedule.restart.type == "temporary":
            return
        for run_id in [run_id for run_id, ref in ctx.run_ids.items() if not ref.is_alive]:
            del ctx.run_ids[run_id]  # a serve runs for months: forget the runs that ended
        for run in crashed_runs(self._backend, ctx.schedule.name, ctx.schedule.flow.name):
            mine = ctx.run_ids.get(run.id)
            if (mine is not None and mine.is_alive) or not may_recover(self._backend, run):
                continue
            try:
                await ctx.start_run(f"recover {run.id}", _Fire(tagged_slot(run), run.id))
            except ValueError:  # an actor of that name runs it already
                continue


class _RunActor(Actor):
    """Runs one flow run of a schedule; a restart runs it again (see the module docstring)."""

    def __init__(self, ctx: ScheduleContext, fire: _Fire) -> None:
        self._ctx = ctx
        self._fire = fire
        self._runtime = ctx.serve.runtime

    async def run(self) -> None:
        """Run the flow run (again, for a restart), cancelling it if a shutdown's grace
        period ends first."""
        current_runtime_var.set(self._runtime)
        crash: RunCrashed | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._cancel_when_draining)
            try:
                await self._run()
            except RunCrashed as exc:  # raised below, not wrapped in the task group's group
                crash = exc
            finally:
                tg.cancel_scope.cancel()
        if crash is not None:
            raise crash

    async def _run(self) -> None:
        ctx = self._ctx
        fire = self._fire
        flow = ctx.schedule.flow
        try:
            if fire.run_id is None:
                assert fire.slot is not None
                with tags(*ctx.tags(fire.slot)):
                    engine = FlowRunEngine(
                        flow,
                        dict(ctx.schedule.parameters),
                        None,
                        self._runtime,
                        WORKER_THREADS,
                        None,
                    )
                fire.run_id = engine.flow_run.id
                ctx.run_ids[fire.run_id] = self.ref
                register_run_flow(fire.run_id, flow)
                await engine.run()
            elif not ctx.serve.draining.is_set():
                register_run_flow(fire.run_id, flow)
                await run_again(fire.run_id)
        except anyio.get_cancelled_exc_class():
            raise
        except BaseException as exc:  # noqa: BLE001 - re-raised as a crash, see below
            await self._record_crash(exc)
            raise RunCrashed(
                f"flow run {fire.run_id} of schedule {ctx.schedule.name!r} crashed: {exc!r}"
            ) from exc

    async def _record_crash(self, exc: BaseException) -> None:
        """Mark the run Crashed if the engine could not (an ``Exception`` escaped it)."""
        run_id = self._fire.run_id
        orchestrator = self._runtime.orchestrator
        if run_id is None or orchestrator is None:
            return
        message = f"An exception escaped the engine: {type(exc).__name__}: {exc}"
        try:
            await orchestrator.ask(ProposeState("flow", run_id, S.Crashed(message=message)))
        except StageflowError:
            logger.exception("Could not record the crash of flow run %s.", run_id)

    async def _cancel_when_draining(self) -> None:
        serve = self._ctx.serve
        await _first_of(serve.draining, self.stop_requested)
        await serve.wait_for_deadline(self._runtime.clock.now() + serve.grace_period)
        if self._fire.run_id is not None:
            await cancel_flow_run(self._fire.run_id)
