"""``sqlite:///path``: runs and their history in an SQLite file that processes share.

The embedded default store. The file layout and its migrations are in
:mod:`runtime._sqlite_schema`.

**Commit policy.** Task-run writes (a new task run, its states, its updates) go into an
open write transaction and become durable at :meth:`SqliteStore.commit`, which the store
actor calls (group commit), or at the latest ``commit_delay`` seconds after the
transaction opened, when a helper thread commits it: an open write transaction blocks
every other process's writers, so it is never left open for long. What other processes
must see at once commits at once, with whatever was pending: flow-run writes (cancels,
pauses, resumes and final states are flow-run states), run inputs, cache records, and
concurrency limits and slots. The file is in WAL mode; a commit reaches the file without
an fsync (``synchronous=NORMAL``: it survives a killed process, not a power cut) unless
``fsync`` is on (``?fsync=1`` in the URL, or ``STAGEFLOW_STORE_FSYNC=1``).

**Identity map.** The engine changes the run objects it holds and relies on ``run.state``
being current, and a state's data (an exception, a value that was not persisted) exists
only in the process that made it. So the store answers with the objects it was given or
already returned: it keeps every run it sees in a weak identity map, plus strong
references to the ``keep_recent`` runs it wrote last. Other runs are built from rows; a
state whose data was not a persisted result then carries ``states.UNAVAILABLE``.

**Other processes.** Lists and histories are read from the file. Changes that other
processes commit reach the objects held here in :meth:`SqliteStore.sync_external`, which
also runs (cheaply) before every read: when ``PRAGMA data_version`` says another
connection committed, the states and run updates recorded since the last look are applied
to the held runs, and their subscribers are notified.
"""

from __future__ import annotations

import atexit
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Union
from urllib.parse import parse_qs, unquote
from uuid import UUID

from ._exceptions import ConfigurationError, ObjectNotFound, StoreClosed, StoreError
from ._models import FlowRun, RunKind, TaskRun
from ._sqlite_schema import open_connection
from ._store import CacheRecord, StoreBackend
from .results import ResultRef
from .states import UNAVAILABLE, State, StateType

__all__ = ["FSYNC_ENV", "SqliteStore"]

FSYNC_ENV = "STAGEFLOW_STORE_FSYNC"
"""Environment variable: ``1`` makes SQLite stores fsync every commit unless told otherwise."""

