"""Flows: the ``@flow`` decorator and the :class:`Flow` it builds.

A Flow holds its function and options, validated once here. Calling it hands over to the
engine (:mod:`runtime.api._entry`); nothing here runs a flow.
"""

from __future__ import annotations

import hashlib
import inspect
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Generic, ParamSpec, TypeVar, overload

from ..core._options import (
    NotSet,
    check_hooks,
    check_name,
    check_non_negative,
    check_timeout,
    code_key,
    is_async_callable,
    is_generator_callable,
)
from ..core._parameters import CallSignature, serialize_parameters
from ..engine._task_runners import TaskRunner, ThreadPoolTaskRunner
from . import _entry as _entry
from ._methods import BindsAsMethod, docstring_of, unwrap_method
from ._registry import register_flow
from ._schedules import Restart, Schedule, make_schedule
from ._serve import DEFAULT_GRACE_PERIOD
from ._serve import serve as serve_schedules

__all__ = ["Flow", "flow"]

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])


def _file_version(fn: Callable[..., Any]) -> str | None:
    try:
        path = inspect.getsourcefile(fn)
    except TypeError:
        return None
    if not path:
        return None
    try:
        return hashlib.md5(Path(path).read_bytes(), usedforsecurity=False).hexdigest()
    except OSError:
        return None


def _entrypoint(fn: Callable[..., Any]) -> str | None:
    try:
        path = inspect.getsourcefile(fn)
    except TypeError:
        return None
    qualname = getattr(fn, "__qualname__", "")
    if not path or "<locals>" in qualname:
        return None
    return f"{Path(path).resolve()}:{qualname}"


