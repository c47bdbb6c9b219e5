"""The actor system: a root supervisor running in the caller's task group."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import final

import anyio

from ._actor import ActorRef, ExitKind, ExitReason, _NoPublicConstructor
from ._cell import _Cell
from ._clock import Clock, SystemClock
from ._supervision import ChildSpec, CrashReport, StartChild
from ._supervisor import Supervisor

__all__ = ["ActorSystem", "open_actor_system"]


@final
class ActorSystem(metaclass=_NoPublicConstructor):
    """A running actor system: a root supervisor and a way to start children under it.

    Get one from :func:`open_actor_system`.
    """

    _constructor_hint = "use 'async with actors.open_actor_system() as system'"
    __slots__ = ("_name", "_root")

    def __init__(self, name: str, root: ActorRef) -> None:
        self._name = name
        self._root = root

    def __repr__(self) -> str:
        return f"<ActorSystem {self._name!r}>"

    @property
    def name(self) -> str:
        """The system's name, which is also its root supervisor's name."""
        return self._name

    @property
    def root(self) -> ActorRef:
        """The root supervisor's ref (send it ``StartChild``, ``StopChild``, ``WhichChildren``)."""
        return self._root

    async def spawn(self, spec: ChildSpec) -> ActorRef:
        """Start a child of the root supervisor and return its ref at once.

        Args:
            spec: The child to start.

        Returns:
            The new child's ref; messages sent to it right away queue up.

        Raises:
            ValueError: If the root already has a child named ``spec.name``.
            ActorStopped: If the system is shutting down.
            ForeignThreadError: If called from a thread other than the system's loop thread.
            Exception: Whatever ``spec.factory`` raised.
        """
        ref: ActorRef = await self._root.ask(StartChild(spec))
        return ref


@asynccontextmanager
async def open_actor_system(
    name: str = "system",
    *,
    on_crash: Callable[[CrashReport], None] | None = None,
    clock: Clock | None = None,
) -> AsyncIterator[ActorSystem]:
    """Run an actor system for the duration of an ``async with`` block.

    The root supervisor (one-for-one) runs in a task group opened here, in the caller's event
    loop and thread, under asyncio or trio. On exit the root stops gracefully, its children
    in reverse start order. If the root fails, the block is cancelled and the failure
    (:exc:`~actors.SupervisorFailed`) propagates from the ``async with``.

    Args:
        name: Name of the system and of its root supervisor.
        on_crash: Called with every :class:`~actors.CrashReport` of the root's children;
            defaults to logging it at ERROR on the ``"actors"`` logger.
        clock: Time source of the root supervisor; defaults to :class:`~actors.SystemClock`.

    Yields:
        The running system.

    Raises:
        SupervisorFailed: If the root supervisor failed.
    """
    root_clock: Clock = SystemClock() if clock is None else clock
    root = Supervisor(name=name, on_crash=on_crash, clock=root_clock)
    body_error: BaseException | None = None
    # Errors are kept out of the task group, which would wrap them in an exception group.
    async with anyio.create_task_group() as tg:

        def root_exited(cell: _Cell, reason: ExitReason) -> None:
            cell.finish(reason)
            if reason.kind is not ExitKind.SHUTDOWN:
                tg.cancel_scope.cancel()

        cell = _Cell(
            name,
            root.mailbox_size,
            factory=lambda: root,
            on_exit=root_exited,
            clock=root_clock,
            shutdown_timeout=math.inf,
        )
        cell.prepare()
        tg.start_soon(cell.run, root, name=f"actor system {name!r}")
        await cell.wait_started()
        if cell.exit_reason is None:
            try:
                yield ActorSystem._create(name, cell.ref)
            except anyio.get_cancelled_exc_class():
                raise  # must reach the cancel scope that owns it, through the task group
            except BaseException as exc:  # noqa: BLE001 (re-raised below, unwrapped)
                body_error = exc
            finally:
                await cell.stop(f"actor system {name!r} closed")
    reason = cell.exit_reason
    if reason is not None and reason.kind is ExitKind.CRASHED:
        assert reason.exception is not None
        raise reason.exception
    if body_error is not None:
        raise body_error
