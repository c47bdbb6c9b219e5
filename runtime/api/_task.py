"""Tasks: the ``@task`` decorator and the :class:`Task` it builds.

A Task holds its function and options, validated once here. Calling, submitting and
mapping hand over to the engine (:mod:`runtime.api._entry`); nothing here runs a task.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Callable, Generic, Iterable, ParamSpec, TypeVar, overload

from ..core._models import TaskRunPolicy
from ..core._options import (
    NotSet,
    check_hooks,
    check_name,
    check_non_negative,
    check_retry_delays,
    check_timeout,
    code_key,
    is_async_callable,
    is_generator_callable,
)
from ..core._parameters import CallSignature
from ..engine._distributed import DistributedTaskRunFuture
from . import _entry as _entry
from ._methods import BindsAsMethod, docstring_of, unwrap_method
from ._task_workers import queue_task_run

__all__ = ["Task", "task"]

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])


class Task(BindsAsMethod, Generic[P, R]):
    """A function whose calls become task runs.

    Build one with :func:`task`. Calling it inside a flow creates a task run and returns
    its result (``return_state=True`` returns the final State instead); ``submit`` runs it
    concurrently and returns a future; ``map`` submits one run per element; ``delay``
    queues a run for a task worker.

    Raises:
        TypeError: ``fn`` is not callable, or an option has the wrong type.
        ValueError: an option has an invalid value (a negative retry count, a bad name...).
    """

    def __init__(
        self,
        fn: Callable[P, R],
        name: str | None = None,
        description: str | None = None,
        tags: Iterable[str] | None = None,
        version: str | None = None,
        cache_policy: Any = NotSet,
        cache_key_fn: Callable[..., str | None] | None = None,
        cache_expiration: timedelta | None = None,
        task_run_name: str | Callable[..., str] | None = None,
        retries: int | None = None,
        retry_delay_seconds: float | list[float] | Callable[[int], list[float]] | None = None,
        retry_jitter_factor: float | None = None,
        persist_result: bool | None = None,
        result_storage: Any = None,
        result_storage_key: str | None = None,
        result_serializer: Any = None,
        cache_result_in_memory: bool = True,
        timeout_seconds: float | timedelta | None = None,
        log_prints: bool | None = None,
        refresh_cache: bool | None = None,
        on_completion: list[Callable[..., Any]] | None = None,
        on_failure: list[Callable[..., Any]] | None = None,
        on_commit: list[Callable[..., Any]] | None = None,
        on_rollback: list[Callable[..., Any]] | None = None,
        retry_condition_fn: Callable[..., bool] | None = None,
        viz_return_value: Any = None,
    ) -> None:
        fn, self._method_kind = unwrap_method(fn)
        if not callable(fn):
            raise TypeError(f"A task wraps a callable; got {type(fn).__name__}: {fn!r}.")
        self.fn = fn
        self.is_async = is_async_callable(fn)
        self.is_generator = is_generator_callable(fn)
        # A name given explicitly is checked; the function's own name is taken as is (a
        # lambda's is "<lambda>"), as in Prefect.
        own_name = getattr(fn, "__name__", type(fn).__name__)
        self.name = own_name if not name or name == own_name else check_name(name, "task")
        self.description = description if description is not None else docstring_of(fn)
        if isinstance(tags, str):
            raise TypeError(f"tags must be an iterable of strings, got the string {tags!r}.")
        self.tags = frozenset(tags or ())
        self.version = version
        self.task_key = code_key(fn)
        self.signature = CallSignature(fn)

        self.retries = check_non_negative(retries, "retries", integer=True) or 0
        self.retry_delay_seconds = retry_delay_seconds
        self.retry_delays = check_retry_delays(retry_delay_seconds, self.retries)
        self.retry_jitter_factor = check_non_negative(retry_jitter_factor, "retry_jitter_factor")
        self.retry_condition_fn = retry_condition_fn
        if retry_condition_fn is not None and not callable(retry_condition_fn):
            raise TypeError(f"retry_condition_fn must be callable, got {retry_condition_fn!r}.")
        self.run_policy = TaskRunPolicy(
            retries=self.retries,
            retry_delay=self.retry_delays,
            retry_jitter_factor=self.retry_jitter_factor,
        )
        self.timeout_seconds = check_timeout(timeout_seconds)
        self.task_run_name = task_run_name
        if task_run_name is not None and not (
            isinstance(task_run_name, str) or callable(task_run_name)
        ):
            raise TypeError(
                f"Expected string or callable for 'task_run_name'; got {type(task_run_name).__name__} instead."
            )
        self.log_prints = log_prints

        self.cache_policy = cache_policy
        self.cache_key_fn = cache_key_fn
        self.cache_expiration = cache_expiration
        self.refresh_cache = refresh_cache
        self.persist_result = persist_result
        self.result_storage = result_storage
        self.result_storage_key = result_storage_key
        self.result_serializer = result_serializer
        self.cache_result_in_memory = cache_result_in_memory
        self.viz_return_value = viz_return_value

        self.on_completion_hooks = check_hooks(on_completion, "on_completion")
        self.on_failure_hooks = check_hooks(on_failure, "on_failure")
        self.on_commit_hooks = check_hooks(on_commit, "on_commit")
        self.on_rollback_hooks = check_hooks(on_rollback, "on_rollback")

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
        """Run the task and return its result (its final State with ``return_state=True``).

        An async task returns a coroutine to await. A generator task returns a generator
        (an async one for an async generator task) that runs the task run as it is
        iterated, yielding the task's items.

        Raises:
            ParameterBindError: the arguments do not fit the function's signature.
            ValueError: ``return_state=True`` for a generator task.
            BaseException: the task's own exception, if it failed.
        """
        parameters = self.signature.bind(args, kwargs)
        if self.is_generator:
            _entry.refuse_generator(self, "task", "return its final state", return_state)
            return _entry.iterate_task(self, parameters, wait_for)
        return_type = "state" if return_state else "result"
        if self.is_async:
            return _entry.run_task_async(self, parameters, wait_for, return_type)
        return _entry.run_task_sync(self, parameters, wait_for, return_type)

    def submit(
        self, *args: Any, return_state: bool = False, wait_for: Any = None, **kwargs: Any
    ) -> Any:
        """Start a run of the task concurrently and return its future.

        With ``return_state=True``, wait for the run and return its final State.

        Raises:
            RuntimeError: called outside of a flow run.
            ParameterBindError: the arguments do not fit the function's signature.
            ValueError: the task is a generator task.
        """
        _entry.refuse_generator(self, "task", "be submitted")
        parameters = self.signature.bind(args, kwargs)
        future = _entry.submit_task(self, parameters, wait_for)
        if return_state:
            future.wait()
            return future.state
        return future

    def map(
        self,
        *args: Any,
        return_state: bool = False,
        wait_for: Any = None,
        deferred: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Submit one run per element of the iterable arguments; return their futures.

        Non-iterable arguments, and arguments wrapped in ``unmapped``, go whole to every
        run. Every iterable must have the same length.

        Raises:
            MappingMissingIterable: no argument is iterable.
            MappingLengthMismatch: the iterables differ in length.
            ValueError: the task is a generator task.
        """
        _entry.refuse_generator(self, "task", "be mapped")
        futures = _entry.map_task(self, args, kwargs, wait_for, deferred=deferred)
        if return_state:
            futures.wait()
            return [future.state for future in futures]
        return futures

    def apply_async(
        self,
        args: tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
        wait_for: Any = None,
    ) -> DistributedTaskRunFuture[Any]:
        """Queue a run of the task for a task worker, and return its future (Prefect's
        ``Task.apply_async``).

        The run is recorded Scheduled in the store of the Runtime serving the caller (else
        the default store), with its call (``args``, ``kwargs`` and the ``wait_for``
        futures, pickled with cloudpickle), committed before this returns: a durable
        queue. A worker serving this task (``serve_tasks``, ``stageflow worker``), in any
        process sharing the store, runs it, at least once; nothing runs it until one
        does. The future's ``result()`` waits for it (see
        :class:`~runtime.futures.DistributedTaskRunFuture`). Futures among the arguments
        are resolved by the worker, as in a flow.

        Raises:
            ValueError: the task is a generator task.
            ParameterBindError: the arguments do not fit the function's signature.
            ResultSerializationError: the arguments cannot be pickled.
        """
        _entry.refuse_generator(self, "task", "run in the background")
        parameters = self.signature.bind(tuple(args or ()), dict(kwargs or {}))
        return queue_task_run(self, parameters, wait_for)

    def delay(self, *args: Any, **kwargs: Any) -> DistributedTaskRunFuture[Any]:
        """``apply_async`` with plain call syntax: ``my_task.delay(1, x=2)`` queues a run
        for a task worker and returns its future (Prefect's ``Task.delay``).

        Raises:
            ValueError, ParameterBindError, ResultSerializationError: as
                :meth:`apply_async`.
        """
        return self.apply_async(args, kwargs)

    # -- options ----------------------------------------------------------------------

    def with_options(self, **options: Any) -> Task[P, R]:
        """Return a copy of the task with some options changed."""
        current = dict(
            name=self.name,
            description=self.description,
            tags=self.tags,
            version=self.version,
            cache_policy=self.cache_policy,
            cache_key_fn=self.cache_key_fn,
            cache_expiration=self.cache_expiration,
            task_run_name=self.task_run_name,
            retries=self.retries,
            retry_delay_seconds=self.retry_delay_seconds,
            retry_jitter_factor=self.retry_jitter_factor,
            persist_result=self.persist_result,
            result_storage=self.result_storage,
            result_storage_key=self.result_storage_key,
            result_serializer=self.result_serializer,
            cache_result_in_memory=self.cache_result_in_memory,
            timeout_seconds=self.timeout_seconds,
            log_prints=self.log_prints,
            refresh_cache=self.refresh_cache,
            on_completion=self.on_completion_hooks,
            on_failure=self.on_failure_hooks,
            on_commit=self.on_commit_hooks,
            on_rollback=self.on_rollback_hooks,
            retry_condition_fn=self.retry_condition_fn,
            viz_return_value=self.viz_return_value,
        )
        unknown = set(options) - set(current)
        if unknown:
            raise TypeError(f"with_options() got unknown task options: {sorted(unknown)}.")
        current.update({k: v for k, v in options.items() if v is not NotSet})
        return type(self)(self._decorated(), **current)

    def on_completion(self, fn: F) -> F:
        """Decorator: add ``fn`` to the hooks run when a run of this task completes."""
        self.on_completion_hooks.append(fn)
        return fn

    def on_failure(self, fn: F) -> F:
        """Decorator: add ``fn`` to the hooks run when a run of this task fails."""
        self.on_failure_hooks.append(fn)
        return fn

    def on_commit(self, fn: F) -> F:
        """Decorator: add ``fn`` to the hooks run when this task's transaction commits."""
        self.on_commit_hooks.append(fn)
        return fn

    def on_rollback(self, fn: F) -> F:
        """Decorator: add ``fn`` to the hooks run when this task's transaction rolls back."""
        self.on_rollback_hooks.append(fn)
        return fn

    def __repr__(self) -> str:
        return f"Task(name={self.name!r})"


@overload
def task(__fn: Callable[P, R]) -> Task[P, R]: ...


@overload
def task(__fn: None = None, **options: Any) -> Callable[[Callable[P, R]], Task[P, R]]: ...


def task(__fn: Callable[P, R] | None = None, **options: Any) -> Any:
    """Make a function a task: ``@task`` or ``@task(retries=2, ...)``.

    See :class:`Task` for the options.
    """
    if __fn is not None:
        return Task(__fn, **options)

    def decorator(fn: Callable[P, R]) -> Task[P, R]:
        return Task(fn, **options)

    return decorator
