"""Result serializers: ``pickle`` (the default), ``cloudpickle`` and ``json``.

The public face of :mod:`runtime.core._serializers`."""

from __future__ import annotations

from .core._serializers import CloudpickleSerializer as CloudpickleSerializer
from .core._serializers import JSONSerializer as JSONSerializer
from .core._serializers import PickleSerializer as PickleSerializer
from .core._serializers import Serializer as Serializer
from .core._serializers import resolve_serializer as resolve_serializer

__all__ = [
    "CloudpickleSerializer",
    "JSONSerializer",
    "PickleSerializer",
    "Serializer",
    "resolve_serializer",
]
