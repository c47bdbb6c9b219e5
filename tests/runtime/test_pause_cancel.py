"""Pause, suspend, resume, cancellation and tag concurrency limits inside one process.

(Across processes: tests/runtime/test_cross_process.py.)
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any
from uuid import UUID, uuid4

import anyio
import pytest

from actors import FakeClock
from runtime import (
    RunInput,
    Runtime,
    cancel_flow_run,
    flow,
    get_run_context,
    pause_flow_run,
    resume_flow_run,
    suspend_flow_run,
    task,
    wait_for_flow_run,
)
from runtime.api._run_input import validated_input as _validated_input
from runtime.concurrency import (
    delete_concurrency_limit,
    read_concurrency_limits,
    set_concurrency_limit,
)
from runtime.core._input import input_model, keyset_for, schema_json
from runtime.exceptions import CancelledRun, InvalidRunInput, NotPausedError, ObjectNotFound
from runtime.states import State
from runtime.store._memory import MemoryStore
from runtime.store._urls import default_backend


class Approval(RunInput):
    approved: bool
    reviewer: str = "nobody"


async def _wait_until_state(
    runtime: Runtime, run_id: list[UUID], reached: Callable[[State[Any]], bool]
) -> UUID:
    """Wait (event-driven, bounded by the test timeout) until the flow run's state is one
    ``reached`` accepts."""
    while not run_id:
        await anyio.sleep(0)
    backend = runtime.backend
    assert backend is not None
    changed = anyio.Event()
    unsubscribe = backend.subscribe(run_id[0], lambda run, state: changed.set())
    try:
        state = backend.read_flow_run(run_id[0]).state
        while state is None or not reached(state):
            await changed.wait()
            changed = anyio.Event()
            state = backend.read_flow_run(run_id[0]).state
    finally:
        unsubscribe()
    return run_id[0]


async def _wait_until_paused(runtime: Runtime, run_id: list[UUID]) -> UUID:
    return await _wait_until_state(runtime, run_id, lambda state: state.is_paused())


async def _wait_until_running(runtime: Runtime, run_id: list[UUID]) -> UUID:
    while not run_id:
        await anyio.sleep(0)
    return run_id[0]


# -- pause -----------------------------------------------------------------------------


async def test_pause_returns_the_validated_input_of_the_resume() -> None:
    ids: list[UUID] = []
    results: list[Any] = []

    @flow
    async def release() -> Any:
        ids.append(get_run_context().flow_run.id)
        return await pause_flow_run(wait_for_input=Approval, timeout=60)

    async with Runtime(store="memory://") as runtime:
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                results.append(await release(return_state=True))

            tg.start_soon(run)
            run_id = await _wait_until_paused(runtime, ids)
            assert runtime.backend.read_flow_run(run_id).state.name == "Paused"
            await resume_flow_run(run_id, run_input={"approved": "yes", "reviewer": "ada"})
        history = [s.name for s in runtime.backend.read_state_history("flow", ids[0])]
    (state,) = results
    assert state.is_completed()
    assert state.result() == Approval(approved=True, reviewer="ada")
    assert history == ["Pending", "Running", "Paused", "Running", "Completed"]


async def test_invalid_input_raises_to_the_resumer_and_the_run_stays_paused() -> None:
    ids: list[UUID] = []
    results: list[Any] = []

    @flow
    async def wants_int() -> Any:
        ids.append(get_run_context().flow_run.id)
        return await pause_flow_run(wait_for_input=int, timeout=60)

    async with Runtime(store="memory://") as runtime:
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                results.append(await wants_int())

            tg.start_soon(run)
            run_id = await _wait_until_paused(runtime, ids)
            with pytest.raises(InvalidRunInput, match="Invalid input"):
                await resume_flow_run(run_id, run_input="not a number")
            assert runtime.backend.read_flow_run(run_id).state.is_paused()
            await resume_flow_run(run_id, run_input="12")
    assert results == [12]


class Review(RunInput):
    approved: bool
    reviewer: str
    score: int


BAD_REVIEW = {"approved": "perhaps", "score": "high"}


async def test_invalid_input_names_every_bad_field() -> None:
    ids: list[UUID] = []

    @flow
    async def reviewed() -> Any:
        ids.append(get_run_context().flow_run.id)
        return await pause_flow_run(wait_for_input=Review, timeout=60)

    async with Runtime(store="memory://") as runtime:
        async with anyio.create_task_group() as tg:
            tg.start_soon(reviewed)
            run_id = await _wait_until_paused(runtime, ids)
            with pytest.raises(InvalidRunInput) as caught:
                await resume_flow_run(run_id, run_input=BAD_REVIEW)
            await resume_flow_run(run_id, run_input={"approved": 1, "reviewer": "a", "score": 3})
    assert str(caught.value) == (
        f"Invalid input for flow run {run_id}: approved: Input should be a valid boolean, "
        "unable to interpret input; reviewer: Field required; score: Input should be a valid "
        "integer, unable to parse string as an integer"
    )


def test_input_checked_against_a_stored_schema_names_every_bad_field() -> None:
    """A resume from another process checks the input against the run's stored schema."""
    store, run_id, keyset = MemoryStore(), uuid4(), keyset_for("1")
    store.write_run_input(run_id, keyset["schema"], schema_json(Review))
    with pytest.raises(InvalidRunInput) as caught:
        _validated_input(store, run_id, keyset, BAD_REVIEW)
    assert str(caught.value) == (
        f"Invalid input for flow run {run_id}: input: 'reviewer' is a required property; "
        "approved: 'perhaps' is not of type 'boolean'; score: 'high' is not of type 'integer'"
    )
    store.write_run_input(run_id, keyset["schema"], schema_json(input_model(int)))
    with pytest.raises(InvalidRunInput, match=r": input: 'x' is not of type 'integer'$"):
        _validated_input(store, run_id, keyset, "x")


