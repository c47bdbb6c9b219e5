"""The PostgreSQL store's connections: a psycopg pool, calls that ride out a lost
connection, and the batch of task-run writes.

**A lost connection** (a server restart, a network cut) does not fail a call at once:
:meth:`Database.run` tries it again on a new connection, with a growing delay, for up to
``reconnect_timeout`` seconds, then raises :class:`~runtime.core._exceptions.StoreError`
naming the server; after that, until a call succeeds, calls try for one second only (a
flow's cleanup after a failed write fails fast). Each call is one statement or one
transaction, so it landed whole or not at all; a call told it is ``retried`` checks
whether its first try landed before the connection broke.

**The batch** (:mod:`runtime.store._postgres_batch`) is written before any other call
(reads see it, flow-run writes follow it), at the store's group commit, by its helper
thread when due, and when the interpreter exits.

A forked child never touches its parent's connections (closing one would end the
parent's session): it opens its own on first use.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import psycopg
from psycopg.types.string import TextLoader
from psycopg_pool import ConnectionPool, PoolTimeout

from ..core._exceptions import StoreClosed, StoreError
from ._postgres_batch import Batch, TaskRunBatch
from ._postgres_schema import Statements

__all__ = ["Database", "one_line", "unreachable"]

_logger = logging.getLogger("stageflow")
_T = TypeVar("_T")
_LOST_STATES = ("57P01", "57P02", "57P03")  # admin/crash shutdown, cannot connect now


def one_line(exc: BaseException) -> str:
    """libpq's message, on one line."""
    return " ".join(str(exc).split())


def unreachable(where: str, exc: BaseException) -> StoreError:
    """The error for a server that cannot be connected to at all."""
    return StoreError(
        f"The PostgreSQL server at {where} cannot be reached or refused the connection "
        f"({one_line(exc)}). Check that it runs and accepts TCP connections there, and the "
        "user, password and database in the store URL."
    )


def _lost(exc: BaseException) -> bool:
    """Whether ``exc`` says the connection was lost (worth trying again on a new one)."""
    if isinstance(exc, (PoolTimeout, psycopg.InterfaceError)):
        return True
    if isinstance(exc, psycopg.OperationalError):
        state = exc.sqlstate
        return state is None or state.startswith("08") or state in _LOST_STATES
    return False


