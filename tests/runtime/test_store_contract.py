"""The store contract: every :class:`StoreBackend` method, on each backend (memory, SQLite,
PostgreSQL; what only PostgreSQL does is in ``test_postgres_store.py``).

A new backend (PostgreSQL...) joins the ``store`` fixture and runs every contract test; the
pipeline methods (schedules, slot claims, process leases) include races between threads,
each with its own store on one database where the backend is shared.

Then what only the SQLite store does: a file that outlives the store, schema upgrades,
several stores (as several processes would) on one file, threads, a real subprocess, and
the URLs and environment variables that choose it.
"""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pydantic
import pytest

from runtime import states as S
from runtime.core._exceptions import ConfigurationError, ObjectNotFound, StoreClosed, StoreError
from runtime.core._models import FlowRun, RunKind, TaskRun, evolve
from runtime.results import ResultRef
from runtime.states import UNAVAILABLE, State, StateType
from runtime.store._backend import CacheRecord, RunInputWrite, StaleRun, StoreBackend
from runtime.store._memory import DEFAULT_MAX_RUNS, MemoryStore
from runtime.store._records import ProcessLease, ScheduleRecord, ScheduleSlot
from runtime.store._sqlite import SqliteStore
from runtime.store._sqlite_db import Database
from runtime.store._sqlite_schema import MIGRATIONS, SCHEMA_VERSION
from runtime.store._urls import default_backend, open_backend

Run = FlowRun | TaskRun


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreBackend]:
    """Each backend, empty."""
    backend: StoreBackend
    if request.param == "memory":
        backend = MemoryStore()
    elif request.param == "sqlite":
        backend = SqliteStore(tmp_path / "store.db")
    else:
        backend = open_backend(request.getfixturevalue("postgres_url"))[0]
    yield backend
    backend.close()


def apply(store: StoreBackend, kind: RunKind, run: Any, state: State[Any], **changes: Any) -> Any:
    """Record ``state`` as the run's next state, as the orchestrator does; return the new
    snapshot."""
    new = evolve(run, state=state, version=run.version + 1, **changes)
    store.write_run(kind, new, state=state)
    return new


def new_flow_run(store: StoreBackend, name: str = "my-flow", **fields: Any) -> FlowRun:
    """Create a flow run in state Pending, as the orchestrator does."""
    run = FlowRun(name=f"{name}-run", flow_name=name, **fields)
    run = evolve(run, state=S.Pending(), version=1)
    store.create_run("flow", run)
    return run


def new_task_run(
    store: StoreBackend, flow_run: FlowRun | None, key: str = "t", dynamic_key: str = "0"
) -> TaskRun:
    """Create a task run in state Pending, as the orchestrator does."""
    run = TaskRun(
        name=f"{key}-{dynamic_key}",
        task_key=key,
        dynamic_key=dynamic_key,
        flow_run_id=None if flow_run is None else flow_run.id,
    )
    run = evolve(run, state=S.Pending(), version=1)
    store.create_run("task", run)
    return run


def summary(state: State[Any]) -> tuple[Any, ...]:
    """What a stored state keeps, apart from its data."""
    return (state.id, state.type, state.name, state.timestamp, state.message, state.state_details)


def same(one: Any, other: Any) -> bool:
    """Whether two snapshots of a run are equal, states compared by what the store keeps."""
    exclude = {"state"}
    return (
        one.model_dump(exclude=exclude) == other.model_dump(exclude=exclude)
        and (one.state is None) == (other.state is None)
        and (one.state is None or summary(one.state) == summary(other.state))
    )


# -- runs ----------------------------------------------------------------------------------


