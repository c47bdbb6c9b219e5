"""Tasks and flows as methods: the descriptor behaviour :class:`Task` and :class:`Flow` share.

A task or flow defined in a class body binds like a function does, once, when it is looked
up: on an instance, a plain method binds to the instance; ``@task @classmethod`` (or
``@classmethod @task``) binds to the class; ``@task @staticmethod`` (or ``@staticmethod
@task``) never binds. The bound copy calls its function as a bound method, so ``self`` or
``cls`` is not one of the run's parameters, and ``submit``, ``map`` and ``with_options``
work on it like on any task or flow.
"""

from __future__ import annotations

import copy
import inspect
from types import MethodType
from typing import Any, Callable, TypeVar

from ..core._parameters import CallSignature

__all__ = ["BindsAsMethod", "docstring_of", "unwrap_method"]

Self = TypeVar("Self", bound="BindsAsMethod")


def unwrap_method(fn: Any) -> tuple[Any, type[Any] | None]:
    """Return ``(function, kind)``: the function a ``classmethod`` or ``staticmethod``
    wraps and that kind, or ``fn`` itself and None."""
    if isinstance(fn, (classmethod, staticmethod)):
        return fn.__func__, type(fn)
    return fn, None


def docstring_of(fn: Callable[..., Any]) -> str | None:
    """Return the cleaned docstring of ``fn`` itself.

    Not :func:`inspect.getdoc`: for an undocumented method, that one looks the method up
    on its class to find an inherited docstring, and looking up a task or flow binds it,
    which builds it again, which looks it up again...
    """
    doc = getattr(fn, "__doc__", None)
    return inspect.cleandoc(doc) if isinstance(doc, str) else None


class BindsAsMethod:
    """Descriptor behaviour of :class:`~runtime.Task` and :class:`~runtime.Flow`; see the
    module docstring.

    Attributes:
        fn: the function (a bound method once bound).
        signature: the parameters of a call, without ``self``/``cls`` once bound.
    """

    fn: Callable[..., Any]
    signature: CallSignature
    _method_kind: type[Any] | None = None  # classmethod, staticmethod or None

    def _decorated(self) -> Any:
        """The function as it was decorated (re-wrapped in its classmethod/staticmethod),
        for ``with_options`` to build a copy that binds the same way."""
        kind = self._method_kind
        return kind(self.fn) if kind is not None else self.fn

    def __get__(self: Self, instance: Any, owner: Any = None) -> Self:
        """Bind to ``instance`` (a plain method) or to its class (a classmethod); return
        this unbound object for a staticmethod, a lookup on the class, or a bound copy."""
        kind = self._method_kind
        if kind is staticmethod or isinstance(self.fn, MethodType):
            return self
        if kind is classmethod:
            target = owner if owner is not None else type(instance)
        elif instance is None:
            return self
        else:
            target = instance
        bound = copy.copy(self)
        bound.fn = MethodType(self.fn, target)
        bound.signature = CallSignature(bound.fn)
        bound._method_kind = None
        return bound
