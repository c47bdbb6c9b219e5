"""Process owner tokens: which process runs a flow run, and whether it still runs.

A flow run records its owner when it starts: ``"host:pid:start"``, where ``start`` is the
process's start time (so a recycled pid is not mistaken for the original process).
"""

from __future__ import annotations

import os
import socket

__all__ = ["owner_alive", "process_owner"]

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
