"""The flows this process defined, so a run can find its flow again to run it once more.

A flow registers itself under its entrypoint when it is built; a suspended run
registers the flow it belongs to (which works for flows defined inside a function, which
have no entrypoint). Both maps hold flows weakly.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any
from uuid import UUID

__all__ = ["flow_at", "flow_of_run", "is_flow", "register_flow", "register_run_flow"]

_flows: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()
_every_flow: weakref.WeakSet[Any] = weakref.WeakSet()
_flows_lock = threading.Lock()


def register_flow(flow: Any) -> None:
    """Remember ``flow`` under its entrypoint, so a rerun in this process finds it."""
    with _flows_lock:
        _every_flow.add(flow)
        if flow.entrypoint is not None:
            _flows.setdefault(flow.entrypoint, flow)


def is_flow(value: Any) -> bool:
    """Whether ``value`` is a flow (a ``runtime.Flow``) built in this process."""
    try:
        with _flows_lock:
            return value in _every_flow
    except TypeError:  # not weak-referenceable: not a flow
        return False


_run_flows: weakref.WeakValueDictionary[UUID, Any] = weakref.WeakValueDictionary()


def register_run_flow(flow_run_id: UUID, flow: Any) -> None:
    """Remember which flow a suspended run of this process belongs to, so resuming it here
    works even for a flow without an entrypoint (defined inside a function)."""
    with _flows_lock:
        _run_flows[flow_run_id] = flow


def flow_at(entrypoint: str) -> Any:
    """Return the flow this process built for ``entrypoint`` ("file.py:name"), or None."""
    with _flows_lock:
        return _flows.get(entrypoint)


def flow_of_run(flow_run_id: UUID) -> Any:
    """Return the flow a suspended run of this process belongs to, or None."""
    with _flows_lock:
        return _run_flows.get(flow_run_id)
