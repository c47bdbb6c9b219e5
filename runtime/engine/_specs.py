"""What the engine reads of a task or a flow.

``runtime.api`` builds :class:`~runtime.Task` and :class:`~runtime.Flow`; the engine, a
layer below, only reads their options. These protocols say which ones, so the engine
depends on the options it uses and not on the classes that hold them.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Callable, Protocol

from ..core._models import TaskRunPolicy
from ..core._parameters import CallSignature

__all__ = ["FlowSpec", "TaskSpec"]

Hook = Callable[..., Any]


class TaskSpec(Protocol):
    """The options of a task (``runtime.Task``) that its runs read."""

    fn: Callable[..., Any]
    name: str
    task_key: str
    version: str | None
    is_async: bool
    is_generator: bool
    signature: CallSignature
    tags: frozenset[str]
    run_policy: TaskRunPolicy
    retries: int
    retry_condition_fn: Callable[..., Any] | None
    timeout_seconds: float | None
    task_run_name: Any
    log_prints: bool | None
    cache_policy: Any
    cache_key_fn: Callable[..., Any] | None
    cache_expiration: timedelta | None
    refresh_cache: bool | None
    persist_result: bool | None
    result_storage: Any
    result_storage_key: str | None
    result_serializer: Any
    cache_result_in_memory: bool
    on_completion_hooks: list[Hook]
    on_failure_hooks: list[Hook]
    on_commit_hooks: list[Hook]
    on_rollback_hooks: list[Hook]


class FlowSpec(Protocol):
    """The options of a flow (``runtime.Flow``) that its runs read."""

    fn: Callable[..., Any]
    name: str
    flow_key: str
    version: str | None
    is_async: bool
    signature: CallSignature
    entrypoint: str | None
    task_runner: Any
    retries: int
    retry_delay_seconds: float
    timeout_seconds: float | None
    flow_run_name: Any
    log_prints: bool | None
    persist_result: bool | None
    result_storage: Any
    result_serializer: Any
    cache_result_in_memory: bool
    should_validate_parameters: bool
    on_completion_hooks: list[Hook]
    on_failure_hooks: list[Hook]
    on_cancellation_hooks: list[Hook]
    on_crashed_hooks: list[Hook]
    on_running_hooks: list[Hook]

    def validate_parameters(self, parameters: dict[str, Any]) -> dict[str, Any]: ...
