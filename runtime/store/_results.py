"""Persisted results: where a run's return value is written, and the reference states carry.

:func:`persist_result` serializes the value, writes it to the run's
:class:`LocalResultStorage` and returns a :class:`ResultRef`; ``ResultRef.load()`` reads
it back, in this process or another. A store saves a state's ``ResultRef`` with
:meth:`ResultRef.to_json` and rebuilds it with :func:`result_from_json`.

**Kept results.** A finished task run's result is kept in a store shared between
processes even when it is not persisted (:func:`keep_result`): up to
:data:`INLINE_RESULT_LIMIT` serialized bytes inline, in the state's row (an
:class:`InlineResult`), larger ones in result storage (a :class:`ResultRef`). So a resumed
run finds its finished work, and a task worker's result reaches the process that queued
the run.

Which runs persist, where and how is decided per run by
:mod:`runtime.engine._result_settings`, which builds a :class:`ResultSettings`.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import logging
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, final

import attrs
from pydantic import BaseModel, ConfigDict, PrivateAttr

from ..core._exceptions import ConfigurationError, MissingResult, ResultSerializationError
from ..core._serializers import (
    CloudpickleSerializer,
    PickleSerializer,
    Serializer,
    resolve_serializer,
)
from ..core._settings import stageflow_home
from ..core._states import ResultHandle

if TYPE_CHECKING:
    from ..core._models import FlowRun, TaskRun

__all__ = [
    "INLINE_RESULT_LIMIT",
    "PERSIST_BY_DEFAULT_ENV",
    "InlineResult",
    "LocalResultStorage",
    "ResultRef",
    "ResultSettings",
    "format_storage_key",
    "keep_result",
    "persist_by_default",
    "persist_result",
    "refresh_cache_by_default",
    "resolve_storage",
    "result_from_json",
    "stored_result",
]

INLINE_RESULT_LIMIT = 64 * 1024
"""The most serialized bytes of a kept result stored inline, in its state's row; larger
results kept by :func:`keep_result` go to result storage."""

PERSIST_BY_DEFAULT_ENV = "STAGEFLOW_RESULTS_PERSIST_BY_DEFAULT"
REFRESH_CACHE_ENV = "STAGEFLOW_TASKS_REFRESH_CACHE"
"""The environment variable that turns result persistence on for runs that do not choose."""

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})


# -- storage ----------------------------------------------------------------------------


def _absolute(path: str | os.PathLike[str]) -> Path:
    return Path(path).expanduser().absolute()


@final
@attrs.frozen
class LocalResultStorage:
    """A directory of result files, one per key; keys may contain ``/`` for subdirectories.

    Directories are created on the first write. Each write goes to a temporary file in
    the target directory, then replaces the target in one step (``os.replace``), so a
    reader sees the old bytes or the new ones, never a partial file. Writes are not
    fsynced: a result survives a process crash, not necessarily a power loss.

    Attributes:
        basepath: the directory, made absolute so that references to it work from any
            working directory.
    """

    basepath: Path = attrs.field(converter=_absolute)

    def write(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``, replacing what was there.

        Raises:
            ConfigurationError: ``key`` is not a relative path inside the directory.
            OSError: the file could not be written.
        """
        path = self._path_for(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(temp, "xb") as file:
                file.write(data)
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
            raise

    def read(self, key: str) -> bytes:
        """Return the bytes stored under ``key``.

        Raises:
            ConfigurationError: ``key`` is not a relative path inside the directory.
            FileNotFoundError: nothing is stored under ``key``.
        """
        return self._path_for(key).read_bytes()

    def exists(self, key: str) -> bool:
        """Return whether something is stored under ``key``.

        Raises:
            ConfigurationError: ``key`` is not a relative path inside the directory.
        """
        return self._path_for(key).is_file()

    def _path_for(self, key: str) -> Path:
        parts = key.split("/") if isinstance(key, str) else []
        if not parts or any(part in ("", ".", "..") or "\\" in part for part in parts):
            raise ConfigurationError(
                f"Invalid result storage key {key!r}: a key is a relative path of non-empty "
                "names separated by '/', without '.', '..' or backslashes."
            )
        return self.basepath.joinpath(*parts)


def _default_storage() -> LocalResultStorage:
    return LocalResultStorage(stageflow_home() / "results")


def resolve_storage(
    value: str | os.PathLike[str] | LocalResultStorage | None,
) -> LocalResultStorage:
    """Return the storage ``value`` stands for.

    Args:
        value: None for the default, ``$STAGEFLOW_HOME/results``; a directory path;
            or a :class:`LocalResultStorage`.

    Raises:
        TypeError: ``value`` is none of these.
    """
    if value is None:
        return _default_storage()
    if isinstance(value, LocalResultStorage):
        return value
    if isinstance(value, (str, os.PathLike)):
        return LocalResultStorage(value)
    raise TypeError(
        f"result_storage must be a directory path or a LocalResultStorage, got "
        f"{type(value).__name__}: {value!r}."
    )


# -- references -------------------------------------------------------------------------


@final
class ResultRef(BaseModel, ResultHandle):
    """A persisted result: where it is stored and how to read it.

    ``load()`` reads and deserializes the value, then keeps it in memory for later calls,
    unless ``cache_in_memory`` is false. Refs compare and serialize by their fields only.

    Attributes:
        storage_path: the absolute directory of the :class:`LocalResultStorage`.
        key: the key under which the result is stored.
        serializer: the ``type`` of the serializer that wrote it.
        cache_in_memory: whether to keep the value in memory once loaded.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    storage_path: str
    key: str
    serializer: str
    cache_in_memory: bool = True

    # (value,) once loaded. A 1-tuple rather than a sentinel: pydantic deep-copies
    # private defaults, which would turn a sentinel object into a different object.
    _loaded: tuple[Any] | None = PrivateAttr(default=None)

    @property
    def storage(self) -> LocalResultStorage:
        """The storage the result is in."""
        return LocalResultStorage(self.storage_path)

    def load(self) -> Any:
        """Return the result, reading it from storage unless it is held in memory.

        Raises:
            MissingResult: the result file is gone, cannot be read, or cannot be
                deserialized.
        """
        if self._loaded is not None:
            return self._loaded[0]
        where = f"{self.key!r} in {self.storage_path}"
        try:
            data = self.storage.read(self.key)
        except (OSError, ConfigurationError) as exc:
            raise MissingResult(f"Cannot read the persisted result {where}: {exc}") from exc
        value = _deserialize(self.serializer, data, f"the persisted result {where}")
        if self.cache_in_memory:
            self._loaded = (value,)
        return value

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ResultRef):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def _fields(self) -> tuple[str, str, str, bool]:
        return (self.storage_path, self.key, self.serializer, self.cache_in_memory)

    def to_json(self) -> str:
        """Return the reference (never the value) as a JSON string."""
        return self.model_dump_json()

    @classmethod
    def from_json(cls, data: str | bytes) -> ResultRef:
        """Return the reference :meth:`to_json` wrote.

        Raises:
            pydantic.ValidationError: ``data`` is not such a JSON document.
        """
        return cls.model_validate_json(data)


def _deserialize(serializer: str, data: bytes, what: str) -> Any:
    """Return the value ``data`` holds, read with the serializer named ``serializer``.

    Raises:
        MissingResult: it cannot be read (naming ``what``, the serializer and why).
    """
    try:
        return resolve_serializer(serializer).loads(data)
    except Exception as exc:
        raise MissingResult(
            f"Cannot deserialize {what} with the {serializer!r} serializer: {exc}"
        ) from exc


@final
class InlineResult(ResultHandle):
    """A result kept in the store itself, serialized, in the row of its state.

    ``load()`` deserializes it, then keeps the value in memory for later calls, unless
    ``cache_in_memory`` is false; a result kept by this process holds its value already.
    A plain class rather than a pydantic model like :class:`ResultRef`: one is made for
    every finished task run on a shared store, so it costs under a microsecond.

    Attributes:
        serializer: the ``type`` of the serializer that wrote it.
        data: the serialized value, base64-encoded.
        cache_in_memory: whether to keep the value in memory once loaded.
    """

    __slots__ = ("_loaded", "cache_in_memory", "data", "serializer")

    def __init__(self, serializer: str, data: str, cache_in_memory: bool = True) -> None:
        self.serializer = serializer
        self.data = data
        self.cache_in_memory = cache_in_memory
        self._loaded: tuple[Any] | None = None  # (value,) once loaded, as ResultRef's

    def load(self) -> Any:
        """Return the result, deserializing it unless it is held in memory.

        Raises:
            MissingResult: it cannot be deserialized here (its class does not exist in
                this process, say).
        """
        if self._loaded is not None:
            return self._loaded[0]
        data = base64.b64decode(self.data)
        value = _deserialize(self.serializer, data, "the result kept in the store")
        if self.cache_in_memory:
            self._loaded = (value,)
        return value

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, InlineResult):
            return NotImplemented
        return (self.serializer, self.data) == (other.serializer, other.data)

    def __hash__(self) -> int:
        return hash((self.serializer, self.data))

    def __repr__(self) -> str:
        return f"InlineResult(serializer={self.serializer!r}, {len(self.data)} base64 chars)"

    def to_json(self) -> str:
        """Return the result, serialized, as a JSON string."""
        # Built by hand (base64 needs no escaping): a json.dumps per task run costs 3 µs.
        memory = "true" if self.cache_in_memory else "false"
        serializer = _quoted(self.serializer)
        return f'{{"inline":"{self.data}","serializer":{serializer},"memory":{memory}}}'

    @classmethod
    def from_json(cls, text: str | bytes) -> InlineResult:
        """Return the result :meth:`to_json` wrote.

        Raises:
            ValueError: ``text`` is not such a JSON document.
        """
        try:
            fields = json.loads(text)
            return cls(fields["serializer"], fields["inline"], bool(fields.get("memory", True)))
        except (TypeError, KeyError, json.JSONDecodeError) as exc:
            raise ValueError(f"Not a kept result: {text!r} ({exc}).") from exc


@functools.lru_cache(maxsize=64)
def _quoted(name: str) -> str:
    return json.dumps(name)


def stored_result(data: Any) -> bool:
    """Whether a state's ``data`` is a result a store can keep (a reference or inline)."""
    return isinstance(data, (ResultRef, InlineResult))


def result_from_json(text: str | bytes) -> ResultRef | InlineResult:
    """Return the :class:`ResultRef` or :class:`InlineResult` whose ``to_json`` wrote ``text``.

    Raises:
        ValueError: ``text`` is neither (``pydantic.ValidationError`` for a broken ref).
    """
    inline = b'"inline"' in text if isinstance(text, bytes) else '"inline"' in text
    if inline:
        return InlineResult.from_json(text)
    return ResultRef.from_json(text)


_logger = logging.getLogger("stageflow")


def keep_result(value: Any, settings: ResultSettings) -> ResultRef | InlineResult | None:
    """Return a handle under which a store keeps ``value`` (a finished task run's result,
    or a failed one's exception) though it is not persisted: inline if its serialized
    form has at most :data:`INLINE_RESULT_LIMIT` bytes, else written to result storage
    under a new key; None if the serializer cannot serialize it or it cannot be written
    (it is then kept in this process's memory only, as before; said at DEBUG level).

    The handle holds ``value`` itself (unless ``settings.cache_in_memory`` is false), so
    this process never reads it back.
    """
    serializer = settings.serializer
    try:
        data = serializer.dumps(value)
        if len(data) <= INLINE_RESULT_LIMIT:
            handle: ResultRef | InlineResult = InlineResult(
                serializer=serializer.type,
                data=base64.b64encode(data).decode("ascii"),
                cache_in_memory=settings.cache_in_memory,
            )
        else:
            key = uuid.uuid4().hex
            settings.storage.write(key, data)
            handle = ResultRef(
                storage_path=str(settings.storage.basepath),
                key=key,
                serializer=serializer.type,
                cache_in_memory=settings.cache_in_memory,
            )
    except Exception as exc:  # noqa: BLE001 - a result that cannot be kept stays in memory
        _logger.debug(
            "A result of type %r is kept in memory only: %s: %s",
            _type_name(value),
            type(exc).__name__,
            exc,
        )
        return None
    if settings.cache_in_memory:
        handle._loaded = (value,)
    return handle


# -- settings ---------------------------------------------------------------------------


def persist_by_default() -> bool:
    """Return whether runs that do not choose persist their results (from the environment).

    Raises:
        ConfigurationError: the variable holds something other than a boolean word.
    """
    return _env_flag(PERSIST_BY_DEFAULT_ENV)


def refresh_cache_by_default() -> bool:
    """Return whether task runs that do not choose ignore cached results (from the
    environment variable ``STAGEFLOW_TASKS_REFRESH_CACHE``).

    Raises:
        ConfigurationError: the variable holds something other than a boolean word.
    """
    return _env_flag(REFRESH_CACHE_ENV)


def _env_flag(name: str) -> bool:
    raw = os.environ.get(name, "")
    word = raw.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ConfigurationError(f"{name} must be 'true' or 'false', got {raw!r}.")


def _serializer_or_default(value: str | Serializer | None) -> Serializer:
    return PickleSerializer() if value is None else resolve_serializer(value)


@final
@attrs.frozen
class ResultSettings:
    """How a run's result is persisted.

    Build them with :func:`result_settings_for_task` and :func:`result_settings_for_flow`;
    a bare ``ResultSettings()`` holds the defaults. ``storage`` and ``serializer`` accept
    what the ``result_storage`` and ``result_serializer`` options accept.

    Attributes:
        persist: whether the result is written to storage.
        storage: where it is written.
        serializer: how it is turned into bytes (``pickle`` by default).
        storage_key: a ``result_storage_key`` template (see :func:`format_storage_key`),
            or None for a key chosen per result.
        cache_in_memory: whether a persisted result is also kept in memory.
    """

    persist: bool = attrs.field(factory=persist_by_default)
    storage: LocalResultStorage = attrs.field(default=None, converter=resolve_storage)
    serializer: Serializer = attrs.field(default=None, converter=_serializer_or_default)
    storage_key: str | None = None
    cache_in_memory: bool = True


_defaults: dict[tuple[str | None, str | None], ResultSettings] = {}


def default_settings() -> ResultSettings:
    """Return the settings of a run with no options and no parent (from the environment)."""
    # Memoized: building settings costs tens of microseconds, and every run needs them.
    env_key = (os.environ.get(PERSIST_BY_DEFAULT_ENV), os.environ.get("STAGEFLOW_HOME"))
    settings = _defaults.get(env_key)
    if settings is None:
        settings = _defaults[env_key] = ResultSettings()
    return settings


# -- keys and writing -------------------------------------------------------------------


def format_storage_key(
    template: str,
    parameters: dict[str, Any],
    task_run: TaskRun | None,
    flow_run: FlowRun | None,
) -> str:
    """Fill in a ``result_storage_key`` template, e.g. ``"{flow_run.name}/{parameters[x]}"``.

    The template is formatted with ``str.format`` and the names ``parameters`` (the run's
    arguments), ``task_run`` and ``flow_run`` (the run records; ``flow_run`` is None
    outside a flow run).

    Raises:
        ConfigurationError: the template refers to something that does not exist.
    """
    try:
        return template.format(parameters=parameters, task_run=task_run, flow_run=flow_run)
    except (AttributeError, IndexError, KeyError, ValueError) as exc:
        raise ConfigurationError(
            f"Cannot fill in result_storage_key {template!r}: {type(exc).__name__}: {exc}. "
            "A template may use {parameters[name]}, {task_run.<field>} and "
            "{flow_run.<field>} (flow_run is None outside a flow run)."
        ) from exc


def persist_result(value: Any, settings: ResultSettings, key: str | None = None) -> ResultRef:
    """Serialize ``value``, write it to ``settings.storage`` and return its reference.

    The caller decides whether to persist (``settings.persist``); this always writes.

    Args:
        value: the result.
        settings: the run's result settings.
        key: the storage key (a cache key or a filled-in ``result_storage_key``); a new
            random key if None. An existing result under the same key is replaced.

    Raises:
        ResultSerializationError: the serializer cannot serialize ``value``.
        ConfigurationError: ``key`` is not a valid storage key.
        OSError: the result could not be written.
    """
    serializer = settings.serializer
    try:
        data = serializer.dumps(value)
    except Exception as exc:
        raise ResultSerializationError(
            f"Cannot persist a result of type {_type_name(value)!r} with the "
            f"{serializer.type!r} serializer: {type(exc).__name__}: {exc}. "
            f"{_serialization_fix(serializer, value)}"
        ) from exc
    if key is None:
        key = uuid.uuid4().hex
    settings.storage.write(key, data)
    ref = ResultRef(
        storage_path=str(settings.storage.basepath),
        key=key,
        serializer=serializer.type,
        cache_in_memory=settings.cache_in_memory,
    )
    if settings.cache_in_memory:
        ref._loaded = (value,)
    return ref


def _type_name(value: Any) -> str:
    cls = type(value)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


def _serialization_fix(serializer: Serializer, value: Any) -> str:
    # Only on the error path: try the other serializers so the advice is one that works.
    for alternative in (PickleSerializer(), CloudpickleSerializer()):
        if alternative.type == serializer.type:
            continue
        try:
            alternative.dumps(value)
        except Exception:  # noqa: BLE001, S112 - any failure means "not this one"
            continue
        return (
            f"Use result_serializer={alternative.type!r}, which can serialize it, or "
            "persist_result=False to keep the result in memory only."
        )
    return (
        "No built-in serializer can store it: return a value that can be pickled, or use "
        "persist_result=False to keep the result in memory only."
    )
