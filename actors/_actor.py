"""Actors, the refs that reach them, and how actors exit.

An :class:`ActorRef` fronts a ``_Cell`` (``_cell.py``): the mailbox plus the actor's
current incarnation. A supervisor restarts a crashed actor as a new incarnation in the same
cell, so refs and queued messages survive restarts.
"""

from __future__ import annotations

import enum
import inspect
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn, TypeVar, final

import anyio
import attrs
import outcome

from ._exceptions import LoopThreadError

if TYPE_CHECKING:
    from ._cell import _Cell

__all__ = ["Actor", "ActorRef", "Envelope", "ExitKind", "ExitReason"]

_T = TypeVar("_T")


class _NoPublicConstructor(type):
    """Metaclass for handles that only the kernel builds (trio's ``NoPublicConstructor``)."""

    _constructor_hint: str

    def __call__(cls, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError(f"{cls.__qualname__} has no public constructor; {cls._constructor_hint}")

    def _create(cls: type[_T], *args: object, **kwargs: object) -> _T:
        return super().__call__(*args, **kwargs)  # type: ignore[misc, no-any-return]


class ExitKind(enum.Enum):
    """Why an actor exited."""

    #: ``run()`` returned without being asked to stop.
    NORMAL = "normal"
    #: It stopped after being asked to (``ref.stop()``, ``StopChild``, its supervisor's shutdown).
    SHUTDOWN = "shutdown"
    #: A cancel scope around its supervisor cancelled it.
    CANCELLED = "cancelled"
    #: It did not stop within its shutdown timeout, so it was cancelled.
    TIMEOUT = "timeout"
    #: An exception escaped it.
    CRASHED = "crashed"


@attrs.frozen
class ExitReason:
    """How and why an actor exited.

    Attributes:
        kind: The category of exit.
        exception: The exception that crashed the actor (``CRASHED`` only).
        detail: A human-readable explanation, e.g. who asked it to stop.
    """

    kind: ExitKind
    exception: BaseException | None = None
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.kind.value}: {self.detail}"


@attrs.define(eq=False)
class _Reply:
    """Where an ask's answer lands: an ``outcome`` plus the event its asker waits on."""

    _event: anyio.Event = attrs.field(factory=anyio.Event)
    result: outcome.Maybe[Any] | None = None

    def send(self, result: outcome.Maybe[Any]) -> None:
        if self.result is None:
            self.result = result
            self._event.set()

    async def wait(self) -> None:
        await self._event.wait()


class _ThreadReply:
    """Where the answer to an ask from another thread lands; the asker blocks on it."""

    __slots__ = ("_event", "result")

    def __init__(self) -> None:
        self._event = threading.Event()
        self.result: outcome.Maybe[Any] | None = None

    def send(self, result: outcome.Maybe[Any]) -> None:
        if self.result is None:
            self.result = result
            self._event.set()

    def wait(self, timeout: float | None) -> bool:
        return self._event.wait(timeout)


@attrs.frozen
class Envelope:
    """A message on its way to an actor; ``reply_to`` is ``None`` for a tell."""

    message: Any
    reply_to: _Reply | _ThreadReply | None = None


