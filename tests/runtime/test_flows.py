"""Flows: calling sync and async flows, their final states and what a call returns."""

from __future__ import annotations

from typing import Any

import pytest
from engine_support import isolated_home, only_flow_run, state_history, task_runs_of  # noqa: F401

from runtime import Flow, Runtime, State, StateType, flow, task
from runtime import states as S
from runtime.core._exceptions import FailedRun


class Boom(ValueError):
    pass


@task
def succeed(x: int = 1) -> int:
    return x


@task
def explode(message: str = "boom") -> int:
    raise Boom(message)


@task
async def async_succeed(x: int = 1) -> int:
    return x


@task
async def async_explode(message: str = "boom") -> int:
    raise Boom(message)


# -- sync flows --------------------------------------------------------------------


def test_sync_flow_returns_its_value() -> None:
    @flow
    def add(x: int, y: int) -> int:
        return x + y

    assert add(1, 2) == 3
    assert add(x=1, y=5) == 6


def test_sync_flow_return_state_gives_the_completed_state() -> None:
    @flow
    def answer() -> int:
        return 42

    state = answer(return_state=True)
    assert isinstance(state, State)
    assert state.type is StateType.COMPLETED
    assert state.name == "Completed"
    assert state.result() == 42


def test_sync_flow_exception_raises_on_call() -> None:
    @flow
    def broken() -> None:
        raise Boom("bad flow")

    with pytest.raises(Boom, match=r"^bad flow$"):
        broken()


def test_sync_flow_exception_with_return_state_gives_failed_state() -> None:
    @flow
    def broken() -> None:
        raise Boom("bad flow")

    state = broken(return_state=True)
    assert state.is_failed()
    assert state.name == "Failed"
    assert state.message == "Flow run encountered an exception: Boom: bad flow"
    with pytest.raises(Boom, match=r"^bad flow$"):
        state.result()
    exc = state.result(raise_on_failure=False)
    assert isinstance(exc, Boom)


def test_sync_flow_without_return_gives_none() -> None:
    @flow
    def nothing() -> None:
        succeed(3)

    assert nothing() is None
    assert nothing(return_state=True).is_completed()


def test_default_flow_name_is_function_name_with_dashes() -> None:
    @flow
    def my_nice_flow() -> None:
        pass

    assert my_nice_flow.name == "my-nice-flow"
    assert isinstance(my_nice_flow, Flow)
    assert flow(name="explicit_name")(lambda: None).name == "explicit_name"


def test_with_options_returns_a_changed_copy() -> None:
    @flow
    def base() -> int:
        return 1

    other = base.with_options(name="other", retries=2)
    assert (other.name, other.retries) == ("other", 2)
    assert (base.name, base.retries) == ("base", 0)
    assert other() == 1
    with pytest.raises(TypeError, match="unknown flow options"):
        base.with_options(nope=1)


# -- async flows -------------------------------------------------------------------


async def test_async_flow_returns_its_value() -> None:
    @flow
    async def add(x: int, y: int) -> int:
        return x + y

    async with Runtime(store="memory://") as rt:
        assert await add(2, 3) == 5
        run = only_flow_run(rt)
        history = state_history(rt, run)
    assert run.state is not None and run.state.is_completed()
    assert run.flow_name == "add"
    assert run.parameters == {"x": 2, "y": 3}
    assert run.run_count == 1
    assert [s.type for s in history] == [
        StateType.PENDING,
        StateType.RUNNING,
        StateType.COMPLETED,
    ]


async def test_async_flow_without_open_runtime() -> None:
    @flow
    async def add(x: int, y: int) -> int:
        return x + y

    assert await add(2, 3) == 5
    state = await add(2, 3, return_state=True)
    assert state.is_completed() and state.result() == 5


async def test_async_flow_exception_raises_on_call() -> None:
    @flow
    async def broken() -> None:
        raise Boom("bad async flow")

    async with Runtime(store="memory://") as rt:
        with pytest.raises(Boom, match=r"^bad async flow$"):
            await broken()
        run = only_flow_run(rt)
    assert run.state is not None and run.state.is_failed()


