"""One SQLite connection shared by threads, with write-behind group commit.

Writes that can wait (:meth:`Database.defer`) are kept in memory, in order, and reach the
file together, in one transaction: at the next :meth:`Database.commit` (the store actor's
group commit), with the next immediate write (:meth:`Database.write`), before the next
read of the tables they touch (:meth:`Database.read`), and at the latest ``commit_delay``
seconds after the first of them. While writes keep coming, the thread that defers one when
the batch is half that old commits it; a helper thread commits a batch nobody added to in
time. (Committing from the busy thread rather than the helper matters: SQLite releases the
GIL around every row it writes, and a helper contending with a busy thread for it takes
many times longer, holding the connection meanwhile.)

So the file's write lock, which every other process's writers wait for, is held only while
a batch is written, never while writes accumulate, and deferring never waits for the
connection. A batch runs each statement once for all its rows (``executemany``). Deferred
updates may carry a key; a later one with the same key replaces the earlier (a run's
current state is written once per batch, not once per state).

The helper thread also checkpoints the WAL (copies it into the database file, with an
fsync) about once a second, on a connection of its own, so commits rarely pay for it: a
connection's automatic checkpoint only starts once the WAL is large (``open_connection``).

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
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from ..core._exceptions import StoreClosed, StoreError
from ._sqlite_schema import open_connection

__all__ = ["Database"]

_logger = logging.getLogger("stageflow")

Write = tuple[str, tuple[Any, ...]]
"""A statement and its parameters."""
Latest = tuple[str, Callable[[], tuple[Any, ...]]]
"""A statement and a function that returns its parameters when the batch is written."""

CHECKPOINT_INTERVAL = 1.0
"""Seconds between the commit thread's WAL checkpoints."""