class Actor:
    """Base class for actors: private state, a bounded mailbox, one message at a time.

    Subclasses override :meth:`receive` (a plain ``def`` or an ``async def``; which one is
    decided once, when the subclass is created) or, for a *process* actor, :meth:`run`.
    Actors are started by a :class:`~actors.Supervisor` (``ChildSpec``, ``StartChild``) or
    :meth:`~actors.ActorSystem.spawn`, never directly.

    An exception raised while handling an ``ask`` goes back to the asker and the actor keeps
    running; one raised while handling a ``tell`` crashes the actor, and its supervisor
    decides what happens next. A restart builds a new instance with the child's factory; the
    ref and the queued messages carry over.

    **Direct dispatch.** If ``receive`` is a plain ``def``, a message sent from the actor's
    own event-loop thread while the actor is idle with an empty mailbox is handled right in
    the sender's task: ``receive`` runs in the sender's context (contextvars included), and
    the ``await ref.tell(...)``/``await ref.ask(...)`` that triggered it does not checkpoint.
    The actor is marked busy meanwhile, so messages still arrive one at a time and in order.
    A directly dispatched tell that raises does not raise in the sender: the actor's own
    task raises it before handling anything else, and the actor crashes as usual.

    **From other threads.** ``ask_from_thread``/``tell_from_thread`` queue the message
    through the actor's loop. An actor whose sync ``receive`` touches nothing bound to its
    event loop (no anyio call, no task group) may set ``dispatch_from_threads = True``: an
    idle one is then dispatched directly on the sending thread too, still one message at a
    time (a lock serialises ``receive`` across threads).

    **Control messages while running.** A *process* actor (one that overrides :meth:`run`)
    has no receive loop: its messages wait. One that sets ``receives_while_running = True``
    (and has a sync ``receive``) handles them while its ``run()`` is active, dispatched
    directly: on its loop's thread that ``run()`` is suspended whenever someone else's code
    runs, so ``receive`` never overlaps it; messages from other threads are delivered
    through the loop. They still come one at a time, in arrival order. This is how a
    long-running piece of work (a flow run, say) takes a "cancel" or a "your state
    changed" message without a second task.

    Attributes:
        mailbox_size: Capacity of the bounded mailbox; senders wait (``tell``) or get
            :exc:`anyio.WouldBlock` (``tell_nowait``) when it is full.
        dispatch_from_threads: Whether an idle actor's sync ``receive`` may run on another
            thread that sends it a message (see above).
        receives_while_running: Whether a process actor handles messages while its
            ``run()`` is active (see above).
    """

    mailbox_size: ClassVar[int] = 1000
    dispatch_from_threads: ClassVar[bool] = False
    receives_while_running: ClassVar[bool] = False

    def thread_dispatchable(self, message: Any) -> bool:
        """Whether ``message`` may be handled right on a thread that is not the actor's
        loop's (when the actor is idle). The default: ``dispatch_from_threads``. An actor
        whose ``receive`` is loop-bound for some messages only says so per message."""
        return type(self).dispatch_from_threads

    _actor_async_receive: ClassVar[bool] = False
    # Whether on_start/on_stop are overridden: an incarnation skips the ones that are not
    # (on_stop's shield costs a cancel scope per incarnation, felt by short-lived actors).
    _actor_has_on_start: ClassVar[bool] = False
    _actor_has_on_stop: ClassVar[bool] = False
    _actor_cell: _Cell | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        size = cls.mailbox_size
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"{cls.__qualname__}.mailbox_size must be an int >= 1, got {size!r}")
        cls._actor_async_receive = inspect.iscoroutinefunction(cls.receive)
        cls._actor_has_on_start = cls.on_start is not Actor.on_start
        cls._actor_has_on_stop = cls.on_stop is not Actor.on_stop

    async def on_start(self) -> None:
        """Run in the actor's own task before it handles its first message.

        An exception here crashes the actor. The default does nothing.
        """

    async def on_stop(self) -> None:
        """Run in the actor's own task as it exits, shielded from cancellation.

        Runs after a normal exit, a requested stop or a crash, provided :meth:`on_start`
        returned; keep it short, since no timeout can interrupt it. If it raises, the actor
        counts as crashed with that exception, unless it had already crashed. The default
        does nothing.
        """

    def receive(self, message: Any) -> Any:
        """Handle one message and return the reply (ignored for a tell).

        Override as ``def`` (eligible for direct dispatch) or ``async def``.

        Raises:
            NotImplementedError: Always, in the base class.
        """
        raise NotImplementedError(
            f"{type(self).__qualname__} got {type(message).__name__} but does not override "
            "receive(); override receive() to handle messages"
        )

    async def run(self) -> None:
        """The actor's body; by default, the receive loop.

        The receive loop hands queued messages to :meth:`receive` one at a time and returns
        once a stop is requested. A *process* actor overrides ``run`` to do its work: returning
        is a normal exit, raising is a crash. It should watch :attr:`stop_requested` to wind
        down when asked.
        """
        await self._bound_cell().receive_loop(self)

    @property
    def ref(self) -> ActorRef:
        """This actor's ref.

        Raises:
            RuntimeError: If the actor has not been started by a supervisor.
        """
        return self._bound_cell().ref

    @property
    def stop_requested(self) -> anyio.Event:
        """Set when this actor is asked to stop gracefully.

        Raises:
            RuntimeError: If the actor has not been started by a supervisor.
        """
        return self._bound_cell().stop_event()

    def _bound_cell(self) -> _Cell:
        cell = self._actor_cell
        if cell is None:
            raise RuntimeError(
                f"{type(self).__qualname__} has not been started: actors get a ref when a "
                "supervisor starts them (ChildSpec, StartChild or ActorSystem.spawn)"
            )
        return cell

    async def _actor_main(self, started: Callable[[], None]) -> None:
        # Everything between on_start and on_stop; a Supervisor overrides this to start
        # its children inside its own task groups before reporting itself started.
        started()
        await self.run()


