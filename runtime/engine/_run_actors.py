"""Run actors: every flow run and every task run is a supervised actor.

Each run has an :class:`~actors.ActorRef` that takes control messages, lives under a
supervisor, and its crash produces a :class:`~actors.CrashReport`:

- a **flow run** is a :class:`FlowRunActor`, attached to the flow run that called it when
  that one runs on the same event loop (a subflow), else to its runtime's root supervisor.
  It is itself a supervisor (attach-only) of the runs it calls on its loop and thread.
- a **called task run** is a :class:`TaskRunActor` attached to its flow run's actor (or, outside
  a flow, to its runtime's root). Attached children run in their caller: in its task
  (``Attachment.run``) or, for a sync task called on a flow body's thread, on that thread
  (``Attachment.run_on_thread``). No task is spawned for a called run, as for a directly
  dispatched message.
- a **submitted task run** is a :class:`TaskRunActor` spawned under its flow run attempt's
  supervisor on a task-runner loop (:mod:`runtime.engine._submission`).

The control messages (:class:`CancelRun`, :class:`Terminate`, :class:`RunChanged`) are
handled while the run works (``receives_while_running``): a cancellation requested in
another thread or process, SIGTERM and the run's own state changes reach the engine as
messages, one at a time, on the run's loop.

Names follow the runs: ``flow-run-<id>`` and ``task-run-<id>``.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import attrs

from actors import (
    Actor,
    ActorRef,
    ActorStopped,
    AttachChild,
    Attachment,
    LoopThreadError,
    Supervisor,
)

from ..core._exceptions import TerminationSignal
from ..orchestration._runtime import report_crash

__all__ = [
    "CancelRun",
    "FlowRunActor",
    "RunChanged",
    "TaskRunActor",
    "Terminate",
    "attach",
    "attach_from_thread",
    "tell",
]

@attrs.frozen
class CancelRun:
    """Stop the run: its body is interrupted and it ends Cancelled, with its
    ``on_cancellation`` hooks (a flow run) as in Prefect.

    Attributes:
        message: the Cancelled state's message (None: a default one).
    """

    message: str | None = None


@attrs.frozen
class Terminate:
    """The process received SIGTERM while the flow run ran: it ends Cancelled if a
    cancellation was requested, else Crashed (:mod:`runtime.engine._signals`)."""

    signal: TerminationSignal


@attrs.frozen
class RunChanged:
    """The store recorded a new snapshot of the run, by anyone, in any process (a
    cancellation request, a resume). ``run`` is the frozen snapshot."""

    run: Any


class FlowRunActor(Supervisor):
    """A flow run; see the module docstring.

    Its ``run()`` is the engine's work (``engine.work()``); its final state is then in
    :attr:`state`. Besides the supervisor's own messages it takes :class:`CancelRun`,
    :class:`Terminate` and :class:`RunChanged`.

    Args:
        engine: the flow run's engine (a :class:`~runtime.engine._flow_engine.FlowRunEngine`).
    """

    attach_only = True
    receives_while_running = True

    def __init__(self, engine: Any) -> None:
        super().__init__(name=f"flow-run-{engine.flow_run.id}", on_crash=report_crash)
        self._engine = engine
        self.state: Any = None

    async def run(self) -> None:
        """Run the flow run to its end (see ``FlowRunEngine.run``)."""
        self.state = await self._engine.work(self.ref)

    def receive(self, message: Any) -> Any:
        """Handle a control message, or a supervisor's (``AttachChild``...).

        Raises:
            TypeError: a message neither a run nor a supervisor understands.
        """
        if isinstance(message, RunChanged):
            self._engine.observe(message.run)
        elif isinstance(message, CancelRun):
            self._engine.cancel(message.message)
        elif isinstance(message, Terminate):
            self._engine.interrupt(message.signal)
        else:
            return super().receive(message)
        return None


class TaskRunActor(Actor):
    """A task run; see the module docstring.

    Its ``run()`` builds the engine with ``engine_factory`` and awaits ``work(engine)``,
    whose result is then in :attr:`state`. It takes :class:`CancelRun`: the run is
    cancelled wherever it is (its incarnation's cancel scope; on a thread, its body is
    interrupted) and ends Cancelled.

    Args:
        engine_factory: builds the run's :class:`~runtime.engine._task_engine.TaskRunEngine`.
        work: what the incarnation does with it (run it; for a submitted run, also hand
            the final state to its future).
    """

    receives_while_running = True

    def __init__(
        self,
        engine_factory: Callable[[], Any],
        work: Callable[[Any], Awaitable[Any]],
    ) -> None:
        self._engine_factory = engine_factory
        self._work = work
        self.engine: Any = None
        self.state: Any = None
        self.on_thread = False

    async def run(self) -> None:
        """Build the engine and do the work (see the class docstring)."""
        engine = self.engine = self._engine_factory()
        self.state = await self._work(engine)

    def thread_dispatchable(self, message: Any) -> bool:
        """A run on a thread with no loop takes its messages on the sending thread."""
        return self.on_thread

    def receive(self, message: Any) -> Any:
        """Handle :class:`CancelRun`.

        Raises:
            TypeError: any other message.
        """
        if isinstance(message, CancelRun):
            if self.engine is not None:
                self.engine.request_cancel(message.message)
            self.ref.cancel("the task run was cancelled (CancelRun)")
            return None
        raise TypeError(f"a task run's actor does not understand {type(message).__name__}")


async def attach(supervisor: ActorRef, name: str, actor: Actor) -> None:
    """Attach ``actor`` to ``supervisor`` (on this loop's thread) and run it in this task.

    Raises:
        ActorStopped: the supervisor is shutting down.
        BaseException: what the actor's ``run()`` raised.
    """
    attachment: Attachment = await supervisor.ask(AttachChild(name, actor))
    await attachment.run()


def attach_from_thread(
    supervisor: ActorRef,
    name: str,
    actor: TaskRunActor,
    on_cancel: Callable[[Any], None],
) -> Attachment:
    """Attach ``actor`` to ``supervisor`` from a thread running no loop (or, in a sync
    call, the supervisor's own loop thread); run it with ``Attachment.run_on_thread``.

    Raises:
        ActorStopped: the supervisor is shutting down.
        anyio.WouldBlock: on the supervisor's loop thread, the supervisor is busy.
    """
    actor.on_thread = True
    message = AttachChild(name, actor, on_cancel)
    try:
        return supervisor.ask_from_thread(message)  # type: ignore[no-any-return]
    except LoopThreadError:  # a sync call made right on the supervisor's loop thread
        return supervisor.ask_here(message)  # type: ignore[no-any-return]


def tell(ref: ActorRef | None, loop_thread: int | None, message: Any) -> None:
    """Tell a run's actor ``message`` from any thread (not from a signal handler: use
    ``ActorRef.tell_soon``); dropped if the actor has ended or its mailbox is full."""
    if ref is None:
        return
    try:
        if threading.get_ident() == loop_thread:
            ref.tell_nowait(message)
        else:
            ref.tell_from_thread(message)
    except (ActorStopped, anyio.WouldBlock):
        pass
