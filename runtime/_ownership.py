"""Which process runs a flow run, and whether that process is still alive.

A flow run records its owner when it starts: ``"host:pid:start"``, where ``start`` is the
process's start time (so a recycled pid is not mistaken for the original process). A run
whose owner is gone without recording a final state crashed; the store marks it Crashed
the next time a runtime opens it.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from uuid import UUID

__all__ = ["active_flow_runs", "owner_alive", "process_owner"]

_HOST = socket.gethostname()


def _start_time(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # Field 22 (starttime) follows the parenthesised command name.
            fields = stat.read().rsplit(b")", 1)[1].split()
            return fields[19].decode()
    except (OSError, IndexError):
        return "?"


_OWNER = f"{_HOST}:{os.getpid()}:{_start_time(os.getpid())}"


def process_owner() -> str:
    """Return this process's owner token."""
    global _OWNER
    pid = os.getpid()
    if f":{pid}:" not in _OWNER:  # forked since import
        _OWNER = f"{_HOST}:{pid}:{_start_time(pid)}"
    return _OWNER


def owner_alive(owner: str | None) -> bool | None:
    """Return whether the process behind ``owner`` still runs; None if it cannot be told
    (another host, or an unknown format)."""
    if not owner:
        return None
    try:
        host, pid_text, start = owner.rsplit(":", 2)
        pid = int(pid_text)
    except ValueError:
        return None
    if host != _HOST:
        return None
    if owner == process_owner():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return start == "?" or _start_time(pid) == start


class _ActiveRuns:
    """The flow runs an engine in this process is driving right now."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: dict[UUID, float] = {}

    def add(self, run_id: UUID) -> None:
        with self._lock:
            self._ids[run_id] = time.monotonic()

    def discard(self, run_id: UUID) -> None:
        with self._lock:
            self._ids.pop(run_id, None)

    def __contains__(self, run_id: object) -> bool:
        with self._lock:
            return run_id in self._ids


active_flow_runs = _ActiveRuns()
