"""Typed input for paused flow runs: :class:`RunInput`.

The public face of :mod:`runtime.core._input`."""

from __future__ import annotations

from .core._input import RunInput as RunInput
from .core._input import keyset_for as keyset_for

__all__ = [
    "RunInput",
    "keyset_for",
]
