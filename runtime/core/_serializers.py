"""Serializers: how a persisted result becomes bytes and back.

Usage::

    from runtime.serializers import resolve_serializer

    serializer = resolve_serializer("json")      # or "pickle", "cloudpickle", or an instance
    data = serializer.dumps({"rows": 3})
    assert serializer.loads(data) == {"rows": 3}

Pick one per flow or task with ``result_serializer=``. ``"pickle"`` (the default) handles
most Python objects; ``"cloudpickle"`` also handles functions, lambdas and closures;
``"json"`` writes human-readable files but round-trips only JSON's own types (see
:class:`JSONSerializer`).

A custom serializer subclasses :class:`Serializer`, sets a unique ``type`` and takes no
constructor arguments: a persisted result records only the ``type`` name, and
:func:`resolve_serializer` finds the class again by that name when the result is loaded.
"""

from __future__ import annotations

import abc
import json
import pickle
from collections.abc import Iterator
from typing import Any, ClassVar, final

import attrs
import cloudpickle  # type: ignore[import-untyped]
from pydantic_core import to_jsonable_python

from ._exceptions import ConfigurationError

__all__ = [
    "CloudpickleSerializer",
    "JSONSerializer",
    "PickleSerializer",
    "Serializer",
    "resolve_serializer",
]

# type name -> class, filled in by Serializer.__init_subclass__.
_by_type: dict[str, type[Serializer]] = {}


class Serializer(abc.ABC):
    """Turns a result into bytes and back.

    Attributes:
        type: the name results record to find this serializer again (``"pickle"``...).
    """

    type: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Only a class that names itself registers; helper bases and subclasses that
        # inherit a built-in's name do not take over that name.
        if "type" in cls.__dict__:
            _by_type[cls.type] = cls

    @abc.abstractmethod
    def dumps(self, obj: Any) -> bytes:
        """Return ``obj`` as bytes.

        Raises:
            Exception: whatever the underlying library raises for an unsupported object.
        """

    @abc.abstractmethod
    def loads(self, data: bytes) -> Any:
        """Return the object ``data`` was made from by :meth:`dumps`."""


@final
@attrs.frozen
class PickleSerializer(Serializer):
    """The standard library's :mod:`pickle` (highest protocol).

    Functions and classes are pickled by reference, so lambdas, closures and functions
    defined inside other functions cannot be serialized: use :class:`CloudpickleSerializer`.
    """

    type: ClassVar[str] = "pickle"

    def dumps(self, obj: Any) -> bytes:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)

    def loads(self, data: bytes) -> Any:
        return pickle.loads(data)


@final
@attrs.frozen
class CloudpickleSerializer(Serializer):
    """:mod:`cloudpickle`: pickle that also serializes functions, lambdas and closures by value.

    The output is ordinary pickle data; loading it needs cloudpickle's helpers importable.
    """

    type: ClassVar[str] = "cloudpickle"

    def dumps(self, obj: Any) -> bytes:
        return cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)  # type: ignore[no-any-return]

    def loads(self, data: bytes) -> Any:
        return pickle.loads(data)


@final
@attrs.frozen
class JSONSerializer(Serializer):
    """UTF-8 JSON, with pydantic's encoding for values JSON has no type for.

    Dicts with string keys, lists, strings, ints, floats (including nan and infinity),
    bools and None round-trip exactly. Everything else comes back as its JSON form:

    - tuples, sets and frozensets come back as lists;
    - dict keys that are ints, floats, bools or None come back as strings;
    - datetimes, dates, times, timedeltas, UUIDs, Decimals, paths, enums and bytes come
      back as strings (or numbers), as ``pydantic_core.to_jsonable_python`` encodes them;
    - pydantic models, dataclasses and TypedDicts come back as dicts.

    Objects pydantic cannot encode (locks, files, arbitrary classes) raise. Iterators and
    generators raise too, rather than being consumed into a list.
    """

    type: ClassVar[str] = "json"

    def dumps(self, obj: Any) -> bytes:
        return json.dumps(obj, default=_jsonable).encode("utf-8")

    def loads(self, data: bytes) -> Any:
        return json.loads(data.decode("utf-8"))


def _jsonable(obj: Any) -> Any:
    """``json.dumps`` hook: encode what JSON has no type for, as pydantic would."""
    # pydantic turns any iterator into a list, which would silently drain a generator
    # the user still holds.
    if isinstance(obj, Iterator):
        raise TypeError(
            f"Object of type {type(obj).__name__} is not JSON serializable: it is an "
            "iterator, and encoding it would consume it"
        )
    return to_jsonable_python(obj)


def resolve_serializer(value: str | Serializer) -> Serializer:
    """Return the serializer ``value`` names, or ``value`` itself if it is one.

    Args:
        value: ``"pickle"``, ``"cloudpickle"``, ``"json"``, the ``type`` of a
            :class:`Serializer` subclass, or a :class:`Serializer` instance.

    Raises:
        ConfigurationError: ``value`` is a string that names no serializer.
        TypeError: ``value`` is neither a string nor a :class:`Serializer`.
    """
    if isinstance(value, Serializer):
        return value
    if isinstance(value, str):
        try:
            cls = _by_type[value]
        except KeyError:
            known = ", ".join(repr(name) for name in sorted(_by_type))
            raise ConfigurationError(
                f"Unknown result serializer {value!r}: use one of {known}, or a Serializer "
                "instance."
            ) from None
        return cls()
    raise TypeError(
        f"result_serializer must be a serializer name or a Serializer instance, got "
        f"{type(value).__name__}: {value!r}."
    )
