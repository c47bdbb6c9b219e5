"""Cache policies: what a task run's cache key is made of.

Usage::

    from runtime import task
    from runtime.cache_policies import INPUTS, TASK_SOURCE

    @task(cache_policy=INPUTS + TASK_SOURCE)          # same inputs, same code: cached
    def fetch(url: str) -> bytes: ...

    @task(cache_policy=INPUTS - "client")             # ignore an unhashable argument
    def query(sql: str, client: Client) -> list[Row]: ...

A policy computes a key from the running task's context, its inputs and the enclosing
flow run's parameters. Two runs with the same key share one persisted result: the second
is Completed("Cached") without running. A key of None means "do not cache this run".

- ``INPUTS``: the task's arguments. ``INPUTS - "name"`` leaves a parameter out.
- ``TASK_SOURCE``: the task function's source code.
- ``FLOW_PARAMETERS``: the enclosing flow run's parameters.
- ``RUN_ID``: the enclosing flow run's id (the task run's own id outside a flow), so a
  result is reused only within one flow run.
- ``DEFAULT`` = ``INPUTS + TASK_SOURCE + RUN_ID``, what a task gets when it sets none.
- ``NONE`` (alias ``NO_CACHE``): never cache. ``NONE + X`` is ``X``.
- ``CacheKeyFnPolicy(fn)``: the key ``fn(task_ctx, inputs)`` returns (``cache_key_fn=``).

``a + b`` hashes together the keys of its parts that are not None, and is None when all
are. Caching only takes effect for a run whose result is persisted; see
:func:`runtime.results.task_cache_key` for the key the engine uses.

:func:`hash_objects` is the stable hash every policy uses: the same values give the same
key in any process, so a cache survives restarts.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import pickle
from collections.abc import Callable, Iterable, Iterator
from types import CodeType
from typing import TYPE_CHECKING, Any, final

import attrs
import cloudpickle  # type: ignore[import-untyped]
from pydantic_core import to_jsonable_python

from ..core._exceptions import ConfigurationError
from ..core._options import NotSet
from ._specs import TaskSpec

if TYPE_CHECKING:
    from ._context import TaskRunContext

__all__ = [
    "DEFAULT",
    "FLOW_PARAMETERS",
    "INPUTS",
    "NONE",
    "NO_CACHE",
    "RUN_ID",
    "TASK_SOURCE",
    "CacheKeyFnPolicy",
    "CachePolicy",
    "CompoundCachePolicy",
    "FlowParameters",
    "Inputs",
    "RunId",
    "TaskSource",
    "cache_policy_for_task",
    "hash_objects",
]


# -- stable hashing ---------------------------------------------------------------------


def hash_objects(*objs: Any) -> str:
    """Return a SHA-256 hex digest of ``objs`` that is the same in every process.

    The objects are JSON-encoded with sorted keys when they can be (sets are sorted too,
    and values JSON has no type for are encoded by pydantic, tagged with their class so
    ``"1"``, ``b"1"`` and ``Decimal("1")`` differ). Otherwise their cloudpickle bytes
    are hashed; those are stable for values of importable types, but not, for example,
    for objects whose pickled form depends on set order or memory addresses.

    Raises:
        TypeError: the objects are neither JSON-encodable nor picklable.
    """
    try:
        data = json.dumps(
            objs, sort_keys=True, default=_encode_for_hash, separators=(",", ":")
        ).encode("utf-8")
    except Exception as exc:  # noqa: BLE001 - json and pydantic raise TypeError, ValueError...
        json_error = exc
    else:
        return hashlib.sha256(data).hexdigest()
    try:
        data = cloudpickle.dumps(objs, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # pickling raises TypeError, PicklingError, AttributeError...
        raise TypeError(
            f"Cannot hash {_describe(objs)}: it is neither JSON-encodable ({json_error}) "
            f"nor picklable ({exc})."
        ) from exc
    return hashlib.sha256(data).hexdigest()


def _encode_for_hash(obj: Any) -> Any:
    """``json.dumps`` hook for :func:`hash_objects`: tag the class, sort sets."""
    if isinstance(obj, Iterator):
        # pydantic would drain an iterator into a list: refuse instead.
        raise TypeError(f"an iterator ({type(obj).__name__}) has no stable value")
    cls = type(obj)
    if isinstance(obj, (set, frozenset)):
        # A set's iteration order depends on PYTHONHASHSEED; sort the encoded items.
        data: Any = sorted(
            json.dumps(item, sort_keys=True, default=_encode_for_hash) for item in obj
        )
    else:
        data = to_jsonable_python(obj)
    return {"__class__": f"{cls.__module__}.{cls.__qualname__}", "data": data}


def _describe(objs: tuple[Any, ...]) -> str:
    if len(objs) == 1:
        return f"a value of type {type(objs[0]).__name__}"
    return f"values of types {', '.join(type(o).__name__ for o in objs)}"


# -- policies ---------------------------------------------------------------------------


class CachePolicy:
    """Computes the cache key of a task run; combine policies with ``+``.

    Subclasses implement :meth:`compute_key`.
    """

    def compute_key(
        self,
        task_ctx: TaskRunContext | None,
        inputs: dict[str, Any] | None,
        flow_parameters: dict[str, Any] | None,
        **kwargs: Any,
    ) -> str | None:
        """Return the cache key of the run, or None to not cache it.

        Args:
            task_ctx: the running task's context (``task``, ``task_run``, ``parameters``).
            inputs: the task run's resolved arguments, by parameter name.
            flow_parameters: the enclosing flow run's parameters (None outside a flow).
            **kwargs: ignored; room for future arguments.
        """
        raise NotImplementedError

    def __add__(self, other: CachePolicy) -> CachePolicy:
        if not isinstance(other, CachePolicy):
            return NotImplemented
        if isinstance(other, _NoCache):
            return self
        return CompoundCachePolicy((*_parts(self), *_parts(other)))

    def __sub__(self, parameter: str) -> CachePolicy:
        """Leave ``parameter`` out of the inputs this policy hashes (no-op without INPUTS).

        Raises:
            TypeError: ``parameter`` is not a string.
        """
        _check_parameter_name(parameter)
        return self


def _parts(policy: CachePolicy) -> tuple[CachePolicy, ...]:
    return policy.policies if isinstance(policy, CompoundCachePolicy) else (policy,)


def _check_parameter_name(parameter: object) -> None:
    if not isinstance(parameter, str):
        raise TypeError(
            f"Only a parameter name can be subtracted from a cache policy, got "
            f"{type(parameter).__name__}: {parameter!r}."
        )


@final
@attrs.frozen(repr=False)
class CompoundCachePolicy(CachePolicy):
    """Several policies at once: the hash of their keys that are not None (None if all are).

    Build one with ``+``.
    """

    policies: tuple[CachePolicy, ...]

    def compute_key(
        self,
        task_ctx: TaskRunContext | None,
        inputs: dict[str, Any] | None,
        flow_parameters: dict[str, Any] | None,
        **kwargs: Any,
    ) -> str | None:
        keys = [
            key
            for policy in self.policies
            if (key := policy.compute_key(task_ctx, inputs, flow_parameters, **kwargs)) is not None
        ]
        return hash_objects(*keys) if keys else None

    def __sub__(self, parameter: str) -> CachePolicy:
        _check_parameter_name(parameter)
        return CompoundCachePolicy(tuple(policy - parameter for policy in self.policies))

    def __repr__(self) -> str:
        return " + ".join(repr(policy) for policy in self.policies)


@final
@attrs.frozen(repr=False)
class _NoCache(CachePolicy):
    """Never caches: the key is always None."""

    def compute_key(
        self,
        task_ctx: TaskRunContext | None,
        inputs: dict[str, Any] | None,
        flow_parameters: dict[str, Any] | None,
        **kwargs: Any,
    ) -> str | None:
        return None

    def __add__(self, other: CachePolicy) -> CachePolicy:
        if not isinstance(other, CachePolicy):
            return NotImplemented
        return other

    def __repr__(self) -> str:
        return "NONE"


def _names(names: Iterable[str]) -> frozenset[str]:
    return frozenset(names)


@final
@attrs.frozen(repr=False)
class Inputs(CachePolicy):
    """The hash of the task run's inputs, leaving out the parameters in ``exclude``.

    Runs without inputs get no key from this policy.
    """

    exclude: frozenset[str] = attrs.field(default=frozenset(), converter=_names)

    def compute_key(
        self,
        task_ctx: TaskRunContext | None,
        inputs: dict[str, Any] | None,
        flow_parameters: dict[str, Any] | None,
        **kwargs: Any,
    ) -> str | None:
        """Return the hash of the inputs.

        Raises:
            ConfigurationError: an input cannot be hashed; the message names it.
        """
        if not inputs:
            return None
        hashed = {name: value for name, value in inputs.items() if name not in self.exclude}
        try:
            return hash_objects(hashed)
        except TypeError as exc:
            raise _unhashable_inputs(hashed, exc) from exc

    def __sub__(self, parameter: str) -> CachePolicy:
        _check_parameter_name(parameter)
        return Inputs(self.exclude | {parameter})

    def __repr__(self) -> str:
        return "".join(["INPUTS", *(f" - {name!r}" for name in sorted(self.exclude))])


def _unhashable_inputs(inputs: dict[str, Any], error: TypeError) -> ConfigurationError:
    culprits = []
    for name, value in inputs.items():
        try:
            hash_objects(value)
        except TypeError:
            culprits.append(name)
    if not culprits:  # only the combination fails; name no parameter in particular
        return ConfigurationError(f"Cannot compute a cache key from the task inputs: {error}")
    described = ", ".join(f"{name!r} ({type(inputs[name]).__qualname__})" for name in culprits)
    fix = " - ".join(repr(name) for name in culprits)
    return ConfigurationError(
        f"Cannot compute a cache key from the task input{'s' if len(culprits) > 1 else ''} "
        f"{described}: neither JSON-encodable nor picklable. Leave "
        f"{'them' if len(culprits) > 1 else 'it'} out of the key by subtracting from the "
        f"cache policy (cache_policy=INPUTS - {fix}, or DEFAULT - {fix} for the default "
        "policy), give the task a cache_key_fn, or turn caching off with cache_policy=NONE."
    )


@final
@attrs.frozen(repr=False)
class TaskSource(CachePolicy):
    """The hash of the task function's source code (its code object when there is none)."""

    def compute_key(
        self,
        task_ctx: TaskRunContext | None,
        inputs: dict[str, Any] | None,
        flow_parameters: dict[str, Any] | None,
        **kwargs: Any,
    ) -> str | None:
        if task_ctx is None:
            return None
        return hash_objects(_source_of(task_ctx.task.fn))

    def __repr__(self) -> str:
        return "TASK_SOURCE"