class Database:
    """The connections of one store; see the module docstring.

    Args:
        conninfo: the server's connection string.
        url: the store's URL, for messages.
        where: ``host:port/dbname``, for messages.
        sql: the store's statements.
        fsync: wait for the server's WAL flush at every commit (else ``synchronous_commit
            = off`` for the store's sessions).
        reconnect_timeout: seconds a call keeps trying after the connection was lost.
        pool_size: the most connections open at once.
        commit_delay: longest time, in seconds, a task-run write waits in the batch.
        on_fork: called in a forked child, before its first call.
    """

    def __init__(
        self,
        conninfo: str,
        *,
        url: str,
        where: str,
        sql: Statements,
        fsync: bool,
        reconnect_timeout: float,
        pool_size: int,
        commit_delay: float,
        on_fork: Callable[[], None],
    ) -> None:
        self._conninfo = conninfo
        self.url = url
        self.where = where
        self._sql = sql
        self.fsync = fsync
        self.reconnect_timeout = reconnect_timeout
        self._pool_size = pool_size
        self._on_fork = on_fork
        self.closed = False
        self._stop = threading.Event()
        self._gave_up = False  # the last call found the server unreachable
        self.batch = TaskRunBatch(self._flush_when_due, commit_delay)
        self._pid = os.getpid()
        self._pool = self._open_pool()
        _open.add(self)

    def _open_pool(self) -> ConnectionPool:
        pool = ConnectionPool(
            self._conninfo,
            min_size=1,
            max_size=self._pool_size,
            # Every statement is prepared on the server at its first use on a connection.
            kwargs={"autocommit": True, "prepare_threshold": 0},
            configure=self._configure,
            name=f"stageflow {self.where}",
            open=False,
        )
        pool.open(wait=False)
        return pool

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        conn.adapters.register_loader("json", TextLoader)  # bodies are parsed by pydantic
        conn.execute("SET TIME ZONE 'UTC'")
        if not self.fsync:
            conn.execute("SET synchronous_commit TO off")

    def check_open(self) -> None:
        """Raise ``StoreClosed`` if the store is closed."""
        if self.closed:
            raise StoreClosed(f"The store {self.url!r} is closed; open a new Runtime to use it.")

    def run(self, work: Callable[[psycopg.Connection[Any], bool], _T], flush: bool = True) -> _T:
        """Return ``work(connection, retried)`` on a pooled connection, trying again on a
        new one while the connection is lost (``retried`` is then True). The batch is
        written first (unless ``flush`` is false), so that reads see it and writes follow
        it.

        Raises:
            StoreClosed: the store is closed.
            StoreError: the server stayed unreachable, or refused the statement.
        """
        # Once a call gave up, the next ones try for a second only, until one succeeds.
        window = min(1.0, self.reconnect_timeout) if self._gave_up else self.reconnect_timeout
        deadline = time.monotonic() + window
        retried = False
        delay = 0.0
        while True:
            self.check_open()
            if self._pid != os.getpid():
                self._after_fork()
            if flush and self.batch.pending:
                self.flush()
            try:
                timeout = max(0.05, deadline - time.monotonic())
                with self._pool.connection(timeout=timeout) as conn:
                    result = work(conn, retried)
                self._gave_up = False
                return result
            except (psycopg.Error, PoolTimeout) as exc:
                if not _lost(exc):
                    raise StoreError(
                        f"The PostgreSQL server at {self.where} refused a statement of the "
                        f"store {self.url!r}: {one_line(exc)}."
                    ) from exc
                if not retried and not self._gave_up:
                    _logger.warning(
                        "Lost the connection to the PostgreSQL server at %s (%s); trying "
                        "again for up to %g s.",
                        self.where,
                        one_line(exc),
                        window,
                    )
                retried = True
                if time.monotonic() >= deadline:
                    self._gave_up = True
                    raise StoreError(
                        f"Lost the connection to the PostgreSQL server at {self.where} and "
                        f"could not get it back within {window:g} s ({one_line(exc)}). Check "
                        "that the server runs and accepts connections there, then try again."
                    ) from exc
                self._stop.wait(min(delay, max(0.0, deadline - time.monotonic())))
                delay = min(max(delay * 2, 0.02), 1.0)

    def _after_fork(self) -> None:
        _inherited.append(self._pool)
        self._pid = os.getpid()
        self.batch.forget()
        self._pool = self._open_pool()
        self._on_fork()

    # -- the batch ----------------------------------------------------------------------

    def flush(self) -> None:
        """Write the batch (waiting for one being written first).

        Raises:
            StoreError: the server stayed unreachable (the batch is kept for a later try).
        """
        batch = self.batch
        with batch.flushing:
            taken = batch.take()
            if not any(taken):
                return
            try:
                self.run(partial(self._write_batch, taken), flush=False)
            except BaseException:
                batch.put_back(taken)
                raise

    def _write_batch(self, batch: Batch, conn: psycopg.Connection[Any], retried: bool) -> None:
        """Write a batch in one transaction (each statement once, in one pipeline)."""
        runs, states, updates = batch
        sql = self._sql
        if retried and (states or runs):
            # Did the first try land before the connection broke? Then all of it did.
            if states:
                table, first = f"{sql.schema}.states", states[0][2]
            else:
                table, first = sql.table["task"], runs[0][0]
            if conn.execute(f"SELECT 1 FROM {table} WHERE id = %s", (first,)).fetchone():
                return
        with conn.transaction(), conn.cursor() as cur:
            if runs:
                cur.executemany(sql.batch_insert_run, runs)
            if states:
                cur.executemany(sql.batch_insert_state, states)
            for full in (True, False):
                rows = [row for _, all_columns, row in updates if all_columns is full]
                if rows:
                    cur.executemany(sql.batch_update_run[full], rows)

    def _flush_when_due(self) -> None:
        """The batch's helper thread: write it (log what fails; it is kept for later)."""
        if self.closed:
            return
        try:
            self.flush()
        except Exception:
            _logger.exception(
                "Could not write task-run changes to the PostgreSQL store at %s; will retry.",
                self.where,
            )

    def close(self) -> None:
        """Write the batch and close the connections.

        Raises:
            StoreError: the last batch could not be written (closed all the same).
        """
        if self.closed:
            return
        try:
            if self._pid == os.getpid():
                self.flush()
        finally:
            self.closed = True
            self._stop.set()
            self.batch.close()
            if self._pid == os.getpid():
                self._pool.close(timeout=5)
            _open.discard(self)


_inherited: list[Any] = []  # a forked child's copies of its parent's pools: never closed
_open: weakref.WeakSet[Database] = weakref.WeakSet()


@atexit.register
def _write_batches_at_exit() -> None:
    """Write what open stores still hold before the interpreter ends (its threads die)."""
    for db in list(_open):
        if not db.closed and db._pid == os.getpid() and db.batch.pending:
            try:
                db.flush()
            except Exception:
                _logger.exception("Could not write the last task-run changes to %s.", db.where)