@final
class ActorRef(metaclass=_NoPublicConstructor):
    """The only handle on an actor: send it messages, stop it, wait for it.

    A ref names one supervised actor across restarts: a restarted actor keeps its ref and its
    mailbox (messages queued at the crash are handled by the new incarnation). The ref dies,
    and :attr:`exit_reason` is set, when the actor exits for good. Every method that sends or
    waits must be called from the thread running the actor's event loop.
    """

    _constructor_hint = "refs come from StartChild, ChildSpec or ActorSystem.spawn()"
    __slots__ = ("_cell",)

    def __init__(self, cell: _Cell) -> None:
        self._cell = cell

    def __repr__(self) -> str:
        reason = self._cell.exit_reason
        state = "alive" if reason is None else f"exited ({reason})"
        return f"<ActorRef {self._cell.name!r} {state}>"

    @property
    def name(self) -> str:
        """The actor's name, unique among its siblings."""
        return self._cell.name

    @property
    def is_alive(self) -> bool:
        """Whether the actor has yet to exit for good."""
        return self._cell.exit_reason is None

    @property
    def exit_reason(self) -> ExitReason | None:
        """Why the actor exited, or ``None`` while it is alive."""
        return self._cell.exit_reason

    async def tell(self, message: Any) -> None:
        """Send ``message`` without waiting for it to be handled.

        Waits while the mailbox is full (backpressure). A checkpoint, except under direct
        dispatch.

        Raises:
            ActorStopped: If the actor has stopped, or stops while this waits for room.
            ForeignThreadError: If called from a thread other than the actor's loop thread.
        """
        cell = self._cell
        if threading.get_ident() != cell.thread:
            raise cell.foreign_thread_error()
        receive = cell.direct
        if receive is not None and cell.dispatch_tell(receive, message):
            return
        await cell.post(Envelope(message))

    def tell_nowait(self, message: Any) -> None:
        """Send ``message`` if the mailbox has room, without waiting.

        Raises:
            anyio.WouldBlock: If the mailbox is full.
            ActorStopped: If the actor has stopped.
            ForeignThreadError: If called from a thread other than the actor's loop thread.
        """
        cell = self._cell
        if threading.get_ident() != cell.thread:
            raise cell.foreign_thread_error()
        receive = cell.direct
        if receive is not None and cell.dispatch_tell(receive, message):
            return
        cell.post_nowait(Envelope(message))

    async def ask(self, message: Any, *, timeout: float | None = None) -> Any:
        """Send ``message`` and return the actor's reply.

        If the handler raises, the exception is re-raised here with its original traceback,
        and the actor keeps running. On timeout or cancellation the message may still be
        handled later; its reply is dropped. ``timeout`` cannot interrupt a directly
        dispatched (synchronous) handler.

        Args:
            message: The message to send.
            timeout: Seconds to wait for room and for the reply; ``None`` waits forever.

        Returns:
            Whatever the actor's ``receive`` returned.

        Raises:
            TimeoutError: If no reply arrived within ``timeout`` seconds.
            ActorStopped: If the actor has stopped, or stops before replying.
            ForeignThreadError: If called from a thread other than the actor's loop thread.
        """
        cell = self._cell
        if threading.get_ident() != cell.thread:
            raise cell.foreign_thread_error()
        receive = cell.direct
        if receive is not None:
            result = cell.dispatch_ask(receive, message)
            if result is not None:
                return result.unwrap()
        return await cell.ask(message, timeout)

    def ask_here(self, message: Any) -> Any:
        """Handle ``message`` right now, on the calling thread, and return the reply; for a
        sync caller that cannot wait for the actor's loop (it may be running on it).

        Possible when the actor's ``receive`` is synchronous and the actor is idle with an
        empty mailbox, and the caller is on the actor's loop thread (the loop is not running
        meanwhile) or the actor allows ``dispatch_from_threads``. Waits, briefly, if another
        thread is dispatching to it at that moment.

        Returns:
            Whatever the actor's ``receive`` returned.

        Raises:
            anyio.WouldBlock: If the actor cannot handle the message now (it is busy, has
                queued messages, is stopping, or receives asynchronously); nothing was sent.
            ForeignThreadError: If called from another thread for an actor that does not
                allow ``dispatch_from_threads``.
        """
        cell = self._cell
        if threading.get_ident() != cell.thread:
            actor = cell.actor
            if actor is None or not type(actor).dispatch_from_threads:
                raise cell.foreign_thread_error()
        receive = cell.direct
        if receive is not None:
            result = cell.dispatch_ask(receive, message, wait=True)
            if result is not None:
                return result.unwrap()
        raise anyio.WouldBlock

    def ask_from_thread(self, message: Any, *, timeout: float | None = None) -> Any:
        """Send ``message`` from a thread that does not run the actor's loop, block until
        the reply, and return it.

        If the actor's ``receive`` is synchronous and the actor is idle with an empty
        mailbox, the message is handled right here, on the calling thread (direct dispatch
        across threads: no wake-up of the loop, no thread hop); it is still the only message
        the actor handles at that moment. Otherwise it is queued through the actor's loop,
        in arrival order, and this call waits for the reply. The calling thread may not be
        the actor's loop thread (it would wait for itself).

        Args:
            message: The message to send.
            timeout: Seconds to wait for the reply; ``None`` waits forever.

        Returns:
            Whatever the actor's ``receive`` returned.

        Raises:
            TimeoutError: If no reply arrived within ``timeout`` seconds (the message may
                still be handled later).
            ActorStopped: If the actor has stopped, or stops before replying.
            LoopThreadError: If called from the actor's own loop thread (use ``ask``).
        """
        cell = self._cell
        if threading.get_ident() == cell.thread:
            raise LoopThreadError(
                f"ActorRef.ask_from_thread() was called on the loop thread of actor "
                f"{cell.name!r}, where blocking would wait for itself; use 'await ref.ask(...)'"
            )
        reply = _ThreadReply()
        cell.from_thread(message, reply)
        if not reply.wait(timeout):
            raise TimeoutError(
                f"actor {cell.name!r} did not answer {type(message).__name__} within {timeout} s"
            )
        assert reply.result is not None
        return reply.result.unwrap()

    def tell_from_thread(self, message: Any) -> None:
        """Send ``message`` from a thread that does not run the actor's loop, without waiting.

        Handled at once on the calling thread if the actor is idle (see
        :meth:`ask_from_thread`), else queued through the actor's loop; a full mailbox then
        drops the message with the actor unaware, as nobody waits to be told.

        Raises:
            ActorStopped: If the actor has stopped.
            LoopThreadError: If called from the actor's own loop thread (use ``tell``).
        """
        cell = self._cell
        if threading.get_ident() == cell.thread:
            raise LoopThreadError(
                f"ActorRef.tell_from_thread() was called on the loop thread of actor "
                f"{cell.name!r}; use 'await ref.tell(...)' or 'ref.tell_nowait(...)'"
            )
        cell.from_thread(message, None)

    def tell_soon(self, message: Any) -> None:
        """Send ``message`` from any thread, even the actor's own loop thread inside a
        signal handler, without waiting and without ever handling it inline: it is queued
        through the actor's loop, which handles it soon (a full mailbox drops it).

        This is how a signal handler, which may interrupt the actor's own code between any
        two bytecodes, reaches an actor safely.

        Raises:
            ActorStopped: If the actor has stopped.
        """
        self._cell.from_thread(message, None, inline=False)

    def cancel(self, detail: str = "cancelled by ActorRef.cancel()") -> None:
        """Cancel the actor's current incarnation now, without waiting: its task's cancel
        scope is cancelled (an incarnation on a thread with no loop is asked to stop
        through its ``on_cancel``, see :class:`~actors.AttachChild`). It exits
        ``CANCELLED``, with ``detail``; its supervisor does not restart it. Unlike
        :meth:`stop`, this may be called from the actor's own handlers. Does nothing if
        the actor is not running.

        Raises:
            ForeignThreadError: If called from a thread other than the actor's loop thread
                for an incarnation that runs in a task (cancel scopes are not thread-safe).
        """
        cell = self._cell
        if not cell.running:
            return
        if not cell.on_thread and threading.get_ident() != cell.thread:
            raise cell.foreign_thread_error()
        cell.cancel(ExitReason(ExitKind.CANCELLED, None, detail))

    async def stop(self) -> ExitReason:
        """Stop the actor for good, gracefully, and wait until it has exited.

        The actor finishes the message in hand; queued messages are dropped and their asks
        fail with :exc:`ActorStopped`. An actor still running after its ``shutdown_timeout``
        is cancelled. Its supervisor does not restart it. Stopping a stopped actor just
        returns its exit reason.

        Returns:
            The actor's exit reason.

        Raises:
            ForeignThreadError: If called from a thread other than the actor's loop thread.
            RuntimeError: If called from the actor's own task, which would wait for itself.
        """
        cell = self._cell
        if threading.get_ident() != cell.thread:
            raise cell.foreign_thread_error()
        return await cell.stop("stopped by ActorRef.stop()")

    async def wait(self) -> ExitReason:
        """Wait until the actor has exited for good.

        Returns:
            The actor's exit reason.

        Raises:
            ForeignThreadError: If called from a thread other than the actor's loop thread.
            RuntimeError: If called from the actor's own task, which would wait for itself.
        """
        cell = self._cell
        if threading.get_ident() != cell.thread:
            raise cell.foreign_thread_error()
        return await cell.wait()
