"""The task run engine: one task run, from its inputs to its final state.

Written once, async. Every task run is a :class:`~runtime.engine._run_actors.TaskRunActor`:
a called one attached to its flow run's actor and run in the caller (:func:`run_called`),
a submitted one spawned under its flow run attempt's supervisor (:func:`run_submitted`).
It only *proposes* states; the orchestrator decides.
"""

from __future__ import annotations

import logging
import threading
from functools import partial
from typing import TYPE_CHECKING, Any, Callable

import anyio

from ..core import _states as S
from ..core._exceptions import EngineSignal, TaskRunTimeoutError, UpstreamTaskError
from ..core._ids import new_id
from ..core._models import TaskRun, TaskRunInput, new_task_run_record
from ..core._parameters import resolve_run_name
from ..core._states import (
    ResultHandle,
    State,
    StateDetails,
    now_utc,
    replace,
    replace_details,
    run_details,
    state_exception,
)
from ..orchestration._orchestrator import (
    CreateRun,
    ProposeState,
    Transition,
    UpdateRun,
    _as_datetime,
)
from ..store._backend import CacheRecord
from ..store._results import (
    ResultSettings,
    keep_result,
    persist_result,
    refresh_cache_by_default,
)
from ._body import Body
from ._context import (
    FlowRunContext,
    TaskRunContext,
    _flow_run_context,
    _task_run_context,
    current_tags,
)
from ._drivers import Driver, InlineRefused, ThreadDriver, drive
from ._interrupt import BodyInterrupted
from ._hooks import run_hooks
from ._logging import RunLogger, _log_prints, install_print_patch, task_run_logger
from ._outcomes import (
    exception_to_crashed_state,
    exception_to_failed_state,
    is_cancellation,
    return_value_to_state,
)
from ._resolve import collect_upstreams, resolve_parameters, wait_for_upstreams
from ._result_settings import result_settings_for_task, task_cache_key
from ._run_actors import TaskRunActor, attach, attach_from_thread
from ._specs import TaskSpec
from ._transactions import Transaction, get_transaction

if TYPE_CHECKING:
    from ..orchestration._runtime import Runtime
    from ._futures import TaskRunFuture

__all__ = ["TaskRunEngine", "create_task_run", "new_task_run", "run_called", "run_submitted"]

_RECORD_ROLLBACK_TIMEOUT = 30.0  # seconds a rollback in another thread waits for the record
_task_runs_logger = logging.getLogger("stageflow.task_runs")  # what every run logger wraps


def new_task_run(
    task: TaskSpec,
    flow_ctx: FlowRunContext | None,
    parameters: dict[str, Any],
    wait_for: Any = None,
) -> TaskRun:
    """Build the record of a new task run of ``task`` (not yet stored)."""
    if flow_ctx is not None:
        dynamic_key = flow_ctx.next_dynamic_key(task.task_key)
        flow_run_id = flow_ctx.flow_run.id
        flow_run_count = flow_ctx.flow_run.run_count
    else:
        dynamic_key = new_id().hex
        flow_run_id = None
        flow_run_count = 0
    inputs: dict[str, list[TaskRunInput]] = {}
    for name, value in parameters.items():
        upstreams = collect_upstreams(value) if not isinstance(value, (int, str, float)) else ()
        inputs[name] = [_as_input(item) for item in upstreams]
    if wait_for:
        inputs["wait_for"] = [_as_input(item) for item in collect_upstreams(list(wait_for))]
    tags = task.tags | current_tags() if task.tags or current_tags() else task.tags
    return new_task_run_record(
        name=f"{task.name}-{dynamic_key[:3]}",
        flow_run_id=flow_run_id,
        task_key=task.task_key,
        dynamic_key=dynamic_key,
        task_version=task.version,
        empirical_policy=task.run_policy,
        tags=sorted(tags),
        task_inputs=inputs,
        flow_run_run_count=flow_run_count,
    )


