"""Process owner tokens: which process runs a flow run, and whether it still runs.

A flow run records its owner when it starts: ``"host:pid:start:nonce"``, where ``start``
is the process's start time (so a recycled pid is not mistaken for the original process)
and ``nonce`` is random per process (it keeps the token of every process unique, even where
start times are unknown). The token is also the key of the process's lease in a store
(:mod:`runtime.orchestration._liveness`).
"""

from __future__ import annotations

import os
import secrets
import socket
from datetime import datetime, timezone
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..store._backend import StoreBackend

__all__ = ["HOST", "owner_alive", "owner_gone", "process_owner"]

HOST = socket.gethostname()
"""This machine's host name, as owner tokens and leases record it."""


def _stat(pid: int) -> tuple[str, str]:
    """The process's state letter and start time, from ``/proc`` ("?" if unknown)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # Fields 3 (state) and 22 (starttime) follow the parenthesised command name.
            fields = stat.read().rsplit(b")", 1)[1].split()
            return fields[0].decode(), fields[19].decode()
    except (OSError, IndexError):
        return "?", "?"


def _start_time(pid: int) -> str:
    return _stat(pid)[1]


def _new_owner(pid: int) -> str:
    return f"{HOST}:{pid}:{_start_time(pid)}:{secrets.token_hex(4)}"


_OWNER = _new_owner(os.getpid())


def process_owner() -> str:
    """Return this process's owner token, ``"host:pid:start:nonce"``."""
    global _OWNER
    pid = os.getpid()
    if f":{pid}:" not in _OWNER:  # forked since import
        _OWNER = _new_owner(pid)
    return _OWNER


def owner_alive(owner: str | None) -> bool | None:
    """Return whether the process behind ``owner`` still runs; None if it cannot be told
    from here (another host, or an unknown format).

    Tokens without a nonce (``"host:pid:start"``, recorded by older versions) are read too.
    """
    if not owner:
        return None
    parts = owner.split(":")
    if len(parts) not in (3, 4):
        return None
    host, pid_text, start = parts[:3]
    try:
        pid = int(pid_text)
    except ValueError:
        return None
    if host != HOST:
        return None
    if owner == process_owner():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    state, started = _stat(pid)
    if state in ("Z", "X"):  # killed, not yet reaped by its parent: a zombie runs nothing
        return False
    return start == "?" or started == start


def owner_gone(backend: StoreBackend, owner: str | None, since: datetime | None = None) -> bool:
    """Whether the process behind ``owner`` is gone: it ran on this host and no longer
    does, or its lease in ``backend`` expired (read on the wall clock). With ``since``
    (when a run of it was recorded), a lease that expired before then does not count: the
    process was alive after all, and has let its lease lapse since. An owner with no
    lease on another host cannot be told gone (False)."""
    if not owner or owner == process_owner():
        return False
    if owner_alive(owner) is False:
        return True
    lease = backend.read_lease(owner)
    if lease is None or (since is not None and since > lease.expires):
        return False
    return lease.expires < datetime.now(timezone.utc)
