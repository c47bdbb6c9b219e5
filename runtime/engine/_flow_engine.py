"""The flow run engine: one flow run, from its parameters to its final state.

Written once, async; it runs in the caller's loop for an async flow and on the global
loop for a sync one (whose body runs back on the caller's thread). Each attempt gets a
supervisor for the task runs it submits, and ends only after they have all finished.

The body runs inside a cancel scope that three things may cancel: the flow's timeout
(Failed ``TimedOut``), a cancellation of the run (``cancel_flow_run`` from any thread or
process: Cancelled) and SIGTERM (Cancelled if a cancellation was requested, else
Crashed). Anything else that interrupts the run (an interrupt, a foreign cancellation)
makes it Crashed before it propagates.
"""

from __future__ import annotations

import logging
import threading
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable

import anyio

from actors import ActorRef

from ..core import _states as S
from ..core._exceptions import (
    CancelledRun,
    EngineSignal,
    FlowRunTimeoutError,
    Pause,
    TerminationSignal,
    UpstreamTaskError,
)
from ..core._models import FlowRun, FlowRunPolicy, TaskRun
from ..core._names import generate_run_name
from ..core._parameters import resolve_run_name, serialize_parameters
from ..core._states import State, now_utc, replace
from ..orchestration._orchestrator import (
    CreateRun,
    EndTaskRunsOf,
    ProposeState,
    Transition,
    UpdateRun,
)
from ..orchestration._owners import process_owner
from ..orchestration._ownership import active_flow_runs
from ..orchestration._store_actor import Commit
from ..orchestration._waiting import wait_before_proposing_again
from ..store._results import ResultSettings, persist_result
from ._body import CANCEL, TIMEOUT, Body, SyncBody, SyncTarget
from ._context import FlowRunContext, _flow_run_context, _task_run_context, current_tags
from ._drivers import LoopDriver
from ._hooks import run_hooks
from ._beside import run_beside
from ._interrupt import BodyInterrupted
from ._logging import _log_prints, flow_run_logger, install_print_patch
from ._outcomes import exception_to_crashed_state, exception_to_failed_state, return_value_to_state
from ._resolve import resolve_futures_to_states, resolve_parameters, wait_for_upstreams
from ._result_settings import result_settings_for_flow
from ._run_actors import FlowRunActor, RunChanged, attach, tell
from ._signals import interruptible
from ._specs import FlowSpec
from ._submission import TaskRunHost

if TYPE_CHECKING:
    from ..orchestration._runtime import Runtime

__all__ = ["FlowRunEngine"]

_NOT_SET: Any = object()
_cancelled_exc = anyio.get_cancelled_exc_class

EXTERNAL_POLL_SECONDS = 2.0
"""How often a running flow checks a store shared with other processes for a cancel."""


class _Interrupted(Exception):
    """The body was stopped by a cancellation of the run or by SIGTERM."""