def _as_input(item: Any) -> TaskRunInput:
    run_id = getattr(item, "task_run_id", None)
    if run_id is None:
        run_id = item.state_details.task_run_id
    return TaskRunInput(input_type="task_run", id=run_id)


class TaskRunEngine:
    """Drives one task run; see the module docstring.

    Args:
        task: the task.
        task_run: its run record (stored already, in its first state).
        parameters: the call's parameters, possibly holding futures and states.
        wait_for: futures or states that must complete first.
        runtime: the runtime whose orchestrator decides the run's states.
        flow_ctx: the enclosing flow run's context, if any.
        driver: how the engine reaches the orchestrator, its body and its hooks (in an
            event loop, or on the calling thread).
        transaction: the transaction the run's own one is nested in (by default, the
            current one).
        future: the future of a submitted run, which follows the run's snapshots.
        body: what to call instead of the task's function with its ``(args, kwargs)``
            (a generator task's pump; see :mod:`runtime.engine._generators`).
    """

    def __init__(
        self,
        task: TaskSpec,
        task_run: TaskRun,
        parameters: dict[str, Any],
        wait_for: Any,
        runtime: Runtime,
        flow_ctx: FlowRunContext | None,
        driver: Driver,
        transaction: Transaction | None = None,
        future: TaskRunFuture[Any] | None = None,
        body: Body | None = None,
    ) -> None:
        self.task = task
        self.task_run = task_run
        self.parameters = parameters
        self.wait_for = wait_for
        self.runtime = runtime
        self.flow_ctx = flow_ctx
        self.driver = driver
        self._logger: RunLogger | None = None
        self._last_exception: BaseException | None = None
        self._transaction = Transaction(parent=transaction or get_transaction())
        self._settings: ResultSettings | None = None
        self._result: Any = None
        self._named = False  # task_run_name applied
        # Every state the engine builds links the run already: the orchestrator has nothing
        # to stamp on it (details are immutable, so all its states share this object).
        self._details = run_details(task_run.flow_run_id, task_run.id)
        self._running_details = self._details
        self._context: TaskRunContext | None = None
        self._future = future
        self._hooks_ran = False
        self._body = body
        self.cancel_requested: str | None = None  # the message of a CancelRun

    def request_cancel(self, message: str | None) -> None:
        """The run is being cancelled (a :class:`CancelRun` to its actor, which then
        cancels its incarnation): it ends Cancelled, with ``message``."""
        if self.cancel_requested is None:
            self.cancel_requested = message or "The task run was cancelled."

    def use_run(self, task_run: TaskRun) -> None:
        """Drive ``task_run`` (an earlier run found for a resumed flow) instead."""
        self._set_run(task_run)
        self._details = self._running_details = run_details(task_run.flow_run_id, task_run.id)
        self._logger = None

    def _set_run(self, task_run: TaskRun) -> None:
        """Follow the run's newest snapshot (and let its context and future follow it)."""
        self.task_run = task_run
        if self._context is not None:
            self._context.task_run = task_run
        if self._future is not None:
            self._future.task_run = task_run

    @property
    def logger(self) -> RunLogger:
        """The run's logger; built on first use, since most runs log nothing at the
        default level (building it formats two UUIDs)."""
        logger = self._logger
        if logger is None:
            flow_ctx = self.flow_ctx
            logger = self._logger = task_run_logger(
                self.task_run,
                self.task,
                flow_ctx.flow_run if flow_ctx else None,
                flow_ctx.flow if flow_ctx else None,
            )
        return logger

    # -- the run ----------------------------------------------------------------------

    async def run(self) -> State[Any]:
        """Run the task run to a final state (or NotReady) and return that state.

        Raises:
            BaseException: anything that is not an ``Exception`` (an interrupt, a foreign
                cancellation, ``SystemExit``...) after the run was marked Crashed.
        """
        try:
            return await self._run()
        except (Exception, EngineSignal):
            raise
        except BaseException as exc:
            self._roll_back_attempt()
            await self._crash(exc)
            raise

    async def _run(self) -> State[Any]:
        if _task_runs_logger.isEnabledFor(logging.INFO):
            self.logger.info("Created task run %r for task %r", self.task_run.name, self.task.name)
        if self.task_run.version == 0 and (self.wait_for or not _all_atoms(self.parameters)):
            await self._create()  # recorded Pending while it waits for its upstreams
        try:
            parameters = await resolve_parameters(self.parameters, self.driver.wait_for)
            await wait_for_upstreams(self.wait_for, self.driver.wait_for)
        except UpstreamTaskError as exc:
            # As in Prefect, the run stays Pending, named NotReady; the state carries the
            # error, so calling the task or resolving its future raises it.
            state = self.task_run.state
            await self._propose(
                S.Pending(name="NotReady", message=str(exc), data=exc),
                force=state is not None and state.is_pending(),
            )
            self._log_finished()
            return self.task_run.state  # type: ignore[return-value]
        self.parameters = parameters
        try:
            details = self._work_out_details(parameters)
            if details is not None:
                self._running_details = details
        except Exception as exc:  # a bad result option: the run cannot start, nor retry
            self._last_exception = exc
            failed = _not_retriable(exception_to_failed_state(exc, "Task run could not start"))
            state = await self._finish_attempt(failed)
        else:
            state = await self._enter_running(S.Running)
            while state.is_running():
                terminal = await self._attempt(parameters)
                if not terminal.is_completed():
                    self._roll_back_attempt()
                state = await self._finish_attempt(terminal)
                if state.is_scheduled():
                    state = await self._enter_running(S.Retrying)
            if state.is_completed() and state.name != "Cached":
                self._stage(state)
        await self._call_hooks(state)
        self._log_finished()
        return state

    def _work_out_details(self, parameters: dict[str, Any]) -> StateDetails | None:
        """Work out the run's result settings and cache key; return the details its
        Running proposals carry (the orchestrator looks the cache key up), if any.

        Raises:
            ConfigurationError: a result option is invalid.
        """
        task = self.task
        flow_ctx = self.flow_ctx
        settings = self._settings = result_settings_for_task(task, flow_ctx)
        if not settings.persist or task.is_generator:  # a cached result has no items
            return None
        try:
            key = task_cache_key(self._new_context(parameters), flow_ctx, settings)
        except Exception as exc:
            self.logger.error(
                "Error encountered when computing cache key - result will not be persisted: %s",
                exc,
            )
            key = None
        self._transaction.key = key
        refresh = (
            task.refresh_cache if task.refresh_cache is not None else refresh_cache_by_default()
        )
        if key is None:
            return None
        return replace_details(self._details, cache_key=key, refresh_cache=refresh)

    def _new_context(self, parameters: dict[str, Any]) -> TaskRunContext:
        return TaskRunContext(
            task=self.task,
            task_run=self.task_run,
            parameters=parameters,
            log_prints=_log_prints_for(self.task, self.flow_ctx),
            start_time=now_utc(),
            result_settings=self._settings,
        )

    async def _enter_running(self, make_state: Callable[..., State[Any]]) -> State[Any]:
        details = self._running_details
        while True:
            transition = await self._propose(make_state(state_details=details))
            if transition.status != "WAIT":
                return self.task_run.state  # type: ignore[return-value]
            await self.driver.wait(transition)

    async def _attempt(self, parameters: dict[str, Any]) -> State[Any]:
        task = self.task
        ctx = self._context = self._new_context(parameters)
        task_token = _task_run_context.set(ctx)
        # A submitted run's actor task does not inherit the flow body's context: give the
        # body its flow run's context (for get_run_logger(), FlowRunContext.get(), ...).
        flow_token = _flow_run_context.set(self.flow_ctx)
        prints_token = _log_prints.set(ctx.log_prints)
        if ctx.log_prints:
            install_print_patch()
        timeout = task.timeout_seconds
        transaction = self._transaction
        transaction_token = transaction.enter_task_body()
        try:
            if not self._named and task.task_run_name is not None:
                await self._resolve_name(parameters)
            args, kwargs = task.signature.to_call(parameters)
            result = await self._call_body(args, kwargs, timeout)
        except TimeoutError as exc:
            if isinstance(exc, TaskRunTimeoutError):
                message = f"Task run exceeded timeout of {timeout} second(s)"
            else:
                message = f"Task run failed due to timeout: {exc!r}"
            self.logger.error(message)
            self._last_exception = exc
            failed = S.Failed(data=exc, message=message, name="TimedOut")
            return await self._check_retriable(failed)
        except Exception as exc:
            self._last_exception = exc
            failed = exception_to_failed_state(exc, "Task run encountered an exception")
            return await self._check_retriable(failed)
        finally:
            transaction.leave_task_body(transaction_token)
            _log_prints.reset(prints_token)
            _task_run_context.reset(task_token)
            _flow_run_context.reset(flow_token)
        state = return_value_to_state(result, self._details)
        if state.is_failed():
            # A returned Failed state (built by the body, or aggregating failed runs) is
            # retried on the same terms as a raised exception: retry_condition_fn decides.
            self._last_exception = state_exception(state)
            state = await self._check_retriable(state)
        elif state.is_completed() and not isinstance(result, State):
            try:
                state = self._completed(result, state)
            except Exception as exc:
                self._last_exception = exc
                return exception_to_failed_state(exc, "Task run encountered an exception")
        return state

    async def _call_body(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None
    ) -> Any:
        if self._body is not None:  # a generator's pump, an async callable of (args, kwargs)
            return await self.driver.call_body(self._body, True, (args, kwargs), {}, timeout)
        return await self.driver.call_body(self.task.fn, self.task.is_async, args, kwargs, timeout)

    async def _resolve_name(self, parameters: dict[str, Any]) -> None:
        """Rename the run after ``task_run_name`` (a template or a callable), once; called
        inside the run's context, so a callable may use ``get_run_context()``.

        Raises:
            TypeError: the callable did not return a string.
            KeyError: the template names a parameter the task does not have.
        """
        assert self.task.task_run_name is not None
        name = resolve_run_name(self.task.task_run_name, parameters, "task_run_name")
        self._set_run(await self.driver.ask(UpdateRun("task", self.task_run.id, {"name": name})))
        self._logger = None  # rebuilt with the new name
        self._named = True

    def _completed(self, result: Any, state: State[Any]) -> State[Any]:
        """Persist the result when the run's settings say so; carry its cache details.

        Raises:
            ResultSerializationError: the result cannot be serialized.
        """
        self._result = result
        settings = self._settings
        if settings is None or not settings.persist:
            return state
        key = self._transaction.key
        data = persist_result(result, settings, key=key)
        if key is None:
            return replace(state, data=data)
        expiration = self.task.cache_expiration
        details = replace_details(
            state.state_details,
            cache_key=key,
            cache_expiration=None
            if expiration is None
            else _as_datetime(self.runtime.clock.now()) + expiration,
        )
        return replace(state, data=data, state_details=details)

    def _stage(self, state: State[Any]) -> None:
        """Stage the completed result in the run's transaction (which may commit at once)."""
        key = state.state_details.cache_key
        write = None
        backend = self.runtime.backend
        if key is not None and backend is not None:
            record = CacheRecord(key, state, state.state_details.cache_expiration)
            write = partial(backend.write_cache_record, record)
        task = self.task
        txn = self._transaction
        # Only a run staged in an enclosing transaction can be rolled back later.
        rolled_back = self._rolled_back_recorder() if txn.parent is not None else None
        txn.stage(
            self._result,
            on_commit=task.on_commit_hooks,
            on_rollback=task.on_rollback_hooks,
            write=write,
            rolled_back=rolled_back,
        )

    def _roll_back_attempt(self) -> None:
        """Roll back what the runs called in a failed attempt staged in its transaction;
        the next attempt starts a fresh one."""
        txn = self._transaction
        if txn.is_staged() or txn.is_committed():  # the run completed: not this one's to undo
            return
        txn.rollback()
        self._transaction = Transaction(txn.key, parent=txn.parent)

    def _rolled_back_recorder(self) -> Callable[[], None]:
        """Return what records the run as ``RolledBack`` (a COMPLETED state, as in Prefect)
        when its transaction rolls back, on whatever thread the rollback happens."""
        orchestrator = self.runtime.orchestrator
        assert orchestrator is not None
        message = ProposeState(
            "task",
            self.task_run.id,
            S.Completed(name="RolledBack", message="Task rolled back as part of transaction"),
            force=True,
        )

        def record() -> None:
            try:
                if self.runtime.is_local():
                    orchestrator.tell_nowait(message)  # at once if idle, else next
                else:
                    orchestrator.ask_from_thread(message, timeout=_RECORD_ROLLBACK_TIMEOUT)
            except Exception as exc:  # the runtime stopped: nothing can record it any more
                self.logger.debug("Could not record the rollback: %r", exc)

        return record

    async def _check_retriable(self, failed: State[Any]) -> State[Any]:
        """Let ``retry_condition_fn`` veto a retry of a failed attempt (raised or returned;
        a condition that raises vetoes it too); return ``failed``, marked not retriable if
        vetoed."""
        condition = self.task.retry_condition_fn
        if condition is None or self.task_run.run_count > self.task.retries:
            return failed
        try:
            verdict = await self.driver.call(condition, self.task, self.task_run, failed)
        except Exception:
            self.logger.error(
                "An error was encountered while running `retry_condition_fn` check %r for task %r",
                condition,
                self.task.name,
                exc_info=True,
            )
            verdict = False
        return failed if verdict else _not_retriable(failed)

    async def _finish_attempt(self, terminal: State[Any]) -> State[Any]:
        await self._propose(self._kept(terminal))
        state: State[Any] = self.task_run.state  # type: ignore[assignment]
        if terminal.is_failed():
            exc = self._last_exception
            if state.is_scheduled() or state.is_running():
                when = (
                    "immediately"
                    if state.is_running()
                    else f"{_seconds_until(state, self.runtime.clock.now()):g} second(s) from now"
                )
                self.logger.info(
                    "Task run failed with exception: %r - Retry %s/%s will start %s",
                    exc,
                    self.task_run.run_count
                    if state.is_scheduled()
                    else self.task_run.run_count - 1,
                    self.task.retries,
                    when,
                )
            elif state.is_failed():
                self.logger.error(
                    "Task run failed with exception: %r - Retries are exhausted", exc, exc_info=exc
                )
        return state

    def _kept(self, terminal: State[Any]) -> State[Any]:
        """``terminal`` with its data (a result not persisted, a failure's exception) kept
        in the store, when the store is shared between processes and the task does not
        say ``persist_result=False``: finished results are durable by default, so a resumed
        run does not redo this one and a worker's result reaches its submitter
        (:func:`~runtime.store._results.keep_result`; a value that cannot be serialized
        stays in memory only)."""
        data = terminal.data
        settings = self._settings
        if (
            data is None
            or isinstance(data, ResultHandle)
            or settings is None
            or self.task.persist_result is False
            or not (terminal.is_completed() or isinstance(data, BaseException))
        ):
            return terminal
        backend = self.runtime.backend
        if backend is None or not backend.shared_across_processes:
            return terminal
        kept = keep_result(data, settings)
        return terminal if kept is None else replace(terminal, data=kept)

    async def _call_hooks(self, state: State[Any]) -> None:
        """Run the hooks of the run's final state, at most once per run."""
        if self._hooks_ran:
            return
        self._hooks_ran = True
        task = self.task
        if state.is_failed():
            hooks = task.on_failure_hooks
        elif state.is_completed():
            hooks = task.on_completion_hooks
        else:
            return
        if hooks:
            await run_hooks(hooks, (task, self.task_run, state), state, self.logger, self.driver)

    async def _crash(self, exc: BaseException) -> None:
        """Record why the run stopped, unless it had finished already: a final state is
        never replaced (an interrupt landing in an ``on_completion`` hook leaves the run
        Completed)."""
        with self.driver.shielded():
            current = self.task_run.state
            if current is not None and current.is_final():
                return
            if self.cancel_requested is not None:
                self.logger.info("Task run was cancelled.")
                await self._propose(S.Cancelled(message=self.cancel_requested))
            elif (is_cancellation(exc) or isinstance(exc, BodyInterrupted)) and (
                self._cancelled_by_flow()
            ):
                # Its flow run's cancellation stopped it: a cancel scope for an async run,
                # the flow body's interruption for a sync run on that body's thread.
                await self._propose(S.Cancelled(message="The parent flow run was cancelled."))
            else:
                state = exception_to_crashed_state(exc)
                self.logger.error("Crash detected! %s", state.message)
                self.logger.debug("Crash details:", exc_info=exc)
                await self._propose(state)
            self._log_finished()

    def _cancelled_by_flow(self) -> bool:
        state = self.task_run.state
        if state is not None and state.is_cancelled():
            return True
        if self.flow_ctx is None:
            return False
        flow_state = self.flow_ctx.flow_run.state
        return flow_state is not None and (flow_state.is_cancelling() or flow_state.is_cancelled())

    def _log_finished(self) -> None:
        state = self.task_run.state
        if state is None:
            return
        level = logging.INFO if state.is_completed() else logging.ERROR
        if _task_runs_logger.isEnabledFor(level):
            message = f"Finished in state {state}"
            if state.is_pending() and state.name != "NotReady":
                message += (
                    "\nPlease wait for all submitted tasks to complete before exiting your "
                    "flow by calling `.wait()` on the future returned from your `.submit()` calls."
                )
            self.logger.log(level, message)

    async def _propose(self, state: State[Any], *, force: bool = False) -> Transition:
        """Propose ``state``; a run not recorded yet is recorded Pending with it, in one
        message."""
        if self.task_run.version == 0:
            return await self._create(state)
        transition: Transition = await self.driver.ask(
            ProposeState("task", self.task_run.id, state, force)
        )
        self._set_run(transition.run)
        return transition

    async def _create(self, then: State[Any] | None = None) -> Transition:
        pending = S.Pending(state_details=self._details)
        transition: Transition = await self.driver.ask(
            CreateRun("task", self.task_run, pending, then)
        )
        self._set_run(transition.run)
        return transition

    def result(self) -> Any:
        """Return what a call of the task returns: its result, or raise its exception.

        Raises:
            UpstreamTaskError: the run never started (NotReady): an upstream run did not
                complete; the upstream's exception is its cause.
            BaseException: the task's own exception, if it failed.
        """
        state: State[Any] = self.task_run.state  # type: ignore[assignment]
        return state.result()


