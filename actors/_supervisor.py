"""Supervisors: start children in order, restart them by strategy, stop them in reverse.

A supervisor is an actor with a synchronous ``receive`` (so control messages get direct
dispatch). Each child is exactly one task in the supervisor's task group; when it ends, the
child's task calls the supervisor's ``_child_exited`` directly, which decides synchronously
what happens next. Work that has to wait (stopping siblings for a group restart, backoff
sleeps, deadlines of ``StopChild``) runs in short-lived helper tasks.
"""

from __future__ import annotations

import contextvars
import logging
from collections import deque
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, ClassVar

import anyio
import attrs
from anyio.abc import TaskGroup

from ._actor import Actor, ActorRef, ExitKind, ExitReason
from ._cell import _Cell
from ._clock import Clock, SystemClock
from ._exceptions import ActorStopped, SupervisorFailed
from ._attach import Attachment, _AttachedExited
from ._supervision import (
    AttachChild,
    Backoff,
    ChildSpec,
    CrashReport,
    Restart,
    StartChild,
    StopChild,
    Strategy,
    WhichChildren,
)

__all__ = ["Supervisor"]

logger = logging.getLogger("actors")


def _log_crash(report: CrashReport) -> None:
    logger.error(
        "child %r of supervisor %r crashed (restarted %d times before)",
        report.child,
        report.supervisor,
        report.restart_count,
        exc_info=report.exception,
    )


@attrs.define(eq=False)
class _Child:
    spec: ChildSpec
    cell: _Cell
    restarts: int = 0
    # Set while a group restart owns the child: its exits are expected, not acted upon.
    held: bool = False


