"""``postgresql://user:password@host:port/dbname``: runs and their history in PostgreSQL,
shared by any number of processes on any number of machines.

It keeps the store contract (:mod:`runtime.store._backend`) exactly as the SQLite store
does, on a server: psycopg 3 with its connection pool (``pip install
'stageflow[postgres]'``); :mod:`runtime.store._postgres_schema` holds the tables, their
upgrades and the statements.

**Checked writes.** A run's write is one statement: an ``UPDATE`` of the run's row
``WHERE version = <the version the decision was made on>``, with the state's row, the run
input and the ``NOTIFY`` in the same statement (data-modifying ``WITH`` clauses), which
write only if the update found its row. PostgreSQL's row lock makes the check and the
write atomic across every process: of two resumers, one wins; a cancel and a completion
cannot both land. When nothing was written the store reads the run and raises
:class:`~runtime.store._backend.StaleRun` with it. Every write is committed at once.

**Durability.** By default commits do not wait for the server's WAL flush
(``synchronous_commit = off`` for the store's own sessions): a commit survives the
client's death at any moment, and a server crash may lose the last fraction of a second
of commits, never half of one, as the SQLite store's default survives a killed process
but not a power cut. ``?fsync=1`` (or ``STAGEFLOW_STORE_FSYNC=1``) keeps the server's own
setting (``on`` unless its administrator changed it).

**A lost connection** (a server restart, a network cut) does not fail a call at once: the
call is tried again on a new connection, with a growing delay, for up to
``reconnect_timeout`` seconds (30 by default, ``?reconnect_timeout=S`` in the URL), then
raises :class:`~runtime.core._exceptions.StoreError` naming the server. A write is one
statement, so it landed whole or not at all; when the connection broke before its answer
came, the retry finds out which (the run is at the written version with the written
state: it landed).

**Other processes** notify their flow-run changes and released concurrency slots on the
store's channel (``LISTEN/NOTIFY``, :mod:`runtime.store._postgres_listen`): a listening
thread reports them to this process's subscribers as they happen. While it cannot listen,
:meth:`PostgresStore.sync_external` polls the versions of the runs someone here waits on.

**States' data.** As in the SQLite store, a state this store wrote reads back as itself
(data included) while it is among the last ``keep_recent`` it wrote; others carry
``states.UNAVAILABLE`` unless their data is a persisted result reference.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar
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
    from psycopg.types.string import TextLoader
    from psycopg_pool import ConnectionPool, PoolTimeout
except ImportError as exc:  # pragma: no cover - the tests install the extra
    raise ConfigurationError(
        f"The PostgreSQL store needs psycopg 3 and psycopg_pool ({exc}): install them with "
        "pip install 'stageflow[postgres]'."
    ) from exc

from ._postgres_listen import Listener

__all__ = ["DEFAULT_SCHEMA", "PostgresStore"]

DEFAULT_SCHEMA = "stageflow"
"""The PostgreSQL schema the store's tables live in unless the URL says ``?schema=NAME``."""

_logger = logging.getLogger("stageflow")
_T = TypeVar("_T")
_KEEP_RECORDS = 1000
_LOST_STATES = ("57P01", "57P02", "57P03")  # admin/crash shutdown, cannot connect now


def _one_line(exc: BaseException) -> str:
    """libpq's message, on one line."""
    return " ".join(str(exc).split())


def _lost(exc: BaseException) -> bool:
    """Whether ``exc`` says the connection was lost (worth trying again on a new one)."""
    if isinstance(exc, (PoolTimeout, psycopg.InterfaceError)):
        return True
    if isinstance(exc, psycopg.OperationalError):
        state = exc.sqlstate
        return state is None or state.startswith("08") or state in _LOST_STATES
    return False


