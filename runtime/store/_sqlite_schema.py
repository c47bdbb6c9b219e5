"""The SQLite store's file: its schema, the migrations that build it, opening it, and how
runs and states map to rows.

The schema version lives in ``PRAGMA user_version``. :data:`MIGRATIONS` is an ordered list;
step ``i`` takes a file from version ``i`` to ``i + 1``, so a file of any older version is
brought up to date when it is opened, inside one write transaction (two processes opening
a fresh file at once do not both migrate it). A file whose version is newer than
``len(MIGRATIONS)`` was written by a newer stageflow and is refused.

Tables (``seq`` columns give insertion order; ids are UUIDs as 32 hex digits). ``states`` and
``run_updates`` are append-only: other processes find what is new by ``seq``.

- ``flow_runs`` / ``task_runs``: one row per run. The columns the store filters on or that
  the orchestrator changes with every state (state type and name, run count, start, end,
  expected start, total run time, version, the state itself) are columns; every other
  field is in ``body``, the run's JSON without its state.
- ``states``: every state of every run, in the order recorded (``seq``). ``body`` is the
  state's JSON without its data; ``result`` the persisted-result reference when the data
  is one; ``has_data`` whether there was data at all (kept only in the writing process
  unless it is a reference); ``writer`` which store instance wrote it.
- ``run_inputs``: pause inputs, by (flow run, key).
- ``cache_records``: a completed state per cache key, with its expiration.
- ``concurrency_limits`` / ``concurrency_slots``: tag limits and who holds their slots.
- ``run_updates`` (version 2): no longer written (version 3 puts what it was for in the
  run rows); kept so that older files open unchanged.
- Version 3: each run row also holds its ``version`` (the store's write count, for checked
  writes) and its current state (``state_body``, ``state_result``, ``state_has_data``, as
  in ``states``), so a run is read with one row.
- Version 4, long-running pipelines: ``schedules`` (one row per schedule name: its
  definition as JSON in ``body``, its anchor, status and times), ``schedule_slots`` (the
  claimed slots, unique by schedule and slot time in microseconds since the epoch) and
  ``process_leases`` (one row per live process: its owner token, host, pid, times and the
  schedules it serves).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

from ..core._exceptions import ConfigurationError, StoreError
from ..core._models import FlowRun, RunKind, TaskRun
from ..core._states import UNAVAILABLE, State, replace
from ._results import ResultRef

__all__ = [
    "AUTOCHECKPOINT_PAGES",
    "INSERT_RUN",
    "INSERT_STATE",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "SELECT_RUN",
    "TABLES",
    "UPDATE_RUN",
    "UPDATE_STATE",
    "build_run",
    "iso",
    "open_connection",
    "parse_datetime",
    "SELECT_VERSION",
    "STATE_COLUMNS",
    "StateValues",
    "WRITTEN_COLUMNS",
    "run_values",
    "state_columns",
    "state_from_row",
    "state_values",
]

_RUN_COLUMNS = """
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    state_type TEXT,
    state_name TEXT,
    run_count INTEGER NOT NULL DEFAULT 0,
    start_time TEXT,
    end_time TEXT,
    expected_start_time TEXT,
    total_run_time_us INTEGER NOT NULL DEFAULT 0,
    created TEXT NOT NULL,
    body TEXT NOT NULL"""

MIGRATIONS: list[tuple[str, ...]] = [
    # 0 -> 1: runs, state history, pause inputs, cache records, concurrency limits.
    (
        f"""CREATE TABLE flow_runs ({_RUN_COLUMNS},
            flow_name TEXT NOT NULL,
            parent_task_run_id TEXT)""",
        "CREATE INDEX flow_runs_by_flow_name ON flow_runs (flow_name)",
        "CREATE INDEX flow_runs_by_parent ON flow_runs (parent_task_run_id)",
        f"""CREATE TABLE task_runs ({_RUN_COLUMNS},
            flow_run_id TEXT,
            task_key TEXT NOT NULL,
            dynamic_key TEXT NOT NULL)""",
        # Not UNIQUE: a flow run's retry makes its task runs again under the same keys, and
        # find_task_run answers with the newest, as the memory store does.
        "CREATE INDEX task_runs_by_key ON task_runs (flow_run_id, task_key, dynamic_key)",
        """CREATE TABLE states (
            seq INTEGER PRIMARY KEY,
            run_id TEXT NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('flow', 'task')),
            id TEXT NOT NULL,
            type TEXT NOT NULL,
            name TEXT,
            body TEXT NOT NULL,
            result TEXT,
            has_data INTEGER NOT NULL DEFAULT 0,
            writer INTEGER NOT NULL DEFAULT 0)""",
        "CREATE INDEX states_by_run ON states (run_id, seq)",
        """CREATE TABLE run_inputs (
            flow_run_id TEXT NOT NULL,
            key TEXT NOT NULL,
            value TEXT NOT NULL,
            PRIMARY KEY (flow_run_id, key))""",
        """CREATE TABLE cache_records (
            key TEXT PRIMARY KEY,
            state TEXT NOT NULL,
            result TEXT,
            has_data INTEGER NOT NULL DEFAULT 0,
            expiration TEXT)""",
        'CREATE TABLE concurrency_limits (tag TEXT PRIMARY KEY, "limit" INTEGER NOT NULL)',
        """CREATE TABLE concurrency_slots (
            tag TEXT NOT NULL,
            holder TEXT NOT NULL,
            PRIMARY KEY (tag, holder))""",
        "CREATE INDEX concurrency_slots_by_holder ON concurrency_slots (holder)",
    ),
    # 1 -> 2: the log of run updates other processes poll.
    (
        """CREATE TABLE run_updates (
            seq INTEGER PRIMARY KEY,
            kind TEXT NOT NULL CHECK (kind IN ('flow', 'task')),
            run_id TEXT NOT NULL,
            writer INTEGER NOT NULL)""",
    ),
    # 2 -> 3: checked writes (a version per run) and the current state in the run's row.
    tuple(
        statement
        for table in ("flow_runs", "task_runs")
        for statement in (
            f"ALTER TABLE {table} ADD COLUMN version INTEGER NOT NULL DEFAULT 1",
            f"ALTER TABLE {table} ADD COLUMN state_body TEXT",
            f"ALTER TABLE {table} ADD COLUMN state_result TEXT",
            f"ALTER TABLE {table} ADD COLUMN state_has_data INTEGER NOT NULL DEFAULT 0",
            f"""UPDATE {table} SET
                version = MAX(1, (SELECT COUNT(*) FROM states WHERE run_id = {table}.id)),
                state_body = (SELECT body FROM states WHERE run_id = {table}.id
                              ORDER BY seq DESC LIMIT 1),
                state_result = (SELECT result FROM states WHERE run_id = {table}.id
                                ORDER BY seq DESC LIMIT 1),
                state_has_data = COALESCE((SELECT has_data FROM states
                                           WHERE run_id = {table}.id
                                           ORDER BY seq DESC LIMIT 1), 0)""",
        )
    ),
    # 3 -> 4: schedules, the slots they claimed, and process leases.
    (
        """CREATE TABLE schedules (
            name TEXT PRIMARY KEY,
            flow_name TEXT NOT NULL,
            body TEXT NOT NULL,
            anchor TEXT NOT NULL,
            status TEXT NOT NULL,
            message TEXT,
            created TEXT,
            updated TEXT)""",
        """CREATE TABLE schedule_slots (
            schedule TEXT NOT NULL,
            slot_us INTEGER NOT NULL,
            claimer TEXT NOT NULL,
            claimed TEXT NOT NULL,
            fired INTEGER NOT NULL,
            PRIMARY KEY (schedule, slot_us))""",
        """CREATE TABLE process_leases (
            owner TEXT PRIMARY KEY,
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            started TEXT NOT NULL,
            renewed TEXT NOT NULL,
            expires TEXT NOT NULL,
            serving TEXT NOT NULL DEFAULT '[]')""",
    ),
]

AUTOCHECKPOINT_PAGES = 10_000
"""WAL size, in pages, at which a commit checkpoints by itself."""

SCHEMA_VERSION = len(MIGRATIONS)
"""The schema version this stageflow writes."""

_OUR_TABLES = frozenset(
    {
        "flow_runs",
        "task_runs",
        "states",
        "run_inputs",
        "cache_records",
        "concurrency_limits",
        "concurrency_slots",
        "run_updates",
        "schedules",
        "schedule_slots",
        "process_leases",
        "sqlite_sequence",
    }
)


def open_connection(
    path: Path, *, fsync: bool, busy_timeout: float, migrations: list[tuple[str, ...]] = MIGRATIONS
) -> sqlite3.Connection:
    """Open (creating it and its directory if needed) and upgrade the store file ``path``.

    The connection is in autocommit mode (the store opens transactions itself), in WAL
    journal mode, waits up to ``busy_timeout`` seconds for other processes' locks, syncs
    to disk on every commit only when ``fsync`` is true, and checkpoints by itself only
    when the WAL is large.

    Raises:
        StoreError: the file or its directory cannot be created or read, or the file is
            not an SQLite database.
        ConfigurationError: the file was written by a newer stageflow, or it is an SQLite
            database of some other program.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
    except (OSError, sqlite3.Error) as exc:
        raise StoreError(
            f"Cannot open the store file {path}: {exc}. Check that its directory is writable, "
            "or choose another file with STAGEFLOW_STORE=sqlite:///path/to/file.db."
        ) from exc
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {'FULL' if fsync else 'NORMAL'}")
        # Checkpoints (copying the WAL into the file, with an fsync) are the commit thread's
        # job; a commit does one itself only once the WAL reaches ~40 MB. Once checkpointed,
        # the WAL file is cut back to 64 MB at most.
        conn.execute(f"PRAGMA wal_autocheckpoint = {AUTOCHECKPOINT_PAGES}")
        conn.execute(f"PRAGMA journal_size_limit = {64 * 1024 * 1024}")
        _migrate(conn, path, migrations)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise StoreError(
            f"The store file {path} cannot be read as an SQLite database ({exc}). Move it "
            "away to start a new store, or choose another file with "
            "STAGEFLOW_STORE=sqlite:///path/to/file.db."
        ) from exc
    except BaseException:
        conn.close()
        raise
    return conn


