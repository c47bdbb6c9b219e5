"""Cache policies: the keys each policy computes, combinations, and stable hashing."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest

from runtime import Task
from runtime.cache_policies import (
    DEFAULT,
    FLOW_PARAMETERS,
    INPUTS,
    NO_CACHE,
    NONE,
    RUN_ID,
    TASK_SOURCE,
    CacheKeyFnPolicy,
    CachePolicy,
    CompoundCachePolicy,
    Inputs,
    cache_policy_for_task,
    hash_objects,
)
from runtime.core._models import TaskRun
from runtime.engine._context import TaskRunContext
from runtime.exceptions import ConfigurationError


def add(x: int, y: int) -> int:
    return x + y


def add_differently(x: int, y: int) -> int:
    return y + x


def make_ctx(
    fn: Callable[..., Any] = add,
    *,
    flow_run_id: UUID | None = None,
    parameters: dict[str, Any] | None = None,
) -> TaskRunContext:
    """A task run context as the engine builds one, for a run of ``Task(fn)``."""
    the_task = Task(fn)
    return TaskRunContext(
        task=the_task,
        task_run=TaskRun(
            name="add-0", task_key=the_task.task_key, dynamic_key="0", flow_run_id=flow_run_id
        ),
        parameters=parameters or {},
        log_prints=False,
        start_time=datetime.now(timezone.utc),
    )


def sha256_of(*objs: Any) -> str:
    return hash_objects(*objs)


class TestHashObjects:
    def test_is_a_sha256_hex_digest(self) -> None:
        """The hash is 64 lowercase hex digits."""
        digest = hash_objects({"a": 1})
        assert len(digest) == 64
        assert int(digest, 16) >= 0

    def test_dict_order_does_not_matter(self) -> None:
        """Keys are sorted before hashing."""
        assert hash_objects({"a": 1, "b": 2}) == hash_objects({"b": 2, "a": 1})

    def test_set_order_does_not_matter(self) -> None:
        """Set items are sorted before hashing, so the hash does not depend on hash seeds."""
        items = [f"item-{i}" for i in range(50)]
        backwards: set[str] = set()
        for item in reversed(items):
            backwards.add(item)
        assert hash_objects(set(items)) == hash_objects(backwards)

    @pytest.mark.parametrize(
        ("left", "right"),
        [
            (1, "1"),
            (1, 1.0),
            (True, 1),
            ("1", b"1"),
            ("1", Decimal(1)),
            ([1, 2], {1, 2}),
            (None, "null"),
        ],
    )
    def test_distinguishes_types(self, left: Any, right: Any) -> None:
        """Values that encode alike but have different types hash differently."""
        assert hash_objects(left) != hash_objects(right)

    def test_arguments_are_not_concatenated(self) -> None:
        """``hash_objects(a, b)`` differs from ``hash_objects([a, b])`` and ``(b, a)``."""
        assert hash_objects("a", "b") != hash_objects("b", "a")
        assert hash_objects("a", "b") != hash_objects("ab")

    def test_unencodable_objects_are_pickled(self) -> None:
        """An object JSON cannot encode is hashed through its pickled bytes."""
        assert hash_objects(Path) == hash_objects(Path)
        assert hash_objects(Path) != hash_objects(UUID)

    def test_unhashable_objects_raise(self) -> None:
        """Objects that can be neither JSON-encoded nor pickled raise a TypeError."""
        with pytest.raises(
            TypeError,
            match=r"^Cannot hash a value of type lock: it is neither JSON-encodable \(.+\) "
            r"nor picklable \(cannot pickle '_thread.lock' object\)\.$",
        ):
            hash_objects(threading.Lock())

    def test_generators_are_not_consumed(self) -> None:
        """Hashing a generator fails without draining it."""
        gen = (i for i in range(3))
        with pytest.raises(TypeError, match=r"^Cannot hash a value of type generator"):
            hash_objects(gen)
        assert list(gen) == [0, 1, 2]

    def test_stable_across_processes(self, tmp_path: Path) -> None:
        """Another process, with another hash seed, computes the same hashes and keys."""
        module = tmp_path / "cached_module.py"
        module.write_text(
            textwrap.dedent(
                """
                def double(x):
                    return 2 * x
                """
            )
        )
        script = textwrap.dedent(
            f"""
            import json, sys, types, uuid
            sys.path.insert(0, {str(tmp_path)!r})
            import cached_module
            from datetime import datetime, timezone
            from runtime.cache_policies import DEFAULT, FLOW_PARAMETERS, INPUTS, TASK_SOURCE, hash_objects
            ctx = types.SimpleNamespace(
                task=types.SimpleNamespace(fn=cached_module.double),
                task_run=types.SimpleNamespace(flow_run_id=uuid.UUID(int=7), id=uuid.UUID(int=8)),
            )
            inputs = {{"x": 1, "tags": {{"a", "b", "c", "d"}}, "when": datetime(2024, 1, 1, tzinfo=timezone.utc)}}
            print(json.dumps([
                hash_objects(*STABLE_VALUES),
                INPUTS.compute_key(ctx, inputs, None),
                TASK_SOURCE.compute_key(ctx, inputs, None),
                FLOW_PARAMETERS.compute_key(ctx, inputs, {{"n": 3, "names": ["x", "y"]}}),
                DEFAULT.compute_key(ctx, inputs, None),
            ]))
            """
        ).replace("STABLE_VALUES", repr(_STABLE_VALUES))
        keys = []
        for seed in ("1", "2"):
            out = subprocess.run(
                [sys.executable, "-c", script],
                env={**_clean_env(), "PYTHONHASHSEED": seed},
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            keys.append(json.loads(out))
        assert keys[0] == keys[1]
        # ...and this process agrees.
        sys.path.insert(0, str(tmp_path))
        try:
            import cached_module  # type: ignore[import-not-found]
        finally:
            sys.path.remove(str(tmp_path))
        ctx = make_ctx(cached_module.double, flow_run_id=UUID(int=7))
        inputs = {
            "x": 1,
            "tags": {"a", "b", "c", "d"},
            "when": datetime(2024, 1, 1, tzinfo=timezone.utc),
        }
        assert keys[0] == [
            hash_objects(*_STABLE_VALUES),
            INPUTS.compute_key(ctx, inputs, None),
            TASK_SOURCE.compute_key(ctx, inputs, None),
            FLOW_PARAMETERS.compute_key(ctx, inputs, {"n": 3, "names": ["x", "y"]}),
            DEFAULT.compute_key(ctx, inputs, None),
        ]


_STABLE_VALUES = (
    {"b": [1, 2.5, None, True], "a": {"nested": "str"}},
    frozenset({"x", "y", "z"}),
    b"bytes",
    (1, 2),
)


def _clean_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}


class TestInputs:
    def test_same_inputs_same_key(self) -> None:
        """Equal inputs give equal keys; the key is the hash of the inputs."""
        key = INPUTS.compute_key(make_ctx(), {"x": 1, "y": 2}, None)
        assert key == INPUTS.compute_key(make_ctx(), {"y": 2, "x": 1}, None)
        assert key == sha256_of({"x": 1, "y": 2})

    def test_different_inputs_different_key(self) -> None:
        """Changing any input changes the key."""
        assert INPUTS.compute_key(None, {"x": 1, "y": 2}, None) != INPUTS.compute_key(
            None, {"x": 1, "y": 3}, None
        )

    @pytest.mark.parametrize("inputs", [None, {}])
    def test_no_inputs_no_key(self, inputs: dict[str, Any] | None) -> None:
        """A run without inputs gets no key from INPUTS."""
        assert INPUTS.compute_key(make_ctx(), inputs, None) is None

    def test_exclude(self) -> None:
        """``INPUTS - "name"`` ignores that parameter."""
        policy = INPUTS - "y"
        assert policy.compute_key(None, {"x": 1, "y": 2}, None) == policy.compute_key(
            None, {"x": 1, "y": 99}, None
        )
        assert policy.compute_key(None, {"x": 1, "y": 2}, None) == sha256_of({"x": 1})

    def test_exclude_accumulates(self) -> None:
        """Subtracting twice excludes both; order does not matter."""
        assert INPUTS - "a" - "b" == INPUTS - "b" - "a" == Inputs(exclude=["a", "b"])
        assert repr(INPUTS - "b" - "a") == "INPUTS - 'a' - 'b'"

    def test_excluding_everything_gives_a_key(self) -> None:
        """Excluding all inputs hashes an empty mapping (still a key)."""
        assert (INPUTS - "x").compute_key(None, {"x": 1}, None) == sha256_of({})

    def test_subtract_non_string(self) -> None:
        """Only parameter names can be subtracted."""
        with pytest.raises(
            TypeError,
            match=r"^Only a parameter name can be subtracted from a cache policy, got int: 1\.$",
        ):
            INPUTS - 1  # type: ignore[operator]

    def test_unhashable_input(self) -> None:
        """An input that cannot be hashed is named, with the fix."""
        with pytest.raises(
            ConfigurationError,
            match=(
                r"^Cannot compute a cache key from the task input 'lock' \(lock\): neither "
                r"JSON-encodable nor picklable\. Leave it out of the key by subtracting from "
                r"the cache policy \(cache_policy=INPUTS - 'lock', or DEFAULT - 'lock' for the "
                r"default policy\), give the task a cache_key_fn, or turn caching off with "
                r"cache_policy=NONE\.$"
            ),
        ) as info:
            INPUTS.compute_key(None, {"x": 1, "lock": threading.Lock()}, None)
        assert isinstance(info.value.__cause__, TypeError)

    def test_several_unhashable_inputs(self) -> None:
        """Every unhashable input is named."""
        inputs = {"a": threading.Lock(), "b": 2, "c": (i for i in range(2))}
        with pytest.raises(
            ConfigurationError,
            match=(
                r"^Cannot compute a cache key from the task inputs 'a' \(lock\), 'c' "
                r"\(generator\): neither JSON-encodable nor picklable\. Leave them out of the "
                r"key by subtracting from the cache policy \(cache_policy=INPUTS - 'a' - 'c', "
            ),
        ):
            INPUTS.compute_key(None, inputs, None)

    def test_excluded_unhashable_input(self) -> None:
        """Once excluded, an unhashable input no longer matters."""
        key = (INPUTS - "lock").compute_key(None, {"x": 1, "lock": threading.Lock()}, None)
        assert key == sha256_of({"x": 1})


class TestTaskSource:
    def test_same_source_same_key(self) -> None:
        """Two tasks of one function share the key, which is the hash of the source."""
        key = TASK_SOURCE.compute_key(make_ctx(add), {}, None)
        assert key == TASK_SOURCE.compute_key(make_ctx(add), {"x": 5}, None)
        assert key == sha256_of("def add(x: int, y: int) -> int:\n    return x + y\n")

    def test_different_source_different_key(self) -> None:
        """Editing the function changes the key."""
        assert TASK_SOURCE.compute_key(make_ctx(add), {}, None) != TASK_SOURCE.compute_key(
            make_ctx(add_differently), {}, None
        )

    def test_no_task_context(self) -> None:
        """Without a task context there is no key."""
        assert TASK_SOURCE.compute_key(None, {}, None) is None

    def test_code_without_source_file(self) -> None:
        """Functions without a source file are keyed by their code, constants included."""
        namespace: dict[str, Any] = {}
        exec("def one():\n    return 1\ndef two():\n    return 2\n", namespace)  # noqa: S102
        key_one = TASK_SOURCE.compute_key(make_ctx(namespace["one"]), {}, None)
        assert key_one is not None
        assert key_one == TASK_SOURCE.compute_key(make_ctx(namespace["one"]), {}, None)
        assert key_one != TASK_SOURCE.compute_key(make_ctx(namespace["two"]), {}, None)

    def test_partial_and_wrapped(self) -> None:
        """A partial or a functools.wraps wrapper is keyed by the function it wraps."""

        @functools.wraps(add)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return add(*args, **kwargs)

        key = TASK_SOURCE.compute_key(make_ctx(add), {}, None)
        assert TASK_SOURCE.compute_key(make_ctx(functools.partial(add, 1)), {}, None) == key
        assert TASK_SOURCE.compute_key(make_ctx(wrapper), {}, None) == key

    def test_callable_instance(self) -> None:
        """A callable object is keyed by its class's source."""

        class Adder:
            def __call__(self, x: int) -> int:
                return x + 1

        key = TASK_SOURCE.compute_key(make_ctx(Adder()), {}, None)
        assert key is not None
        assert key != TASK_SOURCE.compute_key(make_ctx(add), {}, None)