class TestRuns:
    def test_reads_return_equal_snapshots(self, store: StoreBackend) -> None:
        """A read answers a snapshot equal to the one written, at the written version."""
        flow_run = new_flow_run(store)
        task_run = new_task_run(store, flow_run)
        assert same(store.read_flow_run(flow_run.id), flow_run)
        assert same(store.read_task_run(task_run.id), task_run)
        assert same(store.read_run("flow", flow_run.id), flow_run)
        assert store.read_run("task", task_run.id).version == 1
        running = apply(store, "task", task_run, S.Running(), run_count=1)
        read = store.read_task_run(task_run.id)
        assert same(read, running) and read.version == 2 and read.run_count == 1

    def test_snapshots_are_immutable(self, store: StoreBackend) -> None:
        """Nobody can change a snapshot in place: not the store's caller, not a hook."""
        flow_run = new_flow_run(store)
        with pytest.raises(pydantic.ValidationError):
            flow_run.name = "changed"  # type: ignore[misc]
        with pytest.raises(pydantic.ValidationError):
            store.read_flow_run(flow_run.id).state.name = "changed"  # type: ignore[union-attr, misc]

    def test_unknown_ids_raise(self, store: StoreBackend) -> None:
        """Unknown ids, and ids of the other kind of run, raise ObjectNotFound."""
        flow_run = new_flow_run(store)
        missing = uuid4()
        with pytest.raises(
            ObjectNotFound, match=rf"^Flow run {missing} not found in {re.escape(store.url)}\.$"
        ):
            store.read_flow_run(missing)
        with pytest.raises(
            ObjectNotFound, match=rf"^Task run {flow_run.id} not found in {re.escape(store.url)}\.$"
        ):
            store.read_task_run(flow_run.id)
        with pytest.raises(ObjectNotFound):
            store.read_state_history("flow", missing)
        with pytest.raises(ObjectNotFound):
            store.read_state_history("task", flow_run.id)
        ghost = evolve(FlowRun(name="ghost", flow_name="ghost"), version=2)
        with pytest.raises(ObjectNotFound):
            store.write_run("flow", ghost)

    def test_creating_a_run_twice_fails(self, store: StoreBackend) -> None:
        """A run is created once; a second create of its id is refused."""
        run = new_flow_run(store)
        with pytest.raises((ValueError, StoreError)):
            store.create_run("flow", run)
            store.commit()

    def test_state_history_in_order(self, store: StoreBackend) -> None:
        """Every recorded state is in the history, oldest first, with its data."""
        run = new_task_run(store, new_flow_run(store))
        recorded = [run.state]
        run = apply(store, "task", run, S.Running())
        recorded.append(run.state)
        run = apply(store, "task", run, S.Completed(data={"answer": 42}))
        recorded.append(run.state)
        history = store.read_state_history("task", run.id)
        assert [state.name for state in history] == ["Pending", "Running", "Completed"]
        assert [summary(state) for state in history] == [summary(state) for state in recorded]
        assert history[-1].result() == {"answer": 42}
        assert store.read_task_run(run.id).state.result() == {"answer": 42}  # type: ignore[union-attr]

    def test_flow_run_states(self, store: StoreBackend) -> None:
        """Flow runs record states like task runs."""
        run = new_flow_run(store)
        run = apply(store, "flow", run, S.Running())
        run = apply(store, "flow", run, S.Failed(message="boom", data=ValueError("boom")))
        history = store.read_state_history("flow", run.id)
        assert [state.type for state in history] == [
            StateType.PENDING,
            StateType.RUNNING,
            StateType.FAILED,
        ]
        with pytest.raises(ValueError, match="^boom$"):
            history[-1].result()

    def test_fields_are_written(self, store: StoreBackend) -> None:
        """A write of changed fields (no new state) keeps them."""
        run = new_flow_run(store)
        policy = run.empirical_policy.model_copy(update={"pause_keys": ("1",)})
        store.write_run("flow", evolve(run, name="renamed", empirical_policy=policy, version=2))
        read = store.read_flow_run(run.id)
        assert (read.name, read.empirical_policy.pause_keys, read.version) == ("renamed", ("1",), 2)
        assert [s.name for s in store.read_state_history("flow", run.id)] == ["Pending"]

    @pytest.mark.parametrize("kind", ["flow", "task"])
    def test_a_stale_write_is_refused(self, store: StoreBackend, kind: RunKind) -> None:
        """A write decided on an older version raises StaleRun with the run as it is, and
        writes nothing: of two writers that read the same version, one wins."""
        flow_run = new_flow_run(store)
        run: Any = flow_run if kind == "flow" else new_task_run(store, flow_run)
        winner = apply(store, kind, run, S.Running())
        loser = evolve(run, state=S.Cancelled(), version=run.version + 1)
        with pytest.raises(StaleRun) as caught:
            store.write_run(kind, loser, state=loser.state)
        assert caught.value.current.version == winner.version
        assert caught.value.current.state.name == "Running"
        assert store.read_run(kind, run.id).state.name == "Running"  # type: ignore[union-attr]
        assert [s.name for s in store.read_state_history(kind, run.id)] == ["Pending", "Running"]
        later = apply(store, kind, caught.value.current, S.Completed())
        assert store.read_run(kind, run.id).version == later.version == 3

    def test_a_run_input_lands_with_its_state(self, store: StoreBackend) -> None:
        """A resume's input is written with its state, or, when the write is stale, not at
        all."""
        run = apply(store, "flow", new_flow_run(store), S.Running())
        paused = apply(store, "flow", run, S.Paused())
        first = evolve(paused, state=S.Running(), version=paused.version + 1)
        store.write_run("flow", first, state=first.state, run_input=RunInputWrite("r", '"a"'))
        second = evolve(paused, state=S.Running(), version=paused.version + 1)
        with pytest.raises(StaleRun):
            store.write_run("flow", second, state=second.state, run_input=RunInputWrite("r", '"b"'))
        assert store.read_run_input(run.id, "r") == '"a"'

    def test_find_task_run(self, store: StoreBackend) -> None:
        """Task runs are found by flow run, task key and dynamic key; the newest wins."""
        flow_run = new_flow_run(store)
        first = new_task_run(store, flow_run, "t", "0")
        other = new_task_run(store, flow_run, "t", "1")
        loose = new_task_run(store, None, "t", "0")

        def found(*key: Any) -> Any:
            run = store.find_task_run(*key)
            return None if run is None else run.id

        assert found(flow_run.id, "t", "0") == first.id
        assert found(flow_run.id, "t", "1") == other.id
        assert found(None, "t", "0") == loose.id
        assert found(flow_run.id, "t", "2") is None
        assert found(flow_run.id, "u", "0") is None
        assert found(uuid4(), "t", "0") is None
        retried = new_task_run(store, flow_run, "t", "0")  # a flow retry makes the same keys
        assert found(flow_run.id, "t", "0") == retried.id

    def test_read_flow_runs_newest_first_and_filtered(self, store: StoreBackend) -> None:
        """Flow runs list newest first, filtered by state type, flow name, parent and limit."""
        parent_task = uuid4()
        a = new_flow_run(store, "a")
        b = new_flow_run(store, "b", parent_task_run_id=parent_task)
        c = new_flow_run(store, "a")
        a = apply(store, "flow", a, S.Running())
        c = apply(store, "flow", c, S.Completed())

        def ids(runs: list[FlowRun]) -> list[UUID]:
            return [run.id for run in runs]

        assert ids(store.read_flow_runs()) == ids([c, b, a])
        assert all(same(x, y) for x, y in zip(store.read_flow_runs(), [c, b, a]))
        assert ids(store.read_flow_runs(flow_name="a")) == ids([c, a])
        assert store.read_flow_runs(flow_name="zzz") == []
        assert ids(store.read_flow_runs(state_types=[StateType.RUNNING, StateType.PENDING])) == ids(
            [b, a]
        )
        assert ids(store.read_flow_runs(state_types={StateType.COMPLETED})) == ids([c])
        assert store.read_flow_runs(state_types=[]) == []
        assert ids(store.read_flow_runs(parent_task_run_id=parent_task)) == ids([b])
        assert ids(store.read_flow_runs(limit=2)) == ids([c, b])
        assert store.read_flow_runs(limit=0) == []
        assert ids(
            store.read_flow_runs(flow_name="a", state_types=[StateType.RUNNING], limit=5)
        ) == ids([a])

    def test_read_task_runs_oldest_first(self, store: StoreBackend) -> None:
        """Task runs list oldest first, all or one flow run's."""
        one, two = new_flow_run(store), new_flow_run(store)
        runs = [
            new_task_run(store, one, "a"),
            new_task_run(store, two, "b"),
            new_task_run(store, one, "c"),
        ]
        assert [r.id for r in store.read_task_runs()] == [r.id for r in runs]
        assert [r.id for r in store.read_task_runs(flow_run_id=one.id)] == [runs[0].id, runs[2].id]
        assert store.read_task_runs(flow_run_id=uuid4()) == []
        assert all(same(x, y) for x, y in zip(store.read_task_runs(), runs))


# -- pause inputs, cache records ----------------------------------------------------------


class TestRunInputs:
    def test_write_read_replace(self, store: StoreBackend) -> None:
        """Inputs are kept per flow run and key; a write replaces the previous value."""
        run_id = uuid4()
        assert store.read_run_input(run_id, "k") is None
        store.write_run_input(run_id, "k", '{"value": 1}')
        store.write_run_input(run_id, "other", '"x"')
        assert store.read_run_input(run_id, "k") == '{"value": 1}'
        store.write_run_input(run_id, "k", '{"value": 2}')
        assert store.read_run_input(run_id, "k") == '{"value": 2}'
        assert store.read_run_input(uuid4(), "k") is None


