"""``postgresql://user:password@host:port/dbname``: runs and their history in PostgreSQL,
shared by any number of processes on any number of machines.

It keeps the store contract (:mod:`runtime.store._backend`) exactly as the SQLite store
does, on a server: psycopg 3 with its connection pool (``pip install
'stageflow[postgres]'``); :mod:`runtime.store._postgres_schema` holds the tables, their
upgrades and the statements.

**Checked writes.** A flow run's write is one statement: an ``UPDATE`` of the run's row
``WHERE version = <the version the decision was made on>``, with the state's row, the run
input and the ``NOTIFY`` in the same statement (data-modifying ``WITH`` clauses), which
write only if the update found its row. PostgreSQL's row lock makes the check and the
write atomic across every process: of two resumers, one wins; a cancel and a completion
cannot both land. When nothing was written the store reads the run and raises
:class:`~runtime.store._backend.StaleRun` with it. Flow-run writes are committed at once.
A task run has one writing process (see the store contract): the writes of the task runs
this store wrote last are checked against those versions in memory and written in
batches (:mod:`runtime.store._postgres_batch`); any other task run is written like a flow
run.

**Durability.** By default commits do not wait for the server's WAL flush
(``synchronous_commit = off`` for the store's own sessions): a commit survives the
client's death at any moment, and a server crash may lose the last fraction of a second
of commits, never half of one, as the SQLite store's default survives a killed process
but not a power cut. ``?fsync=1`` (or ``STAGEFLOW_STORE_FSYNC=1``) keeps the server's own
setting (``on`` unless its administrator changed it).

**A lost connection** (a server restart) is ridden out: calls are tried again on new
connections for up to ``reconnect_timeout`` seconds (30 by default,
``?reconnect_timeout=S`` in the URL), then raise
:class:`~runtime.core._exceptions.StoreError` naming the server
(:mod:`runtime.store._postgres_db`).

**Other processes** notify their flow-run changes and released concurrency slots on the
store's channel (``LISTEN/NOTIFY``, :mod:`runtime.store._postgres_listen`): a listening
thread reports them to this process's subscribers as they happen. While it cannot listen,
:meth:`PostgresStore.sync_external` polls the versions of the runs someone here waits on.

**Pipelines.** Schedules, their slots and process leases are in
:mod:`runtime.store._postgres_pipelines`.

**States' data.** As in the SQLite store, a state this store wrote reads back as itself
(data included) while it is among the last ``keep_recent`` it wrote; others carry
``states.UNAVAILABLE`` unless their data is a persisted result reference.

(Over 600 lines: this is the whole store contract on a server, one method each; its
connections and batch, schema and statements, and listener are modules of their own.)
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any
from uuid import UUID

from ..core._exceptions import ConfigurationError, ObjectNotFound, StoreClosed, StoreError
from ..core._models import FlowRun, RunKind, TaskRun
from ..core._states import State, StateType
from . import _sqlite_schema as rows
from ._backend import CacheRecord, Run, RunInputWrite, StaleRun, StoreBackend
from ._sqlite import FSYNC_ENV, _env_flag
from ._postgres_schema import MIGRATIONS, SCHEMA_NAME, Statements, migrate

try:
    import psycopg
    import psycopg.errors
    import psycopg_pool  # noqa: F401
except ImportError as exc:  # pragma: no cover - the tests install the extra
    raise ConfigurationError(
        f"The PostgreSQL store needs psycopg 3 and psycopg_pool ({exc}): install them with "
        "pip install 'stageflow[postgres]'."
    ) from exc

from ._postgres_db import Database, unreachable
from ._postgres_listen import Changes
from ._postgres_pipelines import PipelineTables

__all__ = ["DEFAULT_SCHEMA", "PostgresStore"]

DEFAULT_SCHEMA = "stageflow"
"""The PostgreSQL schema the store's tables live in unless the URL says ``?schema=NAME``."""