async def test_async_flow_exception_with_return_state() -> None:
    @flow
    async def broken() -> None:
        raise Boom("bad async flow")

    async with Runtime(store="memory://"):
        state = await broken(return_state=True)
    assert state.is_failed()
    assert isinstance(state.result(raise_on_failure=False), Boom)


# -- what the flow returns decides its state -----------------------------------------


async def test_flow_returning_a_completed_state_returns_its_data() -> None:
    @flow
    async def returns_state() -> Any:
        return S.Completed(data="payload", message="done by hand")

    async with Runtime(store="memory://") as rt:
        assert await returns_state() == "payload"
        run = only_flow_run(rt)
    assert run.state is not None
    assert run.state.is_completed() and run.state.message == "done by hand"


async def test_flow_returning_a_failed_state_fails() -> None:
    @flow
    async def returns_failed() -> Any:
        return S.Failed(message="chose to fail")

    async with Runtime(store="memory://") as rt:
        with pytest.raises(FailedRun, match=r"^chose to fail$"):
            await returns_failed()
        state = await returns_failed(return_state=True)
        assert state.is_failed() and state.message == "chose to fail"
        runs = rt.backend.read_flow_runs()  # type: ignore[union-attr]
    assert all(run.state is not None and run.state.is_failed() for run in runs)


def test_sync_flow_returning_a_failed_state_fails() -> None:
    @flow
    def returns_failed() -> Any:
        return S.Failed(message="chose to fail")

    state = returns_failed(return_state=True)
    assert state.is_failed()
    with pytest.raises(FailedRun):
        returns_failed()


async def test_flow_returning_a_failed_future_fails_with_its_exception() -> None:
    @flow
    async def returns_future() -> Any:
        return async_explode.submit("from the future")

    async with Runtime(store="memory://"):
        with pytest.raises(Boom, match=r"^from the future$"):
            await returns_future()
        state = await returns_future(return_state=True)
    assert state.is_failed()


def test_sync_flow_returning_a_failed_future_fails() -> None:
    @flow
    def returns_future() -> Any:
        return explode.submit("sync future")

    with pytest.raises(Boom, match=r"^sync future$"):
        returns_future()


def test_flow_returning_a_completed_future_returns_its_state() -> None:
    # As in Prefect: the future is resolved to its final state, which decides the flow's
    # state; the call returns that task run state (whose result is the task's).
    @flow
    def returns_future() -> Any:
        return succeed.submit(7)

    returned = returns_future()
    assert isinstance(returned, State) and returned.is_completed()
    assert returned.result() == 7
    assert returns_future(return_state=True).is_completed()


async def test_flow_returning_a_collection_holding_a_failed_future_fails() -> None:
    @flow
    async def returns_many() -> Any:
        return [async_succeed.submit(1), async_explode.submit("one of two")]

    async with Runtime(store="memory://"):
        state = await returns_many(return_state=True)
        assert state.is_failed()
        assert state.message == "1/2 states failed."
        with pytest.raises(Boom, match=r"^one of two$"):
            await returns_many()


async def test_flow_returning_a_collection_of_completed_futures_completes() -> None:
    @flow
    async def returns_many() -> Any:
        return (async_succeed.submit(1), async_succeed.submit(2))

    async with Runtime(store="memory://"):
        state = await returns_many(return_state=True)
    assert state.is_completed()
    states = state.result()
    assert [s.result() for s in states] == [1, 2]


async def test_unreturned_failed_future_does_not_fail_the_flow() -> None:
    @flow
    async def ignores_failure() -> str:
        async_explode.submit("ignored")
        return "fine"

    async with Runtime(store="memory://") as rt:
        assert await ignores_failure() == "fine"
        run = only_flow_run(rt)
        (task_run,) = task_runs_of(rt, run.id)
    assert run.state is not None and run.state.is_completed()
    # The flow waited for the submitted run before it finished.
    assert task_run.state is not None and task_run.state.is_failed()


def test_sync_flow_unreturned_failed_future_does_not_fail_the_flow() -> None:
    @flow
    def ignores_failure() -> str:
        explode.submit("ignored")
        return "fine"

    assert ignores_failure() == "fine"


