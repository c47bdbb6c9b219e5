"""Persisted results, caching and transactions, as a flow author uses them."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from engine_support import isolated_home, only_flow_run, state_names, task_runs_of  # noqa: F401

from actors import FakeClock
from runtime import (
    INPUTS,
    NONE,
    TASK_SOURCE,
    Runtime,
    flow,
    get_transaction,
    task,
    transaction,
)
from runtime.exceptions import MissingResult
from runtime.results import ResultRef
from runtime.transactions import Transaction


@pytest.fixture
def storage(tmp_path: Path) -> str:
    return str(tmp_path / "results")


# -- results -----------------------------------------------------------------------------


async def test_a_persisted_result_is_a_reference_that_loads(storage: str) -> None:
    @task(persist_result=True, result_storage=storage, cache_policy=NONE)
    async def make() -> dict[str, int]:
        return {"a": 1}

    @flow
    async def f() -> Any:
        return await make(return_state=True)

    async with Runtime(store="memory://"):
        state = await f()
    assert isinstance(state.data, ResultRef)
    assert state.result() == {"a": 1}
    fresh = ResultRef.from_json(state.data.to_json())  # as another process would see it
    assert fresh.load() == {"a": 1}


async def test_result_storage_key_templates_name_the_file(storage: str) -> None:
    @task(
        persist_result=True, result_storage=storage, result_storage_key="report-{parameters[day]}"
    )
    async def report(day: str) -> str:
        return f"report for {day}"

    @flow
    async def f() -> str:
        return await report("monday")

    async with Runtime(store="memory://"):
        assert await f() == "report for monday"
    assert (Path(storage) / "report-monday").exists()


async def test_an_unserializable_result_fails_the_run_saying_which_value_and_serializer(
    storage: str,
) -> None:
    @task(persist_result=True, result_storage=storage, result_serializer="json")
    async def bad() -> object:
        return object()

    states: list[Any] = []

    @flow
    async def f() -> None:
        states.append(await bad(return_state=True))

    async with Runtime(store="memory://"):
        await f()
    (state,) = states
    assert state.is_failed()
    assert "'object'" in state.message and "'json'" in state.message


async def test_a_result_not_persisted_is_still_available_in_process() -> None:
    @task(persist_result=False)
    async def value() -> int:
        return 7

    @flow
    async def f() -> Any:
        return await value(return_state=True)

    async with Runtime(store="memory://"):
        state = await f()
    assert state.result() == 7
    assert not isinstance(state.data, ResultRef)


def test_a_reference_without_its_file_raises_missing_result(storage: str) -> None:
    ref = ResultRef(storage_path=storage, key="nope", serializer="pickle")
    with pytest.raises(MissingResult):
        ref.load()


# -- caching -----------------------------------------------------------------------------


async def test_a_cache_hit_ends_cached_without_calling_the_function(storage: str) -> None:
    calls: list[int] = []

    @task(cache_policy=INPUTS, result_storage=storage)
    async def square(x: int) -> int:
        calls.append(x)
        return x * x

    @flow
    async def f() -> list[Any]:
        return [await square(3, return_state=True), await square(3, return_state=True)]

    async with Runtime(store="memory://"):
        first, second = await f()
        (third,) = (await f())[1:]  # across flow runs too
    assert calls == [3]
    assert first.name == "Completed"
    assert second.name == "Cached" and second.is_completed()
    assert third.name == "Cached"
    assert second.result() == 9


async def test_different_inputs_are_different_keys(storage: str) -> None:
    calls: list[int] = []

    @task(cache_policy=INPUTS + TASK_SOURCE, result_storage=storage)
    async def square(x: int) -> int:
        calls.append(x)
        return x * x

    @flow
    async def f() -> list[int]:
        return [await square(1), await square(2), await square(1)]

    async with Runtime(store="memory://"):
        assert await f() == [1, 4, 1]
    assert calls == [1, 2]


async def test_cache_key_fn_and_refresh_cache(storage: str) -> None:
    calls: list[str] = []

    @task(cache_key_fn=lambda ctx, inputs: "fixed-key", result_storage=storage)
    async def load(name: str) -> str:
        calls.append(name)
        return name

    @flow
    async def f() -> list[str]:
        first = await load("a")
        cached = await load("b")  # same key: a's result
        refreshed = await load.with_options(refresh_cache=True)("c")
        return [first, cached, refreshed]

    async with Runtime(store="memory://"):
        assert await f() == ["a", "a", "c"]
    assert calls == ["a", "c"]


async def test_an_expired_cache_record_is_not_used(storage: str) -> None:
    clock = FakeClock()
    calls: list[int] = []

    @task(cache_policy=INPUTS, cache_expiration=timedelta(seconds=60), result_storage=storage)
    async def work(x: int) -> int:
        calls.append(x)
        return x

    @flow
    async def f() -> int:
        return await work(1)

    async with Runtime(store="memory://", clock=clock):
        await f()
        clock.jump(30)
        await f()
        assert calls == [1]
        clock.jump(31)
        await f()
    assert calls == [1, 1]


async def test_the_default_policy_caches_within_one_flow_run_only(storage: str) -> None:
    calls: list[int] = []

    @task(persist_result=True, result_storage=storage)  # DEFAULT: INPUTS + TASK_SOURCE + RUN_ID
    async def work(x: int) -> int:
        calls.append(x)
        return x

    @flow
    async def f() -> None:
        await work(1)
        await work(1)

    async with Runtime(store="memory://"):
        await f()
        await f()
    assert calls == [1, 1]


def test_sync_flows_cache_across_calls(storage: str) -> None:
    calls: list[int] = []

    @task(cache_policy=INPUTS, result_storage=storage)
    def work(x: int) -> int:
        calls.append(x)
        return x + 1

    @flow
    def f() -> int:
        return work(41)

    assert f() == 42
    assert f() == 42
    assert calls == [41]


# -- transactions ------------------------------------------------------------------------


def _recording_task(log: list[str], name: str, *, fail: bool = False) -> Any:
    @task(name=name)
    def step() -> str:
        if fail:
            raise ValueError(f"{name} failed")
        return name

    @step.on_commit
    def committed(txn: Transaction) -> None:
        log.append(f"commit {name}")

    @step.on_rollback
    def rolled_back(txn: Transaction) -> None:
        log.append(f"rollback {name}")

    return step


def test_a_task_outside_a_transaction_commits_at_once() -> None:
    log: list[str] = []
    step = _recording_task(log, "a")

    @flow
    def f() -> None:
        step()
        log.append("after a")

    f()
    assert log == ["commit a", "after a"]


def test_a_transaction_commits_its_staged_tasks_when_the_block_succeeds() -> None:
    log: list[str] = []
    a, b = _recording_task(log, "a"), _recording_task(log, "b")

    @flow
    def f() -> None:
        with transaction():
            a()
            b()
            log.append("end of block")

    f()
    assert log == ["end of block", "commit a", "commit b"]


def test_a_failure_later_in_the_transaction_rolls_back_the_staged_tasks_newest_first() -> None:
    log: list[str] = []
    a, b = _recording_task(log, "a"), _recording_task(log, "b")
    boom = _recording_task(log, "boom", fail=True)

    @flow
    def f() -> None:
        with transaction():
            a()
            b()
            boom()

    with pytest.raises(ValueError, match="boom failed"):
        f()
    assert log == ["rollback b", "rollback a"]


async def test_submitted_tasks_join_the_transaction_they_were_submitted_in() -> None:
    log: list[str] = []
    a = _recording_task(log, "a")

    @flow
    async def f() -> None:
        with transaction():
            await a.submit()
            raise RuntimeError("abort")

    async with Runtime(store="memory://"):
        with pytest.raises(RuntimeError, match="abort"):
            await f()
    assert log == ["rollback a"]


def test_a_rolled_back_result_is_not_cached(tmp_path: Path) -> None:
    calls: list[int] = []

    @task(cache_policy=INPUTS, result_storage=str(tmp_path))
    def work(x: int) -> int:
        calls.append(x)
        return x

    @flow
    def f(fail: bool) -> int:
        with transaction():
            value = work(5)
            if fail:
                raise ValueError("later failure")
        return value

    with pytest.raises(ValueError):
        f(True)
    assert f(False) == 5
    assert calls == [5, 5]


def test_transaction_values_and_state() -> None:
    with transaction(key="outer") as outer:
        outer.set("who", "ada")
        with transaction() as inner:
            assert get_transaction() is inner
            assert inner.get("who") == "ada"
            assert inner.get("missing", None) is None
            with pytest.raises(ValueError, match="missing"):
                inner.get("missing")
        assert inner.is_staged()
    assert outer.is_committed() and inner.is_committed()
    assert get_transaction() is None


def test_a_hook_that_raises_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[str] = []
    txn = Transaction()

    def bad(t: Transaction) -> None:
        raise RuntimeError("hook broke")

    txn.stage(1, on_commit=[bad, lambda t: seen.append("second")])
    assert seen == ["second"]
    assert "hook broke" in caplog.text


# -- a task run's own transaction -------------------------------------------------------


def _runs_by_name(rt: Runtime) -> dict[str, Any]:
    runs = task_runs_of(rt, only_flow_run(rt).id)
    return {run.name: run for run in runs}


def test_a_task_body_hands_values_to_its_own_commit_hooks(sync_runtime: Runtime) -> None:
    seen: list[Any] = []

    @task
    def write(rows: int) -> int:
        txn = get_transaction()
        assert txn is not None
        txn.set("rows", rows)
        return rows

    @write.on_commit
    def committed(txn: Transaction) -> None:
        seen.append(("commit", txn.get("rows"), txn.is_committed()))

    @flow
    def f() -> int:
        assert get_transaction() is None
        return write(3) + write.submit(4).result()  # type: ignore[no-any-return]

    assert f() == 7
    assert sorted(seen) == [("commit", 3, True), ("commit", 4, True)]
    states = [run.state for run in _runs_by_name(sync_runtime).values()]
    assert [(s.type.value, s.name) for s in states] == [("COMPLETED", "Completed")] * 2


def test_a_later_failure_rolls_back_and_records_rolled_back(sync_runtime: Runtime) -> None:
    seen: list[Any] = []

    @task
    def write(table: str) -> str:
        get_transaction().set("table", table)  # type: ignore[union-attr]
        return table

    @write.on_rollback
    def undo(txn: Transaction) -> None:
        seen.append(("rollback", txn.get("table"), txn.get("batch")))

    @flow
    def f() -> None:
        with transaction() as txn:
            txn.set("batch", 7)
            write("a")
            write.submit("b").wait()
            raise RuntimeError("publishing failed")

    with pytest.raises(RuntimeError, match=r"^publishing failed$"):
        f()
    assert seen == [("rollback", "b", 7), ("rollback", "a", 7)]
    runs = _runs_by_name(sync_runtime)
    for run in runs.values():
        assert run.state.type.value == "COMPLETED"
        assert run.state.name == "RolledBack"
        assert run.state.message == "Task rolled back as part of transaction"
        assert state_names(sync_runtime, run)[-2:] == ["Completed", "RolledBack"]


async def test_an_async_task_rolled_back_records_rolled_back() -> None:
    seen: list[Any] = []

    @task
    async def write(table: str) -> str:
        get_transaction().set("table", table)  # type: ignore[union-attr]
        return table

    @write.on_rollback
    def undo(txn: Transaction) -> None:
        seen.append(txn.get("table"))

    @task
    async def kept() -> str:
        return "kept"

    @flow
    async def f() -> None:
        await kept()
        with transaction():
            await write("a")
            await write.submit("b")
            raise RuntimeError("publishing failed")

    async with Runtime(store="memory://") as rt:
        with pytest.raises(RuntimeError, match=r"^publishing failed$"):
            await f()
        runs = _runs_by_name(rt)
    assert seen == ["b", "a"]
    names = sorted((name.split("-")[0], run.state.name) for name, run in runs.items())
    assert names == [("kept", "Completed"), ("write", "RolledBack"), ("write", "RolledBack")]


async def test_tasks_called_in_a_task_body_see_its_values_and_join_its_transaction() -> None:
    log: list[str] = []

    @task
    async def inner() -> str:
        txn = get_transaction()
        assert txn is not None
        log.append(f"inner sees {txn.get('owner')}")
        return "inner"

    @inner.on_commit
    def inner_committed(txn: Transaction) -> None:
        log.append("commit inner")

    @task
    def sync_inner() -> str:
        log.append(f"sync inner sees {get_transaction().get('owner')}")  # type: ignore[union-attr]
        return "sync inner"

    @sync_inner.on_commit
    def sync_inner_committed(txn: Transaction) -> None:
        log.append("commit sync inner")

    @task
    async def outer() -> list[str]:
        get_transaction().set("owner", "outer")  # type: ignore[union-attr]
        first = await inner()
        second = await anyio.to_thread.run_sync(sync_inner)
        log.append("outer returns")
        return [first, second]

    @outer.on_commit
    def outer_committed(txn: Transaction) -> None:
        log.append("commit outer")

    @flow
    async def f() -> list[str]:
        return await outer()  # type: ignore[no-any-return]

    async with Runtime(store="memory://"):
        assert await f() == ["inner", "sync inner"]
    assert log == [
        "inner sees outer",
        "sync inner sees outer",
        "outer returns",
        "commit inner",
        "commit sync inner",
        "commit outer",
    ]


def test_a_failed_attempt_rolls_back_what_it_called(sync_runtime: Runtime) -> None:
    log: list[str] = []
    attempts: list[int] = []

    @task
    def step() -> str:
        return "step"

    @step.on_commit
    def committed(txn: Transaction) -> None:
        log.append("commit step")

    @step.on_rollback
    def rolled_back(txn: Transaction) -> None:
        log.append("rollback step")

    @task(retries=1)
    def outer() -> str:
        step()
        attempts.append(1)
        if len(attempts) == 1:
            raise ValueError("first attempt fails")
        return "done"

    @flow
    def f() -> str:
        return outer()  # type: ignore[no-any-return]

    assert f() == "done"
    assert log == ["rollback step", "commit step"]
    runs = sorted(
        (run.name.split("-")[0], run.state.name) for run in _runs_by_name(sync_runtime).values()
    )
    assert runs == [("outer", "Completed"), ("step", "Completed"), ("step", "RolledBack")]


def test_a_task_body_reads_the_enclosing_transaction_values(sync_runtime: Runtime) -> None:
    @task
    def read() -> Any:
        txn = get_transaction()
        assert txn is not None and txn.is_active()
        return txn.get("tenant"), txn.parent is not None and txn.parent.key == "batch"

    @flow
    def f() -> Any:
        with transaction(key="batch") as txn:
            txn.set("tenant", "acme")
            return read()

    assert f() == ("acme", True)


async def test_a_bad_result_option_fails_the_run_once_without_calling_it() -> None:
    calls: list[int] = []
    states: list[Any] = []

    @task(result_serializer="no-such-serializer", retries=2)
    async def work() -> int:
        calls.append(1)
        return 1

    @flow
    async def f() -> None:
        states.append(await work(return_state=True))

    async with Runtime(store="memory://") as runtime:
        await f()
        (state,) = states
        history = [
            s.name
            for s in runtime.backend.read_state_history("task", state.state_details.task_run_id)
        ]
    assert state.is_failed() and "could not start" in state.message
    assert "no-such-serializer" in state.message
    assert calls == []
    assert history == ["Pending", "Failed"]
