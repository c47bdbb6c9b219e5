"""The PostgreSQL store's schedules, schedule slots and process leases (schema version 2).

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

A call tried again after a lost connection (:meth:`Database.run
<runtime.store._postgres_db.Database.run>`) checks whether its first try landed, where
the answer depends on it (a slot claim).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..core._exceptions import StoreClosed, StoreError
from ._records import ProcessLease, ScheduleRecord, ScheduleSlot

if TYPE_CHECKING:  # the store imports psycopg, saying how to install it if missing
    import psycopg

__all__ = ["PIPELINE_TABLES", "PipelineTables"]

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

_SCHEDULE_COLUMNS = (
    'name, flow_name, "interval", cron, timezone, body, anchor, status, message, created, '
    "updated"
)
_LEASE_COLUMNS = "owner, host, pid, started, renewed, expires, serving"
_SAME_TRIGGER = (
    '(cur."interval", cur.cron, cur.timezone) IS NOT DISTINCT FROM '
    '(excluded."interval", excluded.cron, excluded.timezone)'
)


class PipelineTables:
    """The pipeline methods of the store contract, for a PostgreSQL schema (see the module
    docstring); the class using it provides ``_run`` and ``_sql``."""

    _run: Callable[..., Any]
    _sql: Any

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


# -- rows <-> records -------------------------------------------------------------------------


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
