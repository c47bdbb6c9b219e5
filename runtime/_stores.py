"""Choosing a store backend from a URL, and the process's default store."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from ._exceptions import ConfigurationError
from ._memory_store import MemoryStore
from ._sqlite_store import SqliteStore
from ._store import StoreBackend

__all__ = ["STORE_ENV", "default_backend", "open_backend", "stageflow_home"]

STORE_ENV = "STAGEFLOW_STORE"
"""Environment variable: the URL of the store to use when none is given."""

_default: StoreBackend | None = None
_default_lock = threading.Lock()


def stageflow_home() -> Path:
    """Return ``$STAGEFLOW_HOME``, or ``~/.stageflow`` when it is unset."""
    home = os.environ.get("STAGEFLOW_HOME")
    return Path(home).expanduser() if home else Path.home() / ".stageflow"


def open_backend(url: str) -> tuple[StoreBackend, bool]:
    """Return the backend for ``url`` and whether the caller owns (must close) it.

    ``memory://`` gives a new private in-memory store; ``sqlite:///relative/path.db`` and
    ``sqlite:////absolute/path.db`` (optionally ``?fsync=1``) open an SQLite file, which
    other processes may use at the same time.

    Raises:
        ConfigurationError: the URL names no store this build supports, or its options are
            invalid, or the SQLite file belongs to a newer stageflow or another program.
        StoreError: the SQLite file cannot be created or read.
    """
    if url.startswith("memory://"):
        return MemoryStore(url), True
    if url.startswith("sqlite:"):
        return SqliteStore.from_url(url), True
    raise ConfigurationError(
        f"Unsupported store URL {url!r}: use 'memory://' or 'sqlite:///path/to/file.db'."
    )


def default_backend() -> StoreBackend:
    """Return the store used when none is configured, shared by the whole process:
    ``$STAGEFLOW_STORE`` if set, else the SQLite file ``stageflow.db`` in
    :func:`stageflow_home`. A closed default store is replaced by a new one.

    Raises:
        ConfigurationError: ``$STAGEFLOW_STORE`` is not a valid store URL.
        StoreError: the store file cannot be created or read.
    """
    global _default
    with _default_lock:
        if _default is None or _default.closed:
            url = os.environ.get(STORE_ENV)
            if url:
                _default = open_backend(url)[0]
            else:
                _default = SqliteStore(stageflow_home() / "stageflow.db")
        return _default
