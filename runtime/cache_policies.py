"""Cache policies: how a task run's cache key is computed.

The public face of :mod:`runtime.engine._cache_policies`."""

from __future__ import annotations

from .engine._cache_policies import DEFAULT as DEFAULT
from .engine._cache_policies import FLOW_PARAMETERS as FLOW_PARAMETERS
from .engine._cache_policies import INPUTS as INPUTS
from .engine._cache_policies import NO_CACHE as NO_CACHE
from .engine._cache_policies import NONE as NONE
from .engine._cache_policies import RUN_ID as RUN_ID
from .engine._cache_policies import TASK_SOURCE as TASK_SOURCE
from .engine._cache_policies import CacheKeyFnPolicy as CacheKeyFnPolicy
from .engine._cache_policies import CachePolicy as CachePolicy
from .engine._cache_policies import CompoundCachePolicy as CompoundCachePolicy
from .engine._cache_policies import FlowParameters as FlowParameters
from .engine._cache_policies import Inputs as Inputs
from .engine._cache_policies import RunId as RunId
from .engine._cache_policies import TaskSource as TaskSource
from .engine._cache_policies import cache_policy_for_task as cache_policy_for_task
from .engine._cache_policies import hash_objects as hash_objects

__all__ = [
    "DEFAULT",
    "FLOW_PARAMETERS",
    "INPUTS",
    "NONE",
    "NO_CACHE",
    "RUN_ID",
    "TASK_SOURCE",
    "CacheKeyFnPolicy",
    "CachePolicy",
    "CompoundCachePolicy",
    "FlowParameters",
    "Inputs",
    "RunId",
    "TaskSource",
    "cache_policy_for_task",
    "hash_objects",
]
