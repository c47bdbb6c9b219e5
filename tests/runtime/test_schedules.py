"""Schedules served in-process, on a FakeClock: interval and cron slots, overlap, catch-up,
restarts and their intensity, recovery, shutdown; sync ``serve`` and the options' checks.

Every async test runs on asyncio and trio. Flows note the (fake) time they start at and
set an event when the test has seen enough; the serve task is then cancelled, which drains
it. Time only moves when every task is blocked (autojump), so the order of slots, runs
and restarts is deterministic.
"""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest

from actors import FakeClock
from runtime import (
    Restart,
    Runtime,
    Schedule,
    aserve,
    flow,
    get_run_context,
    serve,
    tags,
    task,
)
from runtime.api._registry import register_run_flow
from runtime.core._exceptions import ParameterBindError, SchedulesFailed
from runtime.core._models import FlowRun
from runtime.orchestration._waiting import wait_for_state_change
from runtime.store._backend import StoreBackend
from runtime.store._memory import MemoryStore
from runtime.store._records import ScheduleRecord
from runtime.store._sqlite import SqliteStore

START = 1_800_000_000.0  # a whole number of minutes (and of 5 minutes) since the epoch


class Crash(BaseException):
    """Escapes the engine, as a dying worker thread or an interrupt would: a crash."""


def _at(offset: float) -> datetime:
    return datetime.fromtimestamp(START + offset, timezone.utc)


class CrashOnce:
    """A flow that runs a task, then crashes on its first run and completes on the next;
    ``calls`` says how often the task ran."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.crashed = anyio.Event()
        self.recovered = anyio.Event()

        @task
        async def prepare() -> str:
            self.calls.append("prepare")
            return "data"

        @flow
        async def pipeline() -> str:
            data = await prepare()
            if not self.crashed.is_set():
                self.crashed.set()
                raise Crash("killed after prepare")
            self.recovered.set()
            return data

        self.flow = pipeline


class Recorder:
    """What the test's flows report: the (fake) offsets their runs start at."""

    def __init__(self, clock: FakeClock, enough: int) -> None:
        self.clock = clock
        self.enough = enough
        self.starts: list[float] = []
        self.fired: list[tuple[float, float]] = []  # (start, slot) of each run
        self.done = anyio.Event()

    def start(self) -> float:
        """Note the start of a run (call in its flow's body); return its offset."""
        offset = self.clock.now() - START
        self.starts.append(offset)
        run = get_run_context().flow_run  # type: ignore[union-attr]
        self.fired.append((offset, slots_of([run])[0]))
        if len(self.starts) >= self.enough:
            self.done.set()
        return offset


async def serve_until(
    done: anyio.Event | Callable[[], Awaitable[Any]], *schedules: Schedule, grace: float = 30
) -> None:
    """Serve ``schedules`` until ``done`` is set (or returns), then stop the serve."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(partial(aserve, *schedules, grace_period=grace))
        await (done.wait() if isinstance(done, anyio.Event) else done())
        tg.cancel_scope.cancel()


async def metronome(clock: FakeClock) -> None:
    """Tick every half second of fake time.

    On asyncio, ``wait_all_tasks_blocked`` counts a task waiting for a task group's exit
    as blocked (the done callbacks that wake it are loop callbacks, not tasks), so an
    autojumping clock may jump in the middle of a run's end, to the next deadline, a
    slot's. With a tick every half second, such a jump moves the clock by half a second.
    """
    while True:
        await clock.sleep_until(clock.now() + 0.5)


def runs_of(store: StoreBackend, flow_name: str) -> list[FlowRun]:
    """The flow's runs, oldest first."""
    return list(reversed(store.read_flow_runs(flow_name=flow_name)))


def slots_of(runs: list[FlowRun]) -> list[float]:
    """The slot offsets the runs were fired for, from their tags."""
    found = []
    for run in runs:
        (tag,) = [tag for tag in run.tags if tag.startswith("slot:")]
        found.append(datetime.fromisoformat(tag[5:]).timestamp() - START)
    return found


