"""The runtime behind one ActorRef: mailbox, receive loop, direct dispatch, lifecycle.

A cell outlives incarnations. Its owner (a supervisor, or the actor system for the root)
starts an incarnation with ``prepare()`` plus a task running ``run()``; when the incarnation
ends, the cell calls ``on_exit(cell, reason)`` from that task, and the owner either starts a
new incarnation or calls ``finish(reason)``, which kills the ref for good.

Direct dispatch: ``direct`` holds the actor's bound ``receive`` exactly while a sender may
call it inline (sync ``receive``, receive loop parked on an empty mailbox, no stop or crash
pending), so senders test one attribute. Every enqueue, stop request and crash signal clears
it; only the parked loop, or a direct call that leaves the mailbox empty, sets it again.

Senders on other threads may dispatch directly too (:meth:`_Cell.ask_from_thread`). So that
a sync ``receive`` still handles one message at a time, in order, whichever thread runs it,
``dispatch_lock`` is held around every call of a sync ``receive`` and every change of
``direct`` or of the mailbox's contents; it is only ever held for one ``receive`` call.
Messages from other threads that cannot be dispatched directly are queued through the loop
(``waker``) and their senders block on a thread-safe reply.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
import outcome
from anyio.lowlevel import checkpoint, checkpoint_if_cancelled

from ._actor import ActorRef, Envelope, ExitKind, ExitReason, _Reply, _ThreadReply
from ._backend import LoopWaker, current_task
from ._critical import critical
from ._exceptions import ActorStopped, ForeignThreadError
from ._mailbox import Mailbox

if TYPE_CHECKING:
    from ._actor import Actor
    from ._clock import Clock

__all__ = ["_Cell"]

logger = logging.getLogger("actors")

_RETURNED = ExitReason(ExitKind.NORMAL, None, "run() returned")
_CANCELLED_FROM_OUTSIDE = ExitReason(
    ExitKind.CANCELLED, None, "cancelled from outside its supervisor"
)


class _Cell:
    __slots__ = (
        "_cancel",
        "_current",
        "_ended_event",
        "_exit_event",
        "_scope",
        "_started_event",
        "_stop_event",
        "_task",
        "actor",
        "clock",
        "direct",
        "canceller",
        "dispatch_lock",
        "exit_reason",
        "factory",
        "last_reason",
        "mailbox",
        "name",
        "on_exit",
        "ref",
        "running",
        "shutdown_timeout",
        "signal",
        "started",
        "stop_detail",
        "thread",
        "waker",
    )

    def __init__(
        self,
        name: str,
        capacity: int,
        *,
        factory: Callable[[], Actor],
        on_exit: Callable[[_Cell, ExitReason], None],
        clock: Clock,
        shutdown_timeout: float,
    ) -> None:
        self.name = name
        self.thread = threading.get_ident()
        self.mailbox: Mailbox[Envelope] = Mailbox(capacity)
        self.ref: ActorRef = ActorRef._create(self)
        self.factory = factory
        self.on_exit = on_exit
        self.clock = clock
        self.shutdown_timeout = shutdown_timeout
        self.exit_reason: ExitReason | None = None
        self.last_reason: ExitReason | None = None
        self._exit_event: anyio.Event | None = None
        self.dispatch_lock = threading.RLock()  # a handler may send to its own actor
        self.canceller: Callable[[ExitReason], None] | None = None  # a thread incarnation's
        self.waker: LoopWaker | None = None  # set by the receive loop, for other threads
        self._reset_incarnation()

    # -- incarnation lifecycle (owner side) -------------------------------------------

    def prepare(self) -> None:
        """Reset per-incarnation state; the owner then starts a task running ``run``."""
        self._reset_incarnation()
        self.running = True

    def _reset_incarnation(self) -> None:
        self.running = False
        self.actor: Actor | None = None
        self.direct: Callable[[Any], Any] | None = None
        self.signal: BaseException | None = None
        self.stop_detail: str | None = None
        self.started = False
        self._stop_event: anyio.Event | None = None
        self._started_event: anyio.Event | None = None
        self._ended_event: anyio.Event | None = None
        self._scope: anyio.CancelScope | None = None
        self._cancel: ExitReason | None = None
        self._current: Envelope | None = None
        self._task: object = None

    async def run(self, actor: Actor | None) -> None:
        """Run one incarnation: ``actor`` (or a fresh one from the factory) to its exit."""
        reason = _CANCELLED_FROM_OUTSIDE
        on_start_returned = False
        try:
            with anyio.CancelScope() as scope:
                self._scope = scope
                self._task = current_task()
                if self._cancel is not None:
                    scope.cancel()
                try:
                    if actor is None:
                        actor = self.factory()
                    if actor._actor_cell is not None:
                        raise RuntimeError(
                            f"the factory of actor {self.name!r} returned an actor that was "
                            "already started; a factory must build a new actor every time"
                        )
                    actor._actor_cell = self
                    self.actor = actor
                    if actor._actor_has_on_start:
                        await actor.on_start()
                    on_start_returned = True
                    if type(actor).receives_while_running and not actor._actor_async_receive:
                        if self.waker is None:
                            self.waker = LoopWaker()
                        with self.dispatch_lock:
                            self.direct = actor.receive
                            self._drain()  # what was sent before it started
                    await actor._actor_main(self._mark_started)
                except anyio.get_cancelled_exc_class():
                    raise
                except BaseException as exc:
                    reason = ExitReason(ExitKind.CRASHED, exc, repr(exc))
                    if not isinstance(exc, Exception):
                        raise  # KeyboardInterrupt, SystemExit: tear the tree down
                else:
                    reason = self._returned_reason()
            if scope.cancelled_caught:
                reason = self._cancel or ExitReason(ExitKind.CANCELLED, None, "cancelled")
        finally:
            if on_start_returned and actor is not None and actor._actor_has_on_stop:
                reason = await self._call_on_stop(actor, reason)
            self._end(reason)

    @property
    def cancel_reason(self) -> ExitReason | None:
        """Why the current incarnation was cancelled, if it was."""
        return self._cancel

    @property
    def on_thread(self) -> bool:
        """Whether the incarnation runs on a thread with no loop (an attached child's
        ``run_on_thread``), which only its ``canceller`` can ask to stop."""
        return self.running and self._scope is None and self.canceller is not None

    def _returned_reason(self) -> ExitReason:
        if self.stop_detail is not None:
            return ExitReason(ExitKind.SHUTDOWN, None, self.stop_detail)
        return _RETURNED

    async def _call_on_stop(self, actor: Actor, reason: ExitReason) -> ExitReason:
        with anyio.CancelScope(shield=True):
            try:
                await actor.on_stop()
            except Exception as exc:
                if reason.kind is not ExitKind.CRASHED:
                    return ExitReason(ExitKind.CRASHED, exc, f"on_stop() raised {exc!r}")
                logger.error("on_stop() of actor %r raised", self.name, exc_info=exc)
        return reason

    def _mark_started(self) -> None:
        self.started = True
        if self._started_event is not None:
            self._started_event.set()

    def _end(self, reason: ExitReason) -> None:
        current = self._current
        if current is not None and current.reply_to is not None:
            current.reply_to.send(
                outcome.Error(_stopped_before(self.name, current.message, str(reason)))
            )
        self._current = None
        self.running = False
        self.direct = None
        self.last_reason = reason
        for event in (self._started_event, self._ended_event):
            if event is not None:
                event.set()
        self.on_exit(self, reason)

    def finish(self, reason: ExitReason) -> None:
        """Kill the ref for good: close the mailbox, fail queued asks, wake waiters."""
        if self.exit_reason is not None:
            return
        self.exit_reason = reason
        queued = self.mailbox.close()
        if queued:
            _fail_asks(self.name, queued, str(reason))
        if self._exit_event is not None:
            self._exit_event.set()

    async def wait_started(self) -> None:
        """Wait until the incarnation's ``on_start`` has returned, or it has ended."""
        if self.started or not self.running:
            return
        if self._started_event is None:
            self._started_event = anyio.Event()
        await self._started_event.wait()

    # -- stopping ---------------------------------------------------------------------

    def stop_event(self) -> anyio.Event:
        if self._stop_event is None:
            self._stop_event = anyio.Event()
            if self.stop_detail is not None:
                self._stop_event.set()
        return self._stop_event

    def request_stop(self, detail: str, *, close: bool) -> None:
        """Ask the incarnation to stop after the message in hand; ``close`` ends the ref too.

        Closing drops queued messages (failing their asks) and refuses new ones; without it
        (a stop before a restart) the mailbox is kept for the next incarnation.
        """
        if self.mailbox.closed:
            return
        with self.dispatch_lock:
            self.stop_detail = detail
            self.direct = None
        if self._stop_event is not None:
            self._stop_event.set()
        if close:
            _fail_asks(self.name, self.mailbox.close(), detail)
        self.mailbox.wake()

    def request_final_stop(self, detail: str) -> None:
        """Stop for good; between incarnations, report the exit to the owner at once."""
        if self.exit_reason is not None or self.mailbox.closed:
            return
        self.request_stop(detail, close=True)
        if not self.running:
            self.on_exit(self, ExitReason(ExitKind.SHUTDOWN, None, detail))

    async def stop(self, detail: str) -> ExitReason:
        """Stop for good, cancelling after ``shutdown_timeout``; return the exit reason."""
        self._refuse_own_task("stop")
        self.request_final_stop(detail)
        if self.running:
            await self.await_end()
        return await self.wait()

    async def stop_incarnation(self, detail: str) -> None:
        """Stop the incarnation but keep the ref and mailbox (a restart follows)."""
        self.request_stop(detail, close=False)
        if self.running:
            await self.await_end()

    async def await_end(self) -> None:
        """Wait for the incarnation to end, cancelling it after ``shutdown_timeout``."""
        if self._ended_event is None:
            self._ended_event = anyio.Event()
        ended = self._ended_event
        timeout = self.shutdown_timeout
        if math.isinf(timeout):
            await ended.wait()
            return
        if timeout <= 0:  # no grace: cancelled at once
            self.cancel(
                ExitReason(
                    ExitKind.CANCELLED, None, f"cancelled at once on a stop ({self.stop_detail})"
                )
            )
            await ended.wait()
            return
        deadline = self.clock.now() + timeout

        async def expire() -> None:
            await self.clock.sleep_until(deadline)
            if not ended.is_set():
                self.cancel(
                    ExitReason(
                        ExitKind.TIMEOUT,
                        None,
                        f"still running {timeout} s after a stop request "
                        f"({self.stop_detail}), so it was cancelled",
                    )
                )

        async with anyio.create_task_group() as tg:
            tg.start_soon(expire)
            await ended.wait()
            tg.cancel_scope.cancel()

    def cancel(self, reason: ExitReason) -> None:
        """Cancel the incarnation's task (or, for an incarnation on a thread with no loop,
        ask it to stop); it exits with ``reason``."""
        if self._cancel is None:
            self._cancel = reason
        if self._scope is not None:
            self._scope.cancel()
        elif self.canceller is not None:
            self.canceller(reason)

    def crash(self, exc: BaseException) -> None:
        """Make the incarnation's receive loop raise ``exc`` before its next message."""
        with self.dispatch_lock:
            if self.signal is None:
                self.signal = exc
            self.direct = None
        self.mailbox.wake()

    async def wait(self) -> ExitReason:
        self._refuse_own_task("wait")
        if self.exit_reason is None:
            if self._exit_event is None:
                self._exit_event = anyio.Event()
            await self._exit_event.wait()
        else:
            await checkpoint()
        assert self.exit_reason is not None
        return self.exit_reason

    # -- receiving --------------------------------------------------------------------

    async def receive_loop(self, actor: Actor) -> None:
        receive = actor.receive
        is_async = type(actor)._actor_async_receive
        direct = None if is_async else receive
        mailbox = self.mailbox
        lock = self.dispatch_lock
        if self.waker is None:
            self.waker = LoopWaker()
        while True:
            if self.signal is not None:
                raise self.signal
            if self.stop_detail is not None:
                return
            try:
                with lock:
                    envelope = mailbox.get_nowait()
            except anyio.WouldBlock:
                with lock:
                    # A stop or crash request clears ``direct`` under the lock: set it
                    # only if none came meanwhile (they are checked again after the park).
                    if self.signal is None and self.stop_detail is None:
                        self.direct = direct
                try:
                    await mailbox.wait_readable()
                finally:
                    with lock:
                        self.direct = None
                continue
            except anyio.EndOfStream:
                return
            self._current = envelope
            reply = envelope.reply_to
            if is_async:
                try:
                    result = await receive(envelope.message)
                except Exception as exc:  # noqa: BLE001 (goes to the asker, or crashes)
                    if reply is None:
                        raise
                    reply.send(outcome.Error(exc))
                else:
                    if reply is not None:
                        reply.send(outcome.Value(result))
            else:
                with lock:  # one receive at a time, whichever thread calls it
                    try:
                        result = receive(envelope.message)
                    except Exception as exc:  # noqa: BLE001 (goes to the asker, or crashes)
                        if reply is None:
                            raise
                        reply.send(outcome.Error(exc))
                    else:
                        if reply is not None:
                            reply.send(outcome.Value(result))
            self._current = None
            if not is_async:
                with lock:
                    # Idle again with nothing queued: senders may dispatch directly while
                    # this task yields, instead of queueing behind the checkpoint (under
                    # load, one queued message would otherwise keep every later one queued).
                    if not mailbox and self.signal is None and self.stop_detail is None:
                        self.direct = direct
            await checkpoint()
            if not is_async:
                with lock:
                    self.direct = None

    def resume_direct(self, receive: Callable[[Any], Any] | None) -> None:
        """After an inline call: allow direct dispatch again if the actor is still idle.
        Call with ``dispatch_lock`` held."""
        if self.signal is None and self.stop_detail is None:
            if self.mailbox and self._dispatches_while_running():
                self.direct = receive
                self._drain()
            elif not self.mailbox:
                self.direct = receive

    def _crash_locked(self, exc: BaseException) -> None:
        """A tell raised: the actor crashes with ``exc``. Its receive loop raises it; an
        actor that receives while running has none, so its incarnation is cancelled with
        a crash as its exit reason."""
        if self.signal is not None:
            return
        self.signal = exc
        self.direct = None
        if self._dispatches_while_running():
            self.cancel(ExitReason(ExitKind.CRASHED, exc, repr(exc)))
        else:
            self.mailbox.wake()

    def _dispatches_while_running(self) -> bool:
        actor = self.actor
        return actor is not None and type(actor).receives_while_running and self.running

    def _drain(self) -> None:
        """Handle the queued messages of an actor that receives while running (it has no
        receive loop to do it), in order. Call with ``dispatch_lock`` held, ``direct`` set."""
        receive = self.direct
        if receive is None:
            return
        mailbox = self.mailbox
        while mailbox and self.direct is receive:
            envelope = mailbox.get_nowait()
            self.direct = None
            try:
                result = outcome.capture(receive, envelope.message)
                if envelope.reply_to is not None:
                    envelope.reply_to.send(result)
                elif isinstance(result, outcome.Error):
                    self._crash_locked(result.error)  # a failed tell crashes the actor
            finally:
                if self.signal is None and self.stop_detail is None:
                    self.direct = receive

    def _claim(self, receive: Callable[[Any], Any], *, wait: bool = False) -> bool:
        """Take the actor for one directly dispatched message: True, with ``dispatch_lock``
        held and ``direct`` cleared, if it is still idle; False (lock not held) if another
        thread is handling a message (unless ``wait``: then wait for it, it is short) or
        the actor got busy meanwhile."""
        lock = self.dispatch_lock
        if not lock.acquire(blocking=wait):
            return False
        if self.direct is not receive:
            lock.release()
            return False
        self.direct = None
        return True

    def dispatch_tell(self, receive: Callable[[Any], Any], message: Any) -> bool:
        """Handle a tell inline if the actor is idle; False if it was not (queue it)."""
        with critical():  # no signal lands between taking the lock and releasing it
            if not self._claim(receive):
                return False
            try:
                receive(message)
            except Exception as exc:  # noqa: BLE001 (crashes the actor)
                self._crash_locked(exc)
            finally:
                if self.signal is None:
                    self.resume_direct(receive)
                self.dispatch_lock.release()
        return True

    def dispatch_ask(
        self, receive: Callable[[Any], Any], message: Any, *, wait: bool = False
    ) -> outcome.Maybe[Any] | None:
        """Handle an ask inline if the actor is idle and return its outcome; None if it
        was not (queue it)."""
        with critical():  # no signal lands between taking the lock and releasing it
            if not self._claim(receive, wait=wait):
                return None
            try:
                return outcome.capture(receive, message)  # type: ignore[no-any-return]
            finally:
                self.resume_direct(receive)
                self.dispatch_lock.release()

    # -- sending ----------------------------------------------------------------------

    def post_nowait(self, envelope: Envelope) -> None:
        with self.dispatch_lock:
            try:
                self.mailbox.put_nowait(envelope)
            except anyio.ClosedResourceError:
                raise self.stopped_error(envelope.message) from None
            self.direct = None

    async def post(self, envelope: Envelope) -> None:
        try:
            self.post_nowait(envelope)
        except anyio.WouldBlock:
            pass
        else:
            await checkpoint()
            return
        try:
            await self.mailbox.put(envelope)
        except anyio.ClosedResourceError:
            raise self.stopped_error(envelope.message) from None
        with self.dispatch_lock:
            self.direct = None

    # -- sending from other threads -----------------------------------------------------

    def from_thread(
        self, message: Any, reply: _ThreadReply | None, *, inline: bool = True
    ) -> None:
        """From a thread other than the loop's: handle ``message`` inline if the actor is
        idle (and ``inline``), else queue it through the loop (without waiting for room)."""
        receive = self.direct
        actor = self.actor
        if (
            inline
            and receive is not None
            and actor is not None
            and actor.thread_dispatchable(message)
        ):
            if reply is None:
                if self.dispatch_tell(receive, message):
                    return
            else:
                result = self.dispatch_ask(receive, message, wait=True)
                if result is not None:
                    reply.send(result)
                    return
        waker = self.waker
        if waker is None or self.exit_reason is not None:
            raise self.stopped_error(message)
        envelope = Envelope(message, reply)  # type: ignore[arg-type]

        def post() -> None:
            with self.dispatch_lock:
                idle = self.direct  # queueing clears it; an idle actor gets it back below
                try:
                    self.post_nowait(envelope)
                except (ActorStopped, anyio.WouldBlock) as exc:
                    if reply is not None:
                        reply.send(outcome.Error(exc))
                    return
                if idle is not None and self._dispatches_while_running():
                    self.direct = idle
                    self._drain()

        if not waker.schedule(post):
            raise self.stopped_error(message)

    async def ask(self, message: Any, timeout: float | None) -> Any:
        # No yield before queueing: waiting for the reply is this call's checkpoint.
        await checkpoint_if_cancelled()
        reply = _Reply()
        envelope = Envelope(message, reply)
        if timeout is None:
            await self._post_ask(envelope)
            await reply.wait()
        else:
            with anyio.move_on_after(timeout):
                await self._post_ask(envelope)
                await reply.wait()
        result = reply.result
        if result is None:
            raise TimeoutError(
                f"actor {self.name!r} did not answer {type(message).__name__} within {timeout} s"
            )
        return result.unwrap()

    async def _post_ask(self, envelope: Envelope) -> None:
        try:
            self.post_nowait(envelope)
        except anyio.WouldBlock:
            await self.post(envelope)

    def stopped_error(self, message: Any) -> ActorStopped:
        what = type(message).__name__
        if self.exit_reason is not None:
            why = f"it has exited ({self.exit_reason})"
        else:
            why = f"it is stopping ({self.stop_detail})"
        return ActorStopped(f"cannot send {what} to actor {self.name!r}: {why}")

    def _refuse_own_task(self, method: str) -> None:
        if self.running and self._task is current_task():
            raise RuntimeError(
                f"ActorRef.{method}() of actor {self.name!r} was awaited in that actor's own "
                "task, where it would wait for itself forever; a process actor stops by "
                "returning from run(), anything else must stop it from another task"
            )

    def foreign_thread_error(self) -> ForeignThreadError:
        return ForeignThreadError(
            f"ActorRef {self.name!r} was used from thread {threading.get_ident()}, but its "
            f"actor runs on the event loop of thread {self.thread}; send from that loop's "
            "thread, or hop there first (e.g. through actors.global_loop() or anyio.from_thread)"
        )


def _stopped_before(name: str, message: Any, why: str) -> ActorStopped:
    return ActorStopped(f"actor {name!r} stopped before handling {type(message).__name__}: {why}")


def _fail_asks(name: str, envelopes: list[Envelope], why: str) -> None:
    for envelope in envelopes:
        if envelope.reply_to is not None:
            envelope.reply_to.send(outcome.Error(_stopped_before(name, envelope.message, why)))
