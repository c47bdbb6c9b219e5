"""Liveness: every process that runs flows keeps a lease in the store, and every live
process notices, within a bounded time, that another one is gone.

**The bound.** ``L`` seconds: ``Runtime(lease_seconds=...)``, else
``$STAGEFLOW_LEASE_SECONDS``, else 15. A lease is renewed every ``L / 5`` seconds and each
renewal is valid ``2 L / 3`` seconds; every ``L / 3`` seconds each process looks at the
leases. So a process killed right after a renewal is noticed at most ``2 L / 3 + L / 3 = L``
seconds later by any live process (on the same host, where the pid can be checked, within
``L / 3``).

**The lease.** Once a process runs a flow on a store shared between processes (its first
flow run there, or a run it takes over, or a schedule it serves), it writes its
:class:`~runtime.store._records.ProcessLease` under its owner token, the one its runs
record as their ``owner``. Each :class:`~runtime.orchestration._runtime.Runtime` on such a
store runs a :class:`LivenessActor`, which renews the lease and looks for dead processes,
except the implicit runtime of one async call made with no Runtime open: that one leaves
the work to the background runtime of the process's global loop, which the first such
call starts and which lives on (no actor started and stopped per call). The process's
:class:`LeaseKeeper` for the store makes the runtimes of one process share that work (one
renewal per period, one look per period, whatever their number). Nothing is written per
run.

**Reaping.** A lease that expired (or whose process, on this host, no longer runs) belongs
to a process that is gone: its unfinished runs are marked Crashed through the orchestrator
(checked writes), its claimed task runs go back to the queue (a hook for task workers),
and its lease is removed (:func:`~runtime.orchestration._ownership.reap_dead_processes`).

**Clocks.** Leases are wall-clock times (the renewing process's clock): across hosts the
bound holds up to the hosts' clock skew. An event loop blocked for longer than ``2 L / 3``
(a long synchronous call in an async body) stops its runtime's renewals: run blocking
code in sync tasks, which run on worker threads.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from datetime import datetime, timezone

import attrs

from actors import Actor, ActorRef, Clock, SystemClock

from ..core._exceptions import ConfigurationError, StageflowError, StoreClosed
from ..store._backend import StoreBackend
from ..store._records import ProcessLease
from ._owners import HOST, process_owner
from ._ownership import reap_dead_processes

__all__ = [
    "DEFAULT_LEASE_SECONDS",
    "LEASE_ENV",
    "LeaseKeeper",
    "LivenessActor",
    "lease_keeper",
    "lease_seconds_setting",
    "release_process_lease",
]

_logger = logging.getLogger("stageflow.liveness")

LEASE_ENV = "STAGEFLOW_LEASE_SECONDS"
"""Environment variable: the liveness bound, in seconds, when a Runtime gives none."""

DEFAULT_LEASE_SECONDS = 15.0
"""The liveness bound, in seconds: a dead process is noticed within this time."""


def lease_seconds_setting(value: float | None = None) -> float:
    """Return the liveness bound: ``value`` if given, else ``$STAGEFLOW_LEASE_SECONDS``,
    else :data:`DEFAULT_LEASE_SECONDS`.

    Raises:
        ValueError: ``value`` is not a positive number.
        ConfigurationError: ``$STAGEFLOW_LEASE_SECONDS`` is not a positive number.
    """
    if value is not None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"lease_seconds must be a positive number of seconds, got {value!r}.")
        return float(value)
    text = os.environ.get(LEASE_ENV, "").strip()
    if not text:
        return DEFAULT_LEASE_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise ConfigurationError(
            f"{LEASE_ENV}={text!r} is not a positive number of seconds; set it to, say, 15, "
            "or unset it."
        )
    return seconds


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, timezone.utc)


@attrs.define(eq=False)
class LeaseKeeper:
    """This process's lease in one store, shared by every runtime of the process on it
    (thread-safe).

    Attributes:
        owner: the process's owner token.
        lease_seconds: the liveness bound (the smallest any runtime of the process asked for).
        started: when the process first took the lease (epoch seconds).
        active: whether the process has taken its lease (it ran a flow, or serves).
        serving: the schedules this process serves on the store.
    """

    owner: str
    lease_seconds: float
    started: float
    active: bool = False
    serving: frozenset[str] = frozenset()
    _renewed_at: float | None = None
    _next_scan: float = 0.0
    _lock: threading.Lock = attrs.field(factory=threading.Lock)

    @property
    def renew_every(self) -> float:
        """Seconds between renewals."""
        return self.lease_seconds / 5

    @property
    def valid_for(self) -> float:
        """Seconds a renewal keeps the process alive in the others' eyes."""
        return 2 * self.lease_seconds / 3

    @property
    def scan_every(self) -> float:
        """Seconds between two looks for the leases of dead processes."""
        return self.lease_seconds / 3

    def lease(self, now: float) -> ProcessLease:
        """The lease as renewed at ``now`` (epoch seconds)."""
        return ProcessLease(
            owner=self.owner,
            host=HOST,
            pid=os.getpid(),
            started=_utc(self.started),
            renewed=_utc(now),
            expires=_utc(now + self.valid_for),
            serving=tuple(sorted(self.serving)),
        )

    def take(self, backend: StoreBackend, now: float | None = None) -> None:
        """Take the lease (the process runs a flow or serves here): write it now unless it
        was renewed within the last :attr:`renew_every` seconds. Call before the run is
        recorded, so no run of a live process is ever older than its lease."""
        now = SystemClock().now() if now is None else now
        with self._lock:
            self.active = True
            fresh = self._renewed_at is not None and now - self._renewed_at < self.renew_every
            if not fresh:
                self._renewed_at = now
        if not fresh:
            self._write(backend, now)

    def set_serving(self, backend: StoreBackend, names: set[str], serving: bool) -> None:
        """Add ``names`` to the schedules served here (``serving``) or remove them, and
        write the lease so that ``stageflow schedules ls`` shows it at once."""
        with self._lock:
            self.serving = self.serving | names if serving else self.serving - names
            self.active = True
            now = self._renewed_at = SystemClock().now()
        self._write(backend, now)

    def renewal_due(self, now: float) -> bool:
        """Claim the renewal due at ``now``, if any (one runtime of the process gets it)."""
        with self._lock:
            due = self.active and (
                self._renewed_at is None or now - self._renewed_at >= self.renew_every
            )
            if due:
                self._renewed_at = now
            return due

    def scan_due(self, now: float) -> bool:
        """Claim the look for dead processes due at ``now``, if any."""
        with self._lock:
            due = now >= self._next_scan
            if due:
                self._next_scan = now + self.scan_every
            return due

    def next_due(self) -> float:
        """When the next renewal or look is due (epoch seconds)."""
        with self._lock:
            due = self._next_scan
            if self.active and self._renewed_at is not None:
                due = min(due, self._renewed_at + self.renew_every)
            return due

    def renew(self, backend: StoreBackend, now: float) -> None:
        """Write the lease as renewed at ``now`` (a failure is logged: the next renewal
        tries again)."""
        self._write(backend, now)

    def _write(self, backend: StoreBackend, now: float) -> None:
        try:
            backend.renew_lease(self.lease(now))
        except StoreClosed:
            pass  # the process stopped using the store: nothing to keep alive there
        except StageflowError as exc:
            with self._lock:
                self._renewed_at = None  # try again at the next occasion
            _logger.warning("Could not renew this process's lease in %s: %s", backend.url, exc)


