"""Annotations for task arguments: ``unmapped``, ``allow_failure``, ``quote``.

The public face of :mod:`runtime.core._annotations`."""

from __future__ import annotations

from .core._annotations import BaseAnnotation as BaseAnnotation
from .core._annotations import allow_failure as allow_failure
from .core._annotations import quote as quote
from .core._annotations import unmapped as unmapped

__all__ = [
    "BaseAnnotation",
    "allow_failure",
    "quote",
    "unmapped",
]
