"""A run's result settings and cache key, from its task or flow and its parent run.

Settings follow Prefect 3. A task takes the flow run's storage, serializer and
``persist`` unless it sets its own; a flow takes them from its parent run, if any.
Persisting is off by default (``STAGEFLOW_RESULTS_PERSIST_BY_DEFAULT=true`` turns it on),
but setting ``cache_policy``, ``cache_key_fn``, ``result_storage_key``, ``result_storage``
or ``result_serializer`` on a task turns it on for that task, and ``persist_result=False``
always turns it off.
"""

from __future__ import annotations

from ..store._results import ResultSettings, default_settings, format_storage_key
from ._cache_policies import NONE, CachePolicy, cache_policy_for_task
from ._context import FlowRunContext, TaskRunContext
from ._specs import FlowSpec, TaskSpec

__all__ = ["result_settings_for_flow", "result_settings_for_task", "task_cache_key"]


def _parent_settings(ctx: FlowRunContext | TaskRunContext | None) -> ResultSettings:
    settings = getattr(ctx, "result_settings", None)
    return settings if isinstance(settings, ResultSettings) else default_settings()


def result_settings_for_task(
    task: TaskSpec, flow_ctx: FlowRunContext | TaskRunContext | None
) -> ResultSettings:
    """Return the result settings of a run of ``task``.

    Args:
        task: the task being run.
        flow_ctx: the context of the run the task is called in (normally the flow run's;
            its ``result_settings`` are inherited), or None outside any run.

    Raises:
        ConfigurationError: the task's ``result_serializer`` names no serializer, or the
            persist-by-default variable is not a boolean.
        TypeError: ``result_storage`` or ``result_serializer`` has the wrong type.
    """
    parent = _parent_settings(flow_ctx)
    if (
        task.persist_result is None
        and task.cache_result_in_memory is not False
        and parent.storage_key is None
        and parent.cache_in_memory
        and not _task_implies_persistence(task)
    ):
        return parent  # the common case: nothing to override
    if task.persist_result is not None:
        persist = bool(task.persist_result)
    elif _task_implies_persistence(task):
        persist = True
    else:
        persist = parent.persist
    return ResultSettings(
        persist=persist,
        storage=parent.storage if task.result_storage is None else task.result_storage,
        serializer=parent.serializer if task.result_serializer is None else task.result_serializer,
        storage_key=task.result_storage_key,
        cache_in_memory=task.cache_result_in_memory is not False,
    )


def _task_implies_persistence(task: TaskSpec) -> bool:
    # Prefect 3: asking for caching or for a place/format to store results means "persist".
    policy = task.cache_policy
    return (
        (isinstance(policy, CachePolicy) and policy != NONE)
        or task.cache_key_fn is not None
        or task.result_storage_key is not None
        or task.result_storage is not None
        or task.result_serializer is not None
    )


def result_settings_for_flow(
    flow: FlowSpec, parent_ctx: FlowRunContext | TaskRunContext | None
) -> ResultSettings:
    """Return the result settings of a run of ``flow``.

    Args:
        flow: the flow being run.
        parent_ctx: the context of the run a subflow is called in (its
            ``result_settings`` are inherited), or None for a top-level flow run.

    Raises:
        ConfigurationError: the flow's ``result_serializer`` names no serializer, or the
            persist-by-default variable is not a boolean.
        TypeError: ``result_storage`` or ``result_serializer`` has the wrong type.
    """
    parent = _parent_settings(parent_ctx)
    if flow.persist_result is not None:
        persist = bool(flow.persist_result)
    elif flow.result_storage is not None or flow.result_serializer is not None:
        persist = True
    else:
        persist = parent.persist
    return ResultSettings(
        persist=persist,
        storage=parent.storage if flow.result_storage is None else flow.result_storage,
        serializer=parent.serializer if flow.result_serializer is None else flow.result_serializer,
        storage_key=None,
        cache_in_memory=flow.cache_result_in_memory is not False,
    )


def task_cache_key(
    task_ctx: TaskRunContext,
    flow_ctx: FlowRunContext | None,
    settings: ResultSettings,
) -> str | None:
    """Return the key a task run's result is cached and stored under, or None for no cache.

    As in Prefect 3: no key unless the result is persisted; a ``result_storage_key``
    template, filled in, is the key; otherwise the task's cache policy
    (:func:`runtime.engine._cache_policies.cache_policy_for_task`) computes it.

    Raises:
        ConfigurationError: the storage key template cannot be filled in, or an input
            cannot be hashed.
    """
    if not settings.persist:
        return None
    flow_run = flow_ctx.flow_run if flow_ctx is not None else None
    if settings.storage_key is not None:
        return format_storage_key(
            settings.storage_key, task_ctx.parameters, task_ctx.task_run, flow_run
        )
    return cache_policy_for_task(task_ctx.task).compute_key(
        task_ctx, task_ctx.parameters, flow_ctx.parameters if flow_ctx is not None else None
    )
