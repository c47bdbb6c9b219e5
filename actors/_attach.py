"""Attached children: supervised actors whose incarnation is the caller's own task or thread.

A supervisor spawns a task for each child it starts. Some work already has a task (or a
thread) to run in and must stay there: a call that should run in its caller, as a
directly dispatched message does. :class:`~actors.AttachChild` registers such work as a
child of a supervisor, and the :class:`Attachment` it answers runs the incarnation right
where it is awaited. The child is supervised like any other temporary child: listed by
``WhichChildren``, stopped (cancelled) when the supervisor shuts down, its crash reported.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, final

import attrs

from ._actor import ActorRef, ExitKind, ExitReason, _NoPublicConstructor
from ._exceptions import ActorStopped

if TYPE_CHECKING:
    from ._actor import Actor
    from ._cell import _Cell

__all__ = ["Attachment"]

T = TypeVar("T")


@attrs.frozen
class _AttachedExited:
    """An attached child's incarnation on a thread ended (handled by its supervisor)."""

    cell: Any
    reason: ExitReason


@final
class Attachment(metaclass=_NoPublicConstructor):
    """A child attached to a supervisor (see :class:`~actors.AttachChild`), run by its
    caller. Built by the supervisor only.

    Attributes:
        ref: the child's ref, for control messages (an actor that
            ``receives_while_running`` handles them while its work runs).
    """

    _constructor_hint = "attachments come from a supervisor's answer to AttachChild"
    __slots__ = ("_actor", "_cell", "_supervisor", "ref")

    def __init__(self, cell: _Cell, actor: Actor, supervisor: ActorRef) -> None:
        self._cell = cell
        self._actor = actor
        self._supervisor = supervisor
        self.ref = cell.ref

    async def run(self) -> None:
        """Run the child's incarnation (``on_start``, ``run()``, ``on_stop``) in this task.

        Raises:
            ActorStopped: the supervisor stopped the child before it ran, or it runs already.
            Exception: what the actor raised (its supervisor has reported the crash).
            BaseException: a cancellation, or what ``run()`` raised that is not an
                ``Exception``.
        """
        cell = self._start()
        await cell.run(self._actor)
        reason = cell.last_reason
        if reason is not None and reason.kind is ExitKind.CRASHED:
            assert reason.exception is not None
            raise reason.exception

    def _start(self) -> _Cell:
        cell = self._cell
        if cell.exit_reason is not None or cell.running:
            raise ActorStopped(
                f"attached child {cell.name!r} cannot run: "
                + ("it was stopped before it ran" if not cell.running else "it runs already")
            )
        cell.prepare()
        return cell

    def run_on_thread(self, fn: Callable[[], T]) -> T:
        """Run the child's incarnation as ``fn()`` on this thread, which runs no event loop
        (the actor's ``on_start``/``run``/``on_stop`` are not called: ``fn`` is its work).
        While ``fn`` runs, the actor's messages are handled on the sending thread (it must
        allow ``dispatch_from_threads``); the supervisor's ``on_cancel`` stops it.

        Raises:
            BaseException: what ``fn`` raised (an ``Exception`` is reported as a crash).
        """
        cell = self._start()
        actor = self._actor
        actor._actor_cell = cell
        cell.actor = actor
        cell.started = True
        if type(actor).receives_while_running:
            with cell.dispatch_lock:
                cell.direct = actor.receive
        reason = ExitReason(ExitKind.NORMAL, None, "run() returned")
        try:
            return fn()
        except BaseException as exc:
            # Raised after a cancel (its on_cancel interrupted fn): the exit is that cancel.
            reason = cell.cancel_reason or ExitReason(ExitKind.CRASHED, exc, repr(exc))
            raise
        finally:
            with cell.dispatch_lock:
                cell.direct = None
                cell.running = False
            cell.last_reason = reason
            supervisor = self._supervisor
            exited = _AttachedExited(cell, reason)
            try:
                if threading.get_ident() == supervisor._cell.thread:
                    supervisor.tell_nowait(exited)  # a sync call made on the loop's thread
                else:
                    supervisor.tell_from_thread(exited)
            except Exception:  # noqa: BLE001 - the supervisor stopped: nobody to tell
                cell.finish(reason)