class Database:
    """A thread-safe SQLite connection to the store file ``path``; see the module docstring.

    Args:
        path: the store file.
        url: the store's URL, for error messages.
        fsync: sync every commit to disk (``synchronous=FULL``), else WAL's ``NORMAL``.
        busy_timeout: seconds to wait for another process's lock before failing.
        commit_delay: longest time, in seconds, a deferred write waits for its commit.
        clock: the time in seconds for ``commit_delay`` (tests pass a fake one).

    Raises:
        StoreError, ConfigurationError: as :func:`~runtime.store._sqlite_schema.open_connection`.
    """

    def __init__(
        self,
        path: Path,
        url: str,
        *,
        fsync: bool,
        busy_timeout: float,
        commit_delay: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self._clock = clock
        self.url = url
        self.fsync = fsync
        self.busy_timeout = busy_timeout
        self.commit_delay = commit_delay
        self.closed = False
        self.writes = 0
        """How many batches or immediate writes have reached the file so far."""
        self._lock = threading.RLock()  # the connection; may be held when taking _buffer
        self._buffer = threading.Lock()  # the deferred writes and _pending_since
        self._due = threading.Condition(self._buffer)
        self._deferred: list[Write] = []
        self._latest: dict[Any, Latest] = {}  # keyed deferred updates
        self._pending_since: float | None = None  # when the oldest uncommitted write was made
        self._flusher: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = self._connect()
        # Stateless, so shared by every thread (the state is the lock and the connection).
        self._peek = _Access(self, flush=False, commit=False)
        self._read = _Access(self, flush=True, commit=False)
        self._write = _Access(self, flush=True, commit=True)
        self._held = _Held(self)
        _open.add(self)

    def _connect(self) -> sqlite3.Connection:
        return open_connection(self.path, fsync=self.fsync, busy_timeout=self.busy_timeout)

    @property
    def pending(self) -> bool:
        """Whether writes wait for a commit."""
        return self._pending_since is not None

    def peek(self) -> _Access:
        """Hold the connection, leaving deferred writes deferred (for pragmas, and tables
        that are never written later): ``with db.peek() as conn``.

        Raises:
            StoreClosed: the database was closed.
            StoreError: SQLite failed (the file is locked for too long, or damaged).
        """
        return self._peek

    def peek_if_free(self) -> _Held | None:
        """Like :meth:`peek`, but None at once if another thread holds the connection
        (the lock is taken already: use the answer in a ``with``)."""
        if not self._lock.acquire(blocking=False):
            return None
        return self._held

    def read(self) -> _Access:
        """Hold the connection, deferred writes committed first, so reads see them.

        Raises:
            StoreClosed, StoreError: as :meth:`peek`.
        """
        return self._read

    def write(self) -> _Access:
        """Hold the connection in a write transaction, after the deferred writes; commit
        everything at the end.

        Raises:
            StoreClosed, StoreError: as :meth:`peek`.
        """
        return self._write

    def defer(self, writes: list[Write], latest: tuple[Any, Latest] | None = None) -> None:
        """Execute ``writes`` (INSERTs and UPDATEs, as ``(sql, params)``) later, in a batch
        (see the module docstring), then ``latest`` (``(key, (sql, make_params))``), unless
        a later ``latest`` of the same key replaces it; its parameters are made when the
        batch is written (a run's current columns, read then). A batch runs each statement
        once with all its parameters (``executemany``): the INSERTs, the UPDATEs, the
        latest.

        Raises:
            StoreClosed: the database was closed.
        """
        with self._buffer:
            if self.closed:
                raise StoreClosed(
                    f"The store {self.url!r} is closed; open a new Runtime to use it."
                )
            self._deferred += writes
            if latest is not None:
                self._latest[latest[0]] = latest[1]
            since = self._pending_since
            if since is None:
                self._pending_since = self._clock()
                if self._flusher is None:
                    self._flusher = threading.Thread(
                        target=self._flush_loop,
                        name=f"stageflow-commit {self.path.name}",
                        daemon=True,
                    )
                    self._flusher.start()
                else:
                    self._due.notify()
                return
        # Half due, and writes keep coming: commit here (see the module docstring).
        if self._clock() - since >= self.commit_delay / 2 and self._lock.acquire(blocking=False):
            try:
                if not self.closed:
                    self._commit_locked()
            except sqlite3.Error:
                self._after_failed_commit()
            finally:
                self._lock.release()

    def forget(self, key: Any) -> None:
        """Drop the deferred write of ``key``, if any (a later unkeyed write covers it)."""
        with self._buffer:
            self._latest.pop(key, None)

    def commit(self) -> None:
        """Execute the deferred writes and commit (nothing to do once closed).

        Raises:
            StoreError: SQLite could not commit.
        """
        with self._lock:
            if not self.closed:
                self._commit_checked()

    def _commit_checked(self) -> None:
        """:meth:`_commit_locked`, with SQLite's errors as :class:`StoreError`; under the lock."""
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
            try:
                self._commit_checked()
            finally:
                with self._buffer:
                    self.closed = True
                    self._pending_since = None
                    self._deferred.clear()
                    self._latest.clear()
                    self._due.notify_all()
                conn, self._conn = self._conn, None
                if conn is not None:
                    conn.close()
                _open.discard(self)

    # -- executing and committing (self._lock held) -----------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self.closed:
            raise StoreClosed(f"The store {self.url!r} is closed; open a new Runtime to use it.")
        conn = self._conn
        if conn is None:
            conn = self._conn = self._connect()
        return conn

    def _flush(self, conn: sqlite3.Connection) -> None:
        """Execute the deferred writes in a write transaction, left open."""
        if not self._deferred and not self._latest:
            return
        if not conn.in_transaction:
            conn.execute("BEGIN IMMEDIATE")  # may time out: the writes are still here then
        with self._buffer:
            writes = self._deferred
            latest = list(self._latest.values())
            self._deferred = []
            self._latest.clear()
        writes += [(sql, make()) for sql, make in latest]
        self.writes += 1
        batches: dict[str, list[tuple[Any, ...]]] = {}
        for sql, params in writes:
            batches.setdefault(sql, []).append(params)
        # One executemany per statement: the INSERTs first, then the UPDATEs (each kind in
        # the order deferred), so an update never runs before the insert of its row.
        try:
            for sql in sorted(batches, key=lambda sql: not sql.startswith("INSERT")):
                conn.executemany(sql, batches[sql])
        except sqlite3.Error:
            # Not half a batch: the file keeps what was committed before it.
            _logger.error("Could not write %d deferred writes to %s.", len(writes), self.path)
            conn.execute("ROLLBACK")
            self._committed()
            raise

    def _commit_locked(self) -> None:
        if self._deferred or self._latest:
            self._flush(self._connection())
        conn = self._conn
        if conn is not None and conn.in_transaction:
            conn.execute("COMMIT")
        self._committed()

    def _committed(self) -> None:
        with self._buffer:
            # Writes deferred during the commit keep the old time: they are due at once.
            if not self._deferred and not self._latest:
                self._pending_since = None

    def _error(self, exc: sqlite3.Error) -> StoreError:
        text = str(exc)
        if isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text):
            return StoreError(
                f"The store file {self.path} stayed locked by another process for more than "
                f"{self.busy_timeout:g} s ({exc}); that process may be stuck. Try again, or "
                "stop it."
            )
        return StoreError(f"The store file {self.path} could not be used: {exc}.")

    # -- the commit thread ------------------------------------------------------------

    def _flush_loop(self) -> None:
        """Commit deferred writes ``commit_delay`` seconds after the first of them; now and
        then, checkpoint the WAL into the database file."""
        checkpointer: sqlite3.Connection | None = None
        last_checkpoint = time.monotonic()
        try:
            while True:
                with self._due:
                    while True:
                        if self.closed or self._flusher is not threading.current_thread():
                            return
                        since = self._pending_since
                        delay = None if since is None else since + self.commit_delay - self._clock()
                        if delay is not None and delay <= 0:
                            break
                        self._due.wait(delay)
                with self._lock:
                    if self.closed:
                        return
                    try:
                        self._commit_locked()
                    except sqlite3.Error:
                        self._after_failed_commit()
                if time.monotonic() - last_checkpoint >= CHECKPOINT_INTERVAL:
                    last_checkpoint = time.monotonic()
                    checkpointer = self._checkpoint(checkpointer)
        finally:
            if checkpointer is not None:
                checkpointer.close()

    def _checkpoint(self, conn: sqlite3.Connection | None) -> sqlite3.Connection | None:
        """Copy committed WAL pages into the database file, on a connection of this thread:
        the commits themselves then rarely pay for it (and the fsync it implies)."""
        try:
            if conn is None:
                conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error:
            _logger.debug("Could not checkpoint the store file %s.", self.path, exc_info=True)
        return conn

    def _after_failed_commit(self) -> None:
        """Log; roll back a half-executed batch; retry later if the writes are still here
        (the file was locked too long)."""
        retry = bool(self._deferred or self._latest)
        _logger.exception(
            "Could not commit to the store file %s%s.",
            self.path,
            "; will retry" if retry else "; the writes of this batch are lost",
        )
        try:
            if self._conn is not None and self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            _logger.exception("Could not roll back in the store file %s.", self.path)
        with self._buffer:
            self._pending_since = self._clock() if retry else None

    def _after_fork_in_child(self) -> None:
        _inherited.append(self._conn)  # never closed here: it is the parent's
        self._conn = None
        self._lock = threading.RLock()
        self._buffer = threading.Lock()
        self._due = threading.Condition(self._buffer)
        self._flusher = None
        self._pending_since = None
        self._deferred = []
        self._latest = {}