def claims(store: StoreBackend, name: str) -> list[tuple[float, bool]]:
    """The schedule's claimed slots, oldest first: (offset, fired)."""
    return [
        (s.slot.timestamp() - START, s.fired) for s in reversed(store.read_schedule_slots(name))
    ]


# -- slots ----------------------------------------------------------------------------------


async def test_an_interval_schedule_fires_at_each_slot() -> None:
    """Runs start at the anchor (the first serve), then every interval; each is tagged
    with its schedule and slot, and each slot is claimed in the store."""
    clock = FakeClock(START, autojump=True)
    seen = Recorder(clock, 3)

    @flow
    async def tick(n: int) -> float:
        return seen.start() + n

    async with Runtime(store="memory://", clock=clock) as rt:
        store = rt.backend
        assert store is not None
        schedule = tick.to_schedule(interval=60, parameters={"n": 1}, tags=["nightly"])
        await serve_until(seen.done, schedule)
        runs = runs_of(store, "tick")
        record = store.read_schedule("tick")
        claimed = claims(store, "tick")
    assert seen.starts == [0, 60, 120]
    assert [run.state_name for run in runs] == ["Completed"] * 3
    assert [run.state.result() for run in runs] == [1, 61, 121]  # type: ignore[union-attr]
    assert slots_of(runs) == [0, 60, 120]
    assert {"nightly", "schedule:tick"} <= set(runs[0].tags)
    assert claimed == [(0, True), (60, True), (120, True)]
    assert record is not None and record.status == "stopped"
    assert (record.interval, record.anchor, record.parameters) == (60.0, _at(0), {"n": 1})


async def test_a_cron_schedule_fires_on_its_expression_in_its_timezone() -> None:
    """A cron schedule fires at the times its expression matches, read in its timezone."""
    clock = FakeClock(START, autojump=True)
    seen = Recorder(clock, 3)

    @flow
    async def report() -> None:
        seen.start()

    async with Runtime(store="memory://", clock=clock):
        # Every 5 minutes, and, in Kolkata (UTC+05:30), at half past each hour too.
        every_five = report.to_schedule(cron="*/5 * * * *")
        await serve_until(seen.done, every_five)
        assert seen.starts == [0, 300, 600]
        seen.starts.clear()
        seen.done = anyio.Event()
        shifted = report.to_schedule("kolkata", cron="0 * * * *", timezone="Asia/Kolkata")
        await serve_until(seen.done, shifted)
    assert [b - a for a, b in zip(seen.starts, seen.starts[1:])] == [3600, 3600]
    for offset in seen.starts:  # the hour in Kolkata (UTC+05:30) is half past in UTC
        assert datetime.fromtimestamp(START + offset, timezone.utc).minute == 30


# -- overlap --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overlap", "starts", "slots", "claimed"),
    [
        ("skip", [0, 30, 60], [0, 30, 60], [(0, True), (10, False), (20, False), (30, True)]),
        ("queue", [0, 25, 50], [0, 10, 20], [(0, True), (10, True), (20, True)]),
        ("allow", [0, 10, 20], [0, 10, 20], [(0, True), (10, True), (20, True)]),
    ],
)
async def test_overlap(overlap: str, starts: list[float], slots: list[float], claimed: Any) -> None:
    """A run takes 25 s, slots come every 10 s: ``skip`` skips (and records) the slots
    that come while it runs, ``queue`` starts them one after another, ``allow`` overlaps."""
    clock = FakeClock(START, autojump=True)
    seen = Recorder(clock, 3)

    @flow
    async def slow() -> None:
        seen.start()
        await clock.sleep_until(clock.now() + 25)

    async with Runtime(store="memory://", clock=clock) as rt:
        assert rt.backend is not None
        async with anyio.create_task_group() as tg:
            tg.start_soon(metronome, clock)
            await serve_until(seen.done, slow.to_schedule(interval=10, overlap=overlap), grace=100)
            tg.cancel_scope.cancel()
        runs = runs_of(rt.backend, "slow")
        assert claims(rt.backend, "slow")[: len(claimed)] == claimed
    assert seen.starts == starts
    assert slots_of(runs)[:3] == slots
    assert {run.state_name for run in runs} == {"Completed"}  # none left running


