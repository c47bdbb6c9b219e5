"""The PostgreSQL store's tables: the migrations that build them, and its statements.

Everything lives in one PostgreSQL schema (``stageflow`` unless the URL says
``?schema=NAME``), so a database shared with other programs keeps its tables apart from
ours, and one database can hold several independent stores.

**Versions.** ``schema_version`` holds one row, the schema's version. :data:`MIGRATIONS`
is an ordered list: step ``i`` takes the schema from version ``i`` to ``i + 1``. Opening a
store upgrades an older schema in one transaction (PostgreSQL's DDL is transactional:
an upgrade lands whole or not at all) under a transaction-scoped advisory lock keyed by
the schema's name, so several processes starting at once upgrade it once, the others
waiting and then finding it current. A schema whose version is newer than
``len(MIGRATIONS)`` was made by a newer stageflow and is refused.

**Tables** mirror the SQLite store's (:mod:`runtime.store._sqlite_schema`), with native
types: ids are ``uuid``, times ``timestamptz``, JSON bodies ``json`` (kept as written;
read back as text), flags ``boolean``. Runs map to rows with the SQLite store's functions
(``run_values``, ``state_values``, ``build_run``...), so both stores keep the same fields
the same way. ``seq`` columns (identities) give insertion order.

- Version 1: runs, state history, pause inputs, cache records, concurrency limits.
- Version 2, long-running pipelines: ``schedules``, ``schedule_slots`` and
  ``process_leases`` (:mod:`runtime.store._postgres_pipelines`).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from ..core._exceptions import ConfigurationError
from ._postgres_pipelines import PIPELINE_TABLES
from ._sqlite_schema import STATE_COLUMNS, TABLES, WRITTEN_COLUMNS

__all__ = ["MIGRATIONS", "SCHEMA_NAME", "SCHEMA_VERSION", "Statements", "lock_key", "migrate"]

SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
"""What a schema name may be: lower-case letters, digits and underscores, 63 at most."""

_RUN_COLUMNS = """
    id uuid PRIMARY KEY,
    seq bigint GENERATED ALWAYS AS IDENTITY,
    name text NOT NULL,
    state_type text,
    state_name text,
    run_count integer NOT NULL DEFAULT 0,
    start_time timestamptz,
    end_time timestamptz,
    expected_start_time timestamptz,
    total_run_time_us bigint NOT NULL DEFAULT 0,
    version integer NOT NULL DEFAULT 1,
    state_body json,
    state_result text,
    state_has_data boolean NOT NULL DEFAULT false,
    created timestamptz NOT NULL,
    body json NOT NULL"""

MIGRATIONS: list[tuple[str, ...]] = [
    # 0 -> 1: runs, state history, pause inputs, cache records, concurrency limits.
    (
        f"""CREATE TABLE {{s}}.flow_runs ({_RUN_COLUMNS},
            flow_name text NOT NULL,
            parent_task_run_id uuid)""",
        "CREATE INDEX flow_runs_by_seq ON {s}.flow_runs (seq)",
        "CREATE INDEX flow_runs_by_flow_name ON {s}.flow_runs (flow_name, seq)",
        "CREATE INDEX flow_runs_by_parent ON {s}.flow_runs (parent_task_run_id)",
        "CREATE INDEX flow_runs_by_state_type ON {s}.flow_runs (state_type)",
        f"""CREATE TABLE {{s}}.task_runs ({_RUN_COLUMNS},
            flow_run_id uuid,
            task_key text NOT NULL,
            dynamic_key text NOT NULL)""",
        # Not UNIQUE: a flow run's retry makes its task runs again under the same keys.
        "CREATE INDEX task_runs_by_key ON {s}.task_runs (flow_run_id, task_key, dynamic_key)",
        """CREATE TABLE {s}.states (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            run_id uuid NOT NULL,
            kind text NOT NULL CHECK (kind IN ('flow', 'task')),
            id uuid NOT NULL,
            type text NOT NULL,
            name text,
            body json NOT NULL,
            result text,
            has_data boolean NOT NULL DEFAULT false,
            writer bigint NOT NULL DEFAULT 0)""",
        "CREATE INDEX states_by_run ON {s}.states (run_id, seq)",
        """CREATE TABLE {s}.run_inputs (
            flow_run_id uuid NOT NULL,
            key text NOT NULL,
            value text NOT NULL,
            PRIMARY KEY (flow_run_id, key))""",
        """CREATE TABLE {s}.cache_records (
            key text PRIMARY KEY,
            state json NOT NULL,
            result text,
            has_data boolean NOT NULL DEFAULT false,
            expiration timestamptz)""",
        """CREATE TABLE {s}.concurrency_limits (
            tag text PRIMARY KEY,
            "limit" integer NOT NULL,
            seq bigint GENERATED ALWAYS AS IDENTITY)""",
        """CREATE TABLE {s}.concurrency_slots (
            tag text NOT NULL,
            holder uuid NOT NULL,
            seq bigint GENERATED ALWAYS AS IDENTITY,
            PRIMARY KEY (tag, holder))""",
        "CREATE INDEX concurrency_slots_by_holder ON {s}.concurrency_slots (holder)",
    ),
    # 1 -> 2: schedules, the slots they claimed, and process leases.
    PIPELINE_TABLES,
]

SCHEMA_VERSION = len(MIGRATIONS)
"""The schema version this stageflow writes."""

# The SQL type of each run column (for the explicit casts of INSERT ... SELECT).
_TYPES = {
    "name": "text",
    "state_type": "text",
    "state_name": "text",
    "run_count": "integer",
    "start_time": "timestamptz",
    "end_time": "timestamptz",
    "expected_start_time": "timestamptz",
    "total_run_time_us": "bigint",
    "version": "integer",
    "state_body": "json",
    "state_result": "text",
    "state_has_data": "boolean",
    "created": "timestamptz",
    "body": "json",
    "flow_name": "text",
    "parent_task_run_id": "uuid",
    "flow_run_id": "uuid",
    "task_key": "text",
    "dynamic_key": "text",
}
_STATE_INSERT = (
    "INSERT INTO {s}.states (run_id, kind, id, type, name, body, result, has_data, writer) "
    "SELECT id, %s::text, %s::uuid, %s::text, %s::text, %s::json, %s::text, %s::boolean, "
    "%s::bigint FROM run"
)


def lock_key(schema: str) -> int:
    """The advisory lock (a signed 64-bit key) that serializes upgrades of ``schema``."""
    digest = hashlib.blake2b(f"stageflow schema {schema}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def migrate(conn: Any, schema: str, where: str, migrations: list[tuple[str, ...]]) -> int:
    """Bring ``schema`` up to ``len(migrations)`` on the connection ``conn`` (autocommit),
    under the schema's advisory lock; return the version it was at.

    Raises:
        ConfigurationError: the schema was made by a newer stageflow.
    """
    known = len(migrations)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(schema),))
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        conn.execute(f"CREATE TABLE IF NOT EXISTS {schema}.schema_version (version integer)")
        row = conn.execute(f"SELECT version FROM {schema}.schema_version").fetchone()
        if row is None:
            conn.execute(f"INSERT INTO {schema}.schema_version (version) VALUES (0)")
        version = 0 if row is None else int(row[0])
        if version > known:
            raise ConfigurationError(
                f"The PostgreSQL schema {schema!r} of {where} has stageflow schema version "
                f"{version}, but this stageflow only knows versions up to {known}: it was "
                "written by a newer stageflow. Upgrade stageflow (pip install -U stageflow), "
                "or choose another schema with ?schema=NAME in the store URL."
            )
        for step in migrations[version:]:
            for statement in step:
                conn.execute(statement.format(s=schema))
        if version < known:
            conn.execute(f"UPDATE {schema}.schema_version SET version = %s", (known,))
    return version


class Statements:
    """The store's SQL, with its schema's name in every table name.

    The run statements take the SQLite store's row values (``run_values``,
    ``state_columns``, ``state_values``) and build rows for ``build_run``.
    """

    def __init__(self, schema: str) -> None:
        s = schema
        self.schema = s
        self.channel = f"{s}_changes"
        """The LISTEN/NOTIFY channel of the store's changes."""
        self.table = {kind: f"{s}.{table}" for kind, table in TABLES.items()}
        self.select_run = {
            kind: f"SELECT id, body, {', '.join(STATE_COLUMNS[2:])} FROM {table}"
            for kind, table in self.table.items()
        }
        """Per kind, the start of a query for rows ``build_run`` takes."""
        self.insert_run: dict[str, str] = {}
        self.update_run: dict[str, str] = {}
        self.update_state: dict[str, str] = {}
        for kind, table in self.table.items():
            columns = WRITTEN_COLUMNS[kind]
            casts = ", ".join(f"%s::{_TYPES[c]}" for c in columns)
            self.insert_run[kind] = (
                f"WITH run AS (INSERT INTO {table} (id, {', '.join(columns)}) "
                f"VALUES (%s::uuid, {casts}) RETURNING id)"
            )
            self.update_run[kind] = self._checked_update(table, columns)
            self.update_state[kind] = self._checked_update(table, STATE_COLUMNS)
        task_runs, columns = self.table["task"], WRITTEN_COLUMNS["task"]
        self.batch_insert_run = (
            f"INSERT INTO {task_runs} (id, {', '.join(columns)}) "
            f"VALUES (%s{', %s' * len(columns)})"
        )
        """A batch's new task run: ``(id, *run_values("task", run, state_values))``."""
        self.batch_update_run = {
            full: f"UPDATE {task_runs} SET "
            f"{', '.join(f'{c} = %s' for c in (columns if full else STATE_COLUMNS))} WHERE id = %s"
            for full in (True, False)
        }
        """A batch's task run columns (all of them, or those of its state), then its id."""
        self.batch_insert_state = (
            f"INSERT INTO {s}.states (run_id, kind, id, type, name, body, result, has_data, "
            "writer) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
        )
        """A batch's new state: ``(run id, kind, *state params)``."""
        self.insert_state = _STATE_INSERT.format(s=s)
        """Parameters ``(kind, state id, type, name, *state_values(state), writer)``; after
        a ``WITH run AS (...)`` that returns the run's id."""
        self.upsert_input_after_run = (
            f"INSERT INTO {s}.run_inputs (flow_run_id, key, value) "
            "SELECT id, %s::text, %s::text FROM run "
            "ON CONFLICT (flow_run_id, key) DO UPDATE SET value = excluded.value"
        )
        self.upsert_input = (
            f"INSERT INTO {s}.run_inputs (flow_run_id, key, value) VALUES (%s, %s, %s) "
            "ON CONFLICT (flow_run_id, key) DO UPDATE SET value = excluded.value"
        )

    @staticmethod
    def _checked_update(table: str, columns: tuple[str, ...]) -> str:
        assignments = ", ".join(f"{c} = %s::{_TYPES[c]}" for c in columns)
        return (
            f"WITH run AS (UPDATE {table} SET {assignments} "
            "WHERE id = %s AND version = %s RETURNING id)"
        )

    def write(self, head: str, *, state: bool, run_input: bool, notify: bool) -> str:
        """One statement: ``head`` (a ``WITH run AS (...)`` that inserts or updates a run
        and returns its id), then the state's row and the run input's, if any, and a
        NOTIFY to the other processes; it answers one row if the run was written, none
        if not (a stale version, or no such run), and lands whole or not at all."""
        parts = [head]
        if state:
            parts.append(f", st AS ({self.insert_state})")
        if run_input:
            parts.append(f", inp AS ({self.upsert_input_after_run})")
        parts.append(" SELECT pg_notify(%s, %s) FROM run" if notify else " SELECT 1 FROM run")
        return "".join(parts)