class TestCacheRecords:
    def test_write_read_replace_delete(self, store: StoreBackend, tmp_path: Path) -> None:
        """Records are kept by key, replaced by a new write, and removed by a delete."""
        ref = ResultRef(storage_path=str(tmp_path), key="abc", serializer="pickle")
        later = datetime.now(timezone.utc) + timedelta(hours=1)
        record = CacheRecord("key", S.Completed(data=ref), later)
        assert store.read_cache_record("key") is None
        store.write_cache_record(record)
        read = store.read_cache_record("key")
        assert read is not None
        assert (read.key, read.expiration, summary(read.state), read.state.data) == (
            "key",
            later,
            summary(record.state),
            ref,
        )
        replacement = CacheRecord("key", S.Completed(data=ref))
        store.write_cache_record(replacement)
        read = store.read_cache_record("key")
        assert (
            read is not None and read.expiration is None and read.state.id == replacement.state.id
        )
        store.delete_cache_record("key")
        assert store.read_cache_record("key") is None
        store.delete_cache_record("key")  # deleting nothing is fine

    def test_expired_records_are_still_returned(self, store: StoreBackend) -> None:
        """Expiration is the reader's business (the orchestrator's): the store keeps and
        returns expired records."""
        past = datetime.now(timezone.utc) - timedelta(days=1)
        store.write_cache_record(CacheRecord("old", S.Completed(data=1), past))
        read = store.read_cache_record("old")
        assert read is not None and read.expiration == past
        assert read.state.result() == 1  # written in this process: its value is here


# -- concurrency limits -------------------------------------------------------------------


class TestConcurrencyLimits:
    def test_set_read_remove(self, store: StoreBackend) -> None:
        """Limits are listed in the order they were first set; None removes one."""
        assert store.read_concurrency_limits() == {}
        store.set_concurrency_limit("db", 2)
        store.set_concurrency_limit("api", 0)
        store.set_concurrency_limit("db", 3)
        assert list(store.read_concurrency_limits().items()) == [("db", (3, [])), ("api", (0, []))]
        store.set_concurrency_limit("api", None)
        store.set_concurrency_limit("gone", None)
        assert store.read_concurrency_limits() == {"db": (3, [])}

    def test_acquire_and_release(self, store: StoreBackend) -> None:
        """Slots of every limited tag are taken all or none; a release frees them all."""
        one, two, three = uuid4(), uuid4(), uuid4()
        store.set_concurrency_limit("db", 2)
        store.set_concurrency_limit("api", 1)
        assert store.acquire_slots([], one)
        assert store.acquire_slots(["unlimited"], one)
        assert store.acquire_slots(["db", "api", "unlimited"], one)
        assert store.acquire_slots(["db", "api"], one)  # a holder may ask again
        assert not store.acquire_slots(["db", "api"], two)  # api is full: db is not taken
        assert store.read_concurrency_limits() == {"db": (2, [one]), "api": (1, [one])}
        assert store.acquire_slots(["db"], two)
        assert not store.acquire_slots(["db"], three)
        store.release_slots(one)
        store.release_slots(uuid4())  # releasing nothing is fine
        assert store.read_concurrency_limits() == {"db": (2, [two]), "api": (1, [])}
        assert store.acquire_slots(["db", "db", "api"], three)
        assert store.read_concurrency_limits() == {"db": (2, [two, three]), "api": (1, [three])}

    def test_zero_limit_refuses(self, store: StoreBackend) -> None:
        """A limit of 0 blocks the tag."""
        store.set_concurrency_limit("off", 0)
        assert not store.acquire_slots(["off"], uuid4())


# -- schedules, slot claims, process leases ----------------------------------------------

T0 = datetime(2026, 1, 5, 12, 0, tzinfo=timezone.utc)


def schedule_record(name: str = "nightly", **fields: Any) -> ScheduleRecord:
    """A schedule as ``serve`` registers it."""
    values: dict[str, Any] = dict(
        flow_name="etl",
        entrypoint="/srv/etl.py:etl",
        interval=60.0,
        cron=None,
        timezone=None,
        anchor=T0,
        parameters={"day": "today", "n": [1, 2]},
        tags=("prod",),
        created=T0,
        updated=T0,
    )
    values.update(fields)
    return ScheduleRecord(name, **values)


def lease(owner: str, expires: datetime = T0, **fields: Any) -> ProcessLease:
    """A process lease expiring at ``expires``."""
    values: dict[str, Any] = dict(
        host="host", pid=42, started=T0 - timedelta(hours=1), renewed=expires, expires=expires
    )
    values.update(fields)
    return ProcessLease(owner, **values)


def race(stores: list[StoreBackend], call: Callable[[int, StoreBackend], Any]) -> list[Any]:
    """Call ``call(i, stores[i])`` for each store on its own thread, all at once; return
    the results in order."""
    barrier = threading.Barrier(len(stores))

    def go(i: int) -> Any:
        barrier.wait()
        return call(i, stores[i])

    with ThreadPoolExecutor(len(stores)) as pool:
        return list(pool.map(go, range(len(stores))))


@pytest.fixture
def racers(store: StoreBackend) -> Iterator[list[StoreBackend]]:
    """Four handles on the ``store`` fixture's data: the store itself four times in
    memory; for a store shared between processes, three more stores opened on its URL
    (as three more processes would)."""
    if not store.shared_across_processes:
        yield [store] * 4
        return
    others = [open_backend(store.url)[0] for _ in range(3)]
    yield [store, *others]
    for other in others:
        other.close()


class TestSchedules:
    def test_register_read_and_replace(self, store: StoreBackend) -> None:
        """A schedule reads back as registered; registering it again with another trigger
        replaces it whole, anchor included."""
        assert store.read_schedules() == [] and store.read_schedule("nightly") is None
        record = schedule_record()
        assert store.register_schedule(record) == record
        assert store.read_schedule("nightly") == record
        other = store.register_schedule(schedule_record("hourly", interval=3600.0))
        assert store.read_schedules() == [other, record]  # by name
        later = T0 + timedelta(days=1)
        cron = schedule_record(
            interval=None, cron="0 3 * * *", timezone="Europe/Paris", anchor=later, created=later
        )
        assert store.register_schedule(cron) == cron
        assert store.read_schedule("nightly") == cron

    def test_same_trigger_keeps_anchor_and_creation(self, store: StoreBackend) -> None:
        """Registering a schedule again with the same trigger keeps its slots where they
        were (its anchor) and its creation time; every other field is the new one's."""
        store.register_schedule(schedule_record())
        later = T0 + timedelta(hours=5)
        again = schedule_record(
            anchor=later, created=later, updated=later, parameters={"day": "tomorrow"},
            tags=(), overlap="queue", catchup="all", restart="temporary",
        )  # fmt: skip
        stored = store.register_schedule(again)
        assert (stored.anchor, stored.created) == (T0, T0)
        assert (stored.updated, stored.parameters, stored.overlap) == (
            later,
            {"day": "tomorrow"},
            "queue",
        )
        assert store.read_schedule("nightly") == stored

    def test_status(self, store: StoreBackend) -> None:
        """A status change sets status, message and time; an unknown name is ignored."""
        store.register_schedule(schedule_record())
        later = T0 + timedelta(minutes=3)
        store.set_schedule_status("nightly", "failed", "gave up after 4 crashes", later)
        read = store.read_schedule("nightly")
        assert read is not None
        assert (read.status, read.message, read.updated) == (
            "failed",
            "gave up after 4 crashes",
            later,
        )
        store.set_schedule_status("nobody", "stopped", None, later)
        assert store.read_schedule("nobody") is None

    def test_concurrent_registrations_agree_on_the_anchor(self, racers: list[StoreBackend]) -> None:
        """Processes that register one schedule at once all get the first one's anchor."""
        results = race(
            racers,
            lambda i, store: store.register_schedule(
                schedule_record(anchor=T0 + timedelta(seconds=i))
            ),
        )
        assert len({record.anchor for record in results}) == 1
        stored = racers[0].read_schedule("nightly")
        assert stored is not None and stored.anchor == results[0].anchor


