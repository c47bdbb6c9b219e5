"""Tasks: calling sync and async tasks inside and outside flows."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from engine_support import isolated_home, only_flow_run, task_runs_of  # noqa: F401

from runtime import Runtime, State, Task, flow, get_run_context, task
from runtime.core._exceptions import ParameterBindError


class Boom(ValueError):
    pass


@task
def double(x: int) -> int:
    return 2 * x


@task
async def async_double(x: int) -> int:
    return 2 * x


@task
def explode() -> None:
    raise Boom("task boom")


@task
async def async_explode() -> None:
    raise Boom("async task boom")


# -- outside flows -------------------------------------------------------------------


def test_sync_task_called_outside_a_flow() -> None:
    assert double(4) == 8
    state = double(4, return_state=True)
    assert isinstance(state, State) and state.is_completed() and state.result() == 8


def test_sync_task_outside_a_flow_raises_its_exception() -> None:
    with pytest.raises(Boom, match=r"^task boom$"):
        explode()
    state = explode(return_state=True)
    assert state.is_failed()
    assert state.message == "Task run encountered an exception Boom: task boom"


async def test_async_task_called_outside_a_flow() -> None:
    async with Runtime(store="memory://") as rt:
        assert await async_double(5) == 10
        (task_run,) = task_runs_of(rt, None)
    assert task_run.flow_run_id is None
    assert task_run.state is not None and task_run.state.is_completed()
    assert task_run.name.startswith("async_double-")


async def test_async_task_outside_a_flow_without_runtime() -> None:
    assert await async_double(5) == 10
    with pytest.raises(Boom):
        await async_explode()
    state = await async_explode(return_state=True)
    assert state.is_failed()


def test_submit_outside_a_flow_is_refused() -> None:
    with pytest.raises(RuntimeError, match="outside of a flow"):
        double.submit(1)


# -- inside flows --------------------------------------------------------------------


def test_sync_tasks_in_a_sync_flow() -> None:
    @flow
    def pipeline(x: int) -> int:
        return double(double(x))

    assert pipeline(3) == 12


async def test_async_tasks_in_an_async_flow() -> None:
    @flow
    async def pipeline(x: int) -> int:
        return await async_double(await async_double(x))

    async with Runtime(store="memory://") as rt:
        assert await pipeline(3) == 12
        run = only_flow_run(rt)
        task_runs = task_runs_of(rt, run.id)
    assert [t.dynamic_key for t in task_runs] == ["0", "1"]
    assert all(t.state is not None and t.state.is_completed() for t in task_runs)
    assert all(t.flow_run_id == run.id for t in task_runs)
    # A plain value (the awaited result) is not an upstream link; a future would be.
    assert task_runs[1].task_inputs == {"x": []}


async def test_sync_task_in_an_async_flow() -> None:
    @flow
    async def pipeline(x: int) -> int:
        return double(x) + await async_double(x)

    async with Runtime(store="memory://") as rt:
        assert await pipeline(3) == 12
        run = only_flow_run(rt)
        task_runs = task_runs_of(rt, run.id)
    # The sync task's run lands in the same store, under the same flow run.
    assert sorted(t.name.split("-")[0] for t in task_runs) == ["async_double", "double"]


async def test_task_return_state_inside_a_flow() -> None:
    @flow
    async def pipeline() -> tuple[State[Any], State[Any]]:
        ok = await async_double(1, return_state=True)
        bad = await async_explode(return_state=True)
        return ok, bad

    async with Runtime(store="memory://"):
        state = await pipeline(return_state=True)
    # Returning a failed state fails the flow; the states are its data.
    assert state.is_failed()
    ok, bad = state.result(raise_on_failure=False)
    assert ok.is_completed() and ok.result() == 2
    assert bad.is_failed() and isinstance(bad.result(raise_on_failure=False), Boom)


def test_dynamic_keys_count_calls_per_task() -> None:
    keys: list[str] = []

    @task
    def note() -> None:
        ctx = get_run_context()
        keys.append(ctx.task_run.dynamic_key)  # type: ignore[union-attr]

    @flow
    def pipeline() -> None:
        note()
        note()
        double(1)
        note()

    pipeline()
    assert keys == ["0", "1", "2"]


def test_task_as_a_method() -> None:
    class Counter:
        def __init__(self, start: int) -> None:
            self.start = start

        @task
        def add(self, n: int) -> int:
            return self.start + n

        @task
        async def aadd(self, n: int) -> int:
            return self.start + n

    @flow
    def pipeline() -> int:
        return Counter(10).add(5)  # type: ignore[no-any-return]

    assert isinstance(Counter.add, Task)
    assert pipeline() == 15
    assert Counter(1).add(1) == 2


async def test_async_task_as_a_method() -> None:
    class Counter:
        def __init__(self, start: int) -> None:
            self.start = start

        @task
        async def add(self, n: int) -> int:
            return self.start + n

    @flow
    async def pipeline() -> int:
        counter = Counter(10)
        return await counter.add(5) + await counter.add.submit(1)  # type: ignore[no-any-return]

    async with Runtime(store="memory://"):
        assert await pipeline() == 26


# -- tasks as methods ---------------------------------------------------------------


class Scaler:
    factor = 3

    def __init__(self, offset: int) -> None:
        self.offset = offset

    @task
    def plain(self, x: int) -> Any:
        return self.offset + x, dict(get_run_context().parameters)

    @classmethod
    @task
    def class_over_task(cls, x: int) -> Any:
        return cls.factor * x, dict(get_run_context().parameters)

    @task
    @classmethod
    def task_over_class(cls, x: int) -> Any:
        return cls.factor * x, dict(get_run_context().parameters)

    @staticmethod
    @task
    def static_over_task(x: int) -> Any:
        return -x, dict(get_run_context().parameters)

    @task
    @staticmethod
    def task_over_static(x: int) -> Any:
        return -x, dict(get_run_context().parameters)

    @task
    async def async_plain(self, x: int) -> Any:
        return self.offset + x, dict(get_run_context().parameters)

    @classmethod
    @task
    async def async_class_over_task(cls, x: int) -> Any:
        return cls.factor * x, dict(get_run_context().parameters)

    @task
    @classmethod
    async def async_task_over_class(cls, x: int) -> Any:
        return cls.factor * x, dict(get_run_context().parameters)

    @task
    @staticmethod
    async def async_task_over_static(x: int) -> Any:
        return -x, dict(get_run_context().parameters)


class BiggerScaler(Scaler):
    factor = 5


def _expected(name: str, owner: Any, x: int) -> Any:
    if "static" in name:
        value = -x
    elif "class" in name:
        value = owner.factor * x
    else:
        value = owner.offset + x
    return value, {"x": x}


SYNC_METHODS = [
    "plain",
    "class_over_task",
    "task_over_class",
    "static_over_task",
    "task_over_static",
]
ASYNC_METHODS = [
    "async_plain",
    "async_class_over_task",
    "async_task_over_class",
    "async_task_over_static",
]


@pytest.mark.parametrize("name", SYNC_METHODS)
def test_sync_task_methods_call_submit_map_and_with_options(
    name: str, sync_runtime: Runtime
) -> None:
    scaler = BiggerScaler(10)

    @flow
    def pipeline() -> Any:
        method = getattr(scaler, name)
        renamed = method.with_options(name=f"renamed-{name}")
        return (
            method(1),
            method.submit(2).result(),
            method.map([3, 4]).result(),
            renamed(5),
            method(6, return_state=True).result(),
        )

    owner = scaler if name == "plain" else BiggerScaler
    assert pipeline() == (
        _expected(name, owner, 1),
        _expected(name, owner, 2),
        [_expected(name, owner, 3), _expected(name, owner, 4)],
        _expected(name, owner, 5),
        _expected(name, owner, 6),
    )
    runs = task_runs_of(sync_runtime, only_flow_run(sync_runtime).id)
    assert len(runs) == 6
    assert all(run.state is not None and run.state.is_completed() for run in runs)
    assert sum(run.name.startswith("renamed-") for run in runs) == 1


@pytest.mark.parametrize("name", ["class_over_task", "task_over_class", "task_over_static"])
def test_class_and_static_method_tasks_work_on_the_class(name: str, sync_runtime: Runtime) -> None:
    @flow
    def pipeline() -> Any:
        method = getattr(BiggerScaler, name)
        return method(1), method.submit(2).result(), method.map([3]).result()

    assert pipeline() == (
        _expected(name, BiggerScaler, 1),
        _expected(name, BiggerScaler, 2),
        [_expected(name, BiggerScaler, 3)],
    )


@pytest.mark.parametrize("name", ASYNC_METHODS)
async def test_async_task_methods_call_submit_map_and_with_options(name: str) -> None:
    scaler = BiggerScaler(10)

    @flow
    async def pipeline() -> Any:
        method = getattr(scaler, name)
        renamed = method.with_options(name=f"renamed-{name}")
        return (
            await method(1),
            await method.submit(2),
            [await future for future in method.map([3, 4])],
            await renamed(5),
        )

    owner = scaler if name == "async_plain" else BiggerScaler
    async with Runtime(store="memory://"):
        assert await pipeline() == (
            _expected(name, owner, 1),
            _expected(name, owner, 2),
            [_expected(name, owner, 3), _expected(name, owner, 4)],
            _expected(name, owner, 5),
        )


def test_undocumented_method_tasks_have_no_description() -> None:
    assert BiggerScaler.class_over_task.description is None
    assert BiggerScaler(1).plain.description is None
    assert BiggerScaler.task_over_class.with_options(name="again").description is None


def test_a_method_task_binds_once(sync_runtime: Runtime) -> None:
    scaler = Scaler(1)
    bound = scaler.plain
    assert isinstance(Scaler.plain, Task) and isinstance(bound, Task)
    assert bound.with_options(retries=1)(2) == (3, {"x": 2})
    # The unbound task takes the instance as its first argument, as a function does.
    assert Scaler.plain(scaler, 2) == (3, {"self": scaler, "x": 2})


def test_task_bad_arguments_raise_before_running() -> None:
    @flow
    def pipeline() -> None:
        double(1, 2)

    with pytest.raises(ParameterBindError, match="double"):
        pipeline()


def test_task_options_are_validated_once() -> None:
    def fn() -> None:
        pass

    with pytest.raises(ValueError, match=r"^retries must be >= 0, got -1\.$"):
        task(retries=-1)(fn)
    with pytest.raises(TypeError, match="Expected a list of callables for 'on_failure'"):
        task(on_failure=lambda *a: None)(fn)
    with pytest.raises(ValueError, match="contains an invalid character '/'"):
        task(name="a/b")(fn)
    # A function's own name is not checked: a lambda task is named "<lambda>".
    assert task(lambda: None).name == "<lambda>"
    assert flow(lambda: None).name == "unknown-lambda"


KEY_OF_A_TASK = """
from runtime import task

