"""Automatic recovery, like DBOS: crashed runs of served flows are run again, under their
own ids, reusing the task results they completed (``rerun_flow_run`` claims each one in
the store first, so a run is recovered by one process at a time).

Who recovers: the next ``serve`` of a run's schedule (its ticker, under the schedule's
restart policy), and, as an opt-in, any ``Runtime(recover=True)`` (:class:`RecoveryActor`).
A crashed run is recovered only when the process that ran it is gone, or is this one: a
live process restarts its own crashed runs itself (after their backoff, within their
restart intensity). Runs of a schedule whose restart type is ``temporary``, or that
stopped as ``failed``, are left to a person (``stageflow runs resume ID``).
"""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

import anyio

from actors import Actor, ChildSpec, Restart

from ..core._exceptions import InvalidRunInput, NotPausedError, ObjectNotFound
from ..core._models import FlowRun
from ..core._states import StateType
from ..orchestration._owners import process_owner
from ..orchestration._ownership import owner_gone
from ..orchestration._runtime import Runtime, current_runtime_var, set_recovery
from ..store._records import SCHEDULE_FAILED
from ._rerun import rerun_flow_run
from ._schedules import schedule_tag, tagged_schedule

__all__ = ["RECOVER_LIMIT", "RecoveryActor", "crashed_runs", "may_recover", "run_again"]

logger = logging.getLogger("stageflow.schedules")

RECOVER_LIMIT = 20
"""How many crashed runs (newest first) one look considers."""


def crashed_runs(
    backend: Any, schedule: str | None = None, flow_name: str | None = None
) -> list[FlowRun]:
    """The newest crashed runs fired by a schedule (by ``schedule``, if given), at most
    :data:`RECOVER_LIMIT` of the flow's crashed runs."""
    runs = backend.read_flow_runs(
        state_types=(StateType.CRASHED,), flow_name=flow_name, limit=RECOVER_LIMIT
    )
    if schedule is None:
        return [run for run in runs if tagged_schedule(run) is not None]
    tag = schedule_tag(schedule)
    return [run for run in runs if tag in run.tags]


def may_recover(backend: Any, run: FlowRun) -> bool:
    """Whether this process may run ``run`` again: its process is gone, or is this one."""
    return run.owner == process_owner() or owner_gone(backend, run.owner)


async def run_again(run_id: UUID) -> None:
    """Run the crashed run ``run_id`` again here, if no one else did first.

    Raises:
        BaseException: whatever escaped the engine (the run crashed again).
    """
    try:
        await rerun_flow_run(run_id)
    except NotPausedError:
        return  # not crashed (any more): it finished, or another process runs it again
    except InvalidRunInput:
        logger.warning(
            "Flow run %s crashed while paused for input, so it is not run again "
            "automatically: resume it with `stageflow runs resume %s --input JSON`.",
            run_id,
            run_id,
        )


class RecoveryActor(Actor):
    """Runs again, in its runtime, the crashed runs of served flows whose process is gone
    (``Runtime(recover=True)``); looks when it starts and every ``lease_seconds / 3``.

    Each run is tried once by this actor: a run that crashes again is left for the next
    ``serve`` of its schedule, whose restart policy bounds the attempts.
    """

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._tried: set[UUID] = set()

    async def run(self) -> None:
        """Look for crashed served runs on the runtime's clock and run them again."""
        runtime = self._runtime
        backend: Any = runtime.backend
        clock = runtime.clock
        current_runtime_var.set(runtime)
        async with anyio.create_task_group() as tg:
            while not backend.closed:
                for run in self._recoverable(backend):
                    self._tried.add(run.id)
                    tg.start_soon(self._recover, run)
                await clock.sleep_until(clock.now() + runtime.lease_seconds / 3)

    def _recoverable(self, backend: Any) -> list[FlowRun]:
        schedules = {record.name: record for record in backend.read_schedules()}
        found = []
        for run in crashed_runs(backend):
            record = schedules.get(tagged_schedule(run) or "")
            if (
                record is None
                or record.restart == "temporary"
                or record.status == SCHEDULE_FAILED
                or run.id in self._tried
                or not may_recover(backend, run)
            ):
                continue
            found.append(run)
        return found

    async def _recover(self, run: FlowRun) -> None:
        logger.info("Running again flow run %s of schedule %r.", run.id, tagged_schedule(run))
        try:
            await run_again(run.id)
        except anyio.get_cancelled_exc_class():
            raise
        except ObjectNotFound as exc:
            logger.warning("Cannot run flow run %s again: %s", run.id, exc)
        except BaseException:  # noqa: BLE001 - it crashed again: logged, left Crashed
            logger.exception("Flow run %s crashed again while it was recovered.", run.id)


async def _start_recovery(runtime: Runtime) -> None:
    await runtime.spawn(
        ChildSpec(
            "recovery",
            lambda: RecoveryActor(runtime),
            restart=Restart.TRANSIENT,
            shutdown_timeout=0,
        )
    )


set_recovery(_start_recovery)
