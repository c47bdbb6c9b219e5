"""The SQLite store's file: its schema, the migrations that build it, and opening it.

The schema version lives in ``PRAGMA user_version``. :data:`MIGRATIONS` is an ordered list;
step ``i`` takes a file from version ``i`` to ``i + 1``, so a file of any older version is
brought up to date when it is opened, inside one write transaction (two processes opening
a fresh file at once do not both migrate it). A file whose version is newer than
``len(MIGRATIONS)`` was written by a newer stageflow and is refused.

Tables (``seq`` columns give insertion order; ids are UUID strings):

- ``flow_runs`` / ``task_runs``: one row per run. The columns the store filters on or that
  the orchestrator changes with every state (state type and name, run count, start, end,
  expected start, total run time) are columns; every other field is in ``body``, the
  run's JSON without its state and history.
- ``states``: every state of every run, in the order recorded (``seq``). ``body`` is the
  state's JSON without its data; ``result`` the persisted-result reference when the data
  is one; ``has_data`` whether there was data at all (kept only in the writing process
  unless it is a reference); ``writer`` which store instance wrote it.
- ``run_inputs``: pause inputs, by (flow run, key).
- ``cache_records``: a completed state per cache key, with its expiration.
- ``concurrency_limits`` / ``concurrency_slots``: tag limits and who holds their slots.
- ``run_updates`` (version 2): a log of :meth:`update_run` calls, so other processes notice
  changed run fields (a new name, a pause key, a resume) as they notice new states.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from ._exceptions import ConfigurationError, StoreError

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "open_connection"]

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
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id TEXT NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('flow', 'task')),
            id TEXT NOT NULL,
            type TEXT NOT NULL,
            name TEXT,
            timestamp TEXT NOT NULL,
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
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL CHECK (kind IN ('flow', 'task')),
            run_id TEXT NOT NULL,
            writer INTEGER NOT NULL)""",
    ),
]

SCHEMA_VERSION = len(MIGRATIONS)
"""The schema version this stageflow writes."""

_OUR_TABLES = frozenset(
    {"flow_runs", "task_runs", "states", "run_inputs", "cache_records", "concurrency_limits",
     "concurrency_slots", "run_updates", "sqlite_sequence"}
)


def open_connection(
    path: Path, *, fsync: bool, busy_timeout: float, migrations: list[tuple[str, ...]] = MIGRATIONS
) -> sqlite3.Connection:
    """Open (creating it and its directory if needed) and upgrade the store file ``path``.

    The connection is in autocommit mode (the store opens transactions itself), in WAL
    journal mode, waits up to ``busy_timeout`` seconds for other processes' locks, and
    syncs to disk on every commit only when ``fsync`` is true.

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
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
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