_keepers: weakref.WeakKeyDictionary[StoreBackend, LeaseKeeper] = weakref.WeakKeyDictionary()
_keepers_lock = threading.Lock()


def lease_keeper(backend: StoreBackend, lease_seconds: float) -> LeaseKeeper:
    """Return this process's lease keeper for ``backend``, creating it (without writing
    anything) on first use; an existing keeper adopts a smaller ``lease_seconds``."""
    with _keepers_lock:
        keeper = _keepers.get(backend)
        if keeper is None:
            keeper = _keepers[backend] = LeaseKeeper(
                process_owner(), lease_seconds, SystemClock().now()
            )
        elif lease_seconds < keeper.lease_seconds:
            keeper.lease_seconds = lease_seconds
        return keeper


def release_process_lease(backend: StoreBackend) -> None:
    """Remove this process's lease from ``backend``, if it took one (the process stops
    using the store: nothing of it is left to reap)."""
    with _keepers_lock:
        keeper = _keepers.pop(backend, None)
    if keeper is not None and keeper.active:
        backend.release_lease(keeper.owner)


@atexit.register
def _release_at_exit() -> None:
    for backend in list(_keepers):
        release_process_lease(backend)


def _after_fork_in_child() -> None:
    # A forked child is another process: it takes leases of its own.
    global _keepers_lock
    _keepers_lock = threading.Lock()
    _keepers.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class LivenessActor(Actor):
    """Renews this process's lease in a store and reaps the runs of dead processes, when
    the process's :class:`LeaseKeeper` says it is due; see the module docstring.

    Args:
        backend: the store.
        orchestrator: the orchestrator whose checked writes mark runs Crashed.
        keeper: this process's lease in the store.
        clock: where the actor reads the time and sleeps. Leases are wall-clock times, so
            the default, :class:`~actors.SystemClock`, is the only one for real use (a
            runtime's fake clock does not drive it); tests of the actor pass another.
    """

    def __init__(
        self,
        backend: StoreBackend,
        orchestrator: ActorRef,
        keeper: LeaseKeeper,
        clock: Clock | None = None,
    ) -> None:
        self._backend = backend
        self._orchestrator = orchestrator
        self._keeper = keeper
        self._clock: Clock = clock or SystemClock()

    async def run(self) -> None:
        """Renew and look on time until stopped (a stop cancels the wait at once), or
        until the store is closed (then return: there is nothing left to keep alive)."""
        clock = self._clock
        keeper = self._keeper
        while not self._backend.closed:
            now = clock.now()
            if keeper.renewal_due(now):
                keeper.renew(self._backend, now)
            if keeper.scan_due(now):
                await self._scan(now)
            await clock.sleep_until(keeper.next_due())

    async def _scan(self, now: float) -> None:
        try:
            reaped = await reap_dead_processes(self._orchestrator, self._backend, now=_utc(now))
        except StoreClosed:
            return
        except StageflowError as exc:
            _logger.warning("Could not look for dead processes in %s: %s", self._backend.url, exc)
            return
        if reaped:
            _logger.warning(
                "Marked %d flow run(s) of dead processes Crashed in %s.", reaped, self._backend.url
            )
