"""Which process runs a flow run, and whether that process is still alive.

A flow run records its owner when it starts: ``"host:pid:start"``, where ``start`` is the
process's start time (so a recycled pid is not mistaken for the original process). A run
whose owner is gone without recording a final state crashed; the store marks it Crashed
the next time a runtime opens it.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any
from uuid import UUID

from ..core import _states as S
from ..core._states import StateType
from ._orchestrator import ProposeState
from ._owners import owner_alive, process_owner

__all__ = [
    "ORPHAN_MESSAGE",
    "active_flow_runs",
    "is_orphan",
    "owner_alive",
    "process_owner",
    "reap_orphans",
]


class _ActiveRuns:
    """The flow runs an engine in this process is driving right now (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: set[UUID] = set()

    def add(self, run_id: UUID) -> None:
        with self._lock:
            self._ids.add(run_id)

    def discard(self, run_id: UUID) -> None:
        with self._lock:
            self._ids.discard(run_id)

    def __contains__(self, run_id: object) -> bool:
        with self._lock:
            return run_id in self._ids


active_flow_runs = _ActiveRuns()


_reaped: weakref.WeakSet[Any] = weakref.WeakSet()

ORPHAN_MESSAGE = (
    "The process running this {kind} run exited without reporting a final state (it was "
    "killed or crashed). Resume it with `stageflow runs resume {flow_run_id}`."
)


def is_orphan(flow_run: Any) -> bool:
    """Whether ``flow_run`` needs a process that is gone: unfinished (a suspended run needs
    none), not driven here, and owned by a process of this host that no longer runs."""
    state = flow_run.state
    if state is None or state.is_final() or state.state_details.pause_reschedule:
        return False
    return flow_run.id not in active_flow_runs and owner_alive(flow_run.owner) is False


async def reap_orphans(runtime: Any) -> int:
    """Mark Crashed every unfinished flow run (and its unfinished task runs) whose owner
    process is gone; return how many flow runs were reaped.

    A paused run's process waits for its resume: a paused run whose process is gone is
    reaped like a running one (resuming it then runs it again). A suspended run needs no
    process and is left alone.
    """
    backend = runtime.backend
    if backend in _reaped:
        return 0  # once per store and process: runs orphaned later are this process's own
    _reaped.add(backend)
    orchestrator = runtime.orchestrator
    unfinished = (StateType.PENDING, StateType.RUNNING, StateType.CANCELLING, StateType.PAUSED)
    reaped = 0
    for flow_run in backend.read_flow_runs(state_types=unfinished):
        if not is_orphan(flow_run):
            continue
        for task_run in backend.read_task_runs(flow_run_id=flow_run.id):
            state = task_run.state
            if state is not None and not state.is_final() and not state.is_paused():
                message = ORPHAN_MESSAGE.format(kind="task", flow_run_id=flow_run.id)
                await orchestrator.ask(
                    ProposeState("task", task_run.id, S.Crashed(message=message))
                )
        message = ORPHAN_MESSAGE.format(kind="flow", flow_run_id=flow_run.id)
        await orchestrator.ask(ProposeState("flow", flow_run.id, S.Crashed(message=message)))
        reaped += 1
    return reaped