class TestFlowParameters:
    def test_hash_of_flow_parameters(self) -> None:
        """The key is the hash of the flow run's parameters."""
        key = FLOW_PARAMETERS.compute_key(make_ctx(), {"x": 1}, {"n": 3})
        assert key == sha256_of({"n": 3})
        assert key != FLOW_PARAMETERS.compute_key(make_ctx(), {"x": 1}, {"n": 4})

    @pytest.mark.parametrize("flow_parameters", [None, {}])
    def test_no_parameters_no_key(self, flow_parameters: dict[str, Any] | None) -> None:
        """Outside a flow, or for a flow without parameters, there is no key."""
        assert FLOW_PARAMETERS.compute_key(make_ctx(), {"x": 1}, flow_parameters) is None


class TestRunId:
    def test_flow_run_id(self) -> None:
        """Inside a flow run, the key is the flow run's id."""
        flow_run_id = uuid4()
        assert RUN_ID.compute_key(make_ctx(flow_run_id=flow_run_id), {}, None) == str(flow_run_id)

    def test_task_run_id_outside_a_flow(self) -> None:
        """Outside a flow run, the key is the task run's own id."""
        ctx = make_ctx()
        assert RUN_ID.compute_key(ctx, {}, None) == str(ctx.task_run.id)

    def test_no_task_context(self) -> None:
        """Without a task context there is no key."""
        assert RUN_ID.compute_key(None, {}, None) is None