async def test_failed_task_call_fails_the_flow() -> None:
    @flow
    async def calls_failing_task() -> None:
        await async_explode("called")

    async with Runtime(store="memory://") as rt:
        with pytest.raises(Boom, match=r"^called$"):
            await calls_failing_task()
        run = only_flow_run(rt)
        (task_run,) = task_runs_of(rt, run.id)
    assert run.state is not None and run.state.is_failed()
    assert task_run.state is not None and task_run.state.is_failed()


async def test_flow_catching_a_task_failure_completes() -> None:
    @flow
    async def catches() -> str:
        try:
            await async_explode("caught")
        except Boom as exc:
            return f"caught {exc}"
        return "not reached"

    async with Runtime(store="memory://") as rt:
        assert await catches() == "caught caught"
        run = only_flow_run(rt)
    assert run.state is not None and run.state.is_completed()


def test_flow_as_a_method() -> None:
    class Greeter:
        def __init__(self, greeting: str) -> None:
            self.greeting = greeting

        @flow
        def greet(self, name: str) -> str:
            return f"{self.greeting}, {name}"

    assert Greeter("hello").greet("you") == "hello, you"


# -- flows as methods ----------------------------------------------------------------


class Reporter:
    prefix = "class"

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    @flow
    def plain(self, name: str) -> str:
        return f"{self.prefix}:{name}"

    @classmethod
    @flow
    def class_over_flow(cls, name: str) -> str:
        return f"{cls.prefix}:{name}"

    @flow
    @classmethod
    def flow_over_class(cls, name: str) -> str:
        return f"{cls.prefix}:{name}"

    @staticmethod
    @flow
    def static_over_flow(name: str) -> str:
        return f"static:{name}"

    @flow
    @staticmethod
    def flow_over_static(name: str) -> str:
        return f"static:{name}"

    @flow
    async def async_plain(self, name: str) -> str:
        return f"{self.prefix}:{name}"

    @flow
    @classmethod
    async def async_flow_over_class(cls, name: str) -> str:
        return f"{cls.prefix}:{name}"

    @staticmethod
    @flow
    async def async_static_over_flow(name: str) -> str:
        return f"static:{name}"


class LoudReporter(Reporter):
    prefix = "LOUD"


def _reported(name: str, arg: str) -> str:
    if "static" in name:
        return f"static:{arg}"
    return f"{'LOUD' if 'class' in name else 'mine'}:{arg}"


@pytest.mark.parametrize(
    "name",
    ["plain", "class_over_flow", "flow_over_class", "static_over_flow", "flow_over_static"],
)
def test_sync_flow_methods(name: str, sync_runtime: Runtime) -> None:
    method = getattr(LoudReporter("mine"), name)
    assert method("a") == _reported(name, "a")
    assert method.with_options(name=f"renamed-{name}")("b") == _reported(name, "b")
    state = method("c", return_state=True)
    assert state.is_completed() and state.result() == _reported(name, "c")
    runs = sync_runtime.backend.read_flow_runs()  # type: ignore[union-attr]
    assert sorted(run.parameters["name"] for run in runs) == ["a", "b", "c"]
    assert all(set(run.parameters) == {"name"} for run in runs)
    assert sum(run.flow_name == f"renamed-{name}" for run in runs) == 1


@pytest.mark.parametrize("name", ["async_plain", "async_flow_over_class", "async_static_over_flow"])
async def test_async_flow_methods(name: str) -> None:
    method = getattr(LoudReporter("mine"), name)
    async with Runtime(store="memory://") as rt:
        assert await method("a") == _reported(name, "a")
        assert await method.with_options(name="renamed")("b") == _reported(name, "b")
        runs = rt.backend.read_flow_runs()  # type: ignore[union-attr]
    assert sorted(run.parameters["name"] for run in runs) == ["a", "b"]


def test_flow_methods_as_subflows_and_on_the_class(sync_runtime: Runtime) -> None:
    @flow
    def parent() -> list[str]:
        reporter = LoudReporter("mine")
        return [
            reporter.plain("a"),
            LoudReporter.class_over_flow("b"),
            LoudReporter.flow_over_class("c"),
            LoudReporter.flow_over_static("d"),
        ]

    assert parent() == ["mine:a", "LOUD:b", "LOUD:c", "static:d"]
    assert LoudReporter.flow_over_class.description is None