_logger = logging.getLogger("stageflow")
_KEEP_RECORDS = 1000


class PostgresStore(PipelineTables, StoreBackend):
    """A store in a PostgreSQL database that processes and machines share; see the module
    docstring.

    Args:
        conninfo: the server's libpq connection string or URL (without stageflow's options).
        url: the store's URL, for messages (with its password hidden).
        schema: the PostgreSQL schema of the store's tables (created if missing).
        fsync: wait for the server's WAL flush at every commit; None takes
            ``$STAGEFLOW_STORE_FSYNC`` (off unless set to 1).
        reconnect_timeout: seconds a call keeps trying after the connection was lost
            before it raises ``StoreError``.
        pool_size: the most connections the store opens (besides its listener's).
        commit_delay: longest time, in seconds, a task-run write waits in its batch.
        keep_recent: how many states this store wrote it remembers, so that they read back
            with their in-process data.
        migrations: the schema's upgrade steps (tests pass their own).

    Raises:
        ConfigurationError: the schema name is invalid, or the schema was made by a newer
            stageflow.
        StoreError: the server cannot be reached, or refuses the connection.
    """

    shared_across_processes = True

    def __init__(
        self,
        conninfo: str,
        *,
        url: str | None = None,
        schema: str = DEFAULT_SCHEMA,
        fsync: bool | None = None,
        reconnect_timeout: float = 30.0,
        pool_size: int = 4,
        commit_delay: float = 0.05,
        keep_recent: int = 10_000,
        migrations: list[tuple[str, ...]] = MIGRATIONS,
    ) -> None:
        super().__init__()
        if not SCHEMA_NAME.match(schema):
            raise ConfigurationError(
                f"Invalid PostgreSQL schema name {schema!r} for the store: use lower-case "
                "letters, digits and underscores (at most 63, not starting with a digit)."
            )
        info = psycopg.conninfo.conninfo_to_dict(conninfo)
        self.where = (
            f"{info.get('host') or 'localhost'}:{info.get('port') or 5432}/"
            f"{info.get('dbname') or info.get('user') or ''}"
        )
        """The server and database, for messages: ``host:port/dbname``."""
        self.url = url or f"postgresql://{self.where}?schema={schema}"
        self.schema = schema
        self.fsync = _env_flag(FSYNC_ENV) if fsync is None else fsync
        self._conninfo = conninfo
        self._sql = Statements(schema)
        self._writer = int.from_bytes(os.urandom(7), "big")  # tags this store's changes
        self._keep_recent = keep_recent
        self._states: OrderedDict[str, State[Any]] = OrderedDict()  # by str(state.id)
        self._records: OrderedDict[str, CacheRecord] = OrderedDict()
        self._memo_lock = threading.Lock()
        try:
            with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as conn:
                migrate(conn, schema, self.where, migrations)
        except psycopg.Error as exc:
            raise unreachable(self.where, exc) from exc
        self._db = Database(
            conninfo,
            url=self.url,
            where=self.where,
            sql=self._sql,
            fsync=self.fsync,
            reconnect_timeout=reconnect_timeout,
            pool_size=pool_size,
            commit_delay=commit_delay,
            on_fork=self._after_fork,
        )
        self._run = self._db.run
        self._batch = self._db.batch
        self._changes = self._listen()

    @property
    def reconnect_timeout(self) -> float:
        """Seconds a call keeps trying after the connection was lost (settable)."""
        return self._db.reconnect_timeout

    @reconnect_timeout.setter
    def reconnect_timeout(self, seconds: float) -> None:
        self._db.reconnect_timeout = seconds

    def _listen(self) -> Changes:
        return Changes(self, self._conninfo, self._sql.channel, self._writer, self._keep_recent)

    def _after_fork(self) -> None:
        """In a forked child (the database opened new connections): new locks, a new
        listener; the parent's is left alone."""
        _inherited.append(self._changes)
        self._memo_lock = threading.Lock()
        self._listeners_lock = threading.Lock()
        self._batch = self._db.batch
        self._changes = self._listen()

    def has_pending_writes(self) -> bool:
        return self._batch.pending

    def commit(self) -> None:
        """Write the pending task-run batch.

        Raises:
            StoreError: the server stayed unreachable (the batch is kept for a later try).
        """
        if not self._closed:
            self._db.flush()

    def close(self) -> None:
        """Write the pending task-run batch and close the connections; further use raises
        ``StoreClosed``.

        Raises:
            StoreError: the last batch could not be written (the store is closed all the
                same).
        """
        if self._closed:
            return
        self._closed = True
        try:
            self._db.close()
        finally:
            self._changes.stop()
            self._states.clear()
            self._records.clear()

    # -- runs --------------------------------------------------------------------------

    def create_run(self, kind: RunKind, run: Run) -> None:
        sql = self._sql
        state = run.state
        state_row = None if state is None else rows.state_values(state)
        run_row = (run.id, *rows.run_values(kind, run, state_row))
        state_params: list[Any] = []
        if state is not None:
            assert state_row is not None
            state_params = self._state_params(kind, state, state_row)
            self._remember(state)
        if kind == "task" and not _finished(run):  # into the batch (see _postgres_batch)
            self._db.check_open()
            state_row_params = None if state is None else (run.id, *state_params)
            self._batch.create(run.id, run.version, run_row, state_row_params)
            self._saw(run)
            return
        params = [*run_row, *state_params]
        notify = kind == "flow"
        if notify:
            params += self._notice(kind, run)
        statement = sql.write(sql.insert_run[kind], state=state is not None, run_input=False,
                              notify=notify)  # fmt: skip

        def create(conn: psycopg.Connection[Any], retried: bool) -> None:
            try:
                conn.execute(statement, params)
            except psycopg.errors.UniqueViolation:
                if retried and _same_write(self._read_on(conn, kind, run.id), run):
                    return  # the first try landed; its answer was lost with the connection
                raise ValueError(f"A run with id {run.id} exists already in {self.url}.") from None

        self._run(create)
        self._saw(run)

    def write_run(
        self,
        kind: RunKind,
        run: Run,
        *,
        state: State[Any] | None = None,
        run_input: RunInputWrite | None = None,
        fields_changed: bool = True,
    ) -> None:
        sql = self._sql
        current = run.state
        state_row = None if current is None else rows.state_values(current)
        if fields_changed:
            head = sql.update_run[kind]
            params: list[Any] = [*rows.run_values(kind, run, state_row)]
        else:
            head = sql.update_state[kind]
            params = [*rows.state_columns(run, state_row)]
        params += [run.id, run.version - 1]
        state_params: list[Any] = []
        if state is not None:
            assert state_row is not None and state is current
            state_params = self._state_params(kind, state, state_row)
            params += state_params
            self._remember(state)
        if kind == "task" and run_input is None:
            self._db.check_open()
            batched = None if state is None else (run.id, *state_params)
            if self._write_known_task_run(run, state_row, fields_changed, batched):
                self._saw(run)
                return
        if run_input is not None:
            params += [run_input.key, run_input.value]
        notify = kind == "flow"
        if notify:
            params += self._notice(kind, run)
        statement = sql.write(head, state=state is not None, run_input=run_input is not None,
                              notify=notify)  # fmt: skip

        def write(conn: psycopg.Connection[Any], retried: bool) -> Run | None:
            if conn.execute(statement, params).fetchone() is not None:
                return None
            stored = self._read_on(conn, kind, run.id)
            if retried and _same_write(stored, run):
                return None  # the first try landed; its answer was lost with the connection
            return stored

        stale = self._run(write)
        if stale is not None:
            raise StaleRun(stale)
        self._saw(run)

    def _write_known_task_run(
        self,
        run: Run,
        state_row: rows.StateValues | None,
        fields_changed: bool,
        state_params: tuple[Any, ...] | None,
    ) -> bool:
        """Check and batch a write of a task run this store wrote last; False if it did
        not write it last (then the write is checked in the database).

        Raises:
            StaleRun: the write was decided on an older version than this store wrote.
        """

        def columns(full: bool) -> tuple[Any, ...]:
            if full:
                return (*rows.run_values("task", run, state_row), run.id)
            return (*rows.state_columns(run, state_row), run.id)

        added = self._batch.write(
            run.id, run.version, _finished(run), fields_changed, columns, state_params
        )
        if added is False:
            raise StaleRun(self.read_task_run(run.id))
        return added is True

    def read_flow_run(self, run_id: UUID) -> FlowRun:
        return self._read("flow", run_id)  # type: ignore[return-value]

    def read_task_run(self, run_id: UUID) -> TaskRun:
        return self._read("task", run_id)  # type: ignore[return-value]

    def _read(self, kind: RunKind, run_id: UUID) -> Run:
        return self._run(lambda conn, _: self._read_on(conn, kind, run_id))

    def _read_on(self, conn: psycopg.Connection[Any], kind: RunKind, run_id: UUID) -> Run:
        row = conn.execute(f"{self._sql.select_run[kind]} WHERE id = %s", (run_id,)).fetchone()
        if row is None:
            raise ObjectNotFound(f"{kind.title()} run {run_id} not found in {self.url}.")
        return rows.build_run(kind, row, self._known_state)

    def find_task_run(self, flow_run_id: UUID, task_key: str, dynamic_key: str) -> TaskRun | None:
        if flow_run_id is None:
            where, params = " WHERE flow_run_id IS NULL", [task_key, dynamic_key]
        else:
            where, params = " WHERE flow_run_id = %s", [flow_run_id, task_key, dynamic_key]
        found = self._select(
            "task",
            f"{where} AND task_key = %s AND dynamic_key = %s ORDER BY seq DESC LIMIT 1",
            params,
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
            where.append("state_type = ANY(%s)")
            params.append([StateType(t).value for t in state_types])
        if flow_name is not None:
            where.append("flow_name = %s")
            params.append(flow_name)
        if parent_task_run_id is not None:
            where.append("parent_task_run_id = %s")
            params.append(parent_task_run_id)
        sql = "".join(f" {'AND' if i else 'WHERE'} {w}" for i, w in enumerate(where))
        sql += " ORDER BY seq DESC"
        if limit is not None:
            sql += " LIMIT %s"
            params.append(max(0, int(limit)))
        return self._select("flow", sql, params)

    def read_task_runs(self, *, flow_run_id: UUID | None = None) -> list[TaskRun]:
        if flow_run_id is None:
            return self._select("task", " ORDER BY seq", ())
        return self._select("task", " WHERE flow_run_id = %s ORDER BY seq", (flow_run_id,))

    def _select(self, kind: RunKind, sql: str, params: Sequence[Any]) -> list[Any]:
        """Return the runs ``select_run[kind] + sql`` finds."""
        query = self._sql.select_run[kind] + sql
        found = self._run(lambda conn, _: conn.execute(query, params).fetchall())
        return [rows.build_run(kind, row, self._known_state) for row in found]

    def read_state_history(self, kind: RunKind, run_id: UUID) -> list[State[Any]]:
        s = self._sql.schema

        def history(conn: psycopg.Connection[Any], _: bool) -> list[Any]:
            found = conn.execute(
                f"SELECT body, result, has_data FROM {s}.states WHERE run_id = %s AND kind = %s "
                "ORDER BY seq",
                (run_id, kind),
            ).fetchall()
            if not found:
                table = self._sql.table[kind]
                if conn.execute(f"SELECT 1 FROM {table} WHERE id = %s", (run_id,)).fetchone() is None:
                    raise ObjectNotFound(f"{kind.title()} run {run_id} not found in {self.url}.")
            return found

        return [rows.state_from_row(*row, self._known_state) for row in self._run(history)]

    def _state_params(
        self, kind: RunKind, state: State[Any], values: rows.StateValues
    ) -> list[Any]:
        """The parameters of the state's row, after ``WITH run AS (...)``."""
        return [kind, state.id, state.type.value, state.name, *values, self._writer]

    def _notice(self, kind: RunKind, run: Run) -> list[Any]:
        """The parameters of the ``pg_notify`` that tells other processes about ``run``."""
        return [self._sql.channel, f"{kind} {run.id.hex} {run.version} {self._writer}"]

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

    def _saw(self, run: Run) -> None:
        self._changes.saw(run.id, run.version)

    def _versions(self, ids: list[UUID]) -> list[tuple[RunKind, UUID, int]]:
        """``(kind, id, version)`` of the runs with these ids."""
        s = self._sql.schema
        return self._run(
            lambda conn, _: conn.execute(
                f"SELECT 'flow', id, version FROM {s}.flow_runs WHERE id = ANY(%s) "
                f"UNION ALL SELECT 'task', id, version FROM {s}.task_runs WHERE id = ANY(%s)",
                (ids, ids),
            ).fetchall()
        )

    def sync_external(self) -> None:
        """Notify the subscribers of runs that other processes changed. Free while the
        listener hears every change as it happens; a poll of the versions of the runs
        someone here waits on while it cannot."""
        if not self._closed and not self._changes.listening:
            self._changes.catch_up()

    # -- pause inputs -----------------------------------------------------------------

    def write_run_input(self, flow_run_id: UUID, key: str, value: str) -> None:
        statement = self._sql.upsert_input
        self._run(lambda conn, _: conn.execute(statement, (flow_run_id, key, value)))

    def read_run_input(self, flow_run_id: UUID, key: str) -> str | None:
        s = self._sql.schema
        row = self._run(
            lambda conn, _: conn.execute(
                f"SELECT value FROM {s}.run_inputs WHERE flow_run_id = %s AND key = %s",
                (flow_run_id, key),
            ).fetchone()
        )
        return None if row is None else str(row[0])

    # -- cache records ----------------------------------------------------------------

    def write_cache_record(self, record: CacheRecord) -> None:
        values = (record.key, *rows.state_values(record.state), record.expiration)
        s = self._sql.schema
        self._run(
            lambda conn, _: conn.execute(
                f"INSERT INTO {s}.cache_records (key, state, result, has_data, expiration) "
                "VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (key) DO UPDATE SET state = excluded.state, result = excluded.result, "
                "has_data = excluded.has_data, expiration = excluded.expiration",
                values,
            )
        )
        with self._memo_lock:
            self._records[record.key] = record
            self._records.move_to_end(record.key)
            if len(self._records) > _KEEP_RECORDS:
                self._records.popitem(last=False)

    def read_cache_record(self, key: str) -> CacheRecord | None:
        s = self._sql.schema
        row = self._run(
            lambda conn, _: conn.execute(
                f"SELECT state, result, has_data, expiration FROM {s}.cache_records "
                "WHERE key = %s",
                (key,),
            ).fetchone()
        )
        if row is None:
            return None
        state = rows.state_from_row(*row[:3])
        expiration = row[3]
        mine = self._records.get(key)
        if mine is not None and mine.state.id == state.id and mine.expiration == expiration:
            return mine  # written here: its state keeps its in-process data
        return CacheRecord(key=key, state=state, expiration=expiration)

    def delete_cache_record(self, key: str) -> None:
        s = self._sql.schema
        self._run(
            lambda conn, _: conn.execute(f"DELETE FROM {s}.cache_records WHERE key = %s", (key,))
        )
        with self._memo_lock:
            self._records.pop(key, None)

    # -- concurrency limits -----------------------------------------------------------

    def set_concurrency_limit(self, tag: str, limit: int | None) -> None:
        s = self._sql.schema
        if limit is None:
            sql, params = f"DELETE FROM {s}.concurrency_limits WHERE tag = %s", (tag,)
        else:
            sql = (
                f'INSERT INTO {s}.concurrency_limits (tag, "limit") VALUES (%s, %s) '
                'ON CONFLICT (tag) DO UPDATE SET "limit" = excluded."limit"'
            )
            params = (tag, limit)  # type: ignore[assignment]
        self._run(lambda conn, _: conn.execute(sql, params))

    def read_concurrency_limits(self) -> dict[str, tuple[int, list[UUID]]]:
        s = self._sql.schema

        def read(conn: psycopg.Connection[Any], _: bool) -> tuple[list[Any], list[Any]]:
            with conn.transaction():  # one snapshot of both tables
                limits = conn.execute(
                    f'SELECT tag, "limit" FROM {s}.concurrency_limits ORDER BY seq'
                ).fetchall()
                holders = conn.execute(
                    f"SELECT tag, holder FROM {s}.concurrency_slots ORDER BY seq"
                ).fetchall()
            return limits, holders

        limits, slots = self._run(read)
        holders: dict[str, list[UUID]] = {}
        for tag, holder in slots:
            holders.setdefault(tag, []).append(holder)
        return {tag: (limit, holders.get(tag, [])) for tag, limit in limits}

    def acquire_slots(self, tags: Iterable[str], holder: UUID) -> bool:
        tags = sorted(set(tags))  # locks are taken in one order: no deadlock
        s = self._sql.schema

        def acquire(conn: psycopg.Connection[Any], _: bool) -> bool:
            with conn.transaction():
                # Locking the limits' rows serializes the processes taking their slots.
                limits = conn.execute(
                    f'SELECT tag, "limit" FROM {s}.concurrency_limits WHERE tag = ANY(%s) '
                    "ORDER BY tag FOR UPDATE",
                    (tags,),
                ).fetchall()
                if not limits:
                    return True
                counts = conn.execute(
                    f"SELECT tag, COUNT(*), bool_or(holder = %s) FROM {s}.concurrency_slots "
                    "WHERE tag = ANY(%s) GROUP BY tag",
                    (holder, [tag for tag, _ in limits]),
                ).fetchall()
                taken = {tag: (count, mine) for tag, count, mine in counts}
                for tag, limit in limits:
                    count, mine = taken.get(tag, (0, False))
                    if not mine and count >= limit:
                        return False
                conn.cursor().executemany(
                    f"INSERT INTO {s}.concurrency_slots (tag, holder) VALUES (%s, %s) "
                    "ON CONFLICT DO NOTHING",
                    [(tag, holder) for tag, _ in limits],
                )
                return True

        return self._run(acquire)

    def release_slots(self, holder: UUID) -> None:
        # As in the other stores, a release never fails, even once the store is closed.
        s = self._sql.schema
        statement = (
            f"WITH freed AS (DELETE FROM {s}.concurrency_slots WHERE holder = %s RETURNING 1) "
            "SELECT pg_notify(%s, %s) FROM (SELECT 1 FROM freed LIMIT 1) AS any_freed"
        )
        params = (holder, self._sql.channel, f"slots {self._writer}")
        try:
            self._run(lambda conn, _: conn.execute(statement, params))
        except StoreClosed:
            pass
        except StoreError:
            _logger.exception("Could not give back the concurrency slots of %s.", holder)


def _finished(run: Run) -> bool:
    return run.state is not None and run.state.is_final()


def _same_write(stored: Run, run: Run) -> bool:
    """Whether ``stored`` is ``run`` as written (a retried write finds its first try)."""
    if stored.version != run.version:
        return False
    mine, theirs = run.state, stored.state
    if (mine is None) != (theirs is None):
        return False
    return mine is None or theirs is None or mine.id == theirs.id


_inherited: list[Any] = []  # a forked child's copies of its parent's listeners