class TestNone:
    def test_no_key(self) -> None:
        """NONE never gives a key; NO_CACHE is the same policy."""
        assert NONE.compute_key(make_ctx(), {"x": 1}, {"n": 1}) is None
        assert NO_CACHE is NONE

    def test_adding_none_is_a_no_op(self) -> None:
        """``NONE + X`` and ``X + NONE`` are ``X``."""
        assert NONE + INPUTS is INPUTS
        assert INPUTS + NONE is INPUTS
        assert NONE + NONE is NONE
        assert DEFAULT + NONE is DEFAULT

    def test_subtracting_is_a_no_op(self) -> None:
        """Policies without inputs ignore subtraction."""
        assert NONE - "x" is NONE
        assert TASK_SOURCE - "x" is TASK_SOURCE


class TestCompound:
    def test_default(self) -> None:
        """DEFAULT is INPUTS + TASK_SOURCE + RUN_ID."""
        assert DEFAULT == INPUTS + TASK_SOURCE + RUN_ID
        assert DEFAULT == CompoundCachePolicy((INPUTS, TASK_SOURCE, RUN_ID))
        assert repr(DEFAULT) == "INPUTS + TASK_SOURCE + RUN_ID"

    def test_key_hashes_the_parts(self) -> None:
        """A compound key is the hash of its parts' keys, in order."""
        ctx = make_ctx(flow_run_id=uuid4())
        inputs = {"x": 1, "y": 2}
        parts = [INPUTS, TASK_SOURCE, RUN_ID]
        keys = [p.compute_key(ctx, inputs, None) for p in parts]
        assert DEFAULT.compute_key(ctx, inputs, None) == sha256_of(*keys)
        assert (RUN_ID + TASK_SOURCE + INPUTS).compute_key(ctx, inputs, None) == sha256_of(
            *reversed(keys)
        )

    def test_none_parts_are_skipped(self) -> None:
        """Parts without a key are left out of the hash."""
        ctx = make_ctx(flow_run_id=uuid4())
        source_key = TASK_SOURCE.compute_key(ctx, {}, None)
        run_key = RUN_ID.compute_key(ctx, {}, None)
        assert DEFAULT.compute_key(ctx, {}, None) == sha256_of(source_key, run_key)

    def test_all_parts_none(self) -> None:
        """When no part gives a key, neither does the compound."""
        assert (INPUTS + FLOW_PARAMETERS).compute_key(make_ctx(), {}, None) is None

    def test_flattens(self) -> None:
        """Adding compounds gives one flat compound."""
        combined = (INPUTS + TASK_SOURCE) + (RUN_ID + FLOW_PARAMETERS)
        assert combined == CompoundCachePolicy((INPUTS, TASK_SOURCE, RUN_ID, FLOW_PARAMETERS))

    def test_each_combination_gives_its_own_key(self) -> None:
        """Different combinations of the same context give different keys."""
        ctx = make_ctx(flow_run_id=uuid4())
        inputs, flow_parameters = {"x": 1}, {"n": 2}
        policies = [
            INPUTS,
            TASK_SOURCE,
            RUN_ID,
            FLOW_PARAMETERS,
            INPUTS + TASK_SOURCE,
            INPUTS + FLOW_PARAMETERS,
            TASK_SOURCE + RUN_ID,
            DEFAULT,
            DEFAULT + FLOW_PARAMETERS,
        ]
        keys = [p.compute_key(ctx, inputs, flow_parameters) for p in policies]
        assert None not in keys
        assert len(set(keys)) == len(keys)

    def test_subtract_reaches_inputs(self) -> None:
        """Subtracting from a compound excludes the parameter from its INPUTS part."""
        policy = DEFAULT - "y"
        assert policy == (INPUTS - "y") + TASK_SOURCE + RUN_ID
        assert repr(policy) == "INPUTS - 'y' + TASK_SOURCE + RUN_ID"
        ctx = make_ctx(flow_run_id=uuid4())
        assert policy.compute_key(ctx, {"x": 1, "y": 2}, None) == policy.compute_key(
            ctx, {"x": 1, "y": 3}, None
        )

    def test_subtract_without_inputs(self) -> None:
        """A compound without INPUTS is unchanged by subtraction."""
        assert (TASK_SOURCE + RUN_ID) - "x" == TASK_SOURCE + RUN_ID

    def test_add_non_policy(self) -> None:
        """Only policies can be added."""
        with pytest.raises(TypeError):
            INPUTS + "x"  # type: ignore[operator]