# -- catch-up and restarts of serve ---------------------------------------------------------


@pytest.mark.parametrize(
    ("catchup", "fired"),
    [
        ("latest", [(630, 600), (660, 660)]),
        ("all", [(630, s) for s in range(120, 601, 60)] + [(660, 660)]),
        ("none", [(660, 660)]),
    ],
)
async def test_catch_up_after_downtime(catchup: str, fired: list[tuple[int, int]]) -> None:
    """A schedule served, stopped, then served again 9.5 minutes later catches up on the
    slots it missed as its policy says: one run for the latest, one per slot, or none;
    then it goes on with its next slot."""
    clock = FakeClock(START, autojump=True)
    seen = Recorder(clock, 2)

    @flow
    async def hourly() -> None:
        seen.start()

    async with Runtime(store="memory://", clock=clock) as rt:
        assert rt.backend is not None
        schedule = hourly.to_schedule(interval=60, catchup=catchup, overlap="allow")
        await serve_until(seen.done, schedule)  # runs at 0 and 60
        clock.jump(630 - (clock.now() - START))  # nothing serves it until 630
        before = len(seen.starts)
        seen.enough = before + len(fired)
        seen.done = anyio.Event()
        await serve_until(seen.done, schedule)
    assert sorted(seen.fired[before:]) == fired


async def test_catch_up_of_all_slots_runs_them_one_after_another_by_default() -> None:
    """With the default overlap ("skip"), ``catchup="all"`` still runs every missed slot:
    the catch-up runs go one after another (oldest first), none is skipped because the
    one before it is still running."""
    clock = FakeClock(START, autojump=True)
    seen = Recorder(clock, 1)

    @flow
    async def hourly() -> None:
        seen.start()
        await clock.sleep_until(clock.now() + 10)  # each run takes 10 s

    async with Runtime(store="memory://", clock=clock) as rt:
        assert rt.backend is not None
        schedule = hourly.to_schedule(interval=60, catchup="all")
        await serve_until(seen.done, schedule)  # the run at 0 (and maybe at 60)
        last = claims(rt.backend, "hourly")[-1][0]
        missed = list(range(int(last) + 60, 601, 60))
        assert len(missed) >= 8
        clock.jump(630 - (clock.now() - START))  # nothing serves it until 630
        before = len(seen.fired)
        seen.enough = before + len(missed)
        seen.done = anyio.Event()
        await serve_until(seen.done, schedule)
        skipped = [offset for offset, fired in claims(rt.backend, "hourly") if not fired]
    caught_up = seen.fired[before : before + len(missed)]
    assert [slot for _, slot in caught_up] == missed  # oldest first, none skipped
    starts = [start for start, _ in caught_up]
    assert all(b - a >= 10 for a, b in zip(starts, starts[1:]))  # one after another
    assert not [offset for offset in skipped if offset <= 600]


async def test_two_serves_and_a_restarted_one_fire_each_slot_once(tmp_path: Path) -> None:
    """Two serves of one schedule, on one SQLite file through two stores (as two
    processes would), fire each slot once; so does a serve restarted at once."""
    clock = FakeClock(START, autojump=True)
    seen = Recorder(clock, 4)

    @flow
    async def shared() -> None:
        seen.start()

    path = tmp_path / "runs.db"
    stores = [SqliteStore(path), SqliteStore(path)]
    schedule = shared.to_schedule(interval=60, overlap="allow")
    try:
        async with Runtime(store=stores[0], clock=clock):
            async with anyio.create_task_group() as tg:
                tg.start_soon(serve_until, seen.done, schedule)  # serves in the first Runtime
                async with Runtime(store=stores[1], clock=clock):
                    await serve_until(seen.done, schedule)
            seen.enough += 2
            seen.done = anyio.Event()
            await serve_until(seen.done, schedule)  # restarted at once: no slot again
        runs = runs_of(stores[0], "shared")
    finally:
        for store in stores:
            store.close()
    assert sorted(slots_of(runs)) == [0, 60, 120, 180, 240, 300]
    assert len(seen.starts) == 6


