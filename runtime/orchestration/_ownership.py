"""Which process runs a flow run, whether that process is still alive, and reaping the
runs of processes that are gone.

A flow run records its owner when it starts: ``"host:pid:start:nonce"``, where ``start``
is the process's start time (so a recycled pid is not mistaken for the original process)
and ``nonce`` is random per process. A process that runs flows also keeps a lease in the
store under that token (:mod:`runtime.orchestration._liveness`). An owner is *gone* when
its lease expired, or, on this host, when its process no longer runs (a same-host check
needs no lease, so it also covers runs recorded before leases existed).

A run whose owner is gone without recording a final state crashed. The store marks it
Crashed when a runtime opens it (:func:`reap_orphans`), when a liveness actor finds its
owner's lease expired, and when someone waits for it (``wait_for_flow_run``).
"""

from __future__ import annotations

import threading
import weakref
from datetime import datetime, timezone
from typing import Any
from uuid import UUID

from actors import ActorRef

from ..core import _states as S
from ..core._models import FlowRun
from ..core._states import StateType
from ..store._backend import StoreBackend
from ..store._records import ProcessLease
from ._orchestrator import ProposeState
from ._owners import HOST, owner_alive, owner_gone, process_owner

__all__ = [
    "HOST",
    "ORPHAN_MESSAGE",
    "UNFINISHED",
    "active_flow_runs",
    "is_orphan",
    "owner_alive",
    "owner_gone",
    "process_owner",
    "reap_dead_processes",
    "reap_flow_run",
    "reap_orphans",
    "requeue_claimed_task_runs",
]


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _lease_expired(lease: ProcessLease, now: datetime) -> bool:
    """Whether ``lease``'s process is gone: its lease expired, or, on this host, its
    process no longer runs."""
    return lease.expires < now or (lease.host == HOST and owner_alive(lease.owner) is False)


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


ORPHAN_MESSAGE = (
    "The process running this {kind} run exited without reporting a final state (it was "
    "killed or crashed). Resume it with `stageflow runs resume {flow_run_id}`."
)

UNFINISHED = (StateType.PENDING, StateType.RUNNING, StateType.CANCELLING, StateType.PAUSED)
"""The states of a flow run that needs its process (a suspended run needs none)."""


def _needs_its_process(flow_run: FlowRun) -> bool:
    state = flow_run.state
    return (
        state is not None
        and state.type in UNFINISHED
        and not state.state_details.pause_reschedule
        and flow_run.id not in active_flow_runs
    )


def is_orphan(flow_run: FlowRun, backend: StoreBackend) -> bool:
    """Whether ``flow_run`` needs a process that is gone: unfinished (a suspended run needs
    none), not driven here, and its owner gone (:func:`owner_gone`)."""
    return _needs_its_process(flow_run) and owner_gone(backend, flow_run.owner, flow_run.created)


async def reap_flow_run(orchestrator: ActorRef, backend: StoreBackend, flow_run: FlowRun) -> None:
    """Mark ``flow_run`` and its unfinished task runs Crashed (checked writes through the
    orchestrator: a run that finished meanwhile keeps its final state)."""
    for task_run in backend.read_task_runs(flow_run_id=flow_run.id):
        state = task_run.state
        if state is not None and not state.is_final() and not state.is_paused():
            message = ORPHAN_MESSAGE.format(kind="task", flow_run_id=flow_run.id)
            await orchestrator.ask(ProposeState("task", task_run.id, S.Crashed(message=message)))
    message = ORPHAN_MESSAGE.format(kind="flow", flow_run_id=flow_run.id)
    await orchestrator.ask(ProposeState("flow", flow_run.id, S.Crashed(message=message)))


async def requeue_claimed_task_runs(backend: StoreBackend, gone: list[ProcessLease]) -> int:
    """Give the task runs that the processes of ``gone`` had claimed from the durable task
    queue back to the queue; return how many. A hook for task workers (``task.delay``
    claimed by ``serve_tasks``), which do not exist yet: today no process claims task runs,
    so there is nothing to give back."""
    return 0


async def reap_dead_processes(
    orchestrator: ActorRef,
    backend: StoreBackend,
    *,
    check_local_runs: bool = False,
    now: datetime | None = None,
) -> int:
    """Mark Crashed the unfinished flow runs (and their task runs) of every process that is
    gone, give back their claimed task runs, and remove their leases; return how many flow
    runs were reaped.

    A process is gone when its lease expired, or it ran on this host and no longer does.
    With ``check_local_runs``, runs whose owner has no lease (recorded before leases
    existed, or by a process that died before it wrote one) are reaped too when their
    owner ran on this host and no longer does.

    A live process whose lease lapsed (its loop was blocked, it was suspended) and that
    renews it meanwhile keeps its runs: only runs recorded before the lease expired are
    reaped, and only while the lease is still the expired one (read again just before).

    ``now`` (default: the wall clock) is the time leases are judged at.
    """
    now = _utcnow() if now is None else now
    mine = process_owner()
    leases = {lease.owner: lease for lease in backend.read_leases()}
    gone = {o: lease for o, lease in leases.items() if o != mine and _lease_expired(lease, now)}
    if not gone and not check_local_runs:
        return 0
    still_gone: dict[str, bool] = {}

    def dead(flow_run: FlowRun) -> bool:
        owner = flow_run.owner
        if not owner or owner == mine:
            return False
        lease = leases.get(owner)
        if lease is None:
            return check_local_runs and owner_alive(owner) is False
        if owner not in gone or flow_run.created > lease.expires:
            return False
        if owner not in still_gone:
            current = backend.read_lease(owner)
            still_gone[owner] = current is None or current.expires == lease.expires
        return still_gone[owner]

    reaped = 0
    for flow_run in backend.read_flow_runs(state_types=UNFINISHED):
        if _needs_its_process(flow_run) and dead(flow_run):
            await reap_flow_run(orchestrator, backend, flow_run)
            reaped += 1
    await requeue_claimed_task_runs(backend, list(gone.values()))
    for lease in gone.values():
        backend.release_lease(lease.owner, expires=lease.expires)
    return reaped


_reaped: weakref.WeakSet[Any] = weakref.WeakSet()


async def reap_orphans(runtime: Any) -> int:
    """Mark Crashed every unfinished flow run (and its unfinished task runs) whose owner
    process is gone (:func:`reap_dead_processes`, local runs included); return how many
    flow runs were reaped. Done once per store and process, when a runtime opens it; later
    deaths are the liveness actor's business.

    A paused run's process waits for its resume: a paused run whose process is gone is
    reaped like a running one (resuming it then runs it again). A suspended run needs no
    process and is left alone.
    """
    backend = runtime.backend
    if backend in _reaped:
        return 0
    _reaped.add(backend)
    return await reap_dead_processes(runtime.orchestrator, backend, check_local_runs=True)