_logger = logging.getLogger("stageflow")
Run = Union[FlowRun, TaskRun]

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})
_MICROSECOND = timedelta(microseconds=1)
_NO_DATA = {"data"}
_NOT_IN_BODY = {"state", "state_history"}
_CHUNK = 500  # ids per IN (...) query, well below SQLite's parameter limit
_MODELS: dict[str, type[Run]] = {"flow": FlowRun, "task": TaskRun}
_TABLES = {"flow": "flow_runs", "task": "task_runs"}
_LINK_COLUMNS = {
    "flow": ("flow_name", "parent_task_run_id"),
    "task": ("flow_run_id", "task_key", "dynamic_key"),
}
_RUN_COLUMNS = ("id", "body", "run_count", "start_time", "end_time", "expected_start_time", "total_run_time_us")
_SELECT_RUN = {kind: f"SELECT {', '.join(_RUN_COLUMNS)} FROM {table}" for kind, table in _TABLES.items()}
_UPDATE_STATE = {
    kind: f"UPDATE {table} SET state_type = ?, state_name = ?, run_count = ?, start_time = ?, "
    "end_time = ?, expected_start_time = ?, total_run_time_us = ? WHERE id = ?"
    for kind, table in _TABLES.items()
}
_WRITE_COLUMNS = {
    kind: ("name", "state_type", "state_name", "run_count", "start_time", "end_time",
           "expected_start_time", "total_run_time_us", "created", "body", *links)
    for kind, links in _LINK_COLUMNS.items()
}
_INSERT_RUN = {
    kind: f"INSERT OR IGNORE INTO {_TABLES[kind]} (id, {', '.join(columns)}) "
    f"VALUES (?{', ?' * len(columns)})"
    for kind, columns in _WRITE_COLUMNS.items()
}
_UPDATE_RUN = {
    kind: f"UPDATE {_TABLES[kind]} SET {', '.join(f'{c} = ?' for c in columns)} WHERE id = ?"
    for kind, columns in _WRITE_COLUMNS.items()
}
_INSERT_STATE = (
    "INSERT INTO states (run_id, kind, id, type, name, timestamp, body, result, has_data, writer) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


class SqliteStore(StoreBackend):
    """A store in an SQLite file that several processes may share; see the module docstring.

    Args:
        path: the database file (created, with its directory, if missing).
        fsync: sync every commit to disk (power-loss durable, slower); None takes
            ``$STAGEFLOW_STORE_FSYNC`` (off unless set to 1).
        busy_timeout: seconds to wait for another process's write lock before failing.
        commit_delay: longest time, in seconds, a task-run write waits for its commit.
        keep_recent: how many recently written runs to keep in memory even when nothing
            else refers to them (their unpersisted results stay readable in this process).

    Raises:
        StoreError: the file cannot be created or read as an SQLite database.
        ConfigurationError: the file belongs to a newer stageflow or to another program.
    """

    shared_across_processes = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fsync: bool | None = None,
        busy_timeout: float = 30.0,
        commit_delay: float = 0.02,
        keep_recent: int = 10_000,
    ) -> None:
        super().__init__()
        self.path = Path(os.path.abspath(Path(path).expanduser()))
        self.url = f"sqlite:///{self.path}"
        self.fsync = _env_flag(FSYNC_ENV) if fsync is None else fsync
        self._busy_timeout = busy_timeout
        self._commit_delay = commit_delay
        self._keep_recent = keep_recent
        self._db_lock = threading.RLock()  # guards the connection; taken after self.lock
        self._wake = threading.Condition(self._db_lock)
        self._pending_since: float | None = None  # when the open write transaction began
        self._flusher: threading.Thread | None = None
        self._writer = int.from_bytes(os.urandom(7), "big")  # tags this store's rows
        self._live: dict[str, weakref.WeakValueDictionary[UUID, Run]] = {
            "flow": weakref.WeakValueDictionary(),
            "task": weakref.WeakValueDictionary(),
        }
        self._recent: OrderedDict[UUID, Run] = OrderedDict()
        self._records: OrderedDict[str, CacheRecord] = OrderedDict()
        self._conn: sqlite3.Connection | None = None
        conn = self._connect()
        self._state_seq: int = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM states").fetchone()[0]
        self._update_seq: int = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM run_updates").fetchone()[0]
        self._own_state_seq = self._state_seq
        self._own_update_seq = self._update_seq
        _open_stores.add(self)

    @classmethod
    def from_url(cls, url: str) -> SqliteStore:
        """Open the store ``url`` names: ``sqlite:///relative/path.db`` or
        ``sqlite:////absolute/path.db`` (the path is what follows ``sqlite:///``),
        optionally with ``?fsync=1``.

        Raises:
            ConfigurationError: the URL is not of that form.
        """
        if not url.startswith("sqlite:///"):
            raise ConfigurationError(
                f"Invalid SQLite store URL {url!r}: write 'sqlite:///relative/path.db' or "
                "'sqlite:////absolute/path.db'."
            )
        path, _, query = url[len("sqlite:///"):].partition("?")
        if not path:
            raise ConfigurationError(f"The SQLite store URL {url!r} names no file: add its path after 'sqlite:///'.")
        fsync = None
        for key, values in parse_qs(query, keep_blank_values=True).items():
            value = values[-1].strip().lower()
            if key != "fsync" or value not in _TRUE | _FALSE:
                raise ConfigurationError(
                    f"Unsupported option {key}={values[-1]!r} in the store URL {url!r}: the only "
                    "option is fsync=1 or fsync=0."
                )
            fsync = value in _TRUE
        return cls(unquote(path), fsync=fsync)

    # -- the connection ---------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = open_connection(self.path, fsync=self.fsync, busy_timeout=self._busy_timeout)
        self._data_version = conn.execute("PRAGMA data_version").fetchone()[0]
        self._conn = conn
        return conn

    @contextmanager
    def _use(self) -> Iterator[sqlite3.Connection]:
        """Hold the connection; SQLite errors leave as :class:`StoreError`."""
        with self._db_lock:
            if self._closed:
                raise StoreClosed(f"The store {self.url!r} is closed; open a new Runtime to use it.")
            conn = self._conn or self._connect()
            try:
                yield conn
            except sqlite3.Error as exc:
                if not conn.in_transaction:
                    self._pending_since = None
                raise self._error(exc) from exc

    @contextmanager
    def _write(self, *, now: bool) -> Iterator[sqlite3.Connection]:
        """Hold the connection inside a write transaction; commit at the end if ``now``,
        else leave the transaction to be committed within ``commit_delay``."""
        with self._use() as conn:
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

    def _wake_flusher(self) -> None:
        if self._flusher is None:
            self._flusher = threading.Thread(
                target=self._flush_loop, name=f"stageflow-commit {self.path.name}", daemon=True
            )
            self._flusher.start()
        else:
            self._wake.notify()

    def _flush_loop(self) -> None:
        """Commit each write transaction ``commit_delay`` seconds after it opened."""
        with self._wake:
            while not self._closed and self._flusher is threading.current_thread():
                since = self._pending_since
                delay = None if since is None else since + self._commit_delay - time.monotonic()
                if delay is None or delay > 0:
                    self._wake.wait(delay)
                    continue
                try:
                    self._commit_locked()
                except sqlite3.Error:
                    _logger.exception("Could not commit to the store file %s; will retry.", self.path)
                    self._pending_since = time.monotonic()

    def _commit_locked(self) -> None:
        conn = self._conn
        if conn is not None and conn.in_transaction:
            conn.execute("COMMIT")
        self._pending_since = None

    def _error(self, exc: sqlite3.Error) -> StoreError:
        if isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc)):
            return StoreError(
                f"The store file {self.path} stayed locked by another process for more than "
                f"{self._busy_timeout:g} s ({exc}); that process may be stuck. Try again, or "
                "stop it."
            )
        return StoreError(f"The store file {self.path} could not be used: {exc}.")

    # -- durability -------------------------------------------------------------------

    def has_pending_writes(self) -> bool:
        return self._pending_since is not None

    def commit(self) -> None:
        """Commit the open write transaction, if any.

        Raises:
            StoreError: SQLite could not commit.
        """
        with self._db_lock:
            if self._closed:
                return
            try:
                self._commit_locked()
            except sqlite3.Error as exc:
                raise self._error(exc) from exc

    def close(self) -> None:
        """Commit what is pending and close the file; further use raises ``StoreClosed``."""
        with self._db_lock:
            if self._closed:
                return
            self._closed = True
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
                self._recent.clear()
                self._records.clear()
        _open_stores.discard(self)

    def _after_fork_in_child(self) -> None:
        # The parent's connection must not be used, nor even closed, here (SQLite's rule
        # for fork); keep it referenced and open a new one on first use.
        _inherited_connections.append(self._conn)
        self._conn = None
        self.lock = threading.RLock()
        self._listeners_lock = threading.Lock()
        self._db_lock = threading.RLock()
        self._wake = threading.Condition(self._db_lock)
        self._flusher = None
        self._pending_since = None

    # -- runs --------------------------------------------------------------------------

    def add_flow_run(self, run: FlowRun) -> None:
        self._add("flow", run)

    def add_task_run(self, run: TaskRun) -> None:
        self._add("task", run)

    def _add(self, kind: RunKind, run: Run) -> None:
        with self._write(now=kind == "flow") as conn:
            run_id = str(run.id)
            values = self._run_values(kind, run)
            if conn.execute(_INSERT_RUN[kind], (run_id, *values)).rowcount == 0:
                # Added again: take its new fields, keep its place and its history.
                conn.execute(_UPDATE_RUN[kind], (*values, run_id))
            else:
                history = list(run.state_history)
                if run.state is not None and (not history or history[-1] is not run.state):
                    history.append(run.state)
                for state in history:
                    self._insert_state(conn, kind, run_id, state)
            self._hold(kind, run)

    def read_flow_run(self, run_id: UUID) -> FlowRun:
        return self._read("flow", run_id)  # type: ignore[return-value]

    def read_task_run(self, run_id: UUID) -> TaskRun:
        return self._read("task", run_id)  # type: ignore[return-value]

    def _read(self, kind: RunKind, run_id: UUID) -> Run:
        self.sync_external()
        with self._use() as conn:
            held = self._live[kind].get(run_id)
            if held is not None:
                return held
            row = conn.execute(f"{_SELECT_RUN[kind]} WHERE id = ?", (str(run_id),)).fetchone()
            if row is None:
                raise ObjectNotFound(f"{kind.title()} run {run_id} not found in {self.url}.")
            return self._runs(conn, kind, [row])[0]

    def find_task_run(self, flow_run_id: UUID, task_key: str, dynamic_key: str) -> TaskRun | None:
        self.sync_external()
        with self._use() as conn:
            row = conn.execute(
                f"{_SELECT_RUN['task']} WHERE flow_run_id IS ? AND task_key = ? AND dynamic_key = ? "
                "ORDER BY seq DESC LIMIT 1",
                (_text(flow_run_id), task_key, dynamic_key),
            ).fetchone()
            return None if row is None else self._runs(conn, "task", [row])[0]  # type: ignore[return-value]

    def read_flow_runs(
        self,
        *,
        state_types: Iterable[StateType] | None = None,
        flow_name: str | None = None,
        parent_task_run_id: UUID | None = None,
        limit: int | None = None,
    ) -> list[FlowRun]:
        where: list[str] = []
        params: list[Any] = []
        if state_types is not None:
            types = [StateType(t).value for t in state_types]
            where.append(f"state_type IN ({', '.join('?' * len(types))})")
            params.extend(types)
        if flow_name is not None:
            where.append("flow_name = ?")
            params.append(flow_name)
        if parent_task_run_id is not None:
            where.append("parent_task_run_id = ?")
            params.append(str(parent_task_run_id))
        sql = _SELECT_RUN["flow"] + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY seq DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        self.sync_external()
        with self._use() as conn:
            return self._runs(conn, "flow", conn.execute(sql, params).fetchall())  # type: ignore[return-value]

    def read_task_runs(self, *, flow_run_id: UUID | None = None) -> list[TaskRun]:
        self.sync_external()
        with self._use() as conn:
            if flow_run_id is None:
                rows = conn.execute(f"{_SELECT_RUN['task']} ORDER BY seq").fetchall()
            else:
                rows = conn.execute(
                    f"{_SELECT_RUN['task']} WHERE flow_run_id = ? ORDER BY seq", (str(flow_run_id),)
                ).fetchall()
            return self._runs(conn, "task", rows)  # type: ignore[return-value]

    def record_state(self, kind: RunKind, run: Run, state: State[Any]) -> None:
        with self._write(now=kind == "flow") as conn:
            run_id = str(run.id)
            self._insert_state(conn, kind, run_id, state)
            conn.execute(_UPDATE_STATE[kind], (state.type.value, state.name, *_run_times(run), run_id))
            self._hold(kind, run)

    def update_run(self, kind: RunKind, run: Run) -> None:
        with self._write(now=kind == "flow") as conn:
            run_id = str(run.id)
            conn.execute(_UPDATE_RUN[kind], (*self._run_values(kind, run), run_id))
            cursor = conn.execute(
                "INSERT INTO run_updates (kind, run_id, writer) VALUES (?, ?, ?)",
                (kind, run_id, self._writer),
            )
            self._own_update_seq = cursor.lastrowid or self._own_update_seq
            self._hold(kind, run)

    def read_state_history(self, kind: RunKind, run_id: UUID) -> list[State[Any]]:
        self.sync_external()
        with self._use() as conn:
            rows = conn.execute(
                "SELECT id, body, result, has_data FROM states WHERE run_id = ? AND kind = ? ORDER BY seq",
                (str(run_id), kind),
            ).fetchall()
            if not rows and conn.execute(
                f"SELECT 1 FROM {_TABLES[kind]} WHERE id = ?", (str(run_id),)
            ).fetchone() is None:
                raise ObjectNotFound(f"{kind.title()} run {run_id} not found in {self.url}.")
            held = self._live[kind].get(run_id)
            mine = {str(state.id): state for state in held.state_history} if held is not None else {}
            return [mine.get(row[0]) or _state(*row[1:]) for row in rows]

    # -- building runs ----------------------------------------------------------------

    def _run_values(self, kind: RunKind, run: Run) -> tuple[Any, ...]:
        state = run.state
        body = run.model_dump_json(exclude=_NOT_IN_BODY, fallback=_unencodable)
        links = tuple(_text(getattr(run, column)) for column in _LINK_COLUMNS[kind])
        return (
            run.name,
            None if state is None else state.type.value,
            None if state is None else state.name,
            *_run_times(run),
            run.created.isoformat(),
            body,
            *links,
        )

    def _insert_state(self, conn: sqlite3.Connection, kind: RunKind, run_id: str, state: State[Any]) -> None:
        data = state.data
        cursor = conn.execute(
            _INSERT_STATE,
            (
                run_id,
                kind,
                str(state.id),
                state.type.value,
                state.name,
                state.timestamp.isoformat(),
                state.model_dump_json(exclude=_NO_DATA, exclude_defaults=True),
                data.to_json() if isinstance(data, ResultRef) else None,
                data is not None,
                self._writer,
            ),
        )
        self._own_state_seq = cursor.lastrowid or self._own_state_seq

    def _hold(self, kind: RunKind, run: Run) -> None:
        """Keep ``run`` as the object this store answers with (for a while, strongly)."""
        live = self._live[kind]
        if live.get(run.id) is not run:
            live[run.id] = run
        recent = self._recent
        recent[run.id] = run
        recent.move_to_end(run.id)
        if len(recent) > self._keep_recent:
            recent.popitem(last=False)

    def _runs(self, conn: sqlite3.Connection, kind: RunKind, rows: Sequence[Any]) -> list[Run]:
        """Return the runs of ``rows`` (``_RUN_COLUMNS``): held objects, else built ones."""
        live = self._live[kind]
        found: list[Run | None] = [live.get(UUID(row[0])) for row in rows]
        missing = [row for row, run in zip(rows, found) if run is None]
        if not missing:
            return found  # type: ignore[return-value]
        histories: dict[str, list[State[Any]]] = {}
        for start in range(0, len(missing), _CHUNK):
            ids = [row[0] for row in missing[start:start + _CHUNK]]
            for run_id, *state_row in conn.execute(
                f"SELECT run_id, body, result, has_data FROM states WHERE kind = ? "
                f"AND run_id IN ({', '.join('?' * len(ids))}) ORDER BY seq",
                (kind, *ids),
            ):
                histories.setdefault(run_id, []).append(_state(*state_row))
        built = {}
        for row in missing:
            run = _MODELS[kind].model_validate_json(row[1])
            _set_times(run, row)
            run.state_history = histories.get(row[0], [])
            run.state = run.state_history[-1] if run.state_history else None
            live[run.id] = built[row[0]] = run
        return [run if run is not None else built[row[0]] for row, run in zip(rows, found)]

    # -- other processes --------------------------------------------------------------

    def sync_external(self) -> None:
        """Apply to the runs held here what other processes committed since the last look,
        and notify their subscribers. Cheap when nothing changed."""
        if self._closed:
            return
        changed: list[tuple[Run, State[Any]]] = []
        with self.lock, self._use() as conn:
            version = conn.execute("PRAGMA data_version").fetchone()[0]
            if version == self._data_version:
                # Nobody else committed since the last look: every row so far is ours.
                self._state_seq = max(self._state_seq, self._own_state_seq)
                self._update_seq = max(self._update_seq, self._own_update_seq)
                return
            self._data_version = version
            changed = self._apply_new_states(conn)
            self._apply_run_updates(conn)
        for run, state in changed:
            self.notify(run, state)

    def _apply_new_states(self, conn: sqlite3.Connection) -> list[tuple[Run, State[Any]]]:
        rows = conn.execute(
            "SELECT seq, kind, run_id, id, writer, body, result, has_data FROM states "
            "WHERE seq > ? ORDER BY seq",
            (self._state_seq,),
        ).fetchall()
        if not rows:
            return []
        self._state_seq = rows[-1][0]
        by_run: dict[tuple[str, str], list[Any]] = {}
        for row in rows:
            by_run.setdefault((row[1], row[2]), []).append(row)
        changed: list[tuple[Run, State[Any]]] = []
        for (kind, run_id), group in by_run.items():
            run = self._live[kind].get(UUID(run_id))
            if run is None:
                continue
            known = {str(state.id) for state in run.state_history}
            start = 0  # only states after the last one this object already went through
            for i, row in enumerate(group):
                if row[4] == self._writer or row[3] in known:
                    start = i + 1
            if start == len(group):
                continue
            times = conn.execute(f"{_SELECT_RUN[kind]} WHERE id = ?", (run_id,)).fetchone()
            for row in group[start:]:
                state = _state(*row[5:])
                run.state_history.append(state)
                run.state = state
                changed.append((run, state))
            if times is not None:
                _set_times(run, times)
        return changed

    def _apply_run_updates(self, conn: sqlite3.Connection) -> None:
        rows = conn.execute(
            "SELECT seq, kind, run_id, writer FROM run_updates WHERE seq > ? ORDER BY seq",
            (self._update_seq,),
        ).fetchall()
        if not rows:
            return
        self._update_seq = rows[-1][0]
        for kind, run_id in dict.fromkeys((row[1], row[2]) for row in rows if row[3] != self._writer):
            run = self._live[kind].get(UUID(run_id))
            row = conn.execute(f"{_SELECT_RUN[kind]} WHERE id = ?", (run_id,)).fetchone()
            if run is None or row is None:
                continue
            fresh = _MODELS[kind].model_validate_json(row[1])
            for name in type(run).model_fields:
                if name not in _NOT_IN_BODY:
                    setattr(run, name, getattr(fresh, name))
            _set_times(run, row)

    # -- pause inputs -----------------------------------------------------------------

    def write_run_input(self, flow_run_id: UUID, key: str, value: str) -> None:
        with self._write(now=True) as conn:
            conn.execute(
                "INSERT INTO run_inputs (flow_run_id, key, value) VALUES (?, ?, ?) "
                "ON CONFLICT (flow_run_id, key) DO UPDATE SET value = excluded.value",
                (str(flow_run_id), key, value),
            )

    def read_run_input(self, flow_run_id: UUID, key: str) -> str | None:
        with self._use() as conn:
            row = conn.execute(
                "SELECT value FROM run_inputs WHERE flow_run_id = ? AND key = ?", (str(flow_run_id), key)
            ).fetchone()
            return None if row is None else row[0]  # type: ignore[no-any-return]

    # -- cache records ----------------------------------------------------------------

    def write_cache_record(self, record: CacheRecord) -> None:
        state = record.state
        data = state.data
        with self._write(now=True) as conn:
            conn.execute(
                "INSERT INTO cache_records (key, state, result, has_data, expiration) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET state = excluded.state, "
                "result = excluded.result, has_data = excluded.has_data, expiration = excluded.expiration",
                (
                    record.key,
                    state.model_dump_json(exclude=_NO_DATA, exclude_defaults=True),
                    data.to_json() if isinstance(data, ResultRef) else None,
                    data is not None,
                    _iso(record.expiration),
                ),
            )
            self._records[record.key] = record
            self._records.move_to_end(record.key)
            if len(self._records) > 1000:
                self._records.popitem(last=False)

    def read_cache_record(self, key: str) -> CacheRecord | None:
        with self._use() as conn:
            row = conn.execute(
                "SELECT state, result, has_data, expiration FROM cache_records WHERE key = ?", (key,)
            ).fetchone()
            if row is None:
                return None
            state = _state(*row[:3])
            expiration = _datetime(row[3])
            mine = self._records.get(key)
            if mine is not None and mine.state.id == state.id and mine.expiration == expiration:
                return mine  # written here: its state keeps its in-process data
            return CacheRecord(key=key, state=state, expiration=expiration)

    def delete_cache_record(self, key: str) -> None:
        with self._write(now=True) as conn:
            conn.execute("DELETE FROM cache_records WHERE key = ?", (key,))
            self._records.pop(key, None)

    # -- concurrency limits -----------------------------------------------------------

    def set_concurrency_limit(self, tag: str, limit: int | None) -> None:
        with self._write(now=True) as conn:
            if limit is None:
                conn.execute("DELETE FROM concurrency_limits WHERE tag = ?", (tag,))
            else:
                conn.execute(
                    'INSERT INTO concurrency_limits (tag, "limit") VALUES (?, ?) '
                    'ON CONFLICT (tag) DO UPDATE SET "limit" = excluded."limit"',
                    (tag, limit),
                )

    def read_concurrency_limits(self) -> dict[str, tuple[int, list[UUID]]]:
        with self._use() as conn:
            limits = conn.execute('SELECT tag, "limit" FROM concurrency_limits ORDER BY rowid').fetchall()
            holders: dict[str, list[UUID]] = {}
            for tag, holder in conn.execute("SELECT tag, holder FROM concurrency_slots ORDER BY rowid"):
                holders.setdefault(tag, []).append(UUID(holder))
            return {tag: (limit, holders.get(tag, [])) for tag, limit in limits}

    def acquire_slots(self, tags: Iterable[str], holder: UUID) -> bool:
        tags = list(dict.fromkeys(tags))
        with self._use() as conn:
            marks = ", ".join("?" * len(tags))
            query = f'SELECT tag, "limit" FROM concurrency_limits WHERE tag IN ({marks})'
            if not conn.execute(query, tags).fetchone():
                return True  # no tag is limited: nothing to take
        with self._write(now=True) as conn:
            limits = dict(conn.execute(query, tags).fetchall())  # again, under the write lock
            limited = [tag for tag in tags if tag in limits]
            for tag in limited:
                held, mine = conn.execute(
                    "SELECT COUNT(*), COALESCE(SUM(holder = ?), 0) FROM concurrency_slots WHERE tag = ?",
                    (str(holder), tag),
                ).fetchone()
                if not mine and held >= limits[tag]:
                    return False
            conn.executemany(
                "INSERT OR IGNORE INTO concurrency_slots (tag, holder) VALUES (?, ?)",
                [(tag, str(holder)) for tag in limited],
            )
            return True

    def release_slots(self, holder: UUID) -> None:
        # Like the memory store, releasing never fails, even once the store is closed.
        try:
            with self._use() as conn:
                query = "SELECT 1 FROM concurrency_slots WHERE holder = ? LIMIT 1"
                if conn.execute(query, (str(holder),)).fetchone() is None:
                    return
            with self._write(now=True) as conn:
                conn.execute("DELETE FROM concurrency_slots WHERE holder = ?", (str(holder),))
        except StoreClosed:
            pass