class PostgresStore(StoreBackend):
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
        keep_recent: int = 10_000,
        migrations: list[tuple[str, ...]] = MIGRATIONS,
    ) -> None:
        super().__init__()
        if not SCHEMA_NAME.match(schema):
            raise ConfigurationError(
                f"Invalid PostgreSQL schema name {schema!r} for the store: use lower-case "
                "letters, digits and underscores (at most 63, not starting with a digit)."
            )
        self._conninfo = conninfo
        info = psycopg.conninfo.conninfo_to_dict(conninfo)
        self.where = (
            f"{info.get('host') or 'localhost'}:{info.get('port') or 5432}/"
            f"{info.get('dbname') or info.get('user') or ''}"
        )
        """The server and database, for messages: ``host:port/dbname``."""
        self.url = url or f"postgresql://{self.where}?schema={schema}"
        self.schema = schema
        self.fsync = _env_flag(FSYNC_ENV) if fsync is None else fsync
        self.reconnect_timeout = reconnect_timeout
        self._pool_size = pool_size
        self._sql = Statements(schema)
        self._writer = int.from_bytes(os.urandom(7), "big")  # tags this store's changes
        self._keep_recent = keep_recent
        self._states: OrderedDict[str, State[Any]] = OrderedDict()  # by str(state.id)
        self._records: OrderedDict[str, CacheRecord] = OrderedDict()
        self._memo_lock = threading.Lock()
        self._seen: dict[UUID, int] = {}  # run id -> newest version known here
        self._stop = threading.Event()
        try:
            with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as conn:
                migrate(conn, schema, self.where, migrations)
        except psycopg.Error as exc:
            raise self._unreachable(exc) from exc
        self._pid = os.getpid()
        self._pool = self._open_pool()
        self._listener = self._listen()

    # -- connections ------------------------------------------------------------------

    def _open_pool(self) -> ConnectionPool:
        pool = ConnectionPool(
            self._conninfo,
            min_size=1,
            max_size=self._pool_size,
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

    def _listen(self) -> Listener:
        return Listener(
            self._conninfo, self._sql.channel, self.where, self._on_notify, self._catch_up
        )

    def _run(self, work: Callable[[psycopg.Connection[Any], bool], _T]) -> _T:
        """Return ``work(connection, retried)`` on a pooled connection, trying again on a
        new one while the connection is lost, for up to ``reconnect_timeout`` seconds
        (``retried`` is then True).

        Raises:
            StoreClosed: the store is closed.
            StoreError: the server stayed unreachable, or refused the statement.
        """
        deadline: float | None = None
        delay = 0.0
        while True:
            if self._closed:
                raise StoreClosed(
                    f"The store {self.url!r} is closed; open a new Runtime to use it."
                )
            if self._pid != os.getpid():
                self._after_fork()
            now = time.monotonic()
            try:
                wait = 10.0 if deadline is None else max(0.05, deadline - now)
                with self._pool.connection(timeout=wait) as conn:
                    return work(conn, deadline is not None)
            except (psycopg.Error, PoolTimeout) as exc:
                if not _lost(exc):
                    raise StoreError(
                        f"The PostgreSQL server at {self.where} refused a statement of the "
                        f"store {self.url!r}: {_one_line(exc)}."
                    ) from exc
                if deadline is None:
                    deadline = now + self.reconnect_timeout
                    _logger.warning(
                        "Lost the connection to the PostgreSQL server at %s (%s); trying "
                        "again for up to %g s.",
                        self.where,
                        _one_line(exc),
                        self.reconnect_timeout,
                    )
                elif time.monotonic() >= deadline:
                    raise StoreError(
                        f"Lost the connection to the PostgreSQL server at {self.where} and "
                        f"could not get it back within {self.reconnect_timeout:g} s ({_one_line(exc)}). "
                        "Check that the server runs and accepts connections there, then try "
                        "again."
                    ) from exc
                self._stop.wait(delay)
                delay = min(max(delay * 2, 0.02), 1.0)

    def _unreachable(self, exc: BaseException) -> StoreError:
        return StoreError(
            f"The PostgreSQL server at {self.where} cannot be reached or refused the "
            f"connection ({_one_line(exc)}). Check that it runs and accepts TCP connections "
            "there, and the user, password and database in the store URL."
        )

    def _after_fork(self) -> None:
        """In a forked child: leave the parent's connections alone (closing one would end
        the parent's session) and open new ones."""
        _inherited.append((self._pool, self._listener))
        self._pid = os.getpid()
        self._memo_lock = threading.Lock()
        self._listeners_lock = threading.Lock()
        self._pool = self._open_pool()
        self._listener = self._listen()

    def close(self) -> None:
        """Close the connections; further use raises ``StoreClosed``."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._pid == os.getpid():
            self._listener.stop()
            self._pool.close(timeout=5)
        self._states.clear()
        self._records.clear()
        self._seen.clear()

    # -- runs --------------------------------------------------------------------------

    def create_run(self, kind: RunKind, run: Run) -> None:
        sql = self._sql
        state = run.state
        state_row = None if state is None else rows.state_values(state)
        params: list[Any] = [run.id, *rows.run_values(kind, run, state_row)]
        if state is not None:
            assert state_row is not None
            params += self._state_params(kind, state, state_row)
            self._remember(state)
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
        if state is not None:
            assert state_row is not None and state is current
            params += self._state_params(kind, state, state_row)
            self._remember(state)
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
        """Note that this process knows ``run`` at its version (this store wrote it): not
        news for its subscribers. The oldest half is forgotten past ``keep_recent`` runs."""
        seen = self._seen
        seen[run.id] = run.version
        if len(seen) > self._keep_recent:
            with self._memo_lock:
                for run_id in list(seen)[: len(seen) // 2]:
                    seen.pop(run_id, None)

    def _on_notify(self, payload: str) -> None:
        """A notification from the listener: another process changed a run or freed slots."""
        parts = payload.split()
        if parts[-1] == str(self._writer) or self._closed:
            return  # our own change: its subscribers heard it already
        if parts[0] == "slots":
            self.notify_slots_released()
            return
        kind, run_hex, version = parts[0], parts[1], int(parts[2])
        run_id = UUID(run_hex)
        if kind in ("flow", "task") and self.has_listeners(run_id):
            if self._seen.get(run_id, 0) < version:
                self._report(kind, run_id)  # type: ignore[arg-type]

    def _report(self, kind: RunKind, run_id: UUID) -> None:
        try:
            run = self._read(kind, run_id)
        except ObjectNotFound:
            return
        if run.state is not None and self._seen.get(run_id, 0) < run.version:
            self._seen[run_id] = run.version
            self.notify(run, run.state)

    def _catch_up(self) -> None:
        """Report the changes made elsewhere to the runs this process waits on, since the
        versions it last knew (what notifications would have said)."""
        with self._listeners_lock:
            ids = [key for key in self._listeners if isinstance(key, UUID)]
        if not ids or self._closed:
            return
        s = self._sql.schema
        found = self._run(
            lambda conn, _: conn.execute(
                f"SELECT 'flow', id, version FROM {s}.flow_runs WHERE id = ANY(%s) "
                f"UNION ALL SELECT 'task', id, version FROM {s}.task_runs WHERE id = ANY(%s)",
                (ids, ids),
            ).fetchall()
        )
        for kind, run_id, version in found:
            if self._seen.get(run_id, 0) < version:
                self._report(kind, run_id)

    def sync_external(self) -> None:
        """Notify the subscribers of runs that other processes changed. Free while the
        listener hears every change as it happens; a poll of the versions of the runs
        someone here waits on while it cannot."""
        if self._closed or self._listener.listening:
            return
        self._catch_up()

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


def _same_write(stored: Run, run: Run) -> bool:
    """Whether ``stored`` is ``run`` as written (a retried write finds its first try)."""
    if stored.version != run.version:
        return False
    mine, theirs = run.state, stored.state
    if (mine is None) != (theirs is None):
        return False
    return mine is None or theirs is None or mine.id == theirs.id


_inherited: list[Any] = []  # a forked child's copies of its parent's pools: never closed