class FlowRunEngine:
    """Drives one flow run; see the module docstring.

    Args:
        flow: the flow.
        parameters: the call's bound parameters (not yet validated).
        wait_for: futures a subflow waits for before it starts.
        runtime: the runtime whose orchestrator decides the run's states.
        target: where the sync body and sync hooks run.
        parent: the enclosing flow run's context, for a subflow.
        existing: a stored flow run to run again (resuming a suspended or crashed run).
        body: what to call instead of the flow's function with its ``(args, kwargs)``
            (a generator flow's pump; see :mod:`runtime.engine._generators`).
    """

    def __init__(
        self,
        flow: FlowSpec,
        parameters: dict[str, Any],
        wait_for: Any,
        runtime: Runtime,
        target: SyncTarget,
        parent: FlowRunContext | None,
        existing: FlowRun | None = None,
        body: Body | None = None,
    ) -> None:
        self.flow = flow
        self.parameters = parameters
        self.wait_for = wait_for
        self.runtime = runtime
        self.target = target
        self.driver = LoopDriver(runtime, target)
        self.parent = parent
        self._existing = existing is not None
        self.flow_run = existing or FlowRun(
            name=generate_run_name(),
            flow_name=flow.name,
            flow_version=flow.version,
            parameters=serialize_parameters(parameters),
            tags=sorted(current_tags()),
            empirical_policy=FlowRunPolicy(
                retries=flow.retries, retry_delay=flow.retry_delay_seconds
            ),
            entrypoint=flow.entrypoint,
            owner=process_owner(),
        )
        self.logger = flow_run_logger(self.flow_run, flow)
        self._orchestrator = runtime.orchestrator
        self._return_value: Any = _NOT_SET
        self._raised: BaseException | None = None
        self._named = False
        self._body_scope: anyio.CancelScope | None = None
        self._sync_body: SyncBody | None = None
        self._interrupt: BaseException | None = None
        self._timed_out = False  # this attempt's body hit the flow's timeout
        self.ref: ActorRef | None = None  # the run's actor, once it runs
        self._thread: int | None = None  # the thread of its loop
        self._cancel_message: str | None = None
        self._settings: ResultSettings | None = None
        self._body = body
        self._context: FlowRunContext | None = None
        self._hooks_ran: set[Any] = set()  # ids of the states whose hooks ran
        self._woken: anyio.Event | None = None  # set to cut a wait before Running short

    def _set_run(self, flow_run: FlowRun) -> None:
        """Follow the run's newest snapshot (and let its context follow it); older ones,
        arriving late from another thread, are ignored."""
        if flow_run.version < self.flow_run.version:
            return
        self.flow_run = flow_run
        if self._context is not None:
            self._context.flow_run = flow_run

    # -- the run ----------------------------------------------------------------------

    async def run(self) -> State[Any]:
        """Run the flow run to a final (or paused/suspended) state and return it, as a
        :class:`~runtime.engine._run_actors.FlowRunActor` attached to the calling flow
        run's actor (a subflow on the same loop) or to the runtime's root supervisor.

        Raises:
            TerminationSignal: the process received SIGTERM (after the run was recorded).
            BaseException: anything that is not an ``Exception`` (an interrupt, a foreign
                cancellation, ``SystemExit``...) after the run was marked Crashed.
        """
        parent = self.parent
        if (
            parent is not None
            and parent.actor is not None
            and parent.actor_thread == threading.get_ident()
        ):
            supervisor = parent.actor
        else:
            supervisor = self.runtime.root
        actor = FlowRunActor(self)
        await attach(supervisor, actor.name, actor)
        if actor.state is None:  # its supervisor stopped it: the run ended as _crash said
            return self.flow_run.state  # type: ignore[return-value]
        return actor.state  # type: ignore[no-any-return]

    async def work(self, ref: ActorRef) -> State[Any]:
        """The flow run's work, as its actor ``ref`` (see :meth:`run`)."""
        self.ref = ref
        self._thread = threading.get_ident()
        await self._create()
        active_flow_runs.add(self.flow_run.id)
        backend = self.runtime.backend
        assert backend is not None
        unsubscribe = backend.subscribe(self.flow_run.id, self._on_own_state)
        try:
            with interruptible(self):
                state = await self._run()
        except (Exception, EngineSignal):
            raise
        except BaseException as exc:
            await self._crash(exc)
            raise
        finally:
            unsubscribe()
            active_flow_runs.discard(self.flow_run.id)
        if isinstance(self._interrupt, TerminationSignal):
            raise self._interrupt
        return state

    async def _create(self) -> None:
        if self._existing:
            self._set_run(
                await self._ask(UpdateRun("flow", self.flow_run.id, {"owner": process_owner()}))
            )
            self.logger.info("Resuming flow run %r for flow %r", self.flow_run.name, self.flow.name)
            return
        if self.parent is not None:
            parent_run = self.parent.flow_run
            dynamic_key = self.parent.next_dynamic_key(self.flow.flow_key)
            parent_task = TaskRun(
                name=f"{self.flow.name}-{dynamic_key[:3]}",
                flow_run_id=parent_run.id,
                task_key=self.flow.flow_key,
                dynamic_key=dynamic_key,
                task_version=self.flow.version,
            )
            await self._ask(CreateRun("task", parent_task, S.Pending()))
            self.flow_run = self.flow_run.model_copy(update={"parent_task_run_id": parent_task.id})
        self._set_run((await self._ask(CreateRun("flow", self.flow_run, S.Pending()))).run)
        if self.logger.isEnabledFor(logging.INFO):
            kind = "subflow run" if self.parent is not None else "flow run"
            self.logger.info(
                "Beginning %s %r for flow %r", kind, self.flow_run.name, self.flow.name
            )

    async def _run(self) -> State[Any]:
        parameters = self.parameters
        if self.parent is not None:
            try:
                parameters = await resolve_parameters(parameters)
                await wait_for_upstreams(self.wait_for)
            except UpstreamTaskError as exc:
                # The subflow never starts: Pending named NotReady, and its call raises.
                self._raised = exc
                await self._propose(
                    S.Pending(name="NotReady", message=str(exc), data=exc), force=True
                )
                return await self._finish()
        if self.flow.should_validate_parameters:
            try:
                parameters = self.flow.validate_parameters(parameters)
            except Exception as exc:
                message = "Validation of flow parameters failed with error:"
                self.logger.error("%s %s", message, exc)
                self._raised = exc
                await self._propose(exception_to_failed_state(exc, message))
                return await self._finish()
        self.parameters = parameters
        try:
            self._settings = result_settings_for_flow(self.flow, self.parent)
        except Exception as exc:  # a bad result option: the run cannot start
            self.logger.error("Flow run could not start: %s", exc)
            self._raised = exc
            await self._propose(exception_to_failed_state(exc, "Flow run could not start:"))
            return await self._finish()

        state = await self._enter_running()
        if state.is_running() and self.flow.on_running_hooks:
            await self._hooks(self.flow.on_running_hooks, state)
        while state.is_running():
            terminal = await self._attempt(parameters)
            if terminal is None:  # the body left because the run was suspended
                return await self._finish()
            state = await self._finish_attempt(terminal)
            if state.is_scheduled():
                state = await self._enter_running()
        await self._final_hooks(state)
        return await self._finish()

    async def _enter_running(self) -> State[Any]:
        while True:
            if self._interrupt is not None:
                # Stopped while it waited (a retry's delay, a paused parent): it does not
                # run again but ends as its interruption says (Cancelled, or Crashed).
                await self._propose(self._interrupted_state())
                return self.flow_run.state  # type: ignore[return-value]
            transition = await self._propose(S.Running())
            if transition.status != "WAIT":
                return self.flow_run.state  # type: ignore[return-value]
            await self._wait_to_propose_again(transition)

    async def _wait_to_propose_again(self, transition: Transition) -> None:
        """Wait as the WAIT says, cut short by a cancellation or SIGTERM (requested here or,
        on a store shared between processes, noticed in another process's writes)."""
        woken = self._woken = anyio.Event()
        backend = self.runtime.backend

        async def wait() -> None:
            async with anyio.create_task_group() as tg:

                async def sleep() -> None:
                    await wait_before_proposing_again(self.runtime, transition)
                    tg.cancel_scope.cancel()

                tg.start_soon(sleep)
                await woken.wait()
                tg.cancel_scope.cancel()

        try:
            if backend is not None and backend.shared_across_processes:
                await run_beside(self._watch_other_processes, wait)
            else:
                await wait()
        finally:
            self._woken = None

    async def _attempt(self, parameters: dict[str, Any]) -> State[Any] | None:
        flow = self.flow
        self._return_value = _NOT_SET
        self._raised = None
        log_prints = (
            flow.log_prints
            if flow.log_prints is not None
            else (self.parent.log_prints if self.parent is not None else False)
        )
        async with self._task_run_host() as task_host:
            task_runner = flow.task_runner.duplicate()
            ctx = self._context = FlowRunContext(
                flow=flow,
                flow_run=self.flow_run,
                parameters=parameters,
                log_prints=log_prints,
                start_time=now_utc(),
                runtime=self.runtime,
                task_runner=task_runner,
                task_host=task_host,
                actor=self.ref,
                actor_thread=self._thread,
                result_settings=self._settings,
            )
            flow_token = _flow_run_context.set(ctx)
            task_token = _task_run_context.set(None)
            prints_token = _log_prints.set(log_prints)
            if log_prints:
                install_print_patch()
            try:
                await self._resolve_name(parameters)
                result = await self._call_body(parameters)
            except _Interrupted:
                ctx.abandoned = CancelledRun(
                    f"Flow run {self.flow_run.name!r} was stopped; its body can no longer start "
                    "task runs or subflow runs."
                )
                return self._interrupted_state()
            except TimeoutError as exc:
                message = (
                    f"Flow run exceeded timeout of {flow.timeout_seconds:g} second(s)"
                    if isinstance(exc, FlowRunTimeoutError)
                    else f"Flow run failed due to timeout: {exc!r}"
                )
                self.logger.error(message)
                self._raised = exc
                # The run's time is up: its task runs still running are stopped, not awaited.
                self._timed_out = isinstance(exc, FlowRunTimeoutError)
                if self._timed_out:
                    ctx.abandoned = FlowRunTimeoutError(
                        f"Flow run {self.flow_run.name!r} timed out; its body can no longer "
                        "start task runs or subflow runs."
                    )
                return S.Failed(data=exc, message=message, name="TimedOut")
            except Pause:
                return None
            except Exception as exc:
                self.logger.error("Encountered exception during execution: %r", exc, exc_info=True)
                self._raised = exc
                return exception_to_failed_state(exc, "Flow run encountered an exception:")
            finally:
                _log_prints.reset(prints_token)
                _task_run_context.reset(task_token)
                _flow_run_context.reset(flow_token)
        resolved = await resolve_futures_to_states(result)
        self._return_value = resolved
        state = return_value_to_state(resolved)
        settings = self._settings
        if (
            state.is_completed()
            and not isinstance(resolved, State)
            and settings
            and settings.persist
        ):
            try:
                state = replace(state, data=persist_result(resolved, settings))
            except Exception as exc:
                self.logger.error("Could not persist the flow run's result: %s", exc)
                self._raised = exc
                return exception_to_failed_state(exc, "Flow run encountered an exception:")
        return state

    async def _call_body(self, parameters: dict[str, Any]) -> Any:
        flow = self.flow
        args, kwargs = flow.signature.to_call(parameters)
        timeout = flow.timeout_seconds
        backend = self.runtime.backend
        sync = self._body is None and not flow.is_async
        # An async body's timeout is a cancel scope; a sync body's is raised into its thread
        # (SyncBody), which the scope only abandons if it does not stop.
        deadline = float("inf") if timeout is None or sync else anyio.current_time() + timeout
        scope = anyio.CancelScope(deadline=deadline)

        async def body() -> Any:
            with scope:
                self._body_scope = scope
                if self._interrupt is not None:
                    scope.cancel()
                try:
                    if self._body is not None:
                        return await self._body(args, kwargs)
                    if sync:
                        sync_body = self._sync_body = SyncBody(
                            self.target, f"Flow run {self.flow_run.name!r}", self._abandon
                        )
                        if self._interrupt is not None:
                            sync_body.interrupt(CANCEL)
                        return await sync_body.run(flow.fn, args, kwargs, timeout)
                    return await flow.fn(*args, **kwargs)
                except TerminationSignal as exc:
                    # Raised by the SIGTERM handler inside a sync body on the main thread.
                    self.interrupt(exc)
                    raise _Interrupted from None
                except BodyInterrupted:
                    reason = None if self._sync_body is None else self._sync_body.reason
                    if reason is None:
                        raise  # not this run's: the run that called it is being stopped
                    if reason == TIMEOUT:
                        raise FlowRunTimeoutError(
                            f"Scope timed out after {timeout} second(s)."
                        ) from None
                    raise _Interrupted from None
                finally:
                    self._body_scope = None
                    self._sync_body = None

        if backend is not None and backend.shared_across_processes:
            result = await run_beside(self._watch_other_processes, body)
        else:
            result = await body()
        if scope.cancelled_caught:
            if self._interrupt is not None:
                raise _Interrupted
            raise FlowRunTimeoutError(f"Scope timed out after {timeout} second(s).")
        return result

    # -- stopping the body from outside -----------------------------------------------

    def _on_own_state(self, run: Any, state: State[Any]) -> None:
        """Store notification (any thread, or this process polling others' changes): tell
        the run's actor."""
        tell(self.ref, self._thread, RunChanged(run))

    def observe(self, run: FlowRun) -> None:
        """:class:`RunChanged`: follow the run; a cancel request stops the body."""
        self._set_run(run)
        state = self.flow_run.state
        if state is not None and state.is_cancelling():
            self.interrupt(None)

    def cancel(self, message: str | None) -> None:
        """:class:`CancelRun`: stop the body; the run ends Cancelled with ``message``."""
        if self._cancel_message is None:
            self._cancel_message = message or "The flow run was cancelled."
        self.interrupt(None)

    async def _watch_other_processes(self) -> None:
        """For a store shared between processes, notice a cancel another process made."""
        backend = self.runtime.backend
        assert backend is not None
        while True:
            await anyio.sleep(EXTERNAL_POLL_SECONDS)
            await anyio.to_thread.run_sync(backend.sync_external)  # notifies _on_own_state

    def interrupt(self, signal: TerminationSignal | None) -> None:
        """Stop the body: for a cancellation (``signal`` None) or SIGTERM. Call on the
        engine's loop."""
        if self._interrupt is None or isinstance(signal, TerminationSignal):
            self._interrupt = signal or _CANCEL
        if self._woken is not None:
            self._woken.set()  # it waits to propose Running again: it will not
        if self._sync_body is not None:
            self._sync_body.interrupt(CANCEL)  # raised into its thread; abandoned if stuck
        elif self._body_scope is not None:
            self._body_scope.cancel()

    def _abandon(self, reason: Any) -> None:
        """The body is being stopped (any thread): from now on it may start no new run,
        even if it swallows the interruption and goes on."""
        ctx = self._context
        if ctx is None or ctx.abandoned is not None:
            return
        if reason == TIMEOUT:
            ctx.abandoned = FlowRunTimeoutError(
                f"Flow run {self.flow_run.name!r} timed out; its body can no longer start "
                "task runs or subflow runs."
            )
        else:
            ctx.abandoned = CancelledRun(
                f"Flow run {self.flow_run.name!r} was stopped; its body can no longer start "
                "task runs or subflow runs."
            )

    def _interrupted_state(self) -> State[Any]:
        state = self.flow_run.state
        cancelling = state is not None and state.is_cancelling()
        if isinstance(self._interrupt, TerminationSignal) and not cancelling:
            self.logger.error("Crash detected! Execution was aborted by a termination signal.")
            return S.Crashed(
                message="Execution was aborted by a termination signal.", data=self._interrupt
            )
        self.logger.info("Flow run was cancelled.")
        if cancelling and state.message:  # type: ignore[union-attr]
            message = state.message  # type: ignore[union-attr]
        else:
            message = self._cancel_message or "The flow run was cancelled."
        return S.Cancelled(message=message)

    # -- finishing --------------------------------------------------------------------

    async def _resolve_name(self, parameters: dict[str, Any]) -> None:
        if self._named or self.flow.flow_run_name is None:
            return
        name = resolve_run_name(self.flow.flow_run_name, parameters, "flow_run_name")
        self._set_run(await self._ask(UpdateRun("flow", self.flow_run.id, {"name": name})))
        self.logger = flow_run_logger(self.flow_run, self.flow)
        self._named = True

    async def _finish_attempt(self, terminal: State[Any]) -> State[Any]:
        await self._propose(terminal)
        state: State[Any] = self.flow_run.state  # type: ignore[assignment]
        if state.is_scheduled():
            self.logger.info(
                "Received non-final state %r when proposing final state %r and will attempt "
                "to run again...",
                state.name,
                terminal.name,
            )
        return state

    async def _final_hooks(self, state: State[Any]) -> None:
        """Run the hooks of a final (or cancelling) state, at most once per state: a signal
        landing in a hook, or a crash after them, never runs them again."""
        if state.id in self._hooks_ran:
            return
        self._hooks_ran.add(state.id)
        flow = self.flow
        if state.is_failed():
            hooks = flow.on_failure_hooks
        elif state.is_completed():
            hooks = flow.on_completion_hooks
        elif state.is_cancelling() or state.is_cancelled():
            hooks = flow.on_cancellation_hooks
        elif state.is_crashed():
            hooks = flow.on_crashed_hooks
        else:
            return
        if hooks:
            await self._hooks(hooks, state)

    async def _hooks(self, hooks: list[Callable[..., Any]], state: State[Any]) -> None:
        await run_hooks(hooks, (self.flow, self.flow_run, state), state, self.logger, self.driver)

    async def _crash(self, exc: BaseException) -> None:
        with anyio.CancelScope(shield=True):
            if isinstance(exc, TerminationSignal) or isinstance(self._interrupt, TerminationSignal):
                if isinstance(exc, TerminationSignal):
                    self._interrupt = exc
                state = self._interrupted_state()
            elif isinstance(exc, (_cancelled_exc(), BodyInterrupted)) and (
                self._cancelled_from_above()
            ):
                # A cancellation stopped it: the parent's cancel scope for an async subflow,
                # the parent body's interruption for a sync one on that body's thread.
                state = S.Cancelled(message="The parent flow run was cancelled.")
            else:
                state = exception_to_crashed_state(exc)
                self.logger.error("Crash detected! %s", state.message)
                self.logger.debug("Crash details:", exc_info=exc)
            current = self.flow_run.state
            if current is None or not current.is_final():
                await self._propose(state)
            await self._final_hooks(self.flow_run.state)  # type: ignore[arg-type]
            await self._finish()

    def _cancelled_from_above(self) -> bool:
        """Whether this run (or the flow run above it) is being cancelled."""
        runs = [self.flow_run] + ([self.parent.flow_run] if self.parent is not None else [])
        for run in runs:
            state = run.state
            if state is not None and (state.is_cancelling() or state.is_cancelled()):
                return True
        return False

    async def _finish(self) -> State[Any]:
        """Log the outcome and make the run's state durable before the call returns; a
        crashed run's task runs that no engine ended (a signal stopped theirs outside its
        crash handling) end Crashed too."""
        state: State[Any] = self.flow_run.state  # type: ignore[assignment]
        if state.is_crashed():
            with anyio.CancelScope(shield=True):
                await self._ask(EndTaskRunsOf(self.flow_run.id, S.Crashed(message=_ORPHANED)))
        if state.is_paused():
            self.logger.info("Finished in state %s", state)
        else:
            level = logging.INFO if state.is_completed() else logging.ERROR
            if self.logger.isEnabledFor(level):
                self.logger.log(level, "Finished in state %s", state)
        backend = self.runtime.backend
        store = self.runtime.store
        if store is not None and backend is not None and backend.has_pending_writes():
            with anyio.CancelScope(shield=True):
                await store.ask(Commit())
        return state

    def result(self) -> Any:
        """Return what a call of the flow returns: its result, or raise its exception."""
        value = self._return_value
        state: State[Any] = self.flow_run.state  # type: ignore[assignment]
        # A returned collection of run states may have failed the run (e.g. it holds a
        # failed future): then the call raises like any failed run, not return the list.
        failed = state.is_final() and not state.is_completed()
        if value is not _NOT_SET and not isinstance(value, State) and not failed:
            return value
        if self._raised is not None and not (state.is_cancelled() or state.is_crashed()):
            raise self._raised  # the failed attempt's own exception, not a later cancel's
        return state.result()

    # -- talking to the orchestrator --------------------------------------------------

    async def _ask(self, message: Any) -> Any:
        return await self._orchestrator.ask(message)  # type: ignore[union-attr]

    async def _propose(self, state: State[Any], *, force: bool = False) -> Transition:
        transition: Transition = await self._ask(
            ProposeState("flow", self.flow_run.id, state, force)
        )
        self._set_run(transition.run)
        return transition

    # -- submitted task runs ----------------------------------------------------------

    @asynccontextmanager
    async def _task_run_host(self) -> AsyncIterator[TaskRunHost]:
        """The host of the task runs this attempt submits; on the way out, wait for every
        one of them to finish (or, after an interruption, stop them), then stop it."""
        name = f"flow-run-{self.flow_run.id}-{self.flow_run.run_count}"
        host = TaskRunHost(self.runtime, name, self.flow.task_runner)
        interrupted = False
        self._timed_out = False
        try:
            yield host
        except BaseException as exc:
            # An interrupt or a cancellation: stop the task runs rather than wait for them.
            interrupted = not isinstance(exc, Exception)
            raise
        finally:
            interrupted = interrupted or self._interrupt is not None or self._timed_out
            with anyio.CancelScope(shield=True):
                if not interrupted:
                    await host.wait_idle()
                await host.stop()


class _Cancel(BaseException):
    """The reason recorded when a run is interrupted by a cancellation request."""


_CANCEL = _Cancel()

_ORPHANED = "Its flow run crashed before this task run finished."