class TestScheduleSlots:
    def test_a_slot_is_claimed_once(self, store: StoreBackend) -> None:
        """The first claim of a (schedule, slot time) wins; a second is refused and
        changes nothing; other schedules and other times are other slots."""
        first = ScheduleSlot("nightly", T0, "a", T0)
        assert store.claim_schedule_slot(first)
        assert not store.claim_schedule_slot(ScheduleSlot("nightly", T0, "b", T0, fired=False))
        same_instant = T0.astimezone(timezone(timedelta(hours=2)))
        assert not store.claim_schedule_slot(ScheduleSlot("nightly", same_instant, "b", T0))
        assert store.claim_schedule_slot(ScheduleSlot("hourly", T0, "b", T0))
        skipped = ScheduleSlot("nightly", T0 + timedelta(microseconds=1), "b", T0, fired=False)
        assert store.claim_schedule_slot(skipped)
        assert store.read_schedule_slots("nightly") == [skipped, first]  # newest first
        assert store.read_schedule_slots("nightly", limit=1) == [skipped]
        assert store.read_schedule_slots("nightly", limit=0) == []
        assert store.read_schedule_slots("weekly") == []

    def test_racing_claimers_get_each_slot_once(self, racers: list[StoreBackend]) -> None:
        """Claimers racing for the same slots (threads; stores on one file for SQLite, as
        processes would): exactly one wins each slot."""
        slots = [T0 + timedelta(minutes=i) for i in range(10)]

        def claim_all(i: int, store: StoreBackend) -> list[datetime]:
            return [
                s for s in slots if store.claim_schedule_slot(ScheduleSlot("race", s, f"c{i}", T0))
            ]

        won = race(racers, claim_all)
        assert sorted(s for mine in won for s in mine) == slots
        assert len(racers[0].read_schedule_slots("race")) == len(slots)


class TestLeases:
    def test_renew_read_release(self, store: StoreBackend) -> None:
        """A lease is replaced by its owner's renewal and read back; release removes it."""
        assert store.read_leases() == [] and store.read_lease("a") is None
        first = lease("a", serving=("nightly",))
        store.renew_lease(first)
        other = lease("b", started=T0 - timedelta(hours=2))
        store.renew_lease(other)
        renewed = lease("a", T0 + timedelta(seconds=10), serving=("nightly", "hourly"))
        store.renew_lease(renewed)
        assert store.read_lease("a") == renewed
        assert store.read_leases() == [other, renewed]  # oldest started first
        assert store.release_lease("a")
        assert not store.release_lease("a")
        assert store.read_leases() == [other]

    def test_a_reaper_releases_only_the_expired_lease_it_read(self, store: StoreBackend) -> None:
        """A release with ``expires`` removes the lease only if it was not renewed since."""
        store.renew_lease(lease("a", T0))
        store.renew_lease(lease("a", T0 + timedelta(seconds=5)))  # renewed meanwhile
        assert not store.release_lease("a", expires=T0)
        assert store.read_lease("a") is not None
        assert store.release_lease("a", expires=T0 + timedelta(seconds=5))
        assert store.read_lease("a") is None

    def test_racing_reapers_release_once(self, racers: list[StoreBackend]) -> None:
        """Of reapers releasing one expired lease at once, one removes it."""
        racers[0].renew_lease(lease("dead", T0))
        released = race(racers, lambda i, store: store.release_lease("dead", expires=T0))
        assert released.count(True) == 1


# -- notifications, durability, closing ---------------------------------------------------


class TestNotifications:
    def test_subscribe_notify_unsubscribe(self, store: StoreBackend) -> None:
        """Subscribers of a run, and of every run, hear its changes until they unsubscribe."""
        run, other = new_flow_run(store), new_flow_run(store)
        heard: list[tuple[str, UUID, str | None]] = []
        stop_one = store.subscribe(run.id, lambda r, s: heard.append(("one", r.id, s.name)))
        stop_all = store.subscribe(None, lambda r, s: heard.append(("all", r.id, s.name)))
        run = apply(store, "flow", run, S.Running())
        store.notify(run, run.state)  # type: ignore[arg-type]
        other = apply(store, "flow", other, S.Cancelled())
        store.notify(other, other.state)  # type: ignore[arg-type]
        assert heard == [
            ("one", run.id, "Running"),
            ("all", run.id, "Running"),
            ("all", other.id, "Cancelled"),
        ]
        stop_one()
        stop_all()
        stop_one()  # twice is fine
        run = apply(store, "flow", run, S.Completed())
        store.notify(run, run.state)  # type: ignore[arg-type]
        assert len(heard) == 3


class TestDurability:
    def test_commit_leaves_nothing_pending(self, store: StoreBackend) -> None:
        """After a commit nothing is pending; a commit with nothing to do is fine."""
        store.commit()
        run = new_task_run(store, new_flow_run(store))
        apply(store, "task", run, S.Running())
        store.commit()
        assert not store.has_pending_writes()
        store.commit()
        store.sync_external()