async def test_a_pause_that_times_out_fails_the_run() -> None:
    clock = FakeClock(autojump=True)

    @flow
    async def forgotten() -> None:
        await pause_flow_run(timeout=30, poll_interval=5)

    async with Runtime(store="memory://", clock=clock):
        state = await forgotten(return_state=True)
    assert state.is_failed()
    assert "never resumed" in state.message


async def test_resuming_a_run_that_is_not_paused_raises_not_paused() -> None:
    @flow
    async def done() -> int:
        return 1

    async with Runtime(store="memory://"):
        state = await done(return_state=True)
        with pytest.raises(NotPausedError):
            await resume_flow_run(state.state_details.flow_run_id)
        with pytest.raises(ObjectNotFound):
            await resume_flow_run("not-a-uuid")


def test_a_sync_flow_paused_in_one_thread_is_resumed_from_another() -> None:
    paused: list[UUID] = []
    is_paused = threading.Event()

    @flow
    def waits() -> Any:
        return pause_flow_run(wait_for_input=str, timeout=60)

    def on_state(run: Any, state: Any) -> None:
        if state is not None and state.is_paused():
            paused.append(run.id)
            is_paused.set()

    def resumer() -> None:
        assert is_paused.wait(30)
        resume_flow_run(paused[0], run_input="from another thread")

    unsubscribe = default_backend().subscribe(None, on_state)  # the store sync flows use
    thread = threading.Thread(target=resumer)
    thread.start()
    try:
        assert waits() == "from another thread"
    finally:
        thread.join(30)
        unsubscribe()


async def test_no_new_task_starts_while_paused_but_running_tasks_go_on() -> None:
    ids: list[UUID] = []
    started: list[str] = []
    # Submitted runs run on the task runner's loop: thread-safe events.
    slow_started = threading.Event()
    release_slow = threading.Event()
    results: list[Any] = []

    @task
    async def slow() -> str:
        started.append("slow")
        slow_started.set()
        assert await anyio.to_thread.run_sync(release_slow.wait, 30)
        return "slow done"

    @task
    async def later() -> str:
        started.append("later")
        return "later done"

    @flow
    async def f() -> Any:
        ids.append(get_run_context().flow_run.id)
        future = slow.submit()
        assert await anyio.to_thread.run_sync(slow_started.wait, 30)
        await pause_flow_run(timeout=60)
        return await future, await later()

    async with Runtime(store="memory://") as runtime:
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                results.append(await f())

            tg.start_soon(run)
            run_id = await _wait_until_paused(runtime, ids)
            release_slow.set()  # the running task finishes while paused
            await resume_flow_run(run_id)
    assert results == [("slow done", "later done")]
    assert started == ["slow", "later"]


# -- suspend ---------------------------------------------------------------------------


