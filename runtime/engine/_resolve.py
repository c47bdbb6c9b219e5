"""Finding futures and states inside task arguments, and replacing them with results.

Arguments are searched recursively through lists, tuples, sets, dicts, dataclass
instances, pydantic models (as Prefect's ``visit_collection`` does) and the annotations of
:mod:`runtime.annotations`; :class:`~runtime.annotations.quote` stops the
search. Plain scalars, the common case, are passed through without a look inside.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Awaitable, Callable

import pydantic

from ..core._annotations import BaseAnnotation, allow_failure, quote
from ..core._exceptions import UpstreamTaskError
from ..core._states import State, state_exception
from ._futures import TaskRunFuture, TaskRunFutureList

__all__ = [
    "collect_upstreams",
    "resolve_parameters",
    "resolve_futures_to_states",
    "wait_for_upstreams",
]

_ATOMS = (int, float, str, bytes, bool, type(None), complex)


def _visit(value: Any, fn: Callable[[Any], Any]) -> Any:
    """Return ``value`` with every future/state (and quote) replaced by ``fn(item)``."""
    if isinstance(value, _ATOMS):
        return value
    if isinstance(value, (TaskRunFuture, State, BaseAnnotation)):
        return fn(value)
    kind = type(value)
    if kind is list:
        return [_visit(item, fn) for item in value]
    if isinstance(value, list):  # a subclass, e.g. the futures task.map() returns
        return _visit_list_subclass(value, fn)
    if kind is tuple:
        return tuple(_visit(item, fn) for item in value)
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return kind(*(_visit(item, fn) for item in value))
    if kind in (set, frozenset):
        return kind(_visit(item, fn) for item in value)
    if kind is dict:
        return {_visit(k, fn): _visit(v, fn) for k, v in value.items()}
    if isinstance(value, pydantic.BaseModel):
        return _visit_model(value, fn)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _visit_dataclass(value, fn)
    return value


def _visit_dataclass(value: Any, fn: Callable[[Any], Any]) -> Any:
    """A dataclass instance, rebuilt through its ``__init__`` when a field changed (as
    Prefect does; one whose ``__init__`` was not generated is left as it is)."""
    if not value.__dataclass_params__.init:
        return value
    fields = [field for field in dataclasses.fields(value) if field.init]
    old = {field.name: getattr(value, field.name) for field in fields}
    new = {name: _visit(item, fn) for name, item in old.items()}
    if all(new[name] is old[name] for name in old):
        return value
    return type(value)(**new)


def _visit_model(value: pydantic.BaseModel, fn: Callable[[Any], Any]) -> Any:
    """A pydantic model, copied without validation when a field changed (as Prefect does)."""
    names = set(value.model_fields_set) | set(type(value).model_fields)
    old = {name: getattr(value, name) for name in names}
    new = {name: _visit(item, fn) for name, item in old.items()}
    if all(new[name] is old[name] for name in old):
        return value
    copy = type(value).model_construct(_fields_set=value.model_fields_set, **new)
    for name in value.__private_attributes__:
        with contextlib.suppress(AttributeError):
            setattr(copy, name, getattr(value, name))
    return copy


def _visit_list_subclass(value: list[Any], fn: Callable[[Any], Any]) -> Any:
    items = [_visit(item, fn) for item in value]
    if isinstance(value, TaskRunFutureList):
        return items  # no longer futures: a plain list
    if all(new is old for new, old in zip(items, value)):
        return value
    try:
        return type(value)(items)
    except Exception:  # a subclass whose constructor takes something else
        return items


def collect_upstreams(value: Any) -> list[TaskRunFuture[Any] | State[Any]]:
    """Return the futures and run states found in ``value`` (not inside ``quote``)."""
    found: list[Any] = []

    def note(item: Any) -> Any:
        if isinstance(item, quote):
            return item
        if isinstance(item, BaseAnnotation):
            _visit(item.unwrap(), note)
        else:
            found.append(item)
        return item

    _visit(value, note)
    return found


Wait = Callable[[list[Any]], Awaitable[None]]
"""Waits until every future of a list is done (a driver's ``wait_for``)."""


async def _wait_async(futures: list[Any]) -> None:
    for future in futures:
        await future.wait_async()


async def _settle(upstreams: list[Any], wait: Wait) -> None:
    futures = [item for item in upstreams if isinstance(item, TaskRunFuture) and not item.done()]
    if futures:
        await wait(futures)


def _final_state(item: TaskRunFuture[Any] | State[Any]) -> State[Any]:
    return item.state if isinstance(item, TaskRunFuture) else item


def _upstream_error(item: TaskRunFuture[Any] | State[Any]) -> UpstreamTaskError:
    """The error of a run whose upstream ``item`` did not complete: it names the upstream
    run, says what state it is in, and carries the upstream's exception as its cause."""
    state = _final_state(item)
    if isinstance(item, TaskRunFuture):
        run_id, subject = item.task_run_id, f"task run {item.task_run.name!r}"
    else:
        run_id, subject = state.state_details.task_run_id, "it"
    error = UpstreamTaskError(
        f"Upstream task run '{run_id}' did not reach a 'COMPLETED' state: {subject} is "
        f"{state}. Fix the upstream failure, or pass the upstream wrapped in allow_failure() "
        "to run anyway."
    )
    if state.is_final() or isinstance(state.data, BaseException):
        error.__cause__ = state_exception(state)
    return error


async def resolve_parameters(
    parameters: dict[str, Any], wait: Wait = _wait_async
) -> dict[str, Any]:
    """Wait for the futures in ``parameters`` and replace futures and states with results.

    ``allow_failure(x)`` yields x's exception if it failed; ``quote(x)`` yields x untouched.

    Raises:
        UpstreamTaskError: an upstream run did not complete (and was not allow_failure'd).
    """
    if all(isinstance(v, _ATOMS) for v in parameters.values()):
        return parameters
    await _settle(collect_upstreams(parameters), wait)

    def resolve(item: Any, tolerate: bool = False) -> Any:
        if isinstance(item, quote):
            return item.unwrap()
        if isinstance(item, allow_failure):
            return _visit(item.unwrap(), lambda inner: resolve(inner, tolerate=True))
        if isinstance(item, BaseAnnotation):
            return _visit(item.unwrap(), lambda inner: resolve(inner, tolerate))
        state = _final_state(item)
        if state.is_completed():
            return state.result()
        if tolerate and state.is_final():
            return state.result(raise_on_failure=False)
        raise _upstream_error(item)

    return {name: _visit(value, resolve) for name, value in parameters.items()}


async def wait_for_upstreams(wait_for: Any, wait: Wait = _wait_async) -> None:
    """Wait for the ``wait_for`` futures; each must complete unless ``allow_failure``'d.

    Raises:
        UpstreamTaskError: one of them did not complete.
    """
    if not wait_for:
        return
    upstreams = collect_upstreams(list(wait_for))
    await _settle(upstreams, wait)
    tolerated = {
        id(item)
        for item in collect_upstreams(
            [w.unwrap() for w in wait_for if isinstance(w, allow_failure)]
        )
    }
    for item in upstreams:
        state = _final_state(item)
        if state.is_completed() or (id(item) in tolerated and state.is_final()):
            continue
        raise _upstream_error(item)


async def resolve_futures_to_states(value: Any) -> Any:
    """Return ``value`` with each future replaced by its final state (waiting for it)."""
    if isinstance(value, _ATOMS):
        return value
    await _settle(collect_upstreams(value), _wait_async)
    return _visit(
        value, lambda item: _final_state(item) if isinstance(item, TaskRunFuture) else item
    )