_ATOMS = (int, float, str, bytes, bool, type(None))


def _all_atoms(parameters: dict[str, Any]) -> bool:
    """Whether no parameter can hold a future or a state (the common case)."""
    for value in parameters.values():
        if not isinstance(value, _ATOMS):
            return False
    return True


def _not_retriable(state: State[Any]) -> State[Any]:
    return replace(state, state_details=replace_details(state.state_details, retriable=False))


def _log_prints_for(task: TaskSpec, flow_ctx: FlowRunContext | None) -> bool:
    """A task's own ``log_prints`` wins; unset, it inherits the flow run's."""
    if task.log_prints is not None:
        return task.log_prints
    return flow_ctx.log_prints if flow_ctx is not None else False


def _seconds_until(state: State[Any], now: float) -> float:
    """Seconds from ``now`` (the runtime clock's reading, which decided the schedule) to
    the state's scheduled time."""
    scheduled = state.state_details.scheduled_time
    if scheduled is None:
        return 0.0
    return max(0.0, round(scheduled.timestamp() - now, 3))


async def create_task_run(
    driver: Driver,
    task_run: TaskRun,
    flow_ctx: FlowRunContext | None,
    *,
    reuse_completed: bool = True,
) -> tuple[TaskRun, State[Any] | None]:
    """Return the task run a run of this task drives, and its final state if there is
    nothing to run: the new, not yet recorded run (the engine records it Pending with its
    first proposal) and None.

    In a flow run that runs again (resumed after a suspension or a crash), the task run
    with the same task key and dynamic key is found instead: if it completed and its
    result can be read (and ``reuse_completed``: a generator's items are not kept, so it
    always runs again), return it with that state (nothing to run); else it runs again.
    """
    if flow_ctx is not None and flow_ctx.flow_run.empirical_policy.resuming:
        backend = driver.runtime.backend
        assert backend is not None
        previous = backend.find_task_run(
            flow_ctx.flow_run.id, task_run.task_key, task_run.dynamic_key
        )
        if previous is not None:
            state = previous.state
            if (
                reuse_completed
                and state is not None
                and state.is_completed()
                and state.data is not S.UNAVAILABLE
            ):
                return previous, state
            transition = await driver.ask(
                ProposeState("task", previous.id, S.Pending(), force=True)
            )
            return transition.run, None
    return task_run, None  # recorded by the engine, with its first proposal


