"""Wrappers that change how the engine treats a task argument.

- :class:`unmapped`: pass the value whole to every run of ``Task.map``.
- :class:`allow_failure`: run the downstream task even if this upstream failed; it receives
  the upstream's exception as the value.
- :class:`quote`: pass the value as is; the engine does not look inside it for futures.
"""

from __future__ import annotations

from typing import Generic, TypeVar

__all__ = ["BaseAnnotation", "allow_failure", "quote", "unmapped"]

T = TypeVar("T")


class BaseAnnotation(Generic[T]):
    """An argument wrapper; ``unwrap()`` returns the wrapped value."""

    __slots__ = ("value",)

    def __init__(self, value: T) -> None:
        self.value = value

    def unwrap(self) -> T:
        """Return the wrapped value."""
        return self.value

    def rewrap(self, value: T) -> BaseAnnotation[T]:
        """Return the same kind of wrapper around ``value``."""
        return type(self)(value)

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.value == other.value  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), id(self.value)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.value!r})"


class unmapped(BaseAnnotation[T]):
    """Pass the wrapped value, unmapped, to every run created by ``Task.map``.

    Indexing returns the whole value, so it behaves like an infinitely long iterable of
    that one value.
    """

    __slots__ = ()

    def __getitem__(self, _: object) -> T:
        return self.value


class allow_failure(BaseAnnotation[T]):
    """Run the downstream task even if the wrapped upstream future or state failed.

    The downstream task receives the upstream's exception in place of its result.
    """

    __slots__ = ()


class quote(BaseAnnotation[T]):
    """Pass the wrapped value as is: the engine does not search it for futures or states.

    Use it for large arguments whose inspection would be slow.
    """

    __slots__ = ()
