"""Flow parameters: binding, validation and coercion, serialization; run names."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest
from engine_support import isolated_home, only_flow_run, task_runs_of  # noqa: F401

from runtime import ParameterTypeError, Runtime, flow, get_run_context, task
from runtime.core._exceptions import ParameterBindError


class Point(pydantic.BaseModel):
    x: int
    y: int


# -- validation ----------------------------------------------------------------------------


def test_parameters_are_coerced_to_annotations() -> None:
    @flow
    def typed(n: int, ratio: float, point: Point, names: list[str]) -> tuple[Any, ...]:
        return n, ratio, point, names

    n, ratio, point, names = typed("1", "0.5", {"x": "1", "y": 2}, ("a",))
    assert (n, ratio, names) == (1, 0.5, ["a"])
    assert point == Point(x=1, y=2)


def test_validation_can_be_turned_off() -> None:
    @flow(validate_parameters=False)
    def untyped(n: int) -> Any:
        return n

    assert untyped("1") == "1"


async def test_invalid_parameters_fail_the_run() -> None:
    ran: list[bool] = []

    @flow
    async def typed(n: int, m: int = 0) -> None:
        ran.append(True)

    async with Runtime(store="memory://") as rt:
        with pytest.raises(ParameterTypeError) as info:
            await typed("not a number")
        run = only_flow_run(rt)
    assert ran == []
    assert str(info.value).startswith(
        "Flow run received invalid parameters:\n - n: Input should be a valid integer"
    )
    assert isinstance(info.value, TypeError)
    assert run.state is not None and run.state.is_failed()
    assert run.state.message is not None
    assert run.state.message.startswith(
        "Validation of flow parameters failed with error: ParameterTypeError: "
        "Flow run received invalid parameters:\n - n:"
    )
    assert run.run_count == 0  # the body never ran


def test_invalid_parameters_with_return_state() -> None:
    @flow
    def typed(n: int) -> None:
        pass

    state = typed("x", return_state=True)
    assert state.is_failed()
    with pytest.raises(ParameterTypeError, match="n: Input should be a valid integer"):
        state.result()


def test_every_bad_parameter_is_named() -> None:
    @flow
    def typed(a: int, b: int, c: str) -> None:
        pass

    with pytest.raises(ParameterTypeError) as info:
        typed("x", "y", "fine")
    message = str(info.value)
    assert "\n - a: " in message and "\n - b: " in message and " - c:" not in message


def test_arguments_that_do_not_bind_raise_before_any_run() -> None:
    @flow
    def two(a: int, b: int) -> None:
        pass

    with pytest.raises(ParameterBindError, match=r"^Error binding parameters for function 'two'"):
        two(1, 2, 3)
    with pytest.raises(ParameterBindError):
        two(1, c=3)


async def test_bind_error_leaves_no_run_behind() -> None:
    @flow
    async def two(a: int, b: int) -> None:
        pass

    async with Runtime(store="memory://") as rt:
        with pytest.raises(ParameterBindError):
            await two(1)
        assert rt.backend is not None and rt.backend.read_flow_runs() == []


def test_variadic_parameters() -> None:
    @flow
    def variadic(first: int, *rest: int, **options: str) -> tuple[Any, ...]:
        return first, rest, options

    assert variadic("1", 2, "3", mode="fast") == (1, (2, 3), {"mode": "fast"})


def test_validate_and_serialize_parameters_methods() -> None:
    @flow
    def typed(n: int, point: Point, thing: object = None) -> None:
        pass

    assert typed.validate_parameters({"n": "2", "point": {"x": 1, "y": 1}}) == {
        "n": 2,
        "point": Point(x=1, y=1),
    }
    with pytest.raises(ParameterTypeError):
        typed.validate_parameters({"n": "two", "point": {"x": 1, "y": 1}})
    serialized = typed.serialize_parameters({"n": 2, "point": Point(x=1, y=1), "thing": object()})
    assert serialized == {"n": 2, "point": {"x": 1, "y": 1}, "thing": "<object>"}


async def test_run_records_serialized_parameters() -> None:
    @flow
    async def typed(n: int, point: Point) -> None:
        pass

    async with Runtime(store="memory://") as rt:
        await typed(1, Point(x=1, y=2))
        run = only_flow_run(rt)
    assert run.parameters == {"n": 1, "point": {"x": 1, "y": 2}}


# -- run names -----------------------------------------------------------------------------


async def test_flow_run_name_template() -> None:
    names: list[str] = []

    @flow(flow_run_name="report-{day}-{n}")
    async def report(day: str, n: int = 1) -> None:
        names.append(get_run_context().flow_run.name)  # type: ignore[union-attr]

    async with Runtime(store="memory://") as rt:
        await report("monday")
        run = only_flow_run(rt)
    assert names == ["report-monday-1"]
    assert run.name == "report-monday-1"


def test_flow_run_name_callable() -> None:
    names: list[str] = []

    def make_name() -> str:
        return "from-callable"

    def from_parameters(parameters: dict[str, Any]) -> str:
        return f"n-is-{parameters['n']}"

    @flow(flow_run_name=make_name)
    def plain() -> None:
        names.append(get_run_context().flow_run.name)  # type: ignore[union-attr]

    @flow(flow_run_name=from_parameters)
    def with_parameters(n: int) -> None:
        names.append(get_run_context().flow_run.name)  # type: ignore[union-attr]

    plain()
    with_parameters(7)
    assert names == ["from-callable", "n-is-7"]


def test_generated_flow_run_names_look_like_adjective_animal() -> None:
    names: list[str] = []

    @flow
    def anonymous() -> None:
        names.append(get_run_context().flow_run.name)  # type: ignore[union-attr]

    anonymous()
    anonymous()
    assert all(len(name.split("-")) == 2 for name in names), names


def test_flow_run_name_callable_must_return_a_string() -> None:
    @flow(flow_run_name=lambda: 42)
    def badly_named() -> None:
        pass

    with pytest.raises(TypeError, match="returned type int but a string is required"):
        badly_named()


def test_bad_run_name_options_are_refused_at_decoration() -> None:
    with pytest.raises(TypeError, match="Expected string or callable for 'flow_run_name'"):
        flow(flow_run_name=3)(lambda: None)
    with pytest.raises(TypeError, match="Expected string or callable for 'task_run_name'"):
        task(task_run_name=3)(lambda: None)


async def test_task_run_name_template_and_callable() -> None:
    seen: list[str] = []

    def from_context() -> str:
        return f"ctx-{get_run_context().parameters['item']}"

    @task(task_run_name="item-{item}")
    async def templated(item: str) -> None:
        seen.append(get_run_context().task_run.name)  # type: ignore[union-attr]

    @task(task_run_name=from_context)
    async def called(item: str) -> None:
        seen.append(get_run_context().task_run.name)  # type: ignore[union-attr]

    @flow
    async def pipeline() -> None:
        await templated("a")
        await templated.submit("b")
        await called("c")

    async with Runtime(store="memory://") as rt:
        await pipeline()
        runs = task_runs_of(rt, only_flow_run(rt).id)
    assert seen == ["item-a", "item-b", "ctx-c"]
    assert sorted(r.name for r in runs) == ["ctx-c", "item-a", "item-b"]


def test_task_run_name_with_mapped_parameters() -> None:
    seen: list[str] = []

    @task(task_run_name="square-{x}")
    def square(x: int) -> int:
        seen.append(get_run_context().task_run.name)  # type: ignore[union-attr]
        return x * x

    @flow
    def pipeline() -> list[int]:
        return square.map([1, 2, 3]).result()  # type: ignore[no-any-return]

    assert pipeline() == [1, 4, 9]
    assert sorted(seen) == ["square-1", "square-2", "square-3"]


def test_default_task_run_names() -> None:
    seen: list[str] = []

    @task
    def step() -> None:
        seen.append(get_run_context().task_run.name)  # type: ignore[union-attr]

    @flow
    def pipeline() -> None:
        step()
        step()

    pipeline()
    assert seen == ["step-0", "step-1"]