# -- supervision: crashed runs ------------------------------------------------------------------


async def test_crashed_runs_restart_until_the_intensity_stops_the_schedule(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A run whose body crashes is run again after the backoff; a third restart within the
    period is one too many: the schedule stops and says so (log, status), and the other
    schedule goes on (one-for-one)."""
    clock = FakeClock(START, autojump=True)
    seen = Recorder(clock, 4)
    crashes: list[float] = []

    @flow
    async def fragile() -> None:
        crashes.append(clock.now() - START)
        raise Crash("the worker died")

    @flow
    async def steady() -> None:
        seen.start()

    policy = Restart(max_restarts=2, period=60, backoff=(1, 1, 0))
    async with Runtime(store="memory://", clock=clock) as rt:
        store = rt.backend
        assert store is not None
        await serve_until(
            seen.done,
            fragile.to_schedule(interval=3600, restart=policy),
            steady.to_schedule(interval=10),
        )
        (crashed,) = runs_of(store, "fragile")
        history = [s.name for s in store.read_state_history("flow", crashed.id)]
        record = store.read_schedule("fragile")
        steady_record = store.read_schedule("steady")
    assert crashes == [0, 1, 2]  # the first run, then two restarts a backoff apart
    assert crashed.state_name == "Crashed"
    assert history.count("Resuming") == 2 and history.count("Crashed") == 3
    assert record is not None and record.status == "failed"
    assert "more than max_restarts=2 restarts within period=60" in (record.message or "")
    assert seen.starts == [0, 10, 20, 30]
    assert steady_record is not None and steady_record.status == "stopped"
    assert any("Schedule 'fragile' stopped" in r.getMessage() for r in caplog.records)
    # The log names the crash itself, not the task group the run's actor raised it from.
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Schedule 'fragile'")]
    assert len([m for m in said if " crashed: " in m and "; restarting it" in m]) == 2
    # The crash one restart too many is not said to restart.
    assert len([m for m in said if " crashed: " in m and "; it is not restarted" in m]) == 1
    for line in said:
        assert "Crash('the worker died')" in line and "TaskGroup" not in line, line
    assert "TaskGroup" not in (record.message or "")


async def test_temporary_runs_are_not_restarted() -> None:
    """With ``Restart(type="temporary")`` a crashed run stays Crashed, no restart counts
    against the intensity, and the schedule goes on firing."""
    clock = FakeClock(START, autojump=True)
    seen = Recorder(clock, 3)

    @flow
    async def fragile() -> None:
        seen.start()
        raise Crash("the worker died")

    async with Runtime(store="memory://", clock=clock) as rt:
        assert rt.backend is not None
        schedule = fragile.to_schedule(
            interval=5, restart=Restart(type="temporary", max_restarts=0)
        )
        await serve_until(seen.done, schedule)
        runs = runs_of(rt.backend, "fragile")
        record = rt.backend.read_schedule("fragile")
    assert seen.starts == [0, 5, 10]
    assert [run.state_name for run in runs] == ["Crashed"] * 3
    assert record is not None and record.status == "stopped"


async def test_the_next_serve_recovers_a_crashed_run_reusing_its_task_results() -> None:
    """A run that crashed and was not restarted (here: temporary) is run again by the next
    serve of its schedule, under its own id; the task it completed is not run again."""
    clock = FakeClock(START, autojump=True)
    pipeline = CrashOnce()

    async with Runtime(store="memory://", clock=clock) as rt:
        store = rt.backend
        assert store is not None
        once = pipeline.flow.to_schedule(interval=3600, restart=Restart(type="temporary"))
        await serve_until(pipeline.crashed, once)
        (run,) = runs_of(store, "pipeline")
        assert run.state_name == "Crashed"
        await serve_until(pipeline.recovered, pipeline.flow.to_schedule(interval=3600))
        runs = runs_of(store, "pipeline")
        assert clock.now() - START < 3600  # recovered at once, not at the next slot
    assert [r.id for r in runs] == [run.id]  # run again under its id; no new slot was due
    final = runs[0].state
    assert final is not None and final.is_completed() and final.result() == "data"
    assert pipeline.calls == ["prepare"]


# -- shutdown -----------------------------------------------------------------------------------


async def test_a_stop_lets_runs_finish_within_the_grace_period_then_cancels_them() -> None:
    """Cancelling a serve stops its schedules at once; a run that ends within the grace
    period completes, one that does not is cancelled at its end: none is left running."""
    clock = FakeClock(START, autojump=True)
    started: list[str] = []
    cancelled_at: list[float] = []
    both = anyio.Event()

    def body(seconds: float) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            started.append(get_run_context().flow_run.flow_name)  # type: ignore[union-attr]
            if len(started) == 2:
                both.set()
            try:
                await clock.sleep_until(clock.now() + seconds)
            except anyio.get_cancelled_exc_class():
                cancelled_at.append(clock.now())
                raise

        return run

    short = flow(name="short")(body(10))
    long = flow(name="long")(body(1000))
    async with Runtime(store="memory://", clock=clock) as rt:
        store = rt.backend
        assert store is not None
        stopped_at = 0.0

        async def both_started() -> None:
            nonlocal stopped_at
            await both.wait()
            stopped_at = clock.now()

        await serve_until(
            both_started,
            short.to_schedule(interval=3600),
            long.to_schedule(interval=3600),
            grace=30,
        )
        (short_run,) = runs_of(store, "short")
        (long_run,) = runs_of(store, "long")
    assert short_run.state_name == "Completed"
    assert long_run.state_name == "Cancelled"
    assert cancelled_at == [stopped_at + 30]  # at the end of the grace period


def test_serve_blocks_until_a_signal_stops_it(sync_runtime: Runtime) -> None:
    """``flow.serve(...)`` blocks; SIGINT stops it gracefully (on asyncio and trio)."""
    count: list[int] = []

    @flow
    async def beat() -> None:
        count.append(1)
        if len(count) == 2:
            signal.raise_signal(signal.SIGINT)

    beat.serve(interval=0.05)
    assert sync_runtime.backend is not None
    runs = runs_of(sync_runtime.backend, "beat")
    record = sync_runtime.backend.read_schedule("beat")
    assert len(count) == 2 and [run.state_name for run in runs] == ["Completed"] * 2
    assert record is not None and record.status == "stopped"


async def test_a_sync_flow_is_served_with_its_body_on_a_worker_thread() -> None:
    """A served sync flow's body runs on a worker thread, not on the serve's loop."""
    import threading

    clock = FakeClock(START, autojump=True)
    done = anyio.Event()
    where: list[int] = []

    @flow
    def blocking() -> None:
        where.append(threading.get_ident())
        anyio.from_thread.run_sync(done.set)

    async with Runtime(store="memory://", clock=clock):
        await serve_until(done, blocking.to_schedule(interval=60))
    assert where and where[0] != threading.get_ident()


# -- what serve and to_schedule refuse ----------------------------------------------------------


class TestOptions:
    def test_to_schedule_checks_its_options(self) -> None:
        @flow
        def etl(day: str) -> None: ...

        bad: list[tuple[dict[str, Any], str]] = [
            ({}, r"needs exactly one of interval= .* not neither"),
            ({"interval": 5, "cron": "* * * * *"}, r"not both"),
            ({"interval": 0}, r"^interval must be a positive number of seconds, got 0"),
            ({"cron": "daily"}, r"^cron='daily' is not a cron expression"),
            ({"interval": 5, "timezone": "Mars/Base"}, r"^timezone='Mars/Base' is not a timezone"),
            (
                {"interval": 5, "overlap": "maybe"},
                r"^overlap must be one of 'skip', 'queue', 'allow'",
            ),
            (
                {"interval": 5, "catchup": "some"},
                r"^catchup must be one of 'latest', 'all', 'none'",
            ),
        ]
        for options, message in bad:
            with pytest.raises(ValueError, match=message):
                etl.to_schedule(parameters={"day": "x"}, **options)
        with pytest.raises(ParameterBindError):
            etl.to_schedule(interval=5, parameters={"night": "x"})
        with pytest.raises(TypeError, match=r"^restart must be a runtime.Restart"):
            etl.to_schedule(interval=5, parameters={"day": "x"}, restart="no")  # type: ignore
        with pytest.raises(ValueError, match="max_seconds"):
            Restart(backoff=(10, 1))
        schedule = etl.to_schedule(interval=timedelta(minutes=5), parameters={"day": "x"})
        assert (schedule.name, schedule.interval, schedule.restart) == ("etl", 300.0, Restart())

    async def test_serve_checks_what_it_is_given(self) -> None:
        @flow
        async def etl() -> None: ...

        with pytest.raises(ValueError, match=r"^Nothing to serve"):
            await aserve()
        one = etl.to_schedule(interval=5)
        with pytest.raises(ValueError, match=r"^Several schedules are named 'etl'"):
            await aserve(one, one)
        with pytest.raises(ValueError, match=r"^grace_period must be"):
            await aserve(one, grace_period=-1)
        with pytest.raises(RuntimeError, match=r"^serve\(\) blocks until it is stopped"):
            serve(one)

    async def test_every_schedule_failing_ends_the_serve(self) -> None:
        """When its last schedule stops, a serve ends with SchedulesFailed."""
        clock = FakeClock(START, autojump=True)

        @flow
        async def fragile() -> None:
            raise Crash("always")

        async with Runtime(store="memory://", clock=clock):
            with pytest.raises(SchedulesFailed, match=r"^Every schedule stopped \(fragile\)"):
                await aserve(fragile.to_schedule(interval=60, restart=Restart(max_restarts=0)))


# -- Runtime(recover=True) ----------------------------------------------------------------------


async def test_a_runtime_with_recover_runs_crashed_served_runs_again() -> None:
    """``Runtime(recover=True)`` runs again the crashed runs of served flows (a stopped
    schedule's), reusing their task results; not those of a temporary or failed schedule."""
    pipeline = CrashOnce()

    @flow
    async def fragile() -> None:
        raise Crash("always")

    store = MemoryStore()
    now = datetime.now(timezone.utc)
    for name, restart, status in [
        ("nightly", "permanent", "stopped"),
        ("once", "temporary", "stopped"),
        ("broken", "permanent", "failed"),
    ]:
        store.register_schedule(
            ScheduleRecord(name, "x", None, 60.0, None, None, now, restart=restart, status=status)
        )
    async with Runtime(store=store):
        with tags("schedule:nightly"), pytest.raises(Crash):
            await pipeline.flow()
        for name in ("once", "broken"):
            with tags(f"schedule:{name}"), pytest.raises(Crash):
                await fragile()
    crashed = {run.flow_name: run for run in store.read_flow_runs()}
    for run in crashed.values():
        register_run_flow(run.id, pipeline.flow if run.flow_name == "pipeline" else fragile)
    run_id = crashed["pipeline"].id
    async with Runtime(store=store, recover=True) as rt:
        with anyio.fail_after(30):  # bounded: the recovery starts with the runtime
            while store.read_flow_run(run_id).state_name != "Completed":
                await wait_for_state_change(store, run_id, rt.clock, 1)
    assert store.read_flow_run(run_id).state.result() == "data"  # type: ignore[union-attr]
    assert pipeline.calls == ["prepare"]
    assert [run.state_name for run in store.read_flow_runs(flow_name="fragile")] == ["Crashed"] * 2
