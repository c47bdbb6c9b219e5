"""Persisted results: storage, references and settings.

The public face of :mod:`runtime.store._results` and :mod:`runtime.engine._result_settings`."""

from __future__ import annotations

from .engine._result_settings import result_settings_for_flow as result_settings_for_flow
from .engine._result_settings import result_settings_for_task as result_settings_for_task
from .engine._result_settings import task_cache_key as task_cache_key
from .store._results import INLINE_RESULT_LIMIT as INLINE_RESULT_LIMIT
from .store._results import PERSIST_BY_DEFAULT_ENV as PERSIST_BY_DEFAULT_ENV
from .store._results import InlineResult as InlineResult
from .store._results import LocalResultStorage as LocalResultStorage
from .store._results import ResultRef as ResultRef
from .store._results import ResultSettings as ResultSettings
from .store._results import format_storage_key as format_storage_key
from .store._results import persist_by_default as persist_by_default
from .store._results import persist_result as persist_result
from .store._results import refresh_cache_by_default as refresh_cache_by_default
from .store._results import resolve_storage as resolve_storage

__all__ = [
    "INLINE_RESULT_LIMIT",
    "PERSIST_BY_DEFAULT_ENV",
    "InlineResult",
    "LocalResultStorage",
    "ResultRef",
    "ResultSettings",
    "format_storage_key",
    "persist_by_default",
    "persist_result",
    "refresh_cache_by_default",
    "resolve_storage",
    "result_settings_for_flow",
    "result_settings_for_task",
    "task_cache_key",
]