async def run_submitted(engine: TaskRunEngine, future: TaskRunFuture[Any]) -> State[Any] | None:
    """Store and run a submitted task run (the work of its :class:`TaskRunActor`); its
    future gets a final state even on a crash.

    A body that raised ``KeyboardInterrupt``, ``SystemExit`` or another non-``Exception``
    left the run Crashed and its future holding that state: whoever waits on the future
    gets the exception. It does not go up to the supervisor, where it would tear down the
    whole runtime (the orchestrator with it) and leave the flow run hanging.
    """
    try:
        task_run, done = await create_task_run(engine.driver, engine.task_run, engine.flow_ctx)
        engine.use_run(task_run)
        if done is not None:
            future.set_final_state(done)
            return done
        state = await engine.run()
    except BaseException as exc:
        future.set_final_state(
            engine.task_run.state or S.Crashed(message="The task run never started.")
        )
        if isinstance(exc, (Exception, anyio.get_cancelled_exc_class(), EngineSignal)):
            raise
        future.set_final_state(exception_to_crashed_state(exc))  # if not set yet
        return None
    future.set_final_state(state)
    return state


async def run_called(engine: TaskRunEngine) -> State[Any]:
    """Run a called task run as a :class:`TaskRunActor` attached to its flow run's actor
    (outside a flow run, or from another loop, to its runtime's root), in the caller: in
    its task, or on its thread for a :class:`ThreadDriver`. Return its final state.

    Raises:
        InlineRefused: (a ThreadDriver) the flow run's actor is busy on this very thread;
            nothing was recorded.
        BaseException: what the engine raised (see :meth:`TaskRunEngine.run`).
    """
    actor = TaskRunActor(partial(_same, engine), TaskRunEngine.run)
    name = f"task-run-{engine.task_run.id}"
    driver = engine.driver
    flow_ctx = engine.flow_ctx
    thread = threading.get_ident()
    if isinstance(driver, ThreadDriver):
        assert flow_ctx is not None and flow_ctx.actor is not None
        try:
            attachment = attach_from_thread(flow_ctx.actor, name, actor, driver.cancel)
        except anyio.WouldBlock:
            raise InlineRefused from None
        actor.engine = engine
        try:
            return attachment.run_on_thread(partial(_drive_run, engine))  # type: ignore[no-any-return]
        except BodyInterrupted:
            if engine.cancel_requested:
                return engine.task_run.state  # type: ignore[return-value]
            raise
    if flow_ctx is not None and flow_ctx.actor is not None and flow_ctx.actor_thread == thread:
        supervisor = flow_ctx.actor
    else:
        supervisor = engine.runtime.root
    await attach(supervisor, name, actor)
    return actor.state or engine.task_run.state  # type: ignore[no-any-return]


def _same(engine: TaskRunEngine) -> TaskRunEngine:
    return engine


def _drive_run(engine: TaskRunEngine) -> State[Any]:
    return drive(engine.run())