class Flow(BindsAsMethod, Generic[P, R]):
    """A function whose calls become flow runs.

    Build one with :func:`flow`. Calling it creates a flow run and returns its result
    (``return_state=True`` returns the final State instead). An async flow returns a
    coroutine to await.

    Raises:
        TypeError: ``fn`` is not callable, or an option has the wrong type.
        ValueError: an option has an invalid value.
    """

    def __init__(
        self,
        fn: Callable[P, R],
        name: str | None = None,
        version: str | None = None,
        flow_run_name: str | Callable[..., str] | None = None,
        retries: int | None = None,
        retry_delay_seconds: float | None = None,
        task_runner: TaskRunner | type[TaskRunner] | None = None,
        description: str | None = None,
        timeout_seconds: float | timedelta | None = None,
        validate_parameters: bool = True,
        persist_result: bool | None = None,
        result_storage: Any = None,
        result_serializer: Any = None,
        cache_result_in_memory: bool = True,
        log_prints: bool | None = None,
        on_completion: list[Callable[..., Any]] | None = None,
        on_failure: list[Callable[..., Any]] | None = None,
        on_cancellation: list[Callable[..., Any]] | None = None,
        on_crashed: list[Callable[..., Any]] | None = None,
        on_running: list[Callable[..., Any]] | None = None,
    ) -> None:
        fn, self._method_kind = unwrap_method(fn)
        if not callable(fn):
            raise TypeError(f"A flow wraps a callable; got {type(fn).__name__}: {fn!r}.")
        self.fn = fn
        self.is_async = is_async_callable(fn)
        self.is_generator = is_generator_callable(fn)
        default_name = (
            getattr(fn, "__name__", type(fn).__name__)
            .replace("_", "-")
            .replace("<lambda>", "unknown-lambda")
        )
        self.name = check_name(name or default_name, "flow")
        self.version = version if version is not None else _file_version(fn)
        self.description = description if description is not None else docstring_of(fn)
        if flow_run_name is not None and not (
            isinstance(flow_run_name, str) or callable(flow_run_name)
        ):
            raise TypeError(
                f"Expected string or callable for 'flow_run_name'; got {type(flow_run_name).__name__} instead."
            )
        self.flow_run_name = flow_run_name
        self.retries = check_non_negative(retries, "retries", integer=True) or 0
        self.retry_delay_seconds = float(
            check_non_negative(retry_delay_seconds, "retry_delay_seconds") or 0
        )
        if isinstance(task_runner, type):
            task_runner = task_runner()
        if task_runner is not None and not isinstance(task_runner, TaskRunner):
            raise TypeError(f"task_runner must be a TaskRunner, got {task_runner!r}.")
        self.task_runner: TaskRunner = task_runner or ThreadPoolTaskRunner()
        self.timeout_seconds = check_timeout(timeout_seconds)
        self.should_validate_parameters = bool(validate_parameters)
        self.persist_result = persist_result
        self.result_storage = result_storage
        self.result_serializer = result_serializer
        self.cache_result_in_memory = cache_result_in_memory
        self.log_prints = log_prints
        self.on_completion_hooks = check_hooks(on_completion, "on_completion")
        self.on_failure_hooks = check_hooks(on_failure, "on_failure")
        self.on_cancellation_hooks = check_hooks(on_cancellation, "on_cancellation")
        self.on_crashed_hooks = check_hooks(on_crashed, "on_crashed")
        self.on_running_hooks = check_hooks(on_running, "on_running")
        self.signature = CallSignature(fn)
        self.flow_key = code_key(fn)
        self.entrypoint = _entrypoint(fn)
        register_flow(self)

    # -- calling ----------------------------------------------------------------------

    @overload
    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R: ...

    @overload
    def __call__(
        self, *args: Any, return_state: bool = ..., wait_for: Any = ..., **kwargs: Any
    ) -> Any: ...

    def __call__(
        self, *args: Any, return_state: bool = False, wait_for: Any = None, **kwargs: Any
    ) -> Any:
        """Run the flow and return its result (its final State with ``return_state=True``).

        A generator flow returns a generator (an async one for an async generator flow)
        that runs the flow run as it is iterated, yielding the flow's items.

        Raises:
            ParameterBindError: the arguments do not fit the function's signature (no run
                is created).
            ParameterTypeError: the arguments fail validation (the run ends Failed).
            ValueError: ``return_state=True`` for a generator flow.
            BaseException: the flow's own exception, if it failed.
        """
        parameters = self.signature.bind(args, kwargs)
        if self.is_generator:
            _entry.refuse_generator(self, "flow", "return its final state", return_state)
            return _entry.iterate_flow(self, parameters, wait_for)
        return_type = "state" if return_state else "result"
        if self.is_async:
            return _entry.run_flow_async(self, parameters, wait_for, return_type)
        return _entry.run_flow_sync(self, parameters, wait_for, return_type)

    # -- parameters -------------------------------------------------------------------

    def validate_parameters(self, parameters: dict[str, Any]) -> dict[str, Any]:
        """Return ``parameters`` coerced to the function's annotations.

        Raises:
            ParameterTypeError: a parameter does not fit its annotation.
        """
        return self.signature.validate(parameters)

    def serialize_parameters(self, parameters: dict[str, Any]) -> dict[str, Any]:
        """Return a JSON-compatible copy of ``parameters`` (unencodable values become
        ``"<TypeName>"``)."""
        return serialize_parameters(parameters)

    # -- schedules --------------------------------------------------------------------

    def to_schedule(
        self,
        name: str | None = None,
        *,
        interval: float | timedelta | None = None,
        cron: str | None = None,
        parameters: dict[str, Any] | None = None,
        tags: list[str] | None = None,
        timezone: str | None = None,
        overlap: str = "skip",
        catchup: str = "latest",
        restart: Restart | None = None,
    ) -> Schedule:
        """Return a schedule of this flow, for ``serve(*schedules)`` or ``await
        aserve(*schedules)`` (Prefect: ``flow.to_deployment``).

        Args:
            name: the schedule's name, unique in the store (default: the flow's name);
                processes serving a schedule of one name share its slots.
            interval: seconds (or a timedelta) between runs; slots are anchored where the
                schedule was first served, so the first run is at once.
            cron: a cron expression instead (five fields: "0 3 * * *" is 03:00 daily).
            parameters: the flow's parameters for every run.
            tags: tags of every run, besides ``schedule:<name>`` and ``slot:<time>``.
            timezone: the IANA timezone ``cron`` is read in (default UTC).
            overlap: while the previous run still runs, ``"skip"`` the slot (default),
                ``"queue"`` a run after it, or ``"allow"`` both.
            catchup: for slots missed while nothing served the schedule: one run for the
                ``"latest"`` (default), a run for ``"all"``, or ``"none"``.
            restart: how crashed runs are restarted (default ``Restart()``: up to 3
                restarts within 60 s).

        Raises:
            ValueError: not exactly one of ``interval`` and ``cron``, or an invalid
                option (the message says which).
            ParameterBindError: ``parameters`` do not fit the flow's signature.
        """
        return make_schedule(
            self,
            name,
            interval=interval,
            cron=cron,
            parameters=parameters,
            tags=tags,
            timezone=timezone,
            overlap=overlap,
            catchup=catchup,
            restart=restart,
        )

    def serve(
        self,
        name: str | None = None,
        *,
        interval: float | timedelta | None = None,
        cron: str | None = None,
        parameters: dict[str, Any] | None = None,
        tags: list[str] | None = None,
        timezone: str | None = None,
        overlap: str = "skip",
        catchup: str = "latest",
        restart: Restart | None = None,
        grace_period: float = DEFAULT_GRACE_PERIOD,
    ) -> None:
        """Run this flow on a schedule, in this process, until stopped (Ctrl-C or
        SIGTERM); blocks. The options are those of :meth:`to_schedule`; ``grace_period``
        is what in-flight runs get to finish once stopped. Same as
        ``serve(flow.to_schedule(...))``; from async code, ``await aserve(...)``.

        Raises:
            ValueError, ParameterBindError: as :meth:`to_schedule`.
            RuntimeError: called from async code.
            SchedulesFailed: the schedule stopped: its runs crashed more often than
                ``restart`` allows.
        """
        schedule = self.to_schedule(
            name,
            interval=interval,
            cron=cron,
            parameters=parameters,
            tags=tags,
            timezone=timezone,
            overlap=overlap,
            catchup=catchup,
            restart=restart,
        )
        serve_schedules(schedule, grace_period=grace_period)

    # -- options ----------------------------------------------------------------------

    def with_options(self, **options: Any) -> Flow[P, R]:
        """Return a copy of the flow with some options changed."""
        current = dict(
            name=self.name,
            version=self.version,
            flow_run_name=self.flow_run_name,
            retries=self.retries,
            retry_delay_seconds=self.retry_delay_seconds,
            task_runner=self.task_runner,
            description=self.description,
            timeout_seconds=self.timeout_seconds,
            validate_parameters=self.should_validate_parameters,
            persist_result=self.persist_result,
            result_storage=self.result_storage,
            result_serializer=self.result_serializer,
            cache_result_in_memory=self.cache_result_in_memory,
            log_prints=self.log_prints,
            on_completion=self.on_completion_hooks,
            on_failure=self.on_failure_hooks,
            on_cancellation=self.on_cancellation_hooks,
            on_crashed=self.on_crashed_hooks,
            on_running=self.on_running_hooks,
        )
        unknown = set(options) - set(current)
        if unknown:
            raise TypeError(f"with_options() got unknown flow options: {sorted(unknown)}.")
        current.update({k: v for k, v in options.items() if v is not NotSet})
        return type(self)(self._decorated(), **current)

    def on_completion(self, fn: F) -> F:
        """Decorator: add ``fn`` to the hooks run when a run of this flow completes."""
        self.on_completion_hooks.append(fn)
        return fn

    def on_failure(self, fn: F) -> F:
        """Decorator: add ``fn`` to the hooks run when a run of this flow fails."""
        self.on_failure_hooks.append(fn)
        return fn

    def on_cancellation(self, fn: F) -> F:
        """Decorator: add ``fn`` to the hooks run when a run of this flow is cancelled."""
        self.on_cancellation_hooks.append(fn)
        return fn

    def on_crashed(self, fn: F) -> F:
        """Decorator: add ``fn`` to the hooks run when a run of this flow crashes."""
        self.on_crashed_hooks.append(fn)
        return fn

    def on_running(self, fn: F) -> F:
        """Decorator: add ``fn`` to the hooks run when a run of this flow starts running."""
        self.on_running_hooks.append(fn)
        return fn

    def __repr__(self) -> str:
        return f"Flow(name={self.name!r})"


@overload
def flow(__fn: Callable[P, R]) -> Flow[P, R]: ...


@overload
def flow(__fn: None = None, **options: Any) -> Callable[[Callable[P, R]], Flow[P, R]]: ...


def flow(__fn: Callable[P, R] | None = None, **options: Any) -> Any:
    """Make a function a flow: ``@flow`` or ``@flow(name=..., retries=...)``.

    See :class:`Flow` for the options.
    """
    if __fn is not None:
        return Flow(__fn, **options)

    def decorator(fn: Callable[P, R]) -> Flow[P, R]:
        return Flow(fn, **options)

    return decorator
