"""Tag concurrency limits, shared by every process using a store.

The public face of :mod:`runtime.api._concurrency`."""

from __future__ import annotations

from .api._concurrency import ConcurrencyLimit as ConcurrencyLimit
from .api._concurrency import delete_concurrency_limit as delete_concurrency_limit
from .api._concurrency import read_concurrency_limits as read_concurrency_limits
from .api._concurrency import set_concurrency_limit as set_concurrency_limit

__all__ = [
    "ConcurrencyLimit",
    "delete_concurrency_limit",
    "read_concurrency_limits",
    "set_concurrency_limit",
]
