"""Persisted results: serializers, local storage, references, settings and storage keys."""

from __future__ import annotations

import json
import os
import pickle
import re
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar
from uuid import UUID

import pydantic
import pytest
from engine_support import StoreUrl

from runtime import Flow, Runtime, Task, flow, states, task
from runtime.cache_policies import DEFAULT, INPUTS, NONE, hash_objects
from runtime.core._models import FlowRun, TaskRun
from runtime.engine._context import FlowRunContext, TaskRunContext
from runtime.exceptions import ConfigurationError, MissingResult, ResultSerializationError
from runtime.results import (
    INLINE_RESULT_LIMIT,
    PERSIST_BY_DEFAULT_ENV,
    InlineResult,
    LocalResultStorage,
    ResultRef,
    ResultSettings,
    format_storage_key,
    persist_by_default,
    persist_result,
    resolve_storage,
    result_settings_for_flow,
    result_settings_for_task,
    task_cache_key,
)
from runtime.serializers import (
    CloudpickleSerializer,
    JSONSerializer,
    PickleSerializer,
    Serializer,
    resolve_serializer,
)
from runtime.store._results import keep_result, result_from_json
from runtime.store._urls import open_backend

JSON_VALUES: list[Any] = [
    None,
    True,
    0,
    -7,
    2.5,
    float("inf"),
    "text ✓",
    [],
    [1, "a", None, [2.0]],
    {},
    {"nested": {"list": [1, 2, {"deep": False}]}, "n": None},
]


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep default storage inside the test's directory and the environment neutral."""
    monkeypatch.setenv("STAGEFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(PERSIST_BY_DEFAULT_ENV, raising=False)


@pytest.fixture
def storage(tmp_path: Path) -> LocalResultStorage:
    return LocalResultStorage(tmp_path / "results")


def make_closure(n: int) -> Callable[[int], int]:
    def add_n(x: int) -> int:
        return x + n

    return add_n


def numbers() -> Any:
    yield 1
    yield 2


# -- serializers ------------------------------------------------------------------------


class TestSerializers:
    @pytest.mark.parametrize("serializer", [PickleSerializer(), CloudpickleSerializer()])
    @pytest.mark.parametrize(
        "value",
        [
            *JSON_VALUES,
            (1, 2),
            {1, 2},
            b"\x00bytes",
            datetime(2024, 5, 1, 12, tzinfo=timezone.utc),
            UUID(int=5),
            ValueError("boom"),
        ],
    )
    def test_pickles_round_trip(self, serializer: Serializer, value: Any) -> None:
        """pickle and cloudpickle give back an equal object of the same type."""
        loaded = serializer.loads(serializer.dumps(value))
        assert type(loaded) is type(value)
        if isinstance(value, BaseException):
            assert loaded.args == value.args
        else:
            assert loaded == value

    @pytest.mark.parametrize("value", JSON_VALUES)
    def test_json_round_trip(self, value: Any) -> None:
        """JSON gives back JSON's own types exactly."""
        serializer = JSONSerializer()
        assert serializer.loads(serializer.dumps(value)) == value
        assert serializer.dumps(value) == json.dumps(value).encode()

    @pytest.mark.parametrize(
        ("value", "loaded"),
        [
            ((1, 2), [1, 2]),
            ({3}, [3]),
            ({1: "a"}, {"1": "a"}),
            (datetime(2024, 5, 1, 12, tzinfo=timezone.utc), "2024-05-01T12:00:00Z"),
            (UUID(int=5), "00000000-0000-0000-0000-000000000005"),
            (b"raw", "raw"),
        ],
    )
    def test_json_is_lossy_for_other_types(self, value: Any, loaded: Any) -> None:
        """Other values come back in their JSON form, as documented."""
        serializer = JSONSerializer()
        assert serializer.loads(serializer.dumps(value)) == loaded

    def test_json_encodes_pydantic_models(self) -> None:
        """Pydantic models are encoded as pydantic would, and come back as dicts."""

        class Point(pydantic.BaseModel):
            x: int
            y: int

        serializer = JSONSerializer()
        assert serializer.loads(serializer.dumps({"p": Point(x=1, y=2)})) == {"p": {"x": 1, "y": 2}}

    def test_json_does_not_consume_generators(self) -> None:
        """A generator is refused, not drained into a list."""
        gen = numbers()
        with pytest.raises(
            TypeError,
            match=r"^Object of type generator is not JSON serializable: it is an iterator, "
            r"and encoding it would consume it$",
        ):
            JSONSerializer().dumps(gen)
        assert list(gen) == [1, 2]

    def test_cloudpickle_serializes_functions(self) -> None:
        """cloudpickle handles lambdas and closures, which pickle refuses."""
        serializer = CloudpickleSerializer()
        assert serializer.loads(serializer.dumps(lambda x: x * 3))(2) == 6
        assert serializer.loads(serializer.dumps(make_closure(10)))(1) == 11
        with pytest.raises((AttributeError, pickle.PicklingError)):
            PickleSerializer().dumps(make_closure(10))

    @pytest.mark.parametrize(
        ("name", "cls"),
        [
            ("pickle", PickleSerializer),
            ("cloudpickle", CloudpickleSerializer),
            ("json", JSONSerializer),
        ],
    )
    def test_resolve_by_name(self, name: str, cls: type[Serializer]) -> None:
        """Each built-in is found by its type name, which it reports."""
        serializer = resolve_serializer(name)
        assert type(serializer) is cls
        assert serializer.type == name
        assert serializer == cls()

    def test_resolve_instance(self) -> None:
        """A Serializer instance is used as is."""
        serializer = JSONSerializer()
        assert resolve_serializer(serializer) is serializer

    def test_resolve_unknown_name(self) -> None:
        """An unknown name is refused with the known ones."""
        with pytest.raises(
            ConfigurationError,
            match=r"^Unknown result serializer 'yaml': use one of 'cloudpickle', 'json', "
            r"'pickle'(, '[^']+')*, or a Serializer instance\.$",
        ):
            resolve_serializer("yaml")

    def test_resolve_wrong_type(self) -> None:
        """Something that is neither a name nor a Serializer is refused."""
        with pytest.raises(
            TypeError,
            match=r"^result_serializer must be a serializer name or a Serializer instance, "
            r"got int: 3\.$",
        ):
            resolve_serializer(3)  # type: ignore[arg-type]

    def test_custom_serializer_is_found_by_type(self, storage: LocalResultStorage) -> None:
        """A subclass with its own type is resolvable by name, so its refs load again."""

        class Upper(Serializer):
            type: ClassVar[str] = "test-upper"

            def dumps(self, obj: Any) -> bytes:
                return str(obj).upper().encode()

            def loads(self, data: bytes) -> Any:
                return data.decode()

        assert isinstance(resolve_serializer("test-upper"), Upper)
        ref = persist_result("abc", ResultSettings(storage=storage, serializer=Upper()))
        assert ResultRef.from_json(ref.to_json()).load() == "ABC"


# -- storage ----------------------------------------------------------------------------


class TestLocalResultStorage:
    def test_write_read_exists(self, storage: LocalResultStorage) -> None:
        """What is written under a key is read back; the directory is created on demand."""
        assert not storage.exists("k")
        storage.write("k", b"data")
        assert storage.exists("k")
        assert storage.read("k") == b"data"
        assert (storage.basepath / "k").read_bytes() == b"data"

    def test_nested_keys(self, storage: LocalResultStorage) -> None:
        """Keys with slashes are stored in subdirectories."""
        storage.write("flow/run-1/result", b"x")
        assert (storage.basepath / "flow" / "run-1" / "result").read_bytes() == b"x"
        assert storage.exists("flow/run-1/result")

    def test_overwrite(self, storage: LocalResultStorage) -> None:
        """Writing again replaces the bytes and leaves no temporary files."""
        storage.write("k", b"old")
        storage.write("k", b"new")
        assert storage.read("k") == b"new"
        assert os.listdir(storage.basepath) == ["k"]

    def test_failed_write_keeps_the_old_value(self, storage: LocalResultStorage) -> None:
        """A write that fails halfway leaves the previous file whole and no temporary file."""
        storage.write("k", b"old")
        with pytest.raises(TypeError):
            storage.write("k", "not bytes")  # type: ignore[arg-type]
        assert storage.read("k") == b"old"
        assert os.listdir(storage.basepath) == ["k"]

    def test_read_missing(self, storage: LocalResultStorage) -> None:
        """Reading a key that was never written raises FileNotFoundError."""
        with pytest.raises(FileNotFoundError):
            storage.read("missing")

    @pytest.mark.parametrize(
        "key", ["", "/etc/passwd", "../escape", "a/../b", "a//b", "./a", "a\\b"]
    )
    def test_invalid_keys(self, storage: LocalResultStorage, key: str) -> None:
        """Keys that are not plain relative paths are refused before touching the disk."""
        message = (
            f"Invalid result storage key {key!r}: a key is a relative path of non-empty names "
            "separated by '/', without '.', '..' or backslashes."
        )
        for op in (storage.exists, storage.read, lambda k: storage.write(k, b"")):
            with pytest.raises(ConfigurationError) as info:
                op(key)
            assert str(info.value) == message

    def test_basepath_is_absolute(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A relative directory is resolved against the working directory once."""
        monkeypatch.chdir(tmp_path)
        assert LocalResultStorage("rel").basepath == tmp_path / "rel"


class TestResolveStorage:
    def test_default(self, tmp_path: Path) -> None:
        """None is ``$STAGEFLOW_HOME/results``."""
        assert resolve_storage(None) == LocalResultStorage(tmp_path / "home" / "results")

    @pytest.mark.parametrize("convert", [str, Path])
    def test_path(self, tmp_path: Path, convert: Callable[[Path], Any]) -> None:
        """A path string or Path is a local directory."""
        assert resolve_storage(convert(tmp_path / "r")) == LocalResultStorage(tmp_path / "r")

    def test_storage_object(self, storage: LocalResultStorage) -> None:
        """A storage object is used as is."""
        assert resolve_storage(storage) is storage

    def test_wrong_type(self) -> None:
        """Anything else is refused."""
        with pytest.raises(
            TypeError,
            match=r"^result_storage must be a directory path or a LocalResultStorage, got "
            r"int: 5\.$",
        ):
            resolve_storage(5)  # type: ignore[arg-type]


# -- references -------------------------------------------------------------------------


class TestResultRef:
    def test_json_round_trip(self, storage: LocalResultStorage) -> None:
        """A ref is written as a small, stable JSON object and read back equal."""
        ref = persist_result({"a": 1}, ResultSettings(storage=storage), key="k1")
        assert json.loads(ref.to_json()) == {
            "storage_path": str(storage.basepath),
            "key": "k1",
            "serializer": "pickle",
            "cache_in_memory": True,
        }
        again = ResultRef.from_json(ref.to_json())
        assert again == ref
        assert hash(again) == hash(ref)
        assert again.load() == {"a": 1}

    def test_from_json_rejects_other_documents(self) -> None:
        """Documents that are not refs are refused."""
        with pytest.raises(pydantic.ValidationError):
            ResultRef.from_json('{"key": "k"}')
        with pytest.raises(pydantic.ValidationError):
            ResultRef.from_json(
                '{"storage_path": "/x", "key": "k", "serializer": "json", "extra": 1}'
            )

    def test_persisted_value_is_held_in_memory(self, storage: LocalResultStorage) -> None:
        """After persisting, the ref returns the very object without reading storage."""
        value = {"a": [1, 2]}
        ref = persist_result(value, ResultSettings(storage=storage), key="k")
        (storage.basepath / "k").unlink()
        assert ref.load() is value

    def test_load_caches(self, storage: LocalResultStorage) -> None:
        """A ref read from JSON reads storage once, then keeps the value."""
        ref = ResultRef.from_json(
            persist_result([1], ResultSettings(storage=storage), key="k").to_json()
        )
        first = ref.load()
        (storage.basepath / "k").unlink()
        assert ref.load() is first

    def test_cache_result_in_memory_false(self, storage: LocalResultStorage) -> None:
        """With cache_in_memory off, the ref never keeps the value: each load reads storage."""
        settings = ResultSettings(storage=storage, cache_in_memory=False)
        ref = persist_result([1], settings, key="k")
        assert ref.cache_in_memory is False
        assert ref.load() == [1]
        storage.write("k", PickleSerializer().dumps([2]))
        assert ref.load() == [2]
        assert ResultRef.from_json(ref.to_json()).cache_in_memory is False

    def test_load_missing(self, storage: LocalResultStorage) -> None:
        """A ref whose file is gone raises MissingResult naming the key and directory."""
        ref = ResultRef(storage_path=str(storage.basepath), key="gone", serializer="pickle")
        with pytest.raises(
            MissingResult,
            match=rf"^Cannot read the persisted result 'gone' in {re.escape(str(storage.basepath))}: ",
        ) as info:
            ref.load()
        assert isinstance(info.value.__cause__, FileNotFoundError)

    def test_load_corrupt(self, storage: LocalResultStorage) -> None:
        """Bytes the serializer cannot read raise MissingResult naming the serializer."""
        storage.write("k", b"{not json")
        ref = ResultRef(storage_path=str(storage.basepath), key="k", serializer="json")
        with pytest.raises(
            MissingResult,
            match=rf"^Cannot deserialize the persisted result 'k' in {re.escape(str(storage.basepath))} with "
            r"the 'json' serializer: ",
        ):
            ref.load()

    def test_load_unknown_serializer(self, storage: LocalResultStorage) -> None:
        """A ref naming a serializer this process does not know raises MissingResult."""
        storage.write("k", b"x")
        ref = ResultRef(storage_path=str(storage.basepath), key="k", serializer="nope")
        with pytest.raises(MissingResult, match=r"Unknown result serializer 'nope'"):
            ref.load()

    def test_state_result_loads_the_ref(self, storage: LocalResultStorage) -> None:
        """A Completed state holding a ref returns the loaded value."""
        ref = ResultRef.from_json(
            persist_result(42, ResultSettings(storage=storage), key="k").to_json()
        )
        assert states.Completed(data=ref).result() == 42

    def test_equality_ignores_loaded_value(self, storage: LocalResultStorage) -> None:
        """A loaded ref equals an unloaded one with the same fields."""
        ref = persist_result(1, ResultSettings(storage=storage), key="k")
        assert ref == ResultRef.from_json(ref.to_json())


# -- persisting -------------------------------------------------------------------------


class TestPersistResult:
    @pytest.mark.parametrize("serializer", ["pickle", "cloudpickle", "json"])
    def test_round_trip(self, storage: LocalResultStorage, serializer: str) -> None:
        """Each serializer writes a result that a fresh ref reads back."""
        settings = ResultSettings(storage=storage, serializer=serializer)
        ref = persist_result({"rows": [1, 2]}, settings, key="k")
        assert ref.serializer == serializer
        assert storage.read("k") == resolve_serializer(serializer).dumps({"rows": [1, 2]})
        assert ResultRef.from_json(ref.to_json()).load() == {"rows": [1, 2]}

    def test_random_keys(self, storage: LocalResultStorage) -> None:
        """Without a key, each result gets a new one."""
        settings = ResultSettings(storage=storage)
        first, second = persist_result(1, settings), persist_result(1, settings)
        assert first.key != second.key
        assert len(first.key) == 32
        assert storage.exists(first.key) and storage.exists(second.key)

    def test_writes_whatever_persist_says(self, storage: LocalResultStorage) -> None:
        """The caller decides whether to persist; persist_result always writes."""
        persist_result(1, ResultSettings(persist=False, storage=storage), key="k")
        assert storage.exists("k")

    def test_lock_cannot_be_persisted(self, storage: LocalResultStorage) -> None:
        """A lock cannot be serialized by any serializer: the error says so."""
        with pytest.raises(
            ResultSerializationError,
            match=r"^Cannot persist a result of type '_thread\.lock' with the 'pickle' "
            r"serializer: TypeError: cannot pickle '_thread\.lock' object\. No built-in "
            r"serializer can store it: return a value that can be pickled, or use "
            r"persist_result=False to keep the result in memory only\.$",
        ) as info:
            persist_result(threading.Lock(), ResultSettings(storage=storage))
        assert isinstance(info.value.__cause__, TypeError)
        assert not storage.basepath.exists()

    def test_generator_cannot_be_persisted(self, storage: LocalResultStorage) -> None:
        """A generator cannot be serialized, and is not consumed trying."""
        gen = numbers()
        with pytest.raises(
            ResultSerializationError,
            match=r"^Cannot persist a result of type 'generator' with the 'json' serializer: "
            r"TypeError: Object of type generator is not JSON serializable: it is an "
            r"iterator, and encoding it would consume it\. No built-in serializer can store "
            r"it: return a value that can be pickled, or use persist_result=False to keep "
            r"the result in memory only\.$",
        ):
            persist_result(gen, ResultSettings(storage=storage, serializer="json"))
        assert list(gen) == [1, 2]

    def test_closure_suggests_cloudpickle(self, storage: LocalResultStorage) -> None:
        """When cloudpickle would work, the error suggests it."""
        with pytest.raises(
            ResultSerializationError,
            match=r"^Cannot persist a result of type 'function' with the 'pickle' serializer: "
            r".+\. Use result_serializer='cloudpickle', which can serialize it, or "
            r"persist_result=False to keep the result in memory only\.$",
        ):
            persist_result(make_closure(1), ResultSettings(storage=storage))

    def test_json_failure_suggests_pickle(self, storage: LocalResultStorage) -> None:
        """When the JSON serializer fails on a picklable value, the error suggests pickle."""
        with pytest.raises(
            ResultSerializationError,
            match=r"^Cannot persist a result of type '[\w.]*Opaque' with the 'json' "
            r"serializer: PydanticSerializationError: Unable to serialize unknown type: "
            r".+\. Use result_serializer='pickle', which can serialize it, or "
            r"persist_result=False to keep the result in memory only\.$",
        ):
            persist_result(Opaque(), ResultSettings(storage=storage, serializer="json"))


class Opaque:
    """A plain class: picklable, but not JSON-encodable."""


# -- kept results -----------------------------------------------------------------------


class TestKeptResults:
    def test_small_results_are_inline(self) -> None:
        """A small result is kept inline, holds the very value, and reads back from its
        JSON (what a store writes) in another process's shape."""
        value = {"rows": [1, 2, 3]}
        kept = keep_result(value, ResultSettings())
        assert isinstance(kept, InlineResult) and kept.serializer == "pickle"
        assert kept.load() is value
        again = result_from_json(kept.to_json())
        assert isinstance(again, InlineResult) and again == kept
        assert again.load() == value and again.load() is again.load()

    def test_large_results_go_to_result_storage(self, storage: LocalResultStorage) -> None:
        """Past INLINE_RESULT_LIMIT serialized bytes, a result is written to result storage
        under a new key, and its reference is what the store keeps."""
        value = b"x" * (INLINE_RESULT_LIMIT + 1)
        kept = keep_result(value, ResultSettings(storage=storage))
        assert isinstance(kept, ResultRef) and (storage.basepath / kept.key).is_file()
        again = result_from_json(kept.to_json())
        assert isinstance(again, ResultRef) and again.load() == value

    def test_a_value_that_cannot_be_serialized_is_not_kept(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A result the serializer refuses stays in memory only, said at DEBUG level."""
        caplog.set_level("DEBUG", logger="stageflow")
        assert keep_result(threading.Lock(), ResultSettings()) is None
        assert [r.getMessage() for r in caplog.records] == [
            "A result of type '_thread.lock' is kept in memory only: TypeError: cannot "
            "pickle '_thread.lock' object"
        ]

    def test_without_memory_each_load_deserializes(self) -> None:
        """With cache_result_in_memory off, the handle holds no value: each load
        deserializes it."""
        value = [1]
        kept = keep_result(value, ResultSettings(cache_in_memory=False))
        assert isinstance(kept, InlineResult)
        assert kept.load() == value and kept.load() is not value

    def test_a_result_this_process_cannot_read(self) -> None:
        """A kept result whose class does not exist here raises MissingResult."""
        kept = InlineResult(serializer="pickle", data="bm90IGEgcGlja2xl")
        with pytest.raises(
            MissingResult,
            match=r"^Cannot deserialize the result kept in the store with the 'pickle' "
            r"serializer: ",
        ):
            kept.load()


class Refused(Exception):
    """A task's own exception, kept with its failed state."""


async def test_finished_task_results_are_kept_in_a_shared_store(
    tmp_path: Path, store_url: StoreUrl
) -> None:
    """On a store shared between processes, finished task results are durable without
    persist_result: another store on the same data (another process) reads small ones
    (inline), large ones (result storage) and a failure's exception; a value that cannot
    be serialized, or a task saying persist_result=False, stays in memory only."""

    @task
    async def small() -> dict[str, int]:
        return {"a": 1}

    @task
    async def large() -> bytes:
        return b"x" * (INLINE_RESULT_LIMIT + 1)

    @task
    async def unpicklable() -> Any:
        return threading.Lock()

    @task(persist_result=False)
    async def private() -> int:
        return 7

    @task
    async def refused() -> None:
        raise Refused("no")

    @flow
    async def pipeline() -> None:
        for each in (small, large, unpicklable, private, refused):
            await each(return_state=True)

    url = store_url(tmp_path)
    async with Runtime(store=url) as rt:
        await pipeline()
        assert rt.backend is not None
        here = {run.name.split("-")[0]: run.state for run in rt.backend.read_task_runs()}
        assert isinstance(here["small"].data, InlineResult)
        assert here["small"].result() == {"a": 1}
    other = open_backend(url)[0]
    try:
        there = {run.name.split("-")[0]: run.state for run in other.read_task_runs()}
    finally:
        other.close()
    assert there["small"].result() == {"a": 1}
    assert isinstance(there["large"].data, ResultRef)
    assert there["large"].result() == b"x" * (INLINE_RESULT_LIMIT + 1)
    with pytest.raises(Refused, match=r"^no$"):
        there["refused"].result()
    for name in ("unpicklable", "private"):
        assert there[name].data is states.UNAVAILABLE


async def test_a_memory_store_keeps_results_as_they_are() -> None:
    """A store of this process alone keeps the results themselves: nothing is
    serialized."""
    value = {"a": [1]}

    @task
    async def give() -> dict[str, list[int]]:
        return value

    @flow
    async def pipeline() -> Any:
        return await give(return_state=True)

    async with Runtime(store="memory://"):
        state = await pipeline()
    assert state.data is value


# -- settings ---------------------------------------------------------------------------


def fn() -> None:
    pass


def flow_ctx_with(settings: ResultSettings | None, **parameters: Any) -> FlowRunContext:
    """A flow run context as the engine builds one (only the fields results use matter)."""
    return FlowRunContext(
        flow=None,  # type: ignore[arg-type]
        flow_run=FlowRun(name="brave-otter", flow_name="etl"),
        parameters=parameters,
        log_prints=False,
        start_time=datetime.now(timezone.utc),
        runtime=None,  # type: ignore[arg-type]
        result_settings=settings,
    )


class TestPersistByDefault:
    @pytest.mark.parametrize(
        ("raw", "expected"),
        [
            ("true", True),
            ("1", True),
            ("YES", True),
            (" on ", True),
            ("false", False),
            ("0", False),
            ("", False),
        ],
    )
    def test_values(self, monkeypatch: pytest.MonkeyPatch, raw: str, expected: bool) -> None:
        """The variable takes the usual boolean words."""
        monkeypatch.setenv(PERSIST_BY_DEFAULT_ENV, raw)
        assert persist_by_default() is expected
        assert ResultSettings().persist is expected

    def test_unset(self) -> None:
        """Unset means off."""
        assert persist_by_default() is False

    def test_invalid(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Anything else is refused with the variable's name."""
        monkeypatch.setenv(PERSIST_BY_DEFAULT_ENV, "maybe")
        with pytest.raises(
            ConfigurationError,
            match=r"^STAGEFLOW_RESULTS_PERSIST_BY_DEFAULT must be 'true' or 'false', got 'maybe'\.$",
        ):
            persist_by_default()


class TestResultSettings:
    def test_defaults(self, tmp_path: Path) -> None:
        """Not persisted, pickled into $STAGEFLOW_HOME/results, kept in memory."""
        assert ResultSettings() == ResultSettings(
            persist=False,
            storage=LocalResultStorage(tmp_path / "home" / "results"),
            serializer=PickleSerializer(),
            storage_key=None,
            cache_in_memory=True,
        )

    def test_converts_options(self, tmp_path: Path) -> None:
        """Storage and serializer accept what the options accept."""
        settings = ResultSettings(storage=str(tmp_path), serializer="json")
        assert settings.storage == LocalResultStorage(tmp_path)
        assert settings.serializer == JSONSerializer()

    def test_frozen(self) -> None:
        """Settings cannot be changed once built."""
        with pytest.raises(AttributeError):
            ResultSettings().persist = True  # type: ignore[misc]


def key_fn(ctx: Any, inputs: dict[str, Any]) -> str:
    return "k"


# (task options, flow run's persist or None outside a flow, expected persist)
PERSIST_RULES: list[tuple[dict[str, Any], bool | None, bool]] = [
    ({}, None, False),
    ({}, False, False),
    ({}, True, True),
    ({"persist_result": True}, False, True),
    ({"persist_result": False}, True, False),
    ({"cache_policy": INPUTS}, False, True),
    ({"cache_policy": DEFAULT}, None, True),
    ({"cache_policy": INPUTS - "x"}, None, True),
    ({"cache_policy": NONE}, None, False),
    ({"cache_policy": NONE}, True, True),
    ({"cache_policy": None}, None, False),
    ({"cache_key_fn": key_fn}, False, True),
    ({"result_storage_key": "{parameters[x]}"}, False, True),
    ({"result_storage": "/tmp/somewhere"}, False, True),
    ({"result_serializer": "json"}, False, True),
    ({"cache_policy": INPUTS, "persist_result": False}, True, False),
    ({"cache_key_fn": key_fn, "persist_result": False}, None, False),
    ({"result_storage_key": "k", "persist_result": False}, None, False),
    (
        {"result_storage": "/tmp/x", "result_serializer": "json", "persist_result": False},
        True,
        False,
    ),
]


class TestResultSettingsForTask:
    @pytest.mark.parametrize(("options", "flow_persist", "expected"), PERSIST_RULES)
    def test_persist_rules(
        self, options: dict[str, Any], flow_persist: bool | None, expected: bool
    ) -> None:
        """Prefect 3's defaulting: explicit wins, caching or storage options imply persisting,
        otherwise the flow run's setting applies."""
        flow_ctx = (
            None if flow_persist is None else flow_ctx_with(ResultSettings(persist=flow_persist))
        )
        assert result_settings_for_task(Task(fn, **options), flow_ctx).persist is expected

    def test_env_default_outside_a_flow(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Outside a flow run, the environment variable decides."""
        monkeypatch.setenv(PERSIST_BY_DEFAULT_ENV, "true")
        assert result_settings_for_task(Task(fn), None).persist is True
        assert result_settings_for_task(Task(fn, persist_result=False), None).persist is False

    def test_inherits_storage_and_serializer(self, tmp_path: Path) -> None:
        """A task that sets neither uses the flow run's storage and serializer."""
        flow_settings = ResultSettings(persist=True, storage=tmp_path, serializer="json")
        settings = result_settings_for_task(Task(fn), flow_ctx_with(flow_settings))
        assert settings.storage is flow_settings.storage
        assert settings.serializer is flow_settings.serializer

    def test_own_storage_and_serializer(self, tmp_path: Path) -> None:
        """A task's own storage and serializer win over the flow's."""
        flow_settings = ResultSettings(storage=tmp_path / "flow", serializer="json")
        the_task = Task(fn, result_storage=tmp_path / "task", result_serializer="cloudpickle")
        settings = result_settings_for_task(the_task, flow_ctx_with(flow_settings))
        assert settings.storage == LocalResultStorage(tmp_path / "task")
        assert settings.serializer == CloudpickleSerializer()

    def test_defaults_outside_a_flow(self, tmp_path: Path) -> None:
        """Outside a flow run, or a flow run without settings, the defaults apply."""
        expected = ResultSettings()
        assert result_settings_for_task(Task(fn), None) == expected
        assert result_settings_for_task(Task(fn), flow_ctx_with(None)) == expected

    def test_storage_key_and_memory_are_the_tasks_own(self) -> None:
        """The storage key template and cache_result_in_memory are never inherited."""
        flow_settings = ResultSettings(storage_key="flow-key", cache_in_memory=False)
        settings = result_settings_for_task(Task(fn), flow_ctx_with(flow_settings))
        assert settings.storage_key is None
        assert settings.cache_in_memory is True
        settings = result_settings_for_task(
            Task(fn, result_storage_key="{parameters[x]}", cache_result_in_memory=False), None
        )
        assert settings.storage_key == "{parameters[x]}"
        assert settings.cache_in_memory is False

    def test_bad_serializer_name(self) -> None:
        """An unknown serializer name fails when the settings are built."""
        with pytest.raises(ConfigurationError, match=r"^Unknown result serializer 'xml'"):
            result_settings_for_task(Task(fn, result_serializer="xml"), None)


class TestResultSettingsForFlow:
    @pytest.mark.parametrize(
        ("options", "parent_persist", "expected"),
        [
            ({}, None, False),
            ({}, True, True),
            ({}, False, False),
            ({"persist_result": True}, None, True),
            ({"persist_result": False}, True, False),
            ({"result_storage": "/tmp/x"}, None, True),
            ({"result_serializer": "json"}, False, True),
            ({"result_serializer": "json", "persist_result": False}, True, False),
        ],
    )
    def test_persist_rules(
        self, options: dict[str, Any], parent_persist: bool | None, expected: bool
    ) -> None:
        """A flow persists if it says so, if it sets storage or a serializer, or if its parent does."""
        parent = (
            None
            if parent_persist is None
            else flow_ctx_with(ResultSettings(persist=parent_persist))
        )
        assert result_settings_for_flow(Flow(fn, **options), parent).persist is expected

    def test_top_level_defaults(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A top-level flow run gets the defaults, and the environment variable."""
        assert result_settings_for_flow(Flow(fn), None) == ResultSettings()
        monkeypatch.setenv(PERSIST_BY_DEFAULT_ENV, "1")
        assert result_settings_for_flow(Flow(fn), None).persist is True

    def test_subflow_inherits(self, tmp_path: Path) -> None:
        """A subflow uses its parent's storage and serializer unless it sets its own."""
        parent = flow_ctx_with(ResultSettings(storage=tmp_path, serializer="json"))
        settings = result_settings_for_flow(Flow(fn), parent)
        assert settings.storage == LocalResultStorage(tmp_path)
        assert settings.serializer == JSONSerializer()
        own = result_settings_for_flow(Flow(fn, result_serializer="cloudpickle"), parent)
        assert own.serializer == CloudpickleSerializer()

    def test_cache_in_memory(self) -> None:
        """cache_result_in_memory is the flow's own."""
        assert (
            result_settings_for_flow(Flow(fn, cache_result_in_memory=False), None).cache_in_memory
            is False
        )

    def test_tasks_inherit_from_the_flow(self, tmp_path: Path) -> None:
        """Settings flow down: flow options reach a task that sets none."""
        flow_settings = result_settings_for_flow(Flow(fn, result_storage=tmp_path), None)
        settings = result_settings_for_task(Task(fn), flow_ctx_with(flow_settings))
        assert settings.persist is True
        assert settings.storage == LocalResultStorage(tmp_path)


# -- storage keys -----------------------------------------------------------------------


def make_task_run(**fields: Any) -> TaskRun:
    return TaskRun(name="load-3", task_key="load-abc", dynamic_key="3", **fields)


class TestFormatStorageKey:
    def test_fields(self) -> None:
        """Parameters and the task and flow run records can be used."""
        flow_run = FlowRun(name="brave-otter", flow_name="etl")
        task_run = make_task_run(flow_run_id=flow_run.id)
        key = format_storage_key(
            "{flow_run.flow_name}/{flow_run.name}/{task_run.name}-{parameters[x]}-{task_run.id}",
            {"x": 7},
            task_run,
            flow_run,
        )
        assert key == f"etl/brave-otter/load-3-7-{task_run.id}"

    def test_nested_parameters(self) -> None:
        """``str.format`` indexing reaches into parameters."""
        assert (
            format_storage_key("{parameters[cfg][name]}", {"cfg": {"name": "a"}}, None, None) == "a"
        )

    def test_no_placeholders(self) -> None:
        """A plain string is its own key."""
        assert format_storage_key("fixed-key", {}, make_task_run(), None) == "fixed-key"

    @pytest.mark.parametrize(
        ("template", "error"),
        [
            ("{parameters[y]}", "KeyError: 'y'"),
            ("{task_run.nope}", "AttributeError: 'TaskRun' object has no attribute 'nope'"),
            ("{flow_run.name}", "AttributeError: 'NoneType' object has no attribute 'name'"),
            ("{unknown}", "KeyError: 'unknown'"),
            ("{parameters[x", "ValueError: expected '}' before end of string"),
        ],
    )
    def test_errors(self, template: str, error: str) -> None:
        """A template that cannot be filled in says why and what it may use."""
        with pytest.raises(ConfigurationError) as info:
            format_storage_key(template, {"x": 1}, make_task_run(), None)
        assert str(info.value) == (
            f"Cannot fill in result_storage_key {template!r}: {error}. A template may use "
            "{parameters[name]}, {task_run.<field>} and {flow_run.<field>} (flow_run is None "
            "outside a flow run)."
        )


def double(x: int) -> int:
    return 2 * x


class TestTaskCacheKey:
    def ctx(
        self, the_task: Any, flow_ctx: FlowRunContext | None, **parameters: Any
    ) -> TaskRunContext:
        return TaskRunContext(
            task=the_task,
            task_run=make_task_run(flow_run_id=flow_ctx.flow_run.id if flow_ctx else None),
            parameters=parameters,
            log_prints=False,
            start_time=datetime.now(timezone.utc),
        )

    def test_no_key_without_persistence(self) -> None:
        """Results that are not persisted are not cached."""
        the_task = Task(double, cache_policy=INPUTS, persist_result=False)
        settings = result_settings_for_task(the_task, None)
        assert task_cache_key(self.ctx(the_task, None, x=1), None, settings) is None

    def test_policy_key(self) -> None:
        """With persistence, the task's cache policy computes the key."""
        flow_ctx = flow_ctx_with(ResultSettings(persist=True), n=1)
        the_task = Task(double)
        ctx = self.ctx(the_task, flow_ctx, x=1)
        settings = result_settings_for_task(the_task, flow_ctx)
        assert task_cache_key(ctx, flow_ctx, settings) == DEFAULT.compute_key(
            ctx, {"x": 1}, {"n": 1}
        )

    def test_flow_parameters_are_passed(self) -> None:
        """The flow run's parameters reach the policy."""
        from runtime.cache_policies import FLOW_PARAMETERS

        flow_ctx = flow_ctx_with(None, n=1)
        the_task = Task(double, cache_policy=FLOW_PARAMETERS)
        ctx = self.ctx(the_task, flow_ctx, x=1)
        settings = result_settings_for_task(the_task, flow_ctx)
        assert task_cache_key(ctx, flow_ctx, settings) == hash_objects({"n": 1})

    def test_storage_key_is_the_cache_key(self) -> None:
        """A result_storage_key, filled in, is the key (and overrides any policy)."""
        flow_ctx = flow_ctx_with(None)
        the_task = Task(
            double, cache_policy=INPUTS, result_storage_key="{flow_run.name}/{parameters[x]}"
        )
        settings = result_settings_for_task(the_task, flow_ctx)
        ctx = self.ctx(the_task, flow_ctx, x=5)
        assert task_cache_key(ctx, flow_ctx, settings) == "brave-otter/5"

    def test_no_key_from_the_policy(self) -> None:
        """A policy that gives no key means no caching."""
        the_task = Task(double, cache_policy=INPUTS)
        settings = result_settings_for_task(the_task, None)
        assert task_cache_key(self.ctx(the_task, None), None, settings) is None


def test_public_names() -> None:
    """The public surfaces of runtime.results and runtime.serializers are pinned."""
    import runtime.results
    import runtime.serializers

    assert runtime.results.__all__ == [
        "INLINE_RESULT_LIMIT",
        "PERSIST_BY_DEFAULT_ENV",
        "InlineResult",
        "LocalResultStorage",
        "ResultRef",
        "ResultSettings",
        "format_storage_key",
        "persist_by_default",
        "persist_result",
        "refresh_cache_by_default",
        "resolve_storage",
        "result_settings_for_flow",
        "result_settings_for_task",
        "task_cache_key",
    ]
    assert runtime.serializers.__all__ == [
        "CloudpickleSerializer",
        "JSONSerializer",
        "PickleSerializer",
        "Serializer",
        "resolve_serializer",
    ]