def _source_of(fn: Callable[..., Any]) -> str:
    """Return the source of ``fn``, or a fingerprint of its code object if it has none."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    fn = inspect.unwrap(fn)
    target: Any = fn
    if not (inspect.isfunction(fn) or inspect.ismethod(fn)):
        target = type(fn)  # a callable instance: its class holds the code
    try:
        return inspect.getsource(target)
    except (OSError, TypeError):
        # No source file (exec'd code, the REPL): fall back to the compiled code.
        code = getattr(fn, "__code__", None) or getattr(type(fn).__call__, "__code__", None)
        if code is None:
            return f"{type(fn).__module__}.{type(fn).__qualname__}"
        return _code_fingerprint(code)


def _code_fingerprint(code: CodeType) -> str:
    # The bytecode alone would not tell `lambda: 1` from `lambda: 2`: add the constants
    # (recursively, for nested functions) and the names the code uses.
    consts = [_code_fingerprint(c) if isinstance(c, CodeType) else repr(c) for c in code.co_consts]
    return repr((code.co_code.hex(), consts, code.co_names))


@final
@attrs.frozen(repr=False)
class FlowParameters(CachePolicy):
    """The hash of the enclosing flow run's parameters (no key outside a flow or without any)."""

    def compute_key(
        self,
        task_ctx: TaskRunContext | None,
        inputs: dict[str, Any] | None,
        flow_parameters: dict[str, Any] | None,
        **kwargs: Any,
    ) -> str | None:
        if not flow_parameters:
            return None
        return hash_objects(flow_parameters)

    def __repr__(self) -> str:
        return "FLOW_PARAMETERS"


