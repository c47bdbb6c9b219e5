"""``sqlite:///path``: runs and their history in an SQLite file that processes share.

The embedded default store. :mod:`runtime.store._sqlite_schema` lays out the file and maps
models to rows; :mod:`runtime.store._sqlite_db` shares one connection between threads and
commits.

**Commit policy.** Task-run writes (a new task run, its states, its updates) are kept in
memory and written in batches (see :mod:`runtime.store._sqlite_db`): at the store actor's group
commit (:meth:`SqliteStore.commit`), with the next immediate write, before a read of the
run tables, and at most ``commit_delay`` (50 ms) after the first of them. The file's write
lock is held only while a batch is written, never while writes accumulate. What other
processes must see at once is written and committed at once, with whatever was waiting:
flow-run writes (cancels, pauses, resumes and final states are flow-run states), run
inputs, cache records, concurrency limits and slots. The file is in WAL mode; commits are
not fsynced (``synchronous=NORMAL``: they survive a killed process, not a power cut)
unless ``fsync`` is on (``?fsync=1`` in the URL, or ``STAGEFLOW_STORE_FSYNC=1``).

**Identity map.** The engine changes the run objects it holds and relies on ``run.state``
being current, and a state's data (an exception, a value that was not persisted) exists
only in the process that made it. So the store answers with the objects it was given or
has returned before: a weak identity map holds every run it has seen, and strong
references keep the ``keep_recent`` runs written last. Other runs are built from rows; a
state whose data was not a persisted result then carries ``states.UNAVAILABLE``.

**Other processes.** Lists and histories are read from the file. What other processes
commit reaches the objects held here in :meth:`SqliteStore.sync_external`, which also
runs before every run read (one ``PRAGMA data_version`` when nothing changed): the
states and run updates recorded since the last look are applied to the held runs, and
their subscribers are notified.
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
from ._backend import CacheRecord, StoreBackend
from ._sqlite_db import Database, Latest, Write
from ._sqlite_schema import Run

__all__ = ["FSYNC_ENV", "SqliteStore"]

FSYNC_ENV = "STAGEFLOW_STORE_FSYNC"
"""Environment variable: ``1`` makes SQLite stores fsync every commit unless told otherwise."""

_TRUE = frozenset({"1", "true", "yes", "on"})
_CHUNK = 500  # ids per IN (...) query, well below SQLite's parameter limit
_KEEP_RECORDS = 1000


class SqliteStore(StoreBackend):
    """A store in an SQLite file that several processes may share; see the module docstring.

    Args:
        path: the database file (created, with its directory, if missing).
        fsync: sync every commit to disk (power-loss durable, slower); None takes
            ``$STAGEFLOW_STORE_FSYNC`` (off unless set to 1).
        busy_timeout: seconds to wait for another process's write lock before failing.
        commit_delay: longest time, in seconds, a task-run write waits for its commit.
        keep_recent: how many recently written runs stay in memory even when nothing else
            refers to them (their unpersisted results stay readable in this process).

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
        # Lock order: self.lock (the orchestrators'), then the database's connection lock.
        self._db = Database(
            self.path,
            self.url,
            fsync=self.fsync,
            busy_timeout=busy_timeout,
            commit_delay=commit_delay,
        )
        self._writer = int.from_bytes(os.urandom(7), "big")  # tags the rows this store writes
        self._keep_recent = keep_recent
        self._live: dict[str, weakref.WeakValueDictionary[UUID, Run]] = {
            "flow": weakref.WeakValueDictionary(),
            "task": weakref.WeakValueDictionary(),
        }
        self._recent: OrderedDict[UUID, Run] = OrderedDict()
        self._maps_lock = threading.Lock()  # changes to _live and _recent
        self._records: OrderedDict[str, CacheRecord] = OrderedDict()
        with self._db.read() as conn:
            self._data_version: int = conn.execute("PRAGMA data_version").fetchone()[0]
            # Everything already in the file is news to nobody: look past it.
            self._state_seq: int = conn.execute(
                "SELECT COALESCE(MAX(seq), 0) FROM states"
            ).fetchone()[0]
            self._update_seq: int = conn.execute(
                "SELECT COALESCE(MAX(seq), 0) FROM run_updates"
            ).fetchone()[0]
        self._seen_writes = self._db.writes
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
            self._recent.clear()
            self._records.clear()

    # -- runs --------------------------------------------------------------------------

    def add_flow_run(self, run: FlowRun) -> None:
        self._add("flow", run)

    def add_task_run(self, run: TaskRun) -> None:
        self._add("task", run)

    def _add(self, kind: RunKind, run: Run) -> None:
        run_id = run.id.hex
        values = rows.run_values(kind, run)
        if self._live[kind].get(run.id) is not None:
            # Added again: take its new fields, keep its place and its history.
            self._put(kind, run, [(rows.UPDATE_RUN[kind], (*values, run_id))])
            return
        history = list(run.state_history)
        if run.state is not None and (not history or history[-1] is not run.state):
            history.append(run.state)
        writes = [(rows.INSERT_RUN[kind], (run_id, *values))]
        writes += [(rows.INSERT_STATE, self._state_params(kind, run_id, s)) for s in history]
        self._put(kind, run, writes)

    def read_flow_run(self, run_id: UUID) -> FlowRun:
        return self._read("flow", run_id)  # type: ignore[return-value]

    def read_task_run(self, run_id: UUID) -> TaskRun:
        return self._read("task", run_id)  # type: ignore[return-value]

    def _read(self, kind: RunKind, run_id: UUID) -> Run:
        held = self._live[kind].get(run_id)
        if held is not None:
            # The engine's hot path (the orchestrator reads the parent flow run for every
            # task run): no waiting for the connection while a batch is being committed.
            if self._closed:
                raise StoreClosed(
                    f"The store {self.url!r} is closed; open a new Runtime to use it."
                )
            if self._external_changes(wait=False):
                self.sync_external()
            return held
        self.sync_external()
        with self._db.read() as conn:
            row = conn.execute(f"{rows.SELECT_RUN[kind]} WHERE id = ?", (run_id.hex,)).fetchone()
            if row is None:
                raise ObjectNotFound(f"{kind.title()} run {run_id} not found in {self.url}.")
            return self._runs(conn, kind, [row])[0]

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
        sql += " ORDER BY seq DESC" + ("" if limit is None else f" LIMIT {int(limit)}")
        return self._select("flow", sql, params)

    def read_task_runs(self, *, flow_run_id: UUID | None = None) -> list[TaskRun]:
        if flow_run_id is None:
            return self._select("task", " ORDER BY seq", ())
        return self._select("task", " WHERE flow_run_id = ? ORDER BY seq", (flow_run_id.hex,))

    def _select(self, kind: RunKind, sql: str, params: Sequence[Any]) -> list[Any]:
        """Return the runs ``SELECT_RUN[kind] + sql`` finds, once other processes' changes
        are applied."""
        self.sync_external()
        with self._db.read() as conn:
            return self._runs(
                conn, kind, conn.execute(rows.SELECT_RUN[kind] + sql, params).fetchall()
            )

    def record_state(self, kind: RunKind, run: Run, state: State[Any]) -> None:
        run_id = run.id.hex
        head = (state.type.value, state.name)
        self._put(
            kind,
            run,
            [(rows.INSERT_STATE, self._state_params(kind, run_id, state))],
            # The run's times as they are when written: once per batch, not per state.
            (rows.UPDATE_STATE[kind], lambda: (*head, *rows.run_times(run), run_id)),
        )

    def update_run(self, kind: RunKind, run: Run) -> None:
        run_id = run.id.hex
        writes = [
            (rows.UPDATE_RUN[kind], (*rows.run_values(kind, run), run_id)),
            (rows.INSERT_RUN_UPDATE, (kind, run_id, self._writer)),
        ]
        self._db.forget((kind, run.id))  # the whole row is written: a pending state update is stale
        self._put(kind, run, writes)

    def _put(
        self,
        kind: RunKind,
        run: Run,
        writes: list[Write],
        current: Latest | None = None,
    ) -> None:
        """Write for ``run``: a flow run's writes at once (other processes act on flow-run
        states), a task run's when the pending writes are committed; ``current`` (the run's
        state columns) once per batch."""
        if kind == "flow":
            with self._db.write() as conn:
                for sql, params in writes:
                    conn.execute(sql, params)
                if current is not None:
                    conn.execute(current[0], current[1]())
        else:
            self._db.defer(writes, None if current is None else ((kind, run.id), current))
        self._hold(kind, run)

    def read_state_history(self, kind: RunKind, run_id: UUID) -> list[State[Any]]:
        self.sync_external()
        with self._db.read() as conn:
            found = conn.execute(
                "SELECT id, body, result, has_data FROM states WHERE run_id = ? AND kind = ? "
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
            held = self._live[kind].get(run_id)
            mine = {state.id.hex: state for state in held.state_history} if held is not None else {}
            return [mine.get(row[0]) or rows.state_from_row(*row[1:]) for row in found]

    def _state_params(self, kind: RunKind, run_id: str, state: State[Any]) -> tuple[Any, ...]:
        """The parameters of ``INSERT_STATE`` for ``state``."""
        return (
            run_id,
            kind,
            state.id.hex,
            state.type.value,
            state.name,
            *rows.state_values(state),
            self._writer,
        )

    def _hold(self, kind: RunKind, run: Run) -> None:
        """Answer with ``run`` from now on, and keep it in memory for a while."""
        run_id = run.id
        with self._maps_lock:
            recent = self._recent
            if recent.get(run_id) is run:
                recent.move_to_end(run_id)
                return
            recent[run_id] = run
            self._live[kind][run_id] = run
            if len(recent) > self._keep_recent:
                recent.popitem(last=False)

    def _runs(self, conn: Any, kind: RunKind, found: Sequence[Any]) -> list[Run]:
        """Return the runs of ``SELECT_RUN`` rows: the objects held here, else built ones."""
        live = self._live[kind]
        runs: list[Run | None] = [live.get(UUID(row[0])) for row in found]
        missing = [row for row, run in zip(found, runs) if run is None]
        histories: dict[str, list[State[Any]]] = {row[0]: [] for row in missing}
        for start in range(0, len(missing), _CHUNK):
            ids = [row[0] for row in missing[start : start + _CHUNK]]
            for run_id, *state in conn.execute(
                f"SELECT run_id, body, result, has_data FROM states WHERE kind = ? "
                f"AND run_id IN ({', '.join('?' * len(ids))}) ORDER BY seq",
                (kind, *ids),
            ):
                histories[run_id].append(rows.state_from_row(*state))
        built = {row[0]: rows.build_run(kind, row, histories[row[0]]) for row in missing}
        with self._maps_lock:
            for run in built.values():
                live[run.id] = run
        return [run if run is not None else built[row[0]] for row, run in zip(found, runs)]

    # -- other processes --------------------------------------------------------------

    def sync_external(self) -> None:
        """Apply to the runs held here what other processes committed since the last look,
        and notify their subscribers. Cheap when nothing changed."""
        if self._closed or not self._external_changes():
            return
        with self.lock, self._db.read() as conn:
            version = conn.execute("PRAGMA data_version").fetchone()[0]
            if version == self._data_version:
                return  # another thread applied them meanwhile
            self._data_version = version
            changed = self._apply_new_states(conn)
            self._apply_run_updates(conn)
        for run, state in changed:
            self.notify(run, state)

    def _external_changes(self, *, wait: bool = True) -> bool:
        """Whether another connection committed since the last look. Without ``wait``, a
        connection busy in another thread (committing a batch) counts as no news."""
        access = self._db.peek() if wait else self._db.peek_if_free()
        if access is None:
            return False
        with access as conn:
            writes = self._db.writes
            if writes != self._seen_writes:  # this store wrote since: see how far
                state_seq = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM states").fetchone()
                update_seq = conn.execute(
                    "SELECT COALESCE(MAX(seq), 0) FROM run_updates"
                ).fetchone()
            if conn.execute("PRAGMA data_version").fetchone()[0] != self._data_version:
                return True
            if writes != self._seen_writes:
                # Nobody else committed since the last look, so every row up to those
                # (read before this check) is this store's: no need to look at them.
                self._seen_writes = writes
                self._state_seq = max(self._state_seq, state_seq[0])
                self._update_seq = max(self._update_seq, update_seq[0])
            return False

    def _apply_new_states(self, conn: Any) -> list[tuple[Run, State[Any]]]:
        found = conn.execute(
            "SELECT seq, kind, run_id, id, writer, body, result, has_data FROM states "
            "WHERE seq > ? ORDER BY seq",
            (self._state_seq,),
        ).fetchall()
        if not found:
            return []
        self._state_seq = found[-1][0]
        by_run: dict[tuple[str, str], list[Any]] = {}
        for row in found:
            by_run.setdefault((row[1], row[2]), []).append(row)
        changed: list[tuple[Run, State[Any]]] = []
        for (kind, run_id), group in by_run.items():
            run = self._live[kind].get(UUID(run_id))
            if run is None:
                continue
            # Only states after the last one the object already has: when this store wrote
            # a newer state than another's, the object stays in the newer one.
            known = {state.id.hex for state in run.state_history}
            start = 0
            for i, row in enumerate(group):
                if row[4] == self._writer or row[3] in known:
                    start = i + 1
            new = group[start:]
            if not new:
                continue
            for row in new:
                state = rows.state_from_row(*row[5:])
                run.state_history.append(state)
                run.state = state
                changed.append((run, state))
            times = conn.execute(f"{rows.SELECT_RUN[kind]} WHERE id = ?", (run_id,)).fetchone()
            if times is not None:
                rows.set_times(run, times)
        return changed

    def _apply_run_updates(self, conn: Any) -> None:
        found = conn.execute(
            "SELECT seq, kind, run_id, writer FROM run_updates WHERE seq > ? ORDER BY seq",
            (self._update_seq,),
        ).fetchall()
        if not found:
            return
        self._update_seq = found[-1][0]
        for kind, run_id in dict.fromkeys(
            (row[1], row[2]) for row in found if row[3] != self._writer
        ):
            run = self._live[kind].get(UUID(run_id))
            row = conn.execute(f"{rows.SELECT_RUN[kind]} WHERE id = ?", (run_id,)).fetchone()
            if run is None or row is None:
                continue
            fresh = rows.build_run(kind, row, [])
            for name in type(run).model_fields:
                if name not in ("state", "state_history"):
                    setattr(run, name, getattr(fresh, name))

    # -- pause inputs -----------------------------------------------------------------

    def write_run_input(self, flow_run_id: UUID, key: str, value: str) -> None:
        with self._db.write() as conn:
            conn.execute(
                "INSERT INTO run_inputs (flow_run_id, key, value) VALUES (?, ?, ?) "
                "ON CONFLICT (flow_run_id, key) DO UPDATE SET value = excluded.value",
                (flow_run_id.hex, key, value),
            )

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


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


_stores: weakref.WeakSet[SqliteStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # Locks another thread held at the fork stay held forever in the child: replace them.
    for store in list(_stores):
        store.lock = threading.RLock()
        store._listeners_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
