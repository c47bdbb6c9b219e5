"""The PostgreSQL store's schedules, schedule slots and process leases (schema version 2),
and its task queue (version 3).

A mixin of :class:`~runtime.store._postgres.PostgresStore`, as
:mod:`runtime.store._sqlite_pipelines` is of the SQLite store. Every method is one
statement, so one transaction, and what the store contract asks to be atomic is made so
by PostgreSQL itself:

- a registration is one ``INSERT ... ON CONFLICT (name) DO UPDATE`` that keeps the stored
  anchor and creation time when the trigger (interval, cron, timezone: columns of their
  own) is unchanged. Two processes registering one schedule at once: the second's insert
  waits for the first's row, then updates it, so both answer the first one's anchor;
- a slot claim is an ``INSERT ... ON CONFLICT DO NOTHING`` into the key (schedule, slot
  time); ``timestamptz`` keeps microseconds, so the key is the slot time to the
  microsecond, whatever its time zone;
- a lease renewal is an upsert; a reaper's release is a ``DELETE ... WHERE expires = <the
  expiry it read>``, whose row lock makes the check and the delete one step.

- a task run's claim is one ``UPDATE`` of the entries a ``SELECT ... FOR UPDATE SKIP
  LOCKED`` picked: concurrent workers take different entries, never one twice, and never
  wait on each other's rows. Queuing a run, or putting one back, sends a ``NOTIFY``
  that wakes the workers of other processes; a run's end (its entry removed) wakes
  whoever waits on its future elsewhere.

A call tried again after a lost connection (:meth:`Database.run
<runtime.store._postgres_db.Database.run>`) checks whether its first try landed, where
the answer depends on it (a slot claim, a task run's claim, a queued run).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from ..core._exceptions import StoreClosed, StoreError
from ..core._models import TaskRun
from . import _sqlite_schema as rows
from ._records import ProcessLease, QueuedTaskRun, ScheduleRecord, ScheduleSlot

if TYPE_CHECKING:  # the store imports psycopg, saying how to install it if missing
    import psycopg

__all__ = ["PIPELINE_TABLES", "PipelineTables", "TASK_QUEUE_TABLE"]

PIPELINE_TABLES = (
    """CREATE TABLE {s}.schedules (
        name text PRIMARY KEY,
        flow_name text NOT NULL,
        "interval" double precision,
        cron text,
        timezone text,
        body json NOT NULL,
        anchor timestamptz NOT NULL,
        status text NOT NULL,
        message text,
        created timestamptz,
        updated timestamptz)""",
    """CREATE TABLE {s}.schedule_slots (
        schedule text NOT NULL,
        slot timestamptz NOT NULL,
        claimer text NOT NULL,
        claimed timestamptz NOT NULL,
        fired boolean NOT NULL,
        PRIMARY KEY (schedule, slot))""",
    """CREATE TABLE {s}.process_leases (
        owner text PRIMARY KEY,
        host text NOT NULL,
        pid integer NOT NULL,
        started timestamptz NOT NULL,
        renewed timestamptz NOT NULL,
        expires timestamptz NOT NULL,
        serving text[] NOT NULL DEFAULT '{{}}')""",
)
"""The migration step (1 -> 2) that adds the pipeline tables."""

TASK_QUEUE_TABLE = (
    """CREATE TABLE {s}.task_queue (
        seq bigint GENERATED ALWAYS AS IDENTITY,
        task_run_id uuid PRIMARY KEY,
        task_key text NOT NULL,
        call bytea NOT NULL,
        queued timestamptz NOT NULL,
        claimer text,
        claimed timestamptz)""",
    "CREATE INDEX task_queue_waiting ON {s}.task_queue (task_key, seq) WHERE claimer IS NULL",
    "CREATE INDEX task_queue_by_claimer ON {s}.task_queue (claimer)",
)
"""The migration step (2 -> 3) that adds the task queue."""

_SCHEDULE_COLUMNS = (
    'name, flow_name, "interval", cron, timezone, body, anchor, status, message, created, updated'
)
_LEASE_COLUMNS = "owner, host, pid, started, renewed, expires, serving"
_QUEUE_COLUMNS = "seq, task_run_id, task_key, call, queued, claimer, claimed"
_SAME_TRIGGER = (
    '(cur."interval", cur.cron, cur.timezone) IS NOT DISTINCT FROM '
    '(excluded."interval", excluded.cron, excluded.timezone)'
)


class PipelineTables:
    """The pipeline methods of the store contract, for a PostgreSQL schema (see the module
    docstring); the class using it provides ``_run``, ``_sql``, ``url``, ``_writer``,
    ``_state_params``, ``_remember``, ``_saw`` and ``notify_task_queued``."""

    _run: Callable[..., Any]
    _sql: Any
    url: str
    _writer: int
    _state_params: Callable[..., list[Any]]
    _remember: Callable[[Any], None]
    _saw: Callable[[Any], None]
    notify_task_queued: Callable[[], None]

    def _one(self, sql: str, params: tuple[Any, ...]) -> Any:
        """The first row ``sql`` answers, or None; ``{s}`` in it is the store's schema."""
        statement = sql.format(s=self._sql.schema)
        return self._run(lambda conn, _: conn.execute(statement, params).fetchone())

    def _all(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        statement = sql.format(s=self._sql.schema)
        return self._run(lambda conn, _: conn.execute(statement, params).fetchall())  # type: ignore[no-any-return]

    # -- schedules ----------------------------------------------------------------------

    def register_schedule(self, record: ScheduleRecord) -> ScheduleRecord:
        row = self._one(
            f"INSERT INTO {{s}}.schedules AS cur ({_SCHEDULE_COLUMNS}) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
            'ON CONFLICT (name) DO UPDATE SET flow_name = excluded.flow_name, "interval" = '
            'excluded."interval", cron = excluded.cron, timezone = excluded.timezone, '
            "body = excluded.body, status = excluded.status, message = excluded.message, "
            "updated = excluded.updated, "
            f"anchor = CASE WHEN {_SAME_TRIGGER} THEN cur.anchor ELSE excluded.anchor END, "
            f"created = CASE WHEN {_SAME_TRIGGER} THEN cur.created ELSE excluded.created END "
            f"RETURNING {_SCHEDULE_COLUMNS}",
            _schedule_values(record),
        )
        return _schedule(row)

    def read_schedules(self) -> list[ScheduleRecord]:
        rows = self._all(f"SELECT {_SCHEDULE_COLUMNS} FROM {{s}}.schedules ORDER BY name")
        return [_schedule(row) for row in rows]

    def read_schedule(self, name: str) -> ScheduleRecord | None:
        row = self._one(f"SELECT {_SCHEDULE_COLUMNS} FROM {{s}}.schedules WHERE name = %s", (name,))
        return None if row is None else _schedule(row)

    def set_schedule_status(
        self, name: str, status: str, message: str | None, updated: datetime
    ) -> None:
        self._all(
            "UPDATE {s}.schedules SET status = %s, message = %s, updated = %s WHERE name = %s "
            "RETURNING 1",
            (status, message, updated, name),
        )

    def claim_schedule_slot(self, slot: ScheduleSlot) -> bool:
        schema = self._sql.schema
        params = (slot.schedule, slot.slot, slot.claimer, slot.claimed, slot.fired)

        def claim(conn: psycopg.Connection[Any], retried: bool) -> bool:
            inserted = conn.execute(
                f"INSERT INTO {schema}.schedule_slots (schedule, slot, claimer, claimed, fired) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING 1",
                params,
            ).fetchone()
            if inserted is not None:
                return True
            if not retried:
                return False
            # Did the first try land before the connection broke? Then the slot is ours.
            stored = conn.execute(
                f"SELECT claimer, claimed FROM {schema}.schedule_slots "
                "WHERE schedule = %s AND slot = %s",
                params[:2],
            ).fetchone()
            return stored is not None and tuple(stored) == (slot.claimer, slot.claimed)

        return self._run(claim)  # type: ignore[no-any-return]

    def read_schedule_slots(self, schedule: str, limit: int | None = None) -> list[ScheduleSlot]:
        sql = (
            "SELECT schedule, slot, claimer, claimed, fired FROM {s}.schedule_slots "
            "WHERE schedule = %s ORDER BY slot DESC"
        )
        params: tuple[Any, ...] = (schedule,)
        if limit is not None:
            sql += " LIMIT %s"
            params += (max(0, int(limit)),)
        return [ScheduleSlot(*row) for row in self._all(sql, params)]

    # -- process leases -----------------------------------------------------------------

    def renew_lease(self, lease: ProcessLease) -> None:
        self._all(
            f"INSERT INTO {{s}}.process_leases ({_LEASE_COLUMNS}) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s::text[]) "
            "ON CONFLICT (owner) DO UPDATE SET host = excluded.host, pid = excluded.pid, "
            "started = excluded.started, renewed = excluded.renewed, "
            "expires = excluded.expires, serving = excluded.serving RETURNING 1",
            (
                lease.owner,
                lease.host,
                lease.pid,
                lease.started,
                lease.renewed,
                lease.expires,
                list(lease.serving),
            ),
        )

    def read_leases(self) -> list[ProcessLease]:
        rows = self._all(
            f"SELECT {_LEASE_COLUMNS} FROM {{s}}.process_leases ORDER BY started, owner"
        )
        return [_lease(row) for row in rows]

    def read_lease(self, owner: str) -> ProcessLease | None:
        row = self._one(
            f"SELECT {_LEASE_COLUMNS} FROM {{s}}.process_leases WHERE owner = %s", (owner,)
        )
        return None if row is None else _lease(row)

    def release_lease(self, owner: str, *, expires: datetime | None = None) -> bool:
        sql = "DELETE FROM {s}.process_leases WHERE owner = %s"
        params: tuple[Any, ...] = (owner,)
        if expires is not None:
            sql += " AND expires = %s"
            params += (expires,)
        try:
            return bool(self._all(sql + " RETURNING 1", params))
        except (StoreClosed, StoreError):  # a release never fails (closed, or unreachable)
            return False

    # -- the task queue -----------------------------------------------------------------

    def enqueue_task_run(self, run: TaskRun, entry: QueuedTaskRun) -> None:
        sql = self._sql
        state = run.state
        assert state is not None
        state_row = rows.state_values(state)
        statement = (
            f"{sql.insert_run['task']}, st AS ({sql.insert_state}), "
            f"q AS (INSERT INTO {sql.schema}.task_queue (task_run_id, task_key, call, queued) "
            "SELECT id, %s, %s, %s FROM run) SELECT pg_notify(%s, %s) FROM run"
        )
        params = [
            run.id,
            *rows.run_values("task", run, state_row),
            *self._state_params("task", state, state_row),
            entry.task_key,
            entry.call,
            entry.queued,
            sql.channel,
            f"queue {self._writer}",
        ]

        import psycopg.errors  # here: importing this module needs no psycopg (its schema)

        def enqueue(conn: psycopg.Connection[Any], retried: bool) -> None:
            try:
                conn.execute(statement, params)
            except psycopg.errors.UniqueViolation:
                landed = conn.execute(
                    f"SELECT 1 FROM {sql.schema}.task_queue WHERE task_run_id = %s", (run.id,)
                ).fetchone()
                if not (retried and landed):  # else: the first try landed, its answer lost
                    raise ValueError(
                        f"A run with id {run.id} exists already in {self.url}."
                    ) from None

        self._run(enqueue)
        self._remember(state)
        self._saw(run)
        self.notify_task_queued()

    def claim_task_runs(
        self,
        task_keys: Collection[str] | None,
        claimer: str,
        claimed: datetime,
        limit: int,
        *,
        from_claimer: str | None = None,
    ) -> list[QueuedTaskRun]:
        if limit <= 0:
            return []
        schema = self._sql.schema
        where = "claimer IS NULL" if from_claimer is None else "claimer = %s"
        params: list[Any] = [] if from_claimer is None else [from_claimer]
        if task_keys is not None:
            where += " AND task_key = ANY(%s)"
            params.append(list(task_keys))
        statement = (
            f"UPDATE {schema}.task_queue SET claimer = %s, claimed = %s WHERE task_run_id IN "
            f"(SELECT task_run_id FROM {schema}.task_queue WHERE {where} ORDER BY seq "
            f"LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING {_QUEUE_COLUMNS}"
        )

        def claim(conn: psycopg.Connection[Any], retried: bool) -> list[Any]:
            if retried:  # did the first try land before the connection broke? Then it is ours.
                mine = conn.execute(
                    f"SELECT {_QUEUE_COLUMNS} FROM {schema}.task_queue "
                    "WHERE claimer = %s AND claimed = %s",
                    (claimer, claimed),
                ).fetchall()
                if mine:
                    return mine
            return conn.execute(statement, (claimer, claimed, *params, limit)).fetchall()

        return [_queued(row) for row in sorted(self._run(claim))]

    def release_task_run(self, task_run_id: UUID, claimer: str, *, done: bool) -> bool:
        schema = self._sql.schema
        if done:  # wakes whoever waits on the run's future in another process
            change = f"DELETE FROM {schema}.task_queue"
            payload = f"done {task_run_id.hex} {self._writer}"
        else:  # wakes the workers of other processes
            change = f"UPDATE {schema}.task_queue SET claimer = NULL, claimed = NULL"
            payload = f"queue {self._writer}"
        released = self._one(
            f"WITH r AS ({change} WHERE task_run_id = %s AND claimer = %s RETURNING 1) "
            "SELECT pg_notify(%s, %s) FROM r",
            (task_run_id, claimer, self._sql.channel, payload),
        )
        if released is not None and not done:
            self.notify_task_queued()
        return released is not None

    def read_task_queue(self, task_keys: Collection[str] | None = None) -> list[QueuedTaskRun]:
        sql = f"SELECT {_QUEUE_COLUMNS} FROM {{s}}.task_queue"
        params: tuple[Any, ...] = ()
        if task_keys is not None:
            sql += " WHERE task_key = ANY(%s)"
            params = (list(task_keys),)
        return [_queued(row) for row in self._all(sql + " ORDER BY seq", params)]


# -- rows <-> records -------------------------------------------------------------------------


def _queued(row: Any) -> QueuedTaskRun:
    _, task_run_id, task_key, call, queued, claimer, claimed = row
    return QueuedTaskRun(task_run_id, task_key, bytes(call), queued, claimer, claimed)


def _schedule_values(record: ScheduleRecord) -> tuple[Any, ...]:
    body = {
        "entrypoint": record.entrypoint,
        "parameters": record.parameters,
        "tags": list(record.tags),
        "overlap": record.overlap,
        "catchup": record.catchup,
        "restart": record.restart,
    }
    return (
        record.name,
        record.flow_name,
        record.interval,
        record.cron,
        record.timezone,
        json.dumps(body),
        record.anchor,
        record.status,
        record.message,
        record.created,
        record.updated,
    )


def _schedule(row: Any) -> ScheduleRecord:
    name, flow_name, interval, cron, timezone, body, anchor, status, message, created, updated = row
    fields = json.loads(body)
    fields["tags"] = tuple(fields["tags"])
    return ScheduleRecord(
        name=name,
        flow_name=flow_name,
        interval=interval,
        cron=cron,
        timezone=timezone,
        anchor=anchor,
        status=status,
        message=message,
        created=created,
        updated=updated,
        **fields,
    )


def _lease(row: Any) -> ProcessLease:
    owner, host, pid, started, renewed, expires, serving = row
    return ProcessLease(owner, host, pid, started, renewed, expires, tuple(serving))