# -- rows ---------------------------------------------------------------------------------


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _datetime(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _unencodable(value: Any) -> str:
    return f"<{type(value).__name__}>"


def _run_times(run: Run) -> tuple[Any, ...]:
    """The run's fields that change with its states, as ``_RUN_COLUMNS[2:]``."""
    return (
        run.run_count,
        _iso(run.start_time),
        _iso(run.end_time),
        _iso(run.expected_start_time),
        run.total_run_time // _MICROSECOND,
    )


def _set_times(run: Run, row: Sequence[Any]) -> None:
    run.run_count = row[2]
    run.start_time = _datetime(row[3])
    run.end_time = _datetime(row[4])
    run.expected_start_time = _datetime(row[5])
    run.total_run_time = timedelta(microseconds=row[6])


def _state(body: str, result: str | None, has_data: int) -> State[Any]:
    """Rebuild a stored state; data that was not a persisted result is ``UNAVAILABLE``."""
    state: State[Any] = State.model_validate_json(body)
    if result is not None:
        state.data = ResultRef.from_json(result)
    elif has_data:
        state.data = UNAVAILABLE
    return state


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


# -- process lifetime ---------------------------------------------------------------------

_open_stores: weakref.WeakSet[SqliteStore] = weakref.WeakSet()
_inherited_connections: list[Any] = []


@atexit.register
def _close_at_exit() -> None:
    """Commit what is pending in every open store when the interpreter exits."""
    for store in list(_open_stores):
        try:
            store.close()
        except Exception:
            _logger.exception("Could not commit to the store file %s at exit.", store.path)


def _after_fork_in_child() -> None:
    for store in list(_open_stores):
        store._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