class _Access:
    """``with``-able access to a :class:`Database`'s connection (see :meth:`Database.peek`,
    :meth:`~Database.read` and :meth:`~Database.write`). A class rather than a
    ``contextmanager`` generator: the store goes through here on every read."""

    __slots__ = ("_commit", "_db", "_flush")

    def __init__(self, db: Database, *, flush: bool, commit: bool) -> None:
        self._db = db
        self._flush = flush
        self._commit = commit

    def __enter__(self) -> sqlite3.Connection:
        db = self._db
        lock = db._lock
        lock.acquire()
        try:
            conn = db._connection()
            if self._commit:  # the deferred writes go in the same transaction
                db._flush(conn)
                if not conn.in_transaction:
                    conn.execute("BEGIN IMMEDIATE")
                db.writes += 1
            elif self._flush and (db._deferred or db._latest):
                db._commit_locked()
        except sqlite3.Error as exc:
            lock.release()
            raise db._error(exc) from exc
        except BaseException:
            lock.release()
            raise
        return conn

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        db = self._db
        try:
            conn = db._conn
            if self._commit and conn is not None and conn.in_transaction:
                conn.execute("COMMIT")
                db._committed()
        except sqlite3.Error as error:
            raise db._error(error) from error
        finally:
            db._lock.release()
        if isinstance(exc, sqlite3.Error):
            raise db._error(exc) from exc


class _Held(_Access):
    """Like the ``peek`` access, for a lock :meth:`Database.peek_if_free` already took."""

    __slots__ = ()

    def __init__(self, db: Database) -> None:
        super().__init__(db, flush=False, commit=False)

    def __enter__(self) -> sqlite3.Connection:
        db = self._db
        try:
            return db._connection()
        except sqlite3.Error as exc:
            db._lock.release()
            raise db._error(exc) from exc
        except BaseException:
            db._lock.release()
            raise


# -- process lifetime ---------------------------------------------------------------------

_open: weakref.WeakSet[Database] = weakref.WeakSet()
_inherited: list[Any] = []


@atexit.register
def _close_at_exit() -> None:
    """Commit what is pending in every open database when the interpreter exits."""
    for database in list(_open):
        try:
            database.close()
        except Exception:  # one failing file must not keep the others open
            _logger.exception("Could not commit to the store file %s at exit.", database.path)


def _after_fork_in_child() -> None:
    for database in list(_open):
        database._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