class TestClose:
    def test_a_closed_store_raises(self, store: StoreBackend) -> None:
        """Every use of a closed store raises StoreClosed, saying what to do."""
        run = new_flow_run(store)
        store.close()
        assert store.closed
        message = rf"^The store {re.escape(repr(store.url))} is closed; open a new Runtime to use it\.$"
        calls: list[Callable[[], object]] = [
            lambda: store.create_run("flow", evolve(FlowRun(name="x", flow_name="x"), version=1)),
            lambda: store.create_run(
                "task", evolve(TaskRun(name="x", task_key="x", dynamic_key="0"), version=1)
            ),
            lambda: store.read_flow_run(run.id),
            lambda: store.read_task_run(run.id),
            lambda: store.find_task_run(run.id, "t", "0"),
            lambda: store.read_flow_runs(),
            lambda: store.read_task_runs(),
            lambda: store.write_run("flow", evolve(run, version=2)),
            lambda: store.read_state_history("flow", run.id),
            lambda: store.write_run_input(run.id, "k", "1"),
            lambda: store.read_run_input(run.id, "k"),
            lambda: store.write_cache_record(CacheRecord("k", S.Completed())),
            lambda: store.read_cache_record("k"),
            lambda: store.delete_cache_record("k"),
            lambda: store.set_concurrency_limit("t", 1),
            lambda: store.read_concurrency_limits(),
            lambda: store.acquire_slots(["t"], run.id),
            lambda: store.register_schedule(schedule_record()),
            lambda: store.read_schedules(),
            lambda: store.read_schedule("s"),
            lambda: store.set_schedule_status("s", "stopped", None, T0),
            lambda: store.claim_schedule_slot(ScheduleSlot("s", T0, "me", T0)),
            lambda: store.read_schedule_slots("s"),
            lambda: store.renew_lease(lease("me")),
            lambda: store.read_leases(),
            lambda: store.read_lease("me"),
        ]
        for call in calls:
            with pytest.raises(StoreClosed, match=message):
                call()
        store.release_slots(run.id)  # never fails, as in a final state's cleanup
        assert store.release_lease("me") is False  # neither does a lease's, at exit
        store.commit()
        store.close()
        assert not store.has_pending_writes()


# -- memory: a bounded history --------------------------------------------------------------


class TestMemoryHistory:
    def test_old_finished_runs_are_forgotten(self) -> None:
        """Past ``max_runs`` top-level flow runs, the oldest finished ones go, with their
        task runs and subflows; unfinished ones stay, however old."""
        store = MemoryStore(max_runs=2)
        running = apply(store, "flow", new_flow_run(store, "running"), S.Running())
        done = new_flow_run(store, "done")
        task = new_task_run(store, done)
        subflow = new_flow_run(store, "sub", parent_task_run_id=task.id)
        apply(store, "flow", done, S.Completed())
        apply(store, "flow", subflow, S.Completed())
        assert store.read_flow_run(done.id).id == done.id  # 2 top-level runs: all kept
        newest = [
            apply(store, "flow", new_flow_run(store, f"n{i}"), S.Completed()) for i in range(3)
        ]
        kept = {run.id for run in store.read_flow_runs()}
        assert kept == {running.id, newest[2].id}  # at most 2, the oldest finished first
        for forgotten in (
            lambda: store.read_flow_run(done.id),
            lambda: store.read_task_run(task.id),
            lambda: store.read_flow_run(subflow.id),
        ):
            with pytest.raises(ObjectNotFound):
                forgotten()
        assert store.find_task_run(done.id, "t", "0") is None

    def test_the_bound_is_settable_from_the_url(self) -> None:
        """``memory://?max_runs=N`` sets the bound; 0 keeps every run; other options fail."""
        assert open_backend("memory://?max_runs=5")[0].max_runs == 5  # type: ignore[attr-defined]
        assert open_backend("memory://")[0].max_runs == DEFAULT_MAX_RUNS  # type: ignore[attr-defined]
        unbounded = open_backend("memory://?max_runs=0")[0]
        for i in range(30):
            apply(unbounded, "flow", new_flow_run(unbounded, f"r{i}"), S.Completed())
        assert len(unbounded.read_flow_runs()) == 30
        with pytest.raises(ConfigurationError, match=r"the only option is max_runs=N"):
            open_backend("memory://?max_runs=lots")


# -- SQLite: the file ---------------------------------------------------------------------


def sqlite_store(path: Path, **options: Any) -> SqliteStore:
    return SqliteStore(path, **options)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "deep" / "dir" / "runs.db"


