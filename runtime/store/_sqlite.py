"""``sqlite:///path``: runs and their history in an SQLite file that processes share.

The embedded default store. :mod:`runtime.store._sqlite_schema` lays out the file and maps
snapshots to rows; :mod:`runtime.store._sqlite_db` shares one connection between threads
and commits.

**Checked writes.** A flow-run write is one ``BEGIN IMMEDIATE`` transaction that reads the
run's stored version, compares it with the one the write was decided on, and writes only
if they match (else :class:`~runtime.store._backend.StaleRun`): any process may change a
flow run (cancel, resume, reap), and the file's write lock makes the check and the write
atomic across all of them. A task run has one writing process (see the store contract),
so its writes are checked against the versions this store last wrote, in memory, and go
to the file in batches; a task run this store has not written (another process's, or one
read back from the file) is checked in the file like a flow run.

**Commit policy.** Task-run writes are kept in memory and written in batches (see
:mod:`runtime.store._sqlite_db`): at the store actor's group commit
(:meth:`SqliteStore.commit`), with the next immediate write, before a read of the run
tables, and at most ``commit_delay`` (50 ms) after the first of them. What other processes
must see at once is written and committed at once, with whatever was waiting: flow-run
writes (cancels, pauses, resumes and final states are flow-run states), run inputs, cache
records, concurrency limits and slots. The file is in WAL mode; commits are not fsynced
(``synchronous=NORMAL``: they survive a killed process, not a power cut) unless ``fsync``
is on (``?fsync=1`` in the URL, or ``STAGEFLOW_STORE_FSYNC=1``).

**Rows, and the data states carry.** Reads build new snapshots from rows. A state's data
(an exception, a value that was not persisted) exists only in the process that made it:
the store remembers the last ``keep_recent`` states it wrote, by id, and a row of one of
them reads back as that very state, data included; any other state whose data was not a
persisted result carries ``states.UNAVAILABLE``.

**Pipelines.** Schedules, their slots and process leases are in
:mod:`runtime.store._sqlite_pipelines`.

**Other processes.** :meth:`SqliteStore.sync_external` finds the states other processes
recorded since the last look (one ``PRAGMA data_version`` when nothing changed) and
notifies the subscribers of their runs.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from uuid import UUID

from ..core._exceptions import ObjectNotFound, StoreClosed
from ..core._models import FlowRun, RunKind, TaskRun
from ..core._states import State, StateType
from . import _sqlite_schema as rows
from ._backend import CacheRecord, Run, RunInputWrite, StaleRun, StoreBackend
from ._sqlite_db import Database, Write
from ._sqlite_pipelines import PipelineTables

__all__ = ["FSYNC_ENV", "SqliteStore"]

FSYNC_ENV = "STAGEFLOW_STORE_FSYNC"
"""Environment variable: ``1`` makes SQLite stores fsync every commit unless told otherwise."""

_TRUE = frozenset({"1", "true", "yes", "on"})
_KEEP_RECORDS = 1000
_UPSERT_INPUT = (
    "INSERT INTO run_inputs (flow_run_id, key, value) VALUES (?, ?, ?) "
    "ON CONFLICT (flow_run_id, key) DO UPDATE SET value = excluded.value"
)


class SqliteStore(PipelineTables, StoreBackend):
    """A store in an SQLite file that several processes may share; see the module docstring.

    Args:
        path: the database file (created, with its directory, if missing).
        fsync: sync every commit to disk (power-loss durable, slower); None takes
            ``$STAGEFLOW_STORE_FSYNC`` (off unless set to 1).
        busy_timeout: seconds to wait for another process's write lock before failing.
        commit_delay: longest time, in seconds, a task-run write waits for its commit.
        keep_recent: how many states this store wrote it remembers, so that they read back
            with their in-process data (results that were not persisted).

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
        commit_delay: float = 0.05,
        keep_recent: int = 10_000,
    ) -> None:
        super().__init__()
        self.path = Path(os.path.abspath(Path(path).expanduser()))
        self.url = f"sqlite:///{self.path}"
        self.fsync = _env_flag(FSYNC_ENV) if fsync is None else fsync
        self._db = Database(
            self.path,
            self.url,
            fsync=self.fsync,
            busy_timeout=busy_timeout,
            commit_delay=commit_delay,
        )
        self._writer = int.from_bytes(os.urandom(7), "big")  # tags the states this store writes
        self._keep_recent = keep_recent
        # Versions of the unfinished task runs this store writes (see the module docstring).
        self._task_versions: dict[UUID, int] = {}
        self._states: OrderedDict[str, State[Any]] = OrderedDict()  # by str(state.id)
        self._memo_lock = threading.Lock()  # _task_versions and _states
        self._records: OrderedDict[str, CacheRecord] = OrderedDict()
        with self._db.read() as conn:
            self._data_version: int = conn.execute("PRAGMA data_version").fetchone()[0]
            # Everything already in the file is news to nobody: look past it.
            self._state_seq: int = conn.execute(
                "SELECT COALESCE(MAX(seq), 0) FROM states"
            ).fetchone()[0]
        _stores.add(self)

    # -- durability -------------------------------------------------------------------

    def has_pending_writes(self) -> bool:
        return self._db.pending

    def commit(self) -> None:
        """Commit the pending writes.

        Raises:
            StoreError: SQLite could not commit.
        """
        self._db.commit()

    def close(self) -> None:
        """Commit what is pending and close the file; further use raises ``StoreClosed``.

        Raises:
            StoreError: the last commit failed (the store is closed all the same).
        """
        self._closed = True
        try:
            self._db.close()
        finally:
            self._states.clear()
            self._records.clear()
            self._task_versions.clear()

    # -- runs --------------------------------------------------------------------------

    def create_run(self, kind: RunKind, run: Run) -> None:
        run_id = run.id.hex
        state = run.state
        state_row = None if state is None else rows.state_values(state)
        writes: list[Write] = [
            (rows.INSERT_RUN[kind], (run_id, *rows.run_values(kind, run, state_row)))
        ]
        if state is not None:
            assert state_row is not None
            writes.append((rows.INSERT_STATE, self._state_params(kind, run_id, state, state_row)))
            self._remember(state)
        if kind == "task" and not _finished(run):
            with self._memo_lock:
                self._task_versions[run.id] = run.version
            self._db.defer(writes)
            return
        with self._db.write() as conn:
            for sql, params in writes:
                conn.execute(sql, params)

    def write_run(
        self,
        kind: RunKind,
        run: Run,
        *,
        state: State[Any] | None = None,
        run_input: RunInputWrite | None = None,
        fields_changed: bool = True,
    ) -> None:
        run_id = run.id.hex
        current = run.state
        state_row = None if current is None else rows.state_values(current)
        if fields_changed:
            writes: list[Write] = [
                (rows.UPDATE_RUN[kind], (*rows.run_values(kind, run, state_row), run_id))
            ]
        else:
            writes = [(rows.UPDATE_STATE[kind], (*rows.state_columns(run, state_row), run_id))]
        if state is not None:
            assert state_row is not None and state is current
            writes.insert(
                0, (rows.INSERT_STATE, self._state_params(kind, run_id, state, state_row))
            )
            self._remember(state)
        if run_input is not None:
            writes.append((_UPSERT_INPUT, (run_id, run_input.key, run_input.value)))
        if kind == "task" and self._write_known_task_run(run, writes):
            return
        self._write_checked(kind, run, writes)

    def _write_known_task_run(self, run: Run, writes: list[Write]) -> bool:
        """Check and defer a write of a task run this store wrote last; False if it did not."""
        with self._memo_lock:
            known = self._task_versions.get(run.id)
            if known is None:
                return False
            if known != run.version - 1:
                stale = True
            else:
                stale = False
                if _finished(run):
                    del self._task_versions[run.id]
                else:
                    self._task_versions[run.id] = run.version
                self._db.defer(writes)
        if stale:
            raise StaleRun(self.read_task_run(run.id))
        return True

    def _write_checked(self, kind: RunKind, run: Run, writes: list[Write]) -> None:
        """Write in one immediate transaction, if the stored version is the expected one."""
        with self._db.write() as conn:
            found = conn.execute(rows.SELECT_VERSION[kind], (run.id.hex,)).fetchone()
            if found is None:
                raise ObjectNotFound(f"{kind.title()} run {run.id} not found in {self.url}.")
            if found[0] != run.version - 1:
                row = conn.execute(
                    f"{rows.SELECT_RUN[kind]} WHERE id = ?", (run.id.hex,)
                ).fetchone()
                raise StaleRun(rows.build_run(kind, row, self._known_state))
            for sql, params in writes:
                conn.execute(sql, params)

    def read_flow_run(self, run_id: UUID) -> FlowRun:
        return self._read("flow", run_id)  # type: ignore[return-value]

    def read_task_run(self, run_id: UUID) -> TaskRun:
        return self._read("task", run_id)  # type: ignore[return-value]

    def _read(self, kind: RunKind, run_id: UUID) -> Run:
        found = self._select(kind, " WHERE id = ?", (run_id.hex,))
        if not found:
            raise ObjectNotFound(f"{kind.title()} run {run_id} not found in {self.url}.")
        return found[0]  # type: ignore[no-any-return]

    def find_task_run(self, flow_run_id: UUID, task_key: str, dynamic_key: str) -> TaskRun | None:
        found = self._select(
            "task",
            " WHERE flow_run_id IS ? AND task_key = ? AND dynamic_key = ?"
            " ORDER BY seq DESC LIMIT 1",
            (None if flow_run_id is None else flow_run_id.hex, task_key, dynamic_key),
        )
        return found[0] if found else None

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
            params.append(parent_task_run_id.hex)
        sql = "".join(f" {'AND' if i else 'WHERE'} {w}" for i, w in enumerate(where))
        sql += " ORDER BY seq DESC" + ("" if limit is None else f" LIMIT {max(0, int(limit))}")
        return self._select("flow", sql, params)

    def read_task_runs(self, *, flow_run_id: UUID | None = None) -> list[TaskRun]:
        if flow_run_id is None:
            return self._select("task", " ORDER BY seq", ())
        return self._select("task", " WHERE flow_run_id = ? ORDER BY seq", (flow_run_id.hex,))

    def _select(self, kind: RunKind, sql: str, params: Sequence[Any]) -> list[Any]:
        """Return the runs ``SELECT_RUN[kind] + sql`` finds."""
        with self._db.read() as conn:
            found = conn.execute(rows.SELECT_RUN[kind] + sql, params).fetchall()
        return [rows.build_run(kind, row, self._known_state) for row in found]

    def read_state_history(self, kind: RunKind, run_id: UUID) -> list[State[Any]]:
        with self._db.read() as conn:
            found = conn.execute(
                "SELECT body, result, has_data FROM states WHERE run_id = ? AND kind = ? "
                "ORDER BY seq",
                (run_id.hex, kind),
            ).fetchall()
            if (
                not found
                and conn.execute(
                    f"SELECT 1 FROM {rows.TABLES[kind]} WHERE id = ?", (run_id.hex,)
                ).fetchone()
                is None
            ):
                raise ObjectNotFound(f"{kind.title()} run {run_id} not found in {self.url}.")
        return [rows.state_from_row(*row, self._known_state) for row in found]

    def _state_params(
        self, kind: RunKind, run_id: str, state: State[Any], values: rows.StateValues
    ) -> tuple[Any, ...]:
        """The parameters of ``INSERT_STATE`` for ``state``."""
        return (run_id, kind, state.id.hex, state.type.value, state.name, *values, self._writer)

    def _remember(self, state: State[Any]) -> None:
        """Read ``state`` back as itself (with its data) while it is among the recent ones."""
        if state.data is None:
            return  # rebuilt from its row, it is equal
        with self._memo_lock:
            states = self._states
            states[str(state.id)] = state
            if len(states) > self._keep_recent:
                states.popitem(last=False)

    def _known_state(self, state_id: str) -> State[Any] | None:
        return self._states.get(state_id)

    # -- other processes ----------------------------------------------------------------

    def sync_external(self) -> None:
        """Notify the subscribers of runs whose state other processes changed since the
        last call. Cheap when nothing changed: one ``PRAGMA data_version``."""
        if self._closed:
            return
        with self._db.peek() as conn:
            version = conn.execute("PRAGMA data_version").fetchone()[0]
            if version == self._data_version:
                return
            self._data_version = version
            found = conn.execute(
                "SELECT seq, kind, run_id, writer FROM states WHERE seq > ? ORDER BY seq",
                (self._state_seq,),
            ).fetchall()
        if not found:
            return
        self._state_seq = found[-1][0]
        changed = {
            (kind, UUID(run_id)): None
            for _, kind, run_id, writer in found
            if writer != self._writer
        }
        for kind, run_id in changed:
            if not self.has_listeners(run_id):
                continue
            try:
                run = self._read(kind, run_id)
            except ObjectNotFound:
                continue
            if run.state is not None:
                self.notify(run, run.state)

    # -- pause inputs -----------------------------------------------------------------

    def write_run_input(self, flow_run_id: UUID, key: str, value: str) -> None:
        with self._db.write() as conn:
            conn.execute(_UPSERT_INPUT, (flow_run_id.hex, key, value))

    def read_run_input(self, flow_run_id: UUID, key: str) -> str | None:
        with self._db.peek() as conn:
            row = conn.execute(
                "SELECT value FROM run_inputs WHERE flow_run_id = ? AND key = ?",
                (flow_run_id.hex, key),
            ).fetchone()
        return None if row is None else str(row[0])

    # -- cache records ----------------------------------------------------------------

    def write_cache_record(self, record: CacheRecord) -> None:
        values = (record.key, *rows.state_values(record.state), rows.iso(record.expiration))
        with self._db.write() as conn:
            conn.execute(
                "INSERT INTO cache_records (key, state, result, has_data, expiration) "
                "VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET state = excluded.state, result = excluded.result, "
                "has_data = excluded.has_data, expiration = excluded.expiration",
                values,
            )
            self._records[record.key] = record
            self._records.move_to_end(record.key)
            if len(self._records) > _KEEP_RECORDS:
                self._records.popitem(last=False)

    def read_cache_record(self, key: str) -> CacheRecord | None:
        with self._db.peek() as conn:
            row = conn.execute(
                "SELECT state, result, has_data, expiration FROM cache_records WHERE key = ?",
                (key,),
            ).fetchone()
            if row is None:
                return None
            state = rows.state_from_row(*row[:3])
            expiration = rows.parse_datetime(row[3])
            mine = self._records.get(key)
            if mine is not None and mine.state.id == state.id and mine.expiration == expiration:
                return mine  # written here: its state keeps its in-process data
            return CacheRecord(key=key, state=state, expiration=expiration)

    def delete_cache_record(self, key: str) -> None:
        with self._db.write() as conn:
            conn.execute("DELETE FROM cache_records WHERE key = ?", (key,))
            self._records.pop(key, None)

    # -- concurrency limits -----------------------------------------------------------

    def set_concurrency_limit(self, tag: str, limit: int | None) -> None:
        with self._db.write() as conn:
            if limit is None:
                conn.execute("DELETE FROM concurrency_limits WHERE tag = ?", (tag,))
            else:
                conn.execute(
                    'INSERT INTO concurrency_limits (tag, "limit") VALUES (?, ?) '
                    'ON CONFLICT (tag) DO UPDATE SET "limit" = excluded."limit"',
                    (tag, limit),
                )

    def read_concurrency_limits(self) -> dict[str, tuple[int, list[UUID]]]:
        with self._db.peek() as conn:
            limits = conn.execute(
                'SELECT tag, "limit" FROM concurrency_limits ORDER BY rowid'
            ).fetchall()
            holders: dict[str, list[UUID]] = {}
            for tag, holder in conn.execute(
                "SELECT tag, holder FROM concurrency_slots ORDER BY rowid"
            ):
                holders.setdefault(tag, []).append(UUID(holder))
        return {tag: (limit, holders.get(tag, [])) for tag, limit in limits}

    def acquire_slots(self, tags: Iterable[str], holder: UUID) -> bool:
        tags = list(dict.fromkeys(tags))
        marks = ", ".join("?" * len(tags))
        query = f'SELECT tag, "limit" FROM concurrency_limits WHERE tag IN ({marks})'
        with self._db.peek() as conn:
            if conn.execute(query, tags).fetchone() is None:
                return True  # no tag is limited: nothing to take, no write lock needed
        with self._db.write() as conn:
            limits = dict(conn.execute(query, tags).fetchall())  # again, under the write lock
            limited = [tag for tag in tags if tag in limits]
            for tag in limited:
                taken, mine = conn.execute(
                    "SELECT COUNT(*), COALESCE(SUM(holder = ?), 0) FROM concurrency_slots "
                    "WHERE tag = ?",
                    (holder.hex, tag),
                ).fetchone()
                if not mine and taken >= limits[tag]:
                    return False
            conn.executemany(
                "INSERT OR IGNORE INTO concurrency_slots (tag, holder) VALUES (?, ?)",
                [(tag, holder.hex) for tag in limited],
            )
            return True

    def release_slots(self, holder: UUID) -> None:
        # As in the memory store, a release never fails, even once the store is closed.
        try:
            with self._db.peek() as conn:
                query = "SELECT 1 FROM concurrency_slots WHERE holder = ? LIMIT 1"
                if conn.execute(query, (holder.hex,)).fetchone() is None:
                    return
            with self._db.write() as conn:
                conn.execute("DELETE FROM concurrency_slots WHERE holder = ?", (holder.hex,))
        except StoreClosed:
            pass


def _finished(run: Run) -> bool:
    return run.state is not None and run.state.is_final()


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


_stores: weakref.WeakSet[SqliteStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # Locks another thread held at the fork stay held forever in the child: replace them.
    for store in list(_stores):
        store._listeners_lock = threading.Lock()
        store._memo_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
