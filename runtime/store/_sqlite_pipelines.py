"""The SQLite store's schedules, schedule slots and process leases (schema version 4).

A mixin of :class:`~runtime.store._sqlite.SqliteStore`: these tables are never written
in batches, so every write is one immediate transaction (``BEGIN IMMEDIATE``, the file's
write lock), which is what makes a slot claim or a lease release atomic across
processes. Times are stored as ISO 8601 text in UTC; slot times as whole microseconds
since the epoch, the key that makes a claim unique.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import attrs

from ..core._exceptions import StoreClosed, StoreError
from ._records import ProcessLease, ScheduleRecord, ScheduleSlot
from ._sqlite_db import Database

__all__ = ["PipelineTables"]

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)
_SCHEDULE_COLUMNS = "name, flow_name, body, anchor, status, message, created, updated"
_LEASE_COLUMNS = "owner, host, pid, started, renewed, expires, serving"


class PipelineTables:
    """The pipeline methods of the store contract, for an SQLite file (see the module
    docstring); the class using it provides ``_db``."""

    _db: Database

    # -- schedules ----------------------------------------------------------------------

    def register_schedule(self, record: ScheduleRecord) -> ScheduleRecord:
        with self._db.write() as conn:
            row = conn.execute(
                f"SELECT {_SCHEDULE_COLUMNS} FROM schedules WHERE name = ?", (record.name,)
            ).fetchone()
            if row is not None:
                stored = _schedule(row)
                if stored.same_trigger(record):
                    record = attrs.evolve(record, anchor=stored.anchor, created=stored.created)
            conn.execute(
                f"INSERT INTO schedules ({_SCHEDULE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET flow_name = excluded.flow_name, "
                "body = excluded.body, anchor = excluded.anchor, status = excluded.status, "
                "message = excluded.message, created = excluded.created, "
                "updated = excluded.updated",
                _schedule_values(record),
            )
        return record

    def read_schedules(self) -> list[ScheduleRecord]:
        with self._db.peek() as conn:
            rows = conn.execute(f"SELECT {_SCHEDULE_COLUMNS} FROM schedules ORDER BY name")
            return [_schedule(row) for row in rows.fetchall()]

    def read_schedule(self, name: str) -> ScheduleRecord | None:
        with self._db.peek() as conn:
            row = conn.execute(
                f"SELECT {_SCHEDULE_COLUMNS} FROM schedules WHERE name = ?", (name,)
            ).fetchone()
        return None if row is None else _schedule(row)

    def set_schedule_status(
        self, name: str, status: str, message: str | None, updated: datetime
    ) -> None:
        with self._db.write() as conn:
            conn.execute(
                "UPDATE schedules SET status = ?, message = ?, updated = ? WHERE name = ?",
                (status, message, _utc(updated), name),
            )

    def claim_schedule_slot(self, slot: ScheduleSlot) -> bool:
        with self._db.write() as conn:
            inserted = conn.execute(
                "INSERT OR IGNORE INTO schedule_slots (schedule, slot_us, claimer, claimed, fired) "
                "VALUES (?, ?, ?, ?, ?)",
                (slot.schedule, _micros(slot.slot), slot.claimer, _utc(slot.claimed), slot.fired),
            )
            return inserted.rowcount == 1

    def read_schedule_slots(self, schedule: str, limit: int | None = None) -> list[ScheduleSlot]:
        sql = (
            "SELECT schedule, slot_us, claimer, claimed, fired FROM schedule_slots "
            "WHERE schedule = ? ORDER BY slot_us DESC"
        )
        if limit is not None:
            sql += f" LIMIT {max(0, int(limit))}"
        with self._db.peek() as conn:
            rows = conn.execute(sql, (schedule,)).fetchall()
        return [
            ScheduleSlot(
                name, _EPOCH + slot_us * _MICROSECOND, claimer, _time(claimed), bool(fired)
            )
            for name, slot_us, claimer, claimed, fired in rows
        ]

    # -- process leases -----------------------------------------------------------------

    def renew_lease(self, lease: ProcessLease) -> None:
        with self._db.write() as conn:
            conn.execute(
                f"INSERT OR REPLACE INTO process_leases ({_LEASE_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    lease.owner,
                    lease.host,
                    lease.pid,
                    _utc(lease.started),
                    _utc(lease.renewed),
                    _utc(lease.expires),
                    json.dumps(list(lease.serving)),
                ),
            )

    def read_leases(self) -> list[ProcessLease]:
        with self._db.peek() as conn:
            rows = conn.execute(f"SELECT {_LEASE_COLUMNS} FROM process_leases").fetchall()
        return sorted((_lease(row) for row in rows), key=lambda lease: lease.started)

    def read_lease(self, owner: str) -> ProcessLease | None:
        with self._db.peek() as conn:
            row = conn.execute(
                f"SELECT {_LEASE_COLUMNS} FROM process_leases WHERE owner = ?", (owner,)
            ).fetchone()
        return None if row is None else _lease(row)

    def release_lease(self, owner: str, *, expires: datetime | None = None) -> bool:
        sql = "DELETE FROM process_leases WHERE owner = ?"
        params: tuple[Any, ...] = (owner,)
        if expires is not None:
            sql += " AND expires = ?"
            params += (_utc(expires),)
        try:
            with self._db.write() as conn:
                return conn.execute(sql, params).rowcount == 1
        except (StoreClosed, StoreError):  # a release never fails (closed, or locked too long)
            return False


# -- rows <-> records -------------------------------------------------------------------------


def _utc(value: datetime) -> str:
    return value.astimezone(timezone.utc).isoformat()


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _optional_time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _micros(value: datetime) -> int:
    return (value - _EPOCH) // _MICROSECOND


def _schedule_values(record: ScheduleRecord) -> tuple[Any, ...]:
    body = {
        "entrypoint": record.entrypoint,
        "interval": record.interval,
        "cron": record.cron,
        "timezone": record.timezone,
        "parameters": record.parameters,
        "tags": list(record.tags),
        "overlap": record.overlap,
        "catchup": record.catchup,
        "restart": record.restart,
    }
    return (
        record.name,
        record.flow_name,
        json.dumps(body),
        _utc(record.anchor),
        record.status,
        record.message,
        None if record.created is None else _utc(record.created),
        None if record.updated is None else _utc(record.updated),
    )


def _schedule(row: Any) -> ScheduleRecord:
    name, flow_name, body, anchor, status, message, created, updated = row
    fields = json.loads(body)
    fields["tags"] = tuple(fields["tags"])
    return ScheduleRecord(
        name=name,
        flow_name=flow_name,
        anchor=_time(anchor),
        status=status,
        message=message,
        created=_optional_time(created),
        updated=_optional_time(updated),
        **fields,
    )


def _lease(row: Any) -> ProcessLease:
    owner, host, pid, started, renewed, expires, serving = row
    return ProcessLease(
        owner, host, pid, _time(started), _time(renewed), _time(expires), tuple(json.loads(serving))
    )