class TestSqliteFile:
    def test_everything_survives_reopening(self, db: Path, tmp_path: Path) -> None:
        """Runs, histories, inputs, cache records and limits outlive the store; states keep
        persisted-result references, and data that was only in memory reads as unavailable."""
        ref = ResultRef(storage_path=str(tmp_path), key="r", serializer="json")
        store = sqlite_store(db)
        flow_run = new_flow_run(store, parameters={"x": 1, "when": "now"}, tags=["a"])
        flow_run = apply(store, "flow", flow_run, S.Running(), run_count=1)
        task = new_task_run(store, flow_run)
        task = apply(store, "task", task, S.Running())
        task = apply(
            store,
            "task",
            task,
            S.Completed(data=ref),
            total_run_time=timedelta(seconds=1.5),
            end_time=datetime.now(timezone.utc),
        )
        loose = new_task_run(store, None, "loose")
        loose = apply(store, "task", loose, S.Completed(data=[1, 2]))
        loose = apply(store, "task", loose, S.Completed(data=None, name="Again"))
        flow_run = evolve(flow_run, name="renamed", version=flow_run.version + 1)
        store.write_run("flow", flow_run)
        flow_run = apply(store, "flow", flow_run, S.Failed(message="boom", data=ValueError("boom")))
        store.write_run_input(flow_run.id, "k", "1")
        store.write_cache_record(CacheRecord("c", S.Completed(data=ref)))
        store.set_concurrency_limit("a", 2)
        store.acquire_slots(["a"], task.id)
        store.close()

        again = sqlite_store(db)
        try:
            (read,) = again.read_flow_runs()
            assert same(read, flow_run)
            assert read.state is not None and read.state.data is UNAVAILABLE
            assert type(read.state.result(raise_on_failure=False)).__name__ == "FailedRun"
            assert [s.name for s in again.read_state_history("flow", read.id)] == [
                "Pending",
                "Running",
                "Failed",
            ]
            read_task, _ = again.read_task_runs()
            assert same(read_task, task)
            assert read_task.state is not None and read_task.state.data == ref
            assert [s.data for s in again.read_state_history("task", task.id)] == [None, None, ref]
            assert [s.data for s in again.read_state_history("task", loose.id)] == [
                None,
                UNAVAILABLE,
                None,
            ]
            found = again.find_task_run(flow_run.id, "t", "0")
            assert found is not None and same(found, read_task)
            assert again.read_run_input(flow_run.id, "k") == "1"
            record = again.read_cache_record("c")
            assert record is not None and record.state.data == ref
            assert again.read_concurrency_limits() == {"a": (2, [task.id])}
        finally:
            again.close()

    def test_states_written_here_keep_their_data(self, db: Path) -> None:
        """A state this store wrote reads back as itself, data included, for a while."""
        store = sqlite_store(db, keep_recent=2)
        try:
            task = new_task_run(store, None)
            error = ValueError("kept")
            task = apply(store, "task", task, S.Failed(data=error))
            assert store.read_task_run(task.id).state.data is error  # type: ignore[union-attr]
            for n in range(3):  # pushes it out of the memory of recent states
                apply(store, "task", new_task_run(store, None, f"x{n}"), S.Completed(data=n))
            assert store.read_task_run(task.id).state.data is UNAVAILABLE  # type: ignore[union-attr]
        finally:
            store.close()

    def test_task_run_writes_wait_for_commit(self, db: Path) -> None:
        """Task-run writes are pending until commit; flow-run writes are committed at once."""
        store, other = sqlite_store(db, commit_delay=60), sqlite_store(db)
        try:
            flow_run = new_flow_run(store)
            assert not store.has_pending_writes()
            assert other.read_flow_run(flow_run.id).id == flow_run.id
            task = new_task_run(store, flow_run)
            assert store.has_pending_writes()
            assert other.read_task_runs() == []
            store.commit()
            assert not store.has_pending_writes()
            assert [run.id for run in other.read_task_runs()] == [task.id]
            apply(store, "task", task, S.Running())
            apply(store, "flow", flow_run, S.Completed())  # commits the task's state too
            assert not store.has_pending_writes()
            assert other.read_task_run(task.id).state_name == "Running"
        finally:
            store.close()
            other.close()

    def test_pending_writes_are_committed_soon(self, db: Path) -> None:
        """With no commit and no further writes, the helper thread commits a batch after
        ``commit_delay`` (here 1 ms; the test waits up to 10 s for it)."""
        store, other = sqlite_store(db, commit_delay=0.001), sqlite_store(db)
        try:
            task = new_task_run(store, None)
            idle = threading.Event()
            deadline = time.monotonic() + 10
            while store.has_pending_writes() and time.monotonic() < deadline:
                idle.wait(0.001)
            assert not store.has_pending_writes()
            assert other.read_task_run(task.id).id == task.id
        finally:
            store.close()
            other.close()

    def test_close_commits(self, db: Path) -> None:
        """Closing commits what is pending."""
        store = sqlite_store(db, commit_delay=60)
        task = new_task_run(store, None)
        store.close()
        again = sqlite_store(db)
        assert again.read_task_run(task.id).id == task.id
        again.close()

    def test_fsync_setting(self, db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """fsync=True syncs every commit (synchronous=FULL); the default is NORMAL."""

        def synchronous(store: SqliteStore) -> int:
            with store._db.read() as conn:
                return int(conn.execute("PRAGMA synchronous").fetchone()[0])

        for fsync, expected in ((True, 2), (False, 1)):
            store = sqlite_store(db, fsync=fsync)
            assert (store.fsync, synchronous(store)) == (fsync, expected)
            store.close()
        monkeypatch.setenv("STAGEFLOW_STORE_FSYNC", "1")
        store = sqlite_store(db)
        assert store.fsync
        store.close()
        store = sqlite_store(db, fsync=False)
        assert not store.fsync
        store.close()


class TestSqliteSchema:
    def test_new_file_is_current_and_in_wal_mode(self, db: Path) -> None:
        """A new file (and its directories) is created at the current schema version."""
        sqlite_store(db).close()
        conn = sqlite3.connect(db)
        try:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        finally:
            conn.close()

    def test_empty_version_0_file_is_upgraded(self, db: Path) -> None:
        """An empty SQLite file (version 0) becomes a store."""
        db.parent.mkdir(parents=True)
        sqlite3.connect(db).close()
        store = sqlite_store(db)
        assert store.read_flow_runs() == []
        store.close()

    def test_version_1_file_is_upgraded(self, db: Path) -> None:
        """A file at schema version 1, made by hand, is upgraded and keeps its runs."""
        db.parent.mkdir(parents=True)
        run = FlowRun(name="old-run", flow_name="old")
        state = S.Completed(message="done")
        conn = sqlite3.connect(db, isolation_level=None)
        for statement in MIGRATIONS[0]:
            conn.execute(statement)
        conn.execute(
            "INSERT INTO flow_runs (id, name, flow_name, state_type, state_name, created, body) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                run.id.hex,
                run.name,
                run.flow_name,
                "COMPLETED",
                "Completed",
                run.created.isoformat(),
                run.model_dump_json(exclude={"state", "version"}),
            ),
        )
        conn.execute(
            "INSERT INTO states (run_id, kind, id, type, name, body) VALUES (?, ?, ?, ?, ?, ?)",
            (
                run.id.hex,
                "flow",
                state.id.hex,
                "COMPLETED",
                "Completed",
                state.model_dump_json(exclude={"data"}),
            ),
        )
        conn.execute("PRAGMA user_version = 1")
        conn.close()

        store = sqlite_store(db)
        try:
            (read,) = store.read_flow_runs(state_types=[StateType.COMPLETED])
            assert read.state is not None
            assert (read.id, read.name, summary(read.state)) == (run.id, "old-run", summary(state))
            assert read.version == 1
            store.write_run("flow", evolve(read, name="renamed", version=2))
            assert store.read_flow_run(run.id).name == "renamed"
            assert store.read_schedules() == [] and store.read_leases() == []  # version 4
        finally:
            store.close()
        conn = sqlite3.connect(db)
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
        conn.close()

    def test_newer_version_is_refused(self, db: Path) -> None:
        """A file from a newer stageflow is refused, saying to upgrade."""
        sqlite_store(db).close()
        conn = sqlite3.connect(db)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        conn.close()
        message = (
            rf"^The store file {db} has schema version {SCHEMA_VERSION + 1}, but this stageflow "
            rf"only knows versions up to {SCHEMA_VERSION}: it was written by a newer stageflow\. "
            r"Upgrade stageflow \(pip install -U stageflow\), or choose another store file\.$"
        )
        with pytest.raises(ConfigurationError, match=message):
            sqlite_store(db)

    def test_other_programs_database_is_refused(self, db: Path) -> None:
        """An SQLite file of another program is not taken over."""
        db.parent.mkdir(parents=True)
        conn = sqlite3.connect(db)
        conn.execute("CREATE TABLE users (name TEXT)")
        conn.close()
        with pytest.raises(
            ConfigurationError,
            match=r"is an SQLite database of another program \(it has the tables users\)",
        ):
            sqlite_store(db)

    def test_corrupt_file_raises(self, db: Path) -> None:
        """A file that is not an SQLite database raises StoreError at once."""
        db.parent.mkdir(parents=True)
        db.write_bytes(b"this is not a database" * 100)
        with pytest.raises(
            StoreError, match=rf"^The store file {db} cannot be read as an SQLite database"
        ):
            sqlite_store(db)

    def test_a_locked_file_fails_after_the_busy_timeout(self, db: Path) -> None:
        """A write waits for another process's lock at most ``busy_timeout``, then fails
        with a StoreError naming the file (here after 50 ms)."""
        store = sqlite_store(db, busy_timeout=0.05)
        blocker = sqlite3.connect(db, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            message = (
                rf"^The store file {db} stayed locked by another process for more than 0.05 s "
                r"\(database is locked\); that process may be stuck\. Try again, or stop it\.$"
            )
            with pytest.raises(StoreError, match=message):
                store.set_concurrency_limit("x", 1)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        store.set_concurrency_limit("x", 1)  # usable again
        store.close()

    def test_unwritable_location_raises(self, tmp_path: Path) -> None:
        """A path under a regular file cannot be a store."""
        (tmp_path / "file").write_text("")
        with pytest.raises(StoreError, match=r"^Cannot open the store file "):
            sqlite_store(tmp_path / "file" / "runs.db")


# -- SQLite: batches of deferred writes ----------------------------------------------------

INSERT_INPUT = "INSERT INTO run_inputs (flow_run_id, key, value) VALUES (?, ?, ?)"
UPDATE_INPUT = "UPDATE run_inputs SET value = ? WHERE key = ?"


class TestSqliteBatches:
    @pytest.fixture
    def now(self) -> list[float]:
        """A fake clock for the batches' ``commit_delay``: set ``now[0]``."""
        return [0.0]

    @pytest.fixture
    def database(self, db: Path, now: list[float]) -> Iterator[Database]:
        SqliteStore(db).close()  # the schema
        database = Database(
            db,
            f"sqlite:///{db}",
            fsync=False,
            busy_timeout=5,
            commit_delay=0.05,
            clock=lambda: now[0],
        )
        yield database
        database.close()

    @staticmethod
    def inputs(db: Path) -> dict[str, str]:
        """The committed run inputs, as another connection sees them."""
        conn = sqlite3.connect(db)
        try:
            return dict(conn.execute("SELECT key, value FROM run_inputs").fetchall())
        finally:
            conn.close()

    def test_a_writer_commits_a_half_due_batch(
        self, database: Database, db: Path, now: list[float]
    ) -> None:
        """While writes keep coming, the one that finds the batch half due commits it."""
        database.defer([(INSERT_INPUT, ("r", "a", "1"))])
        now[0] = 0.024
        database.defer([(INSERT_INPUT, ("r", "b", "2"))])
        assert database.pending and self.inputs(db) == {}
        now[0] = 0.025
        database.defer([(INSERT_INPUT, ("r", "c", "3"))])
        assert not database.pending
        assert self.inputs(db) == {"a": "1", "b": "2", "c": "3"}

    def test_keyed_writes_keep_the_latest(self, database: Database, db: Path) -> None:
        """A keyed write replaces the pending one of its key, runs after the others, and
        ``forget`` drops it."""
        database.defer([], ("k", (UPDATE_INPUT, lambda: ("early", "k"))))
        database.defer([(INSERT_INPUT, ("r", "k", "0"))], ("k", (UPDATE_INPUT, lambda: ("1", "k"))))
        database.defer([], ("k", (UPDATE_INPUT, lambda: ("2", "k"))))
        database.commit()
        assert self.inputs(db) == {"k": "2"}
        database.defer([], ("k", (UPDATE_INPUT, lambda: ("3", "k"))))
        database.forget("k")
        database.commit()
        assert self.inputs(db) == {"k": "2"} and not database.pending

    def test_reads_and_immediate_writes_take_the_batch_along(
        self, database: Database, db: Path
    ) -> None:
        """A read commits the batch first (so it sees it); an immediate write commits it
        with its own."""
        database.defer([(INSERT_INPUT, ("r", "a", "1"))])
        with database.read() as conn:
            assert conn.execute("SELECT COUNT(*) FROM run_inputs").fetchone()[0] == 1
        assert not database.pending and self.inputs(db) == {"a": "1"}
        database.defer([(INSERT_INPUT, ("r", "b", "2"))])
        with database.write() as conn:
            conn.execute(INSERT_INPUT, ("r", "c", "3"))
        assert not database.pending and self.inputs(db) == {"a": "1", "b": "2", "c": "3"}


# -- SQLite: several stores, threads and processes on one file -------------------------------


class TestSqliteSharing:
    def test_two_stores_see_each_others_runs(self, db: Path) -> None:
        """Runs written through one store are read through another."""
        one, two = sqlite_store(db), sqlite_store(db)
        try:
            run = new_flow_run(one)
            task = new_task_run(one, run)
            one.commit()
            read = two.read_flow_run(run.id)
            assert same(read, run)
            assert [t.id for t in two.read_task_runs(flow_run_id=run.id)] == [task.id]
            found = two.find_task_run(run.id, "t", "0")
            assert found is not None and found.id == task.id
        finally:
            one.close()
            two.close()

    def test_sync_external_notifies(self, db: Path) -> None:
        """Another store's state changes reach this store's subscribers, with the run's
        snapshot as it is then."""
        one, two = sqlite_store(db), sqlite_store(db)
        try:
            run = apply(one, "flow", new_flow_run(one), S.Running())
            heard: list[tuple[int, str | None]] = []
            one.subscribe(run.id, lambda r, s: heard.append((r.version, s.name)))
            one.sync_external()
            assert heard == []  # its own changes are not news

            theirs = two.read_flow_run(run.id)
            theirs = apply(two, "flow", theirs, S.Cancelling())
            theirs = apply(two, "flow", theirs, S.Cancelled())
            one.sync_external()
            assert heard == [(4, "Cancelled")]  # the run as it is now, once
            assert [s.name for s in one.read_state_history("flow", run.id)] == [
                "Pending",
                "Running",
                "Cancelling",
                "Cancelled",
            ]
            one.sync_external()
            assert len(heard) == 1
        finally:
            one.close()
            two.close()

    def test_a_write_decided_elsewhere_first_wins(self, db: Path) -> None:
        """Two stores (as two processes) decide on the same version: the second write is
        refused and learns the run as the first left it."""
        one, two = sqlite_store(db), sqlite_store(db)
        try:
            run = apply(one, "flow", new_flow_run(one), S.Running())
            theirs = two.read_flow_run(run.id)
            apply(two, "flow", theirs, S.Cancelling())
            mine = evolve(run, state=S.Completed(), version=run.version + 1)
            with pytest.raises(StaleRun) as caught:
                one.write_run("flow", mine, state=mine.state)
            assert caught.value.current.state.name == "Cancelling"  # type: ignore[union-attr]
            assert [s.name for s in one.read_state_history("flow", run.id)] == [
                "Pending",
                "Running",
                "Cancelling",
            ]
        finally:
            one.close()
            two.close()

    def test_slots_are_shared(self, db: Path) -> None:
        """A slot taken through one store is taken for the other."""
        one, two = sqlite_store(db), sqlite_store(db)
        try:
            one.set_concurrency_limit("db", 1)
            first, second = uuid4(), uuid4()
            assert one.acquire_slots(["db"], first)
            assert not two.acquire_slots(["db"], second)
            one.release_slots(first)
            assert two.acquire_slots(["db"], second)
        finally:
            one.close()
            two.close()

    def test_concurrent_writes_from_threads(self, db: Path) -> None:
        """Threads writing through one store and through two stores lose nothing, and never
        hold more slots than the limit."""
        one, two = sqlite_store(db), sqlite_store(db)
        one.set_concurrency_limit("x", 3)
        flow_run = new_flow_run(one)
        start = threading.Barrier(8)

        def work(store: StoreBackend, n: int) -> int:
            granted = 0
            start.wait()
            for i in range(25):
                task = new_task_run(store, flow_run, f"w{n}", str(i))
                task = apply(store, "task", task, S.Running())
                if store.acquire_slots(["x"], task.id):
                    granted += 1
                    assert len(store.read_concurrency_limits()["x"][1]) <= 3
                apply(store, "task", task, S.Completed(data=i))
                store.release_slots(task.id)
            return granted

        try:
            with ThreadPoolExecutor(8) as pool:
                futures = [pool.submit(work, (one, two)[n % 2], n) for n in range(8)]
                granted = sum(future.result(timeout=60) for future in futures)
            one.commit()
            two.commit()
            runs = one.read_task_runs(flow_run_id=flow_run.id)
            assert len(runs) == 200 and len({run.id for run in runs}) == 200
            for run in runs:
                assert [s.name for s in one.read_state_history("task", run.id)] == [
                    "Pending",
                    "Running",
                    "Completed",
                ]
            assert granted >= 3
            assert one.read_concurrency_limits() == {"x": (3, [])}
        finally:
            one.close()
            two.close()

    def test_another_process(self, db: Path) -> None:
        """A real subprocess writes into the file; this process reads it and hears it."""
        store = sqlite_store(db)
        try:
            run = apply(store, "flow", new_flow_run(store), S.Running())
            heard: list[str | None] = []
            store.subscribe(run.id, lambda r, s: heard.append(s.name))
            child = textwrap.dedent(
                f"""
                from uuid import UUID
                from runtime import states as S
                from runtime.core._models import TaskRun, evolve
                from runtime.store._sqlite import SqliteStore

                store = SqliteStore({str(db)!r})
                run = store.read_flow_run(UUID({str(run.id)!r}))
                assert run.state.name == "Running", run.state
                task = TaskRun(name="child-task", task_key="k", dynamic_key="0", flow_run_id=run.id)
                task = evolve(task, state=S.Completed(message="from the child"), version=1)
                store.create_run("task", task)
                cancelling = S.Cancelling(message="cancelled by the child")
                run = evolve(run, state=cancelling, version=run.version + 1)
                store.write_run("flow", run, state=cancelling)
                store.close()
                """
            )
            done = subprocess.run(
                [sys.executable, "-c", child],
                check=False,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 0, done.stderr
            store.sync_external()
            assert heard == ["Cancelling"]
            current = store.read_flow_run(run.id).state
            assert current is not None and current.message == "cancelled by the child"
            (task,) = store.read_task_runs(flow_run_id=run.id)
            assert task.state is not None
            assert (task.name, task.state.message) == ("child-task", "from the child")
        finally:
            store.close()


# -- choosing the store -----------------------------------------------------------------------


class TestStoreUrls:
    def test_absolute_and_relative_urls(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``sqlite:///`` is followed by the path: absolute with a fourth slash, else
        relative to the working directory when the store is opened."""
        absolute, owned = open_backend(f"sqlite:///{tmp_path / 'abs.db'}")
        assert isinstance(absolute, SqliteStore) and owned
        assert (
            absolute.path == tmp_path / "abs.db"
            and absolute.url == f"sqlite:///{tmp_path / 'abs.db'}"
        )
        absolute.close()
        monkeypatch.chdir(tmp_path)
        relative, _ = open_backend("sqlite:///sub/rel.db")
        assert isinstance(relative, SqliteStore) and relative.path == tmp_path / "sub" / "rel.db"
        assert relative.path.exists()
        relative.close()
        memory, owned = open_backend("memory://")
        assert isinstance(memory, MemoryStore) and owned

    def test_fsync_option(self, tmp_path: Path) -> None:
        """``?fsync=1`` turns fsync on; unknown options are refused."""
        store, _ = open_backend(f"sqlite:///{tmp_path / 'f.db'}?fsync=1")
        assert isinstance(store, SqliteStore) and store.fsync
        store.close()
        store, _ = open_backend(f"sqlite:///{tmp_path / 'f.db'}?fsync=off")
        assert isinstance(store, SqliteStore) and not store.fsync
        store.close()
        url = f"sqlite:///{tmp_path / 'f.db'}?sync=1"
        with pytest.raises(
            ConfigurationError, match=r"^Unsupported option sync='1' in the store URL "
        ):
            open_backend(url)

    @pytest.mark.parametrize(
        ("value", "fsync"),
        [
            *((v, True) for v in ("1", "true", "YES", "on")),
            *((v, False) for v in ("0", "False", "no", "off")),
        ],
    )
    def test_fsync_accepts_what_its_error_message_says(
        self, tmp_path: Path, value: str, fsync: bool
    ) -> None:
        """Every value the message names works, and nothing else does."""
        store, _ = open_backend(f"sqlite:///{tmp_path / 'f.db'}?fsync={value}")
        assert isinstance(store, SqliteStore) and store.fsync is fsync
        store.close()
        for bad in ("", "2", "maybe"):
            with pytest.raises(
                ConfigurationError,
                match=r": the only option is fsync, set to 1, true, yes or on, or to 0, false, "
                r"no or off \(any case\)\.$",
            ):
                open_backend(f"sqlite:///{tmp_path / 'f.db'}?fsync={bad}")

    @pytest.mark.parametrize("url", ["sqlite://relative.db", "sqlite:///", "sqlite:///?fsync=1"])
    def test_bad_urls(self, url: str) -> None:
        """URLs that name no file are refused."""
        with pytest.raises(ConfigurationError):
            open_backend(url)

    def test_default_store(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """The default store is ``$STAGEFLOW_HOME/stageflow.db``, or ``$STAGEFLOW_STORE``;
        one per process, replaced once closed."""
        monkeypatch.setenv("STAGEFLOW_HOME", str(tmp_path / "home"))
        monkeypatch.delenv("STAGEFLOW_STORE", raising=False)
        default_backend().close()
        try:
            store = default_backend()
            assert (
                isinstance(store, SqliteStore) and store.path == tmp_path / "home" / "stageflow.db"
            )
            assert default_backend() is store
            store.close()
            monkeypatch.setenv("STAGEFLOW_STORE", "memory://")
            assert isinstance(default_backend(), MemoryStore)
            default_backend().close()
            monkeypatch.setenv("STAGEFLOW_STORE", f"sqlite:///{tmp_path / 'env.db'}")
            env_store = default_backend()
            assert isinstance(env_store, SqliteStore) and env_store.path == tmp_path / "env.db"
        finally:
            default_backend().close()
