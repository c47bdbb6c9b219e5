"""Choosing a store backend from a URL, and the process's default store."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from ._exceptions import ConfigurationError
from ._memory_store import MemoryStore
from ._store import StoreBackend

__all__ = ["default_backend", "open_backend", "stageflow_home"]

_default: StoreBackend | None = None
_default_lock = threading.Lock()


def stageflow_home() -> Path:
    """Return ``$STAGEFLOW_HOME``, or ``~/.stageflow`` when it is unset."""
    home = os.environ.get("STAGEFLOW_HOME")
    return Path(home).expanduser() if home else Path.home() / ".stageflow"


def open_backend(url: str) -> tuple[StoreBackend, bool]:
    """Return the backend for ``url`` and whether the caller owns (must close) it.

    ``memory://`` gives a new private in-memory store.

    Raises:
        ConfigurationError: the URL names no store this build supports.
    """
    if url == "memory://" or url.startswith("memory://"):
        return MemoryStore(url), True
    raise ConfigurationError(
        f"Unsupported store URL {url!r}: use 'memory://' or 'sqlite:///path/to/file.db'."
    )


def default_backend() -> StoreBackend:
    """Return the store used when none is configured (shared by the whole process)."""
    global _default
    with _default_lock:
        if _default is None or _default.closed:
            _default = MemoryStore("memory://default")
        return _default