async def test_suspend_then_resume_reruns_the_body_reusing_finished_tasks(tmp_path: Any) -> None:
    calls: list[str] = []

    @task(persist_result=True, result_storage=str(tmp_path))
    async def prepare() -> str:
        calls.append("prepare")
        return "data"

    @task
    async def publish(data: str, note: str) -> str:
        calls.append("publish")
        return f"{data}+{note}"

    @flow(persist_result=True, result_storage=str(tmp_path))
    async def nightly() -> str:
        data = await prepare()
        note = await suspend_flow_run(wait_for_input=str, timeout=60)
        return await publish(data, note)

    async with Runtime(store="memory://"):
        state = await nightly(return_state=True)
        assert state.name == "Suspended" and state.is_paused()
        run_id = state.state_details.flow_run_id
        await resume_flow_run(run_id, run_input="go")
        finished = await wait_for_flow_run(run_id, timeout=30)
    assert finished.state.is_completed()
    assert finished.state.result() == "data+go"
    assert calls == ["prepare", "publish"]


# -- cancellation ----------------------------------------------------------------------


async def test_cancelling_a_running_flow_cancels_its_tasks_and_runs_the_hooks() -> None:
    ids: list[UUID] = []
    hooks: list[str] = []
    results: list[Any] = []
    task_started = threading.Event()  # set on the task runner's loop

    @task
    async def forever() -> None:
        task_started.set()
        await anyio.sleep_forever()

    @task
    async def never() -> None:
        hooks.append("never ran")

    @flow
    async def child() -> None:
        await anyio.sleep_forever()

    @flow(on_cancellation=[lambda f, r, s: hooks.append(f"on_cancellation {s.name}")])
    async def f() -> None:
        ids.append(get_run_context().flow_run.id)
        future = forever.submit()
        assert await anyio.to_thread.run_sync(task_started.wait, 30)
        await child()
        await never()
        await future

    async with Runtime(store="memory://") as runtime:
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                results.append(await f(return_state=True))

            tg.start_soon(run)
            run_id = await _wait_until_running(runtime, ids)
            assert await anyio.to_thread.run_sync(task_started.wait, 30)
            await cancel_flow_run(run_id)
        backend = runtime.backend
        assert backend is not None
        (state,) = results
        assert state.is_cancelled()
        assert hooks == ["on_cancellation Cancelling"] or hooks == ["on_cancellation Cancelled"]
        history = [s.name for s in backend.read_state_history("flow", run_id)]
        assert history[-2:] == ["Cancelling", "Cancelled"]
        task_states = {
            t.name.split("-")[0]: t.state.name for t in backend.read_task_runs(flow_run_id=run_id)
        }
        assert task_states["forever"] == "Cancelled"
        assert "never" not in task_states
        (sub,) = backend.read_flow_runs(flow_name="child")
        assert sub.state.name == "Cancelled"


async def test_cancelling_a_final_run_leaves_it_alone() -> None:
    @flow
    async def done() -> int:
        return 1

    async with Runtime(store="memory://"):
        state = await done(return_state=True)
        after = await cancel_flow_run(state.state_details.flow_run_id)
    assert after.is_completed()


def test_a_sync_flow_is_cancelled_from_another_thread() -> None:
    ids: list[UUID] = []
    started = threading.Event()

    @task
    async def forever() -> None:
        started.set()
        await anyio.sleep_forever()

    @flow
    def f() -> None:
        ids.append(get_run_context().flow_run.id)
        forever.submit().wait()

    def canceller() -> None:
        assert started.wait(30)
        cancel_flow_run(ids[0])

    thread = threading.Thread(target=canceller)
    thread.start()
    try:
        state = f(return_state=True)
    finally:
        thread.join(30)
    assert state.is_cancelled()


# -- concurrency limits ----------------------------------------------------------------