@final
@attrs.frozen(repr=False)
class RunId(CachePolicy):
    """The enclosing flow run's id, or the task run's own id outside a flow."""

    def compute_key(
        self,
        task_ctx: TaskRunContext | None,
        inputs: dict[str, Any] | None,
        flow_parameters: dict[str, Any] | None,
        **kwargs: Any,
    ) -> str | None:
        if task_ctx is None:
            return None
        run_id = task_ctx.task_run.flow_run_id
        return str(run_id if run_id is not None else task_ctx.task_run.id)

    def __repr__(self) -> str:
        return "RUN_ID"


@final
@attrs.frozen
class CacheKeyFnPolicy(CachePolicy):
    """The key a user function returns: ``cache_key_fn(task_ctx, inputs) -> str | None``."""

    cache_key_fn: Callable[[Any, dict[str, Any]], str | None]

    def compute_key(
        self,
        task_ctx: TaskRunContext | None,
        inputs: dict[str, Any] | None,
        flow_parameters: dict[str, Any] | None,
        **kwargs: Any,
    ) -> str | None:
        return self.cache_key_fn(task_ctx, inputs or {})


NONE: CachePolicy = _NoCache()
NO_CACHE: CachePolicy = NONE
INPUTS: CachePolicy = Inputs()
TASK_SOURCE: CachePolicy = TaskSource()
FLOW_PARAMETERS: CachePolicy = FlowParameters()
RUN_ID: CachePolicy = RunId()
DEFAULT: CachePolicy = INPUTS + TASK_SOURCE + RUN_ID


def cache_policy_for_task(task: TaskSpec) -> CachePolicy:
    """Return the policy a task's runs are cached by, from its options (Prefect 3's rules).

    ``persist_result=False`` turns caching off; otherwise ``cache_key_fn`` wins over
    ``cache_policy``, and a task that sets neither gets :data:`DEFAULT`. (A task with a
    ``result_storage_key`` is cached under that key instead; see
    :func:`runtime.results.task_cache_key`.)

    Raises:
        TypeError: ``cache_policy`` is not a CachePolicy.
    """
    policy = task.cache_policy
    if task.persist_result is False:
        return NONE
    if task.cache_key_fn is not None:
        return CacheKeyFnPolicy(task.cache_key_fn)
    if policy is NotSet:
        return DEFAULT
    if policy is None:
        return NONE
    if not isinstance(policy, CachePolicy):
        raise TypeError(
            f"cache_policy must be a CachePolicy such as INPUTS or INPUTS + TASK_SOURCE, got "
            f"{type(policy).__name__}: {policy!r}."
        )
    return policy