@task
def squares(n: int) -> list[int]:
    return [i * i for i in range(n)] + list(map(lambda x: x, [n]))

print(squares.task_key)
"""


def test_a_task_key_is_the_same_in_every_process() -> None:
    """A task's key (how a worker finds a queued run's task, and a resumed run its
    finished task runs) does not depend on the process, even for a body holding nested
    code (a comprehension, a lambda), whose code objects print their memory address."""
    keys = {
        subprocess.run(
            [sys.executable, "-c", KEY_OF_A_TASK], capture_output=True, text=True, check=True
        ).stdout.strip()
        for _ in range(2)
    }
    assert len(keys) == 1 and next(iter(keys)).startswith("squares-")


def test_task_with_options() -> None:
    renamed = double.with_options(name="twice", retries=1, tags=["x"])
    assert (renamed.name, renamed.retries, renamed.tags) == ("twice", 1, frozenset({"x"}))
    assert double.name == "double" and double.retries == 0
    assert renamed(2) == 4


def test_tags_reach_task_runs() -> None:
    from runtime import tags

    seen: list[list[str]] = []

    @task(tags=["own"])
    def tagged() -> None:
        seen.append(list(get_run_context().task_run.tags))  # type: ignore[union-attr]

    @flow
    def pipeline() -> None:
        with tags("outer"):
            tagged()
        tagged()

    pipeline()
    assert seen == [["outer", "own"], ["own"]]


def test_tasks_started_from_inside_tasks_belong_to_the_flow_run() -> None:
    @task
    def leaf(x: int) -> int:
        return x * 2

    @task
    def branch(x: int) -> int:
        return leaf(x) + leaf.submit(x).result() + sum(leaf.map([x, x]).result())  # type: ignore[no-any-return]

    @flow
    def pipeline() -> tuple[int, int]:
        return branch.submit(1).result(), branch(2)

    assert pipeline() == (8, 16)


async def test_async_tasks_started_from_inside_submitted_tasks() -> None:
    @task
    async def leaf(x: int) -> int:
        return x * 2

    @task
    async def branch(x: int) -> int:
        return await leaf(x) + await leaf.submit(x)  # type: ignore[no-any-return]

    @flow
    async def pipeline() -> int:
        return await branch.submit(1)  # type: ignore[no-any-return]

    async with Runtime(store="memory://") as rt:
        assert await pipeline() == 4
        run = only_flow_run(rt)
        runs = task_runs_of(rt, run.id)
    assert len(runs) == 3
    assert all(r.flow_run_id == run.id for r in runs)


def test_flow_run_tags() -> None:
    from runtime import tags

    @flow
    def tagged() -> list[str]:
        return get_run_context().flow_run.tags  # type: ignore[union-attr]

    with tags("a", "b"):
        assert tagged() == ["a", "b"]
    assert tagged() == []


def test_task_returning_a_state_takes_it() -> None:
    from runtime import states as S

    @task
    def completes() -> Any:
        return S.Completed(data=5, message="by hand")

    @task
    def fails() -> Any:
        return S.Failed(message="chose to fail")

    @flow
    def pipeline() -> tuple[Any, Any]:
        return completes(), fails(return_state=True)

    value, failed = pipeline()
    assert value == 5
    assert failed.is_failed() and failed.message == "chose to fail"