async def test_a_tag_limit_holds_runs_in_awaiting_concurrency_slot() -> None:
    running = 0
    peak = 0
    gate = threading.Event()  # submitted runs run on the task runner's loop

    @task(tags=["db"])
    async def query(i: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        assert await anyio.to_thread.run_sync(gate.wait, 30)
        running -= 1
        return i

    def waiting_for_a_slot() -> int:
        return sum(
            1
            for t in runtime.backend.read_task_runs()
            if t.state is not None and t.state.name == "AwaitingConcurrencySlot"
        )

    @flow
    async def f() -> list[int]:
        futures = query.map(range(3))
        while running < 1 or waiting_for_a_slot() < 2:
            await anyio.sleep(0)
        gate.set()
        return [await future for future in futures]

    async with Runtime(store="memory://") as runtime:
        set_concurrency_limit("db", 1, store=None)
        try:
            assert await f() == [0, 1, 2]
        finally:
            delete_concurrency_limit("db")
        names = {
            s.name
            for t in runtime.backend.read_task_runs()
            for s in runtime.backend.read_state_history("task", t.id)
        }
    assert peak == 1
    assert "AwaitingConcurrencySlot" in names


def test_limits_are_validated_and_listed() -> None:
    with pytest.raises(ValueError, match="integer >= 0"):
        set_concurrency_limit("t", -1, store="memory://")
    with pytest.raises(ValueError, match="non-empty tag"):
        set_concurrency_limit("", 1, store="memory://")
    set_concurrency_limit("listed", 3)
    try:
        limits = {limit.tag: limit for limit in read_concurrency_limits()}
        assert limits["listed"].limit == 3
        assert limits["listed"].active_slots == ()
    finally:
        delete_concurrency_limit("listed")


# -- a cancellation during a flow run's retry delay ------------------------------------


async def _wait_until_awaiting_retry(runtime: Runtime, run_id: list[UUID]) -> UUID:
    return await _wait_until_state(runtime, run_id, lambda state: state.name == "AwaitingRetry")


async def test_a_cancel_during_a_flow_runs_retry_delay_ends_it_cancelled_at_once() -> None:
    """The retry's delay (an hour) is cut short: the run ends Cancelled with its
    on_cancellation hooks, and the call raises CancelledRun, not the failed attempt's
    exception."""
    ids: list[UUID] = []
    hooks: list[str] = []
    outcomes: list[Any] = []

    @flow(
        retries=1,
        retry_delay_seconds=3600,
        on_cancellation=[lambda f, r, s: hooks.append(f"on_cancellation {s.name}")],
        on_failure=[lambda f, r, s: hooks.append(f"on_failure {s.name}")],
    )
    async def flaky() -> None:
        ids.append(get_run_context().flow_run.id)
        raise ValueError("first attempt")

    async with Runtime(store="memory://") as runtime:
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                try:
                    await flaky()
                except BaseException as exc:
                    outcomes.append(exc)
                    if not isinstance(exc, Exception):
                        raise

            tg.start_soon(run)
            run_id = await _wait_until_awaiting_retry(runtime, ids)
            await cancel_flow_run(run_id)
        backend = runtime.backend
        assert backend is not None
        history = [s.name for s in backend.read_state_history("flow", run_id)]
    assert history[-1] == "Cancelled", history
    assert "Running" not in history[history.index("AwaitingRetry") :], history
    assert hooks == ["on_cancellation Cancelled"]
    assert len(ids) == 1  # the body did not run again
    (raised,) = outcomes
    assert isinstance(raised, CancelledRun), repr(raised)


@pytest.mark.parametrize("loop", ["asyncio", "trio"])
def test_a_cancel_during_a_sync_flow_runs_retry_delay_ends_it_cancelled(
    tmp_path: Any, loop: str
) -> None:
    """As above, for a sync flow whose orchestration runs on a global loop of each backend,
    cancelled from another thread on a store the threads share."""
    ids: list[UUID] = []
    hooks: list[str] = []
    awaiting_retry = threading.Event()

    def on_change(run: Any, state: Any) -> None:
        if state.name == "AwaitingRetry":
            awaiting_retry.set()

    @flow(
        retries=1,
        retry_delay_seconds=3600,
        on_cancellation=[lambda f, r, s: hooks.append(f"on_cancellation {s.name}")],
    )
    def flaky() -> None:
        ids.append(get_run_context().flow_run.id)
        raise ValueError("first attempt")

    url = f"sqlite:///{tmp_path / 'runs.db'}"

    def canceller() -> None:
        assert awaiting_retry.wait(30)
        with Runtime(store=url, loop=loop):
            cancel_flow_run(ids[0])

    thread = threading.Thread(target=canceller)
    with Runtime(store=url, loop=loop) as runtime:
        backend = runtime.backend
        assert backend is not None
        unsubscribe = backend.subscribe(None, on_change)
        thread.start()
        try:
            state = flaky(return_state=True)
        finally:
            thread.join(30)
            unsubscribe()
    assert state.is_cancelled(), state
    assert hooks == ["on_cancellation Cancelled"]
    assert len(ids) == 1
    with pytest.raises(CancelledRun):
        state.result()


def test_a_resume_that_lost_to_another_says_so() -> None:
    """The loser of two resumers of a suspended run finds it Resuming (the winner's body
    not started yet): it is told that another caller is resuming it, not a state name."""
    from uuid import uuid4

    from runtime.api._flow_runs import _not_paused
    from runtime.states import Completed, Scheduled

    run_id = uuid4()
    assert str(_not_paused(run_id, Scheduled(name="Resuming"))) == (
        f"Cannot resume flow run {run_id}: it is not paused (another caller is resuming it)."
    )
    assert str(_not_paused(run_id, Completed())) == (
        f"Cannot resume flow run {run_id}: it is not paused (it is Completed())."
    )