def _version(conn: sqlite3.Connection) -> int:
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    return version


def _check_version(version: int, path: Path, known: int) -> None:
    if version > known:
        raise ConfigurationError(
            f"The store file {path} has schema version {version}, but this stageflow only "
            f"knows versions up to {known}: it was written by a newer stageflow. Upgrade "
            "stageflow (pip install -U stageflow), or choose another store file."
        )


def _migrate(conn: sqlite3.Connection, path: Path, migrations: list[tuple[str, ...]]) -> None:
    known = len(migrations)
    version = _version(conn)
    _check_version(version, path, known)
    if version == known:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = _version(conn)  # another process may have migrated meanwhile
        _check_version(version, path, known)
        if version == 0:
            tables = {
                row[0]
                for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
            if tables - _OUR_TABLES:
                raise ConfigurationError(
                    f"The file {path} is an SQLite database of another program (it has the "
                    f"tables {', '.join(sorted(tables - _OUR_TABLES))}), not a stageflow store. "
                    "Choose another file with STAGEFLOW_STORE=sqlite:///path/to/file.db."
                )
        for step in migrations[version:]:
            for statement in step:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {known}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


# -- rows <-> models ------------------------------------------------------------------------

Run = FlowRun | TaskRun

TABLES: dict[str, str] = {"flow": "flow_runs", "task": "task_runs"}
_MODELS: dict[str, type[FlowRun | TaskRun]] = {"flow": FlowRun, "task": TaskRun}
_LINKS = {
    "flow": ("flow_name", "parent_task_run_id"),
    "task": ("flow_run_id", "task_key", "dynamic_key"),
}
_STATE_COLUMNS = (
    "state_type",
    "state_name",
    "run_count",
    "start_time",
    "end_time",
    "expected_start_time",
    "total_run_time_us",
    "version",
    "state_body",
    "state_result",
    "state_has_data",
)
_WRITTEN = {
    kind: ("name", *_STATE_COLUMNS, "created", "body", *links) for kind, links in _LINKS.items()
}
STATE_COLUMNS = _STATE_COLUMNS
"""The run columns that change with every state, in the order :func:`state_columns` gives
their values (a server database's store maps runs to rows with these functions too)."""
WRITTEN_COLUMNS = _WRITTEN
"""Per kind, the run columns :func:`run_values` gives values for, in its order."""
_NOT_IN_BODY = {"state", "version", "run_count", "start_time", "end_time"}
_NO_DATA = {"data"}
_MICROSECOND = timedelta(microseconds=1)

SELECT_RUN = {
    kind: f"SELECT id, body, {', '.join(_STATE_COLUMNS[2:])} FROM {table}"
    for kind, table in TABLES.items()
}
"""Per kind, the start of a query for rows :func:`build_run` takes."""

INSERT_RUN = {
    kind: f"INSERT INTO {TABLES[kind]} (id, {', '.join(columns)}) VALUES (?{', ?' * len(columns)})"
    for kind, columns in _WRITTEN.items()
}
"""Per kind, insert a run: parameters ``(id, *run_values(kind, run, state_values))``."""

UPDATE_RUN = {
    kind: f"UPDATE {TABLES[kind]} SET {', '.join(f'{c} = ?' for c in columns)} WHERE id = ?"
    for kind, columns in _WRITTEN.items()
}
"""Per kind, rewrite a run: parameters ``(*run_values(kind, run, state_values), id)``."""

UPDATE_STATE = {
    kind: f"UPDATE {table} SET {', '.join(f'{c} = ?' for c in _STATE_COLUMNS)} WHERE id = ?"
    for kind, table in TABLES.items()
}
"""Per kind, a run's new state: parameters ``(*state_columns(run, state_values), id)``."""

SELECT_VERSION = {
    kind: f"SELECT version FROM {table} WHERE id = ?" for kind, table in TABLES.items()
}
"""Per kind, a run's stored version: parameters ``(id,)``."""

INSERT_STATE = (
    "INSERT INTO states (run_id, kind, id, type, name, body, result, has_data, writer) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
"""Parameters ``(run id, kind, state id, type, name, *state_values(state), writer)``."""

StateValues = tuple[str, "str | None", bool]
"""What :func:`state_values` returns: ``(body, result, has_data)``."""

_NO_STATE: StateValues = (None, None, False)  # type: ignore[assignment]


def iso(value: datetime | None) -> str | None:
    """Return ``value`` as ISO 8601 text (None stays None)."""
    return None if value is None else value.isoformat()


def parse_datetime(text: str | datetime | None) -> datetime | None:
    """Return the datetime :func:`iso` wrote (None stays None); a datetime (what a server
    database's timestamp column reads as) is returned as it is."""
    if text is None or isinstance(text, datetime):
        return text
    return datetime.fromisoformat(text)


def _column(value: Any) -> Any:
    """A link column's value: ids as 32 hex digits, like every id in the file."""
    return value.hex if isinstance(value, UUID) else value


def _unencodable(value: Any) -> str:
    return f"<{type(value).__name__}>"


def run_values(kind: RunKind, run: Run, state: StateValues | None) -> tuple[Any, ...]:
    """Return the values of the columns :data:`INSERT_RUN` and :data:`UPDATE_RUN` write;
    ``state`` is :func:`state_values` of ``run.state`` (None if it has none).

    Fields JSON cannot encode (a parameter holding an object) are stored as
    ``"<TypeName>"``, as ``Flow.serialize_parameters`` does.
    """
    return (
        run.name,
        *state_columns(run, state),
        run.created.isoformat(),
        run.model_dump_json(exclude=_NOT_IN_BODY, fallback=_unencodable),
        *(_column(getattr(run, column)) for column in _LINKS[kind]),
    )


def state_columns(run: Run, state: StateValues | None) -> tuple[Any, ...]:
    """Return the values of the columns that change with every state, as stored."""
    current = run.state
    return (
        None if current is None else current.type.value,
        None if current is None else current.name,
        run.run_count,
        iso(run.start_time),
        iso(run.end_time),
        iso(run.expected_start_time),
        run.total_run_time // _MICROSECOND,
        run.version,
        *(state or _NO_STATE),
    )


def build_run(
    kind: RunKind,
    row: Sequence[Any],
    known_state: Callable[[str], State[Any] | None] = lambda state_id: None,
) -> Run:
    """Return the snapshot of a :data:`SELECT_RUN` row. ``known_state(id)`` may return the
    state object this process wrote with that id (whose data is still in memory)."""
    run: Run = _MODELS[kind].model_validate_json(row[1])
    state = None
    if row[8] is not None:
        state = state_from_row(row[8], row[9], row[10], known_state)
    values = run.__dict__
    values["run_count"] = row[2]
    values["start_time"] = parse_datetime(row[3])
    values["end_time"] = parse_datetime(row[4])
    values["expected_start_time"] = parse_datetime(row[5])
    values["total_run_time"] = timedelta(microseconds=row[6])
    values["version"] = row[7]
    values["state"] = state
    return run


def state_values(state: State[Any]) -> StateValues:
    """Return ``(body, result, has_data)`` for a state: its JSON without its data, the
    persisted-result reference if its data is one, and whether it had data at all."""
    data = state.data
    return (
        state.model_dump_json(exclude=_NO_DATA, exclude_none=True),
        data.to_json() if isinstance(data, ResultRef) else None,
        data is not None,
    )


_STATE_ID = len('{"id":"')


def state_from_row(
    body: str,
    result: str | None,
    has_data: int,
    known_state: Callable[[str], State[Any] | None] = lambda state_id: None,
) -> State[Any]:
    """Rebuild a state from :func:`state_values`. A state this process wrote comes back as
    the object it wrote (``known_state``); otherwise data that was not a persisted result
    (an exception, a value) was kept only in memory and reads as ``UNAVAILABLE``."""
    if body.startswith('{"id":"'):
        known = known_state(body[_STATE_ID : _STATE_ID + 36])
        if known is not None:
            return known
    state: State[Any] = State.model_validate_json(body)
    if result is not None:
        return replace(state, data=ResultRef.from_json(result))
    if has_data:
        return replace(state, data=UNAVAILABLE)
    return state
