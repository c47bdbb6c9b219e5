"""Validation of flow and task options, done once when the decorator runs."""

from __future__ import annotations

import functools
import hashlib
import inspect
import types
from datetime import timedelta
from typing import Any, Callable, Iterable, Sequence

__all__ = [
    "NotSet",
    "check_hooks",
    "check_name",
    "check_non_negative",
    "check_retry_delays",
    "code_key",
    "is_async_callable",
    "is_generator_callable",
]


class _NotSet:
    def __repr__(self) -> str:
        return "NotSet"


NotSet: Any = _NotSet()
"""The default of options whose None means something (``cache_policy=None``: no cache)."""

BANNED_NAME_CHARACTERS = ("/", "%", "&", ">", "<")


def is_async_callable(fn: Callable[..., Any]) -> bool:
    """Return whether ``fn`` is async: calling it returns a coroutine or an async
    generator (``functools.partial`` unwrapped)."""
    return _any_call_is(fn, inspect.iscoroutinefunction) or _any_call_is(
        fn, inspect.isasyncgenfunction
    )


def is_generator_callable(fn: Callable[..., Any]) -> bool:
    """Return whether calling ``fn`` returns a generator or an async generator
    (``functools.partial`` unwrapped)."""
    return _any_call_is(fn, inspect.isgeneratorfunction) or _any_call_is(
        fn, inspect.isasyncgenfunction
    )


def _any_call_is(fn: Callable[..., Any], test: Callable[[Any], bool]) -> bool:
    """Whether ``fn`` (unwrapped from ``functools.partial``), or its ``__call__``, passes."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return test(fn) or test(getattr(fn, "__call__", None))


def check_name(name: str, kind: str) -> str:
    """Return ``name`` if it is a usable flow or task name.

    Raises:
        ValueError: the name is empty or contains one of ``/ % & > <``.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"A {kind} name must be a non-empty string, got {name!r}.")
    banned = [c for c in BANNED_NAME_CHARACTERS if c in name]
    if banned:
        raise ValueError(
            f"Name {name!r} contains an invalid character {banned[0]!r}. "
            f"A {kind} name may not contain any of {''.join(BANNED_NAME_CHARACTERS)!r}."
        )
    return name


def check_non_negative(value: Any, option: str, *, integer: bool = False) -> Any:
    """Return ``value`` if it is None or a non-negative number (an int if ``integer``).

    Raises:
        TypeError: not a number.
        ValueError: negative.
    """
    if value is None:
        return None
    kinds: tuple[type, ...] = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        wanted = "an integer" if integer else "a number"
        raise TypeError(f"{option} must be {wanted}, got {value!r}.")
    if value < 0:
        raise ValueError(f"{option} must be >= 0, got {value!r}.")
    return value


def check_retry_delays(delay: Any, retries: int) -> list[float]:
    """Return the delays before each retry as a list (the last value repeats).

    ``delay`` may be a number, a list of numbers, or a callable taking the number of
    retries and returning such a list (e.g. an exponential backoff).

    Raises:
        TypeError: an unsupported kind of value.
        ValueError: a negative delay, or more than 50 delays.
    """
    if delay is None:
        return []
    if callable(delay):
        delay = delay(retries)
    if isinstance(delay, (int, float)) and not isinstance(delay, bool):
        check_non_negative(delay, "retry_delay_seconds")
        return [float(delay)] if delay else []
    if isinstance(delay, (list, tuple)):
        if len(delay) > 50:
            raise ValueError("Can not configure more than 50 retry delays per task.")
        return [float(check_non_negative(d, "retry_delay_seconds")) for d in delay]
    raise TypeError(
        "retry_delay_seconds must be a number, a list of numbers, or a callable returning a "
        f"list of numbers, got {delay!r}."
    )


def check_hooks(
    hooks: Iterable[Callable[..., Any]] | None, option: str
) -> list[Callable[..., Any]]:
    """Return ``hooks`` as a list after checking each is callable.

    Raises:
        TypeError: ``hooks`` is not a list of callables.
    """
    if hooks is None:
        return []
    if callable(hooks) or not isinstance(hooks, (list, tuple)):
        raise TypeError(
            f"Expected a list of callables for {option!r}; got {type(hooks).__name__} instead. "
            f"Pass a list: {option}=[my_hook]."
        )
    for hook in hooks:
        if not callable(hook):
            raise TypeError(f"Expected callables in {option!r}; got {type(hook).__name__} instead.")
    return list(hooks)


def check_timeout(value: Any, option: str = "timeout_seconds") -> float | None:
    """Return a timeout in seconds (a number or timedelta), or None.

    Raises:
        TypeError: not a number or timedelta.
        ValueError: not positive.
    """
    if value is None:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    check_non_negative(value, option)
    if value == 0:
        raise ValueError(f"{option} must be > 0, got 0.")
    return float(value)


def code_key(fn: Callable[..., Any]) -> str:
    """Return ``"<qualname>-<hash of the code>"``, a key that changes when the code does."""
    target = fn
    while isinstance(target, functools.partial):
        target = target.func
    qualname = getattr(target, "__qualname__", type(target).__qualname__).split(".")[-1]
    code = getattr(target, "__code__", None) or getattr(
        getattr(target, "__call__", None), "__code__", None
    )
    digest = hashlib.sha256(
        _code_text(code).encode() if code is not None else qualname.encode()
    ).hexdigest()
    return f"{qualname}-{digest[:8]}"


def _code_text(code: types.CodeType) -> str:
    """The bytecode and constants of ``code``, nested code objects (comprehensions, inner
    functions, lambdas) spelled out the same way: the same in every process, whereas the
    ``repr`` of a code object holds its memory address. A task's key must agree across
    processes (a task worker finds a queued run's task by it; a resumed run finds its
    finished task runs by it)."""
    consts = ", ".join(
        _code_text(const) if isinstance(const, types.CodeType) else repr(const)
        for const in code.co_consts
    )
    return f"{code.co_code!r}({consts})"


def merge_hooks(
    current: Sequence[Callable[..., Any]], extra: Callable[..., Any]
) -> list[Callable[..., Any]]:
    """Return ``current`` plus ``extra`` (for the ``@task.on_completion`` style decorators)."""
    return [*current, extra]