class TestCacheKeyFnPolicy:
    def test_returns_the_function_key(self) -> None:
        """The key is what the function returns for (task context, inputs)."""
        seen: list[tuple[Any, Any]] = []

        def key_fn(ctx: Any, inputs: dict[str, Any]) -> str | None:
            seen.append((ctx, inputs))
            return f"key-{inputs['x']}"

        ctx = make_ctx()
        policy = CacheKeyFnPolicy(key_fn)
        assert policy.compute_key(ctx, {"x": 1}, {"n": 1}) == "key-1"
        assert seen == [(ctx, {"x": 1})]

    def test_none_means_no_cache(self) -> None:
        """A function returning None turns caching off for that run."""
        assert CacheKeyFnPolicy(lambda ctx, inputs: None).compute_key(None, {}, None) is None

    def test_combines(self) -> None:
        """A key function policy can be combined with others."""
        policy = CacheKeyFnPolicy(lambda ctx, inputs: "k") + INPUTS
        assert policy.compute_key(None, {"x": 1}, None) == sha256_of("k", sha256_of({"x": 1}))


class TestCachePolicyForTask:
    def key_fn(self, ctx: Any, inputs: dict[str, Any]) -> str:
        return "k"

    @pytest.mark.parametrize(
        ("options", "expected"),
        [
            ({}, DEFAULT),
            ({"cache_policy": INPUTS}, INPUTS),
            ({"cache_policy": NONE}, NONE),
            ({"cache_policy": None}, NONE),
            ({"cache_policy": INPUTS, "persist_result": False}, NONE),
            ({"persist_result": False}, NONE),
            ({"persist_result": True}, DEFAULT),
            ({"result_storage_key": "k"}, DEFAULT),
        ],
    )
    def test_rules(self, options: dict[str, Any], expected: CachePolicy) -> None:
        """persist_result=False turns caching off; a task that sets nothing gets DEFAULT."""
        assert cache_policy_for_task(Task(add, **options)) == expected

    def test_cache_key_fn_wins(self) -> None:
        """``cache_key_fn`` takes precedence over ``cache_policy``."""
        policy = cache_policy_for_task(Task(add, cache_key_fn=self.key_fn, cache_policy=INPUTS))
        assert policy == CacheKeyFnPolicy(self.key_fn)

    def test_not_a_policy(self) -> None:
        """A cache_policy of the wrong type is refused with the fix."""
        with pytest.raises(
            TypeError,
            match=r"^cache_policy must be a CachePolicy such as INPUTS or INPUTS \+ TASK_SOURCE, "
            r"got str: 'INPUTS'\.$",
        ):
            cache_policy_for_task(Task(add, cache_policy="INPUTS"))


def test_picklable_iterators_in_inputs_are_not_consumed() -> None:
    """An iterator that pickles without being consumed (a list iterator) is hashed as is."""
    items: Iterator[int] = iter([1, 2, 3])
    assert INPUTS.compute_key(None, {"items": items}, None) is not None
    assert list(items) == [1, 2, 3]


def test_public_names() -> None:
    """The module's public surface is pinned."""
    import runtime.cache_policies

    assert runtime.cache_policies.__all__ == [
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