class Supervisor(Actor):
    """An actor that starts, watches, restarts and stops child actors.

    Initial ``children`` start in order, each once the previous one's ``on_start`` returned;
    on shutdown children stop in reverse order, each given its ``shutdown_timeout`` before
    it is cancelled. If more than ``max_restarts`` restarts happen within ``period`` seconds,
    the supervisor stops all children and fails with :exc:`~actors.SupervisorFailed`, which
    its own supervisor sees as a crash. Children start in a copy of the supervisor's
    contextvars context, whoever asked for them.

    Its ``receive`` handles :class:`StartChild`, :class:`StopChild` and
    :class:`WhichChildren`.

    Args:
        children: Children to start, in order, when the supervisor starts.
        name: Used in crash reports and error messages.
        strategy: Which children restart when one must.
        max_restarts: Restarts allowed within ``period`` before the supervisor fails.
        period: Length, in seconds, of the restart-intensity window.
        backoff: Delay restarts; ``None`` restarts at once.
        on_crash: Called with every :class:`CrashReport`; defaults to logging it at ERROR on
            the ``"actors"`` logger.
        clock: Time source for intensity, backoff and shutdown timeouts.

    Attributes:
        attach_only: A subclass whose children are all attached (:class:`AttachChild`)
            sets this: it then opens no task groups (it costs no more to start than a
            plain actor), refuses :class:`StartChild`, and takes no initial children.
            Its ``run()`` may be the subclass's own work, children attaching meanwhile.

    Raises:
        ValueError: If two initial children share a name, ``max_restarts`` is negative or
            ``period`` is not positive.
    """

    attach_only: ClassVar[bool] = False

    def __init__(
        self,
        children: Sequence[ChildSpec] = (),
        *,
        name: str = "supervisor",
        strategy: Strategy = Strategy.ONE_FOR_ONE,
        max_restarts: int = 3,
        period: float = 5.0,
        backoff: Backoff | None = None,
        on_crash: Callable[[CrashReport], None] | None = None,
        clock: Clock | None = None,
    ) -> None:
        names = [spec.name for spec in children]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"supervisor {name!r}: duplicate child names {duplicates}")
        if children and self.attach_only:
            raise ValueError(f"supervisor {name!r} only attaches children; it starts none")
        if max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, got {max_restarts!r}")
        if not period > 0:
            raise ValueError(f"period must be > 0, got {period!r}")
        self.name = name
        self._initial = tuple(children)
        self._strategy = strategy
        self._max_restarts = max_restarts
        self._period = period
        self._backoff = backoff
        self._on_crash = _log_crash if on_crash is None else on_crash
        self._clock: Clock = SystemClock() if clock is None else clock
        self._children: dict[str, _Child] = {}
        self._restart_times: deque[float] = deque()
        self._closing = False
        self._failure: SupervisorFailed | None = None
        self._pending_group: _Child | None = None
        self._group_running = False
        self._context = contextvars.Context()
        self._tg: TaskGroup | None = None
        self._helpers: TaskGroup | None = None

    def receive(self, message: Any) -> Any:
        """Handle a control message.

        Returns:
            The child's ref for :class:`StartChild`, ``None`` for :class:`StopChild`, a list
            of ``(name, ref)`` for :class:`WhichChildren`.

        Raises:
            ValueError: :class:`StartChild` with a name already in use.
            LookupError: :class:`StopChild` naming no child.
            ActorStopped: :class:`StartChild` while the supervisor shuts down.
            TypeError: Any other message.
        """
        if isinstance(message, StartChild):
            if self.attach_only:
                raise TypeError(
                    f"supervisor {self.name!r} only attaches children (AttachChild); it "
                    "cannot start one in a task of its own"
                )
            return self._start_child(message.spec)
        if isinstance(message, AttachChild):
            return self._attach(message)
        if isinstance(message, _AttachedExited):
            self._child_exited(message.cell, message.reason)
            return None
        if isinstance(message, StopChild):
            self._stop_child(message.name)
            return None
        if isinstance(message, WhichChildren):
            return [(name, child.cell.ref) for name, child in self._children.items()]
        raise TypeError(
            f"supervisor {self.name!r} does not understand {type(message).__name__}; "
            "send StartChild, AttachChild, StopChild or WhichChildren"
        )

    def thread_dispatchable(self, message: Any) -> bool:
        """Attaching a child, and an attached child's exit, may be handled on the sending
        thread (a run on a thread with no loop attaches itself); the rest needs the loop."""
        return isinstance(message, (AttachChild, _AttachedExited))

    def _attach(self, message: AttachChild) -> Attachment:
        self._check_new_child(message.name, "attach")
        actor = message.actor
        # No grace on a stop: the work is the caller's, stopped by cancelling it (its own
        # cleanup runs as the cancellation unwinds it).
        spec = ChildSpec(message.name, lambda: actor, restart=Restart.TEMPORARY, shutdown_timeout=0)
        own = self._bound_cell()
        cell = _Cell(
            spec.name,
            actor.mailbox_size,
            factory=spec.factory,
            on_exit=self._child_exited,
            clock=self._clock,
            shutdown_timeout=spec.shutdown_timeout,
        )
        cell.waker = own.waker
        cell.canceller = message.on_cancel
        self._children[spec.name] = _Child(spec, cell)  # running once its caller runs it
        return Attachment._create(cell, actor, own.ref)

    async def _actor_main(self, started: Callable[[], None]) -> None:
        if self.attach_only:
            try:
                started()
                await self.run()
            finally:
                self._closing = True
                if self._children:
                    with anyio.CancelScope(shield=True):
                        await self._release_attached()
            return
        self._context = contextvars.copy_context()
        failure: Exception | None = None
        # Exceptions are kept out of the task groups, which would wrap them in groups.
        async with anyio.create_task_group() as self._tg:
            try:
                async with anyio.create_task_group() as self._helpers:
                    try:
                        await self._start_initial()
                        started()
                        await self.run()
                    except Exception as exc:  # noqa: BLE001 (re-raised below)
                        failure = exc
                    finally:
                        self._closing = True
                        self._helpers.cancel_scope.cancel()
            finally:
                await self._stop_children()
        if failure is not None:
            raise failure

    async def _release_attached(self) -> None:
        """Stop the children still attached as an attach-only supervisor ends. A task
        incarnation is cancelled and awaited; one on a thread can only be asked to stop
        (its ``on_cancel``), and is not awaited: a thread stuck in user code must not
        hold its supervisor up. Its exit is noted when its thread returns."""
        detail = f"supervisor {self.name!r} ended"
        for child in reversed(list(self._children.values())):
            cell = child.cell
            if cell.on_thread:
                cell.request_final_stop(detail)
                cell.cancel(ExitReason(ExitKind.CANCELLED, None, f"cancelled: {detail}"))
            else:
                await cell.stop(detail)

    async def _start_initial(self) -> None:
        for spec in self._initial:
            child = self._add(spec, spec.factory())
            await child.cell.wait_started()
            if self._failure is not None:
                raise self._failure

    async def _stop_children(self) -> None:
        self._closing = True
        if self._failure is not None:
            detail = f"supervisor {self.name!r} failed"
        else:
            detail = f"supervisor {self.name!r} shut down"
        for child in reversed(list(self._children.values())):
            await child.cell.stop(detail)

    # -- starting and stopping children -----------------------------------------------

    def _start_child(self, spec: ChildSpec) -> ActorRef:
        self._check_new_child(spec.name, "start")
        return self._add(spec, spec.factory()).cell.ref

    def _check_new_child(self, name: str, verb: str) -> None:
        if self._closing:
            raise ActorStopped(
                f"supervisor {self.name!r} is shutting down; cannot {verb} child {name!r}"
            )
        if name in self._children:
            raise ValueError(
                f"supervisor {self.name!r} already has a child named {name!r}; "
                "child names must be unique among siblings"
            )

    def _add(self, spec: ChildSpec, actor: Actor) -> _Child:
        cell = _Cell(
            spec.name,
            actor.mailbox_size,
            factory=spec.factory,
            on_exit=self._child_exited,
            clock=self._clock,
            shutdown_timeout=spec.shutdown_timeout,
        )
        child = _Child(spec, cell)
        self._children[spec.name] = child
        self._spawn(child, actor)
        return child

    def _spawn(self, child: _Child, actor: Actor | None) -> None:
        assert self._tg is not None
        child.cell.prepare()
        # A fresh copy per spawn: the task inherits the supervisor's context, not the
        # sender's, and Context.run refuses to enter a context twice.
        start = partial(
            self._tg.start_soon, child.cell.run, actor, name=f"actor {child.spec.name!r}"
        )
        self._context.copy().run(start)

    def _stop_child(self, name: str) -> None:
        child = self._children.get(name)
        if child is None:
            raise LookupError(f"supervisor {self.name!r} has no child named {name!r}")
        cell = child.cell
        cell.request_final_stop(f"stopped by StopChild({name!r})")
        if cell.running:
            assert self._helpers is not None
            self._helpers.start_soon(cell.await_end)

    def _remove(self, child: _Child, reason: ExitReason) -> None:
        if self._children.get(child.spec.name) is child:
            del self._children[child.spec.name]
        child.cell.finish(reason)

    # -- reacting to exits --------------------------------------------------------------

    def _child_exited(self, cell: _Cell, reason: ExitReason) -> None:
        child = self._children.get(cell.name)
        if child is None or child.cell is not cell:
            cell.finish(reason)
            return
        if child.spec.restart is Restart.TEMPORARY and reason.kind is not ExitKind.CRASHED:
            self._remove(child, reason)  # nothing to decide, nobody to tell
            return
        # Busy while deciding: on_crash may send to this supervisor.
        own = self._bound_cell()
        with own.dispatch_lock:
            direct, own.direct = own.direct, None
        try:
            self._handle_exit(child, reason)
        finally:
            with own.dispatch_lock:
                own.resume_direct(direct)

    def _handle_exit(self, child: _Child, reason: ExitReason) -> None:
        crashed = reason.kind is ExitKind.CRASHED
        outcome = self._exit_outcome(child, reason, crashed)
        report = None
        if crashed:
            assert reason.exception is not None
            report = CrashReport(
                self.name,
                child.spec.name,
                reason.exception,
                child.restarts,
                restarting=outcome in ("held", "restart"),
            )
            self._report(report)
        if outcome == "remove":
            self._remove(child, reason)
        elif outcome == "fail":
            self._remove(child, reason)
            self._fail(child, reason, report)
        elif outcome == "restart":
            if self._strategy is Strategy.ONE_FOR_ONE:
                self._restart_one(child)
            else:
                self._schedule_group(child)

    def _exit_outcome(self, child: _Child, reason: ExitReason, crashed: bool) -> str:
        """What becomes of a child that exited: ``"remove"`` (it is not restarted),
        ``"held"`` (a group restart under way restarts it), ``"fail"`` (one restart too
        many: the supervisor gives up) or ``"restart"``."""
        if child.cell.mailbox.closed or self._closing or reason.kind is ExitKind.CANCELLED:
            return "remove"
        if child.held:
            return "held"
        restart = child.spec.restart
        if (
            restart is Restart.TEMPORARY
            or (restart is Restart.TRANSIENT and not crashed)
            or (crashed and not isinstance(reason.exception, Exception))
        ):
            return "remove"
        return "fail" if self._intensity_exceeded() else "restart"

    def _report(self, report: CrashReport) -> None:
        try:
            self._on_crash(report)
        except Exception:
            logger.exception("on_crash handler of supervisor %r raised", self.name)

    def _intensity_exceeded(self) -> bool:
        """Count one more restart; tell whether that is too many within the period."""
        now = self._clock.now()
        times = self._restart_times
        times.append(now)
        while times[0] <= now - self._period:
            times.popleft()
        return len(times) > self._max_restarts

    def _fail(self, child: _Child, reason: ExitReason, report: CrashReport | None) -> None:
        failure = SupervisorFailed(
            f"supervisor {self.name!r} gave up: more than max_restarts={self._max_restarts} "
            f"restarts within period={self._period} s; last, child {child.spec.name!r} "
            f"exited ({reason})",
            report,
        )
        failure.__cause__ = reason.exception
        self._failure = failure
        self._closing = True
        self._bound_cell().crash(failure)

    def _restart_one(self, child: _Child) -> None:
        child.restarts += 1
        if self._backoff is None:
            self._spawn(child, None)
            return
        delay = self._backoff.delay(child.restarts - 1)
        assert self._helpers is not None
        self._helpers.start_soon(self._restart_at, child, self._clock.now() + delay)

    async def _restart_at(self, child: _Child, deadline: float) -> None:
        await self._clock.sleep_until(deadline)
        if self._children.get(child.spec.name) is child and not child.cell.mailbox.closed:
            self._spawn(child, None)

    def _schedule_group(self, child: _Child) -> None:
        # Exits during a group restart are merged: one later pass covers the earliest child.
        pending = self._pending_group
        if pending is None or self._position(child) < self._position(pending):
            self._pending_group = child
        if not self._group_running:
            self._group_running = True
            assert self._helpers is not None
            self._helpers.start_soon(self._run_group_restarts)

    def _position(self, child: _Child) -> int:
        for position, candidate in enumerate(self._children.values()):
            if candidate is child:
                return position
        return len(self._children)  # removed meanwhile: its pass will be skipped

    async def _run_group_restarts(self) -> None:
        try:
            while self._pending_group is not None:
                first, self._pending_group = self._pending_group, None
                if self._children.get(first.spec.name) is first:
                    await self._restart_group(first)
        finally:
            self._group_running = False

    async def _restart_group(self, first: _Child) -> None:
        affected = list(self._children.values())
        if self._strategy is Strategy.REST_FOR_ONE:
            affected = affected[affected.index(first) :]
        for child in affected:
            child.held = True
        try:
            detail = f"restarting with {first.spec.name!r} ({self._strategy.value})"
            for child in reversed(affected):
                await child.cell.stop_incarnation(detail)
            first.restarts += 1
            if self._backoff is not None:
                delay = self._backoff.delay(first.restarts - 1)
                await self._clock.sleep_until(self._clock.now() + delay)
            for child in affected:
                child.held = False
                if self._children.get(child.spec.name) is not child or child.cell.running:
                    continue  # stopped for good meanwhile; its exit removes it
                if child.spec.restart is Restart.TEMPORARY:
                    assert child.cell.last_reason is not None
                    self._remove(child, child.cell.last_reason)
                    continue
                if child is not first:
                    child.restarts += 1
                self._spawn(child, None)
                await child.cell.wait_started()
        finally:
            for child in affected:
                child.held = False
