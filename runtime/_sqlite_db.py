"""One SQLite connection shared by threads, with group commit and a bound on how long
writes wait for it.

:meth:`Database.write` runs inside a write transaction (``BEGIN IMMEDIATE``: the file's
write lock, which every other process's writers then wait for). ``write(now=True)``
commits at the end, with whatever was pending. ``write(now=False)`` leaves the transaction
open, so many writes share one commit: the next :meth:`Database.commit` (the store actor's
group commit), the next ``now`` write, or, at the latest ``commit_delay`` seconds after the
transaction began, a helper thread's commit. The bound matters more than speed: an open
write transaction blocks every other process's writers.

Each open database is committed and closed when the interpreter exits. A forked child
never touches its parent's connection (SQLite forbids it, closing included) and opens its
own on first use.
"""

from __future__ import annotations

import atexit
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ._exceptions import StoreClosed, StoreError
from ._sqlite_schema import open_connection

__all__ = ["Database"]

_logger = logging.getLogger("stageflow")


class Database:
    """A thread-safe SQLite connection to the store file ``path``; see the module docstring.

    Args:
        path: the store file.
        url: the store's URL, for error messages.
        fsync: sync every commit to disk (``synchronous=FULL``), else WAL's ``NORMAL``.
        busy_timeout: seconds to wait for another process's lock before failing.
        commit_delay: longest time, in seconds, a ``now=False`` write waits for its commit.

    Raises:
        StoreError, ConfigurationError: as :func:`~runtime._sqlite_schema.open_connection`.
    """

    def __init__(
        self, path: Path, url: str, *, fsync: bool, busy_timeout: float, commit_delay: float
    ) -> None:
        self.path = path
        self.url = url
        self.fsync = fsync
        self.busy_timeout = busy_timeout
        self.commit_delay = commit_delay
        self.closed = False
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._pending_since: float | None = None  # when the open write transaction began
        self._flusher: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = self._connect()
        _open.add(self)

    def _connect(self) -> sqlite3.Connection:
        return open_connection(self.path, fsync=self.fsync, busy_timeout=self.busy_timeout)

    @property
    def pending(self) -> bool:
        """Whether writes wait for a commit."""
        return self._pending_since is not None

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """Hold the connection (no other thread uses it meanwhile).

        Raises:
            StoreClosed: the database was closed.
            StoreError: SQLite failed (the file is locked for too long, or damaged).
        """
        with self._lock:
            if self.closed:
                raise StoreClosed(
                    f"The store {self.url!r} is closed; open a new Runtime to use it."
                )
            if self._conn is None:
                self._conn = self._connect()
            conn = self._conn
            try:
                yield conn
            except sqlite3.Error as exc:
                if not conn.in_transaction:
                    self._pending_since = None
                raise self._error(exc) from exc

    @contextmanager
    def write(self, *, now: bool) -> Iterator[sqlite3.Connection]:
        """Hold the connection inside a write transaction; commit at the end if ``now``.

        Raises:
            StoreClosed, StoreError: as :meth:`read`.
        """
        with self.read() as conn:
            if not conn.in_transaction:
                conn.execute("BEGIN IMMEDIATE")
                self._pending_since = time.monotonic()
                if not now:
                    self._wake_flusher()
            try:
                yield conn
            finally:
                if now and conn.in_transaction:
                    conn.execute("COMMIT")
                if not conn.in_transaction:
                    self._pending_since = None

    def commit(self) -> None:
        """Commit the open write transaction, if any (nothing to do once closed).

        Raises:
            StoreError: SQLite could not commit.
        """
        with self._lock:
            if self.closed:
                return
            try:
                self._commit_locked()
            except sqlite3.Error as exc:
                raise self._error(exc) from exc

    def close(self) -> None:
        """Commit what is pending and close the connection.

        Raises:
            StoreError: SQLite could not commit (the connection is closed all the same).
        """
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self._wake.notify_all()
            conn, self._conn = self._conn, None
            self._pending_since = None
            try:
                if conn is not None and conn.in_transaction:
                    conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise self._error(exc) from exc
            finally:
                if conn is not None:
                    conn.close()
                _open.discard(self)

    # -- the commit thread ------------------------------------------------------------

    def _wake_flusher(self) -> None:
        if self._flusher is None:
            self._flusher = threading.Thread(
                target=self._flush_loop, name=f"stageflow-commit {self.path.name}", daemon=True
            )
            self._flusher.start()
        else:
            self._wake.notify()

    def _flush_loop(self) -> None:
        """Commit each write transaction ``commit_delay`` seconds after it began."""
        with self._wake:
            while not self.closed and self._flusher is threading.current_thread():
                since = self._pending_since
                delay = None if since is None else since + self.commit_delay - time.monotonic()
                if delay is None or delay > 0:
                    self._wake.wait(delay)
                    continue
                try:
                    self._commit_locked()
                except sqlite3.Error:
                    _logger.exception(
                        "Could not commit to the store file %s; will retry.", self.path
                    )
                    self._pending_since = time.monotonic()

    def _commit_locked(self) -> None:
        conn = self._conn
        if conn is not None and conn.in_transaction:
            conn.execute("COMMIT")
        self._pending_since = None

    def _error(self, exc: sqlite3.Error) -> StoreError:
        if isinstance(exc, sqlite3.OperationalError) and (
            "locked" in str(exc) or "busy" in str(exc)
        ):
            return StoreError(
                f"The store file {self.path} stayed locked by another process for more than "
                f"{self.busy_timeout:g} s ({exc}); that process may be stuck. Try again, or "
                "stop it."
            )
        return StoreError(f"The store file {self.path} could not be used: {exc}.")

    def _after_fork_in_child(self) -> None:
        _inherited.append(self._conn)  # never closed here: it is the parent's
        self._conn = None
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._flusher = None
        self._pending_since = None


# -- process lifetime ---------------------------------------------------------------------

_open: weakref.WeakSet[Database] = weakref.WeakSet()
_inherited: list[Any] = []


@atexit.register
def _close_at_exit() -> None:
    """Commit what is pending in every open database when the interpreter exits."""
    for database in list(_open):
        try:
            database.close()
        except Exception:
            _logger.exception("Could not commit to the store file %s at exit.", database.path)


def _after_fork_in_child() -> None:
    for database in list(_open):
        database._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
