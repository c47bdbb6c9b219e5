"""Binding, validating, serializing and naming with a function's parameters.

A :class:`CallSignature` is computed once per flow or task function; binding a call is on
the hot path, so the common shape (plain positional-or-keyword parameters) binds without
``inspect.Signature.bind``.
"""

from __future__ import annotations

import inspect
import typing
from typing import Any, Callable

import pydantic
from pydantic_core import to_jsonable_python

from ._exceptions import ParameterBindError, ParameterTypeError
from ._states import State

__all__ = ["CallSignature", "resolve_run_name", "serialize_parameters"]

_EMPTY = inspect.Parameter.empty
_POSITIONAL_OR_KEYWORD = inspect.Parameter.POSITIONAL_OR_KEYWORD
_KEYWORD_ONLY = inspect.Parameter.KEYWORD_ONLY
_VAR_POSITIONAL = inspect.Parameter.VAR_POSITIONAL
_VAR_KEYWORD = inspect.Parameter.VAR_KEYWORD


class CallSignature:
    """The parameters of a function, prepared for fast binding and validation."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.signature = inspect.signature(fn)
        params = list(self.signature.parameters.values())
        self.names = tuple(p.name for p in params)
        self.defaults = {p.name: p.default for p in params if p.default is not _EMPTY}
        kinds = {p.kind for p in params}
        self._simple = kinds <= {_POSITIONAL_OR_KEYWORD, _KEYWORD_ONLY}
        self._positional_names = tuple(p.name for p in params if p.kind is _POSITIONAL_OR_KEYWORD)
        self._var_positional = next((p.name for p in params if p.kind is _VAR_POSITIONAL), None)
        self._var_keyword = next((p.name for p in params if p.kind is _VAR_KEYWORD), None)
        self._model: type[pydantic.BaseModel] | None = None

    # -- binding ----------------------------------------------------------------------

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """Return ``{name: value}`` for a call, defaults applied.

        Raises:
            ParameterBindError: the arguments do not fit the signature.
        """
        if self._simple and len(args) <= len(self._positional_names):
            parameters = dict(zip(self._positional_names, args))
            for name, value in kwargs.items():
                if name in parameters or name not in self.signature.parameters:
                    break
                parameters[name] = value
            else:
                for name, default in self.defaults.items():
                    parameters.setdefault(name, default)
                if len(parameters) == len(self.names):
                    return parameters
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            name = getattr(self.fn, "__name__", repr(self.fn))
            raise ParameterBindError(
                f"Error binding parameters for function '{name}': {exc}.\n"
                f"Function '{name}' has signature '{self.signature}' but received args: "
                f"{args} and kwargs: {list(kwargs)}."
            ) from None
        bound.apply_defaults()
        return dict(bound.arguments)

    def to_call(self, parameters: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Return the ``(args, kwargs)`` that call the function with ``parameters``."""
        if self._simple:
            return (), parameters
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        for param in self.signature.parameters.values():
            if param.name not in parameters:
                continue
            value = parameters[param.name]
            if param.kind is _VAR_POSITIONAL:
                args.extend(value)
            elif param.kind is _VAR_KEYWORD:
                kwargs.update(value)
            elif param.kind is inspect.Parameter.POSITIONAL_ONLY or (
                param.kind is _POSITIONAL_OR_KEYWORD and self._var_positional is not None
            ):
                args.append(value)
            else:
                kwargs[param.name] = value
        return tuple(args), kwargs

    # -- validation -------------------------------------------------------------------

    def validate(self, parameters: dict[str, Any]) -> dict[str, Any]:
        """Return ``parameters`` coerced to the annotated types (``"1"`` becomes ``1``).

        Raises:
            ParameterTypeError: a value does not fit its annotation; the message lists
                every bad parameter.
        """
        model = self._validation_model()
        try:
            validated = model.model_validate(parameters)
        except pydantic.ValidationError as exc:
            raise ParameterTypeError(_invalid_parameters_message(exc)) from None
        return {name: getattr(validated, _field(name)) for name in parameters}

    def _validation_model(self) -> type[pydantic.BaseModel]:
        if self._model is None:
            hints = _type_hints(self.fn)
            fields: dict[str, Any] = {}
            for param in self.signature.parameters.values():
                annotation = hints.get(param.name, Any)
                if param.kind is _VAR_POSITIONAL:
                    annotation = tuple[annotation, ...]  # type: ignore[valid-type]
                    field = pydantic.Field(default_factory=tuple, alias=param.name)
                elif param.kind is _VAR_KEYWORD:
                    annotation = dict[str, annotation]  # type: ignore[valid-type]
                    field = pydantic.Field(default_factory=dict, alias=param.name)
                else:
                    default = ... if param.default is _EMPTY else param.default
                    field = pydantic.Field(default, alias=param.name)
                fields[_field(param.name)] = (annotation, field)
            name = getattr(self.fn, "__name__", "parameters")
            self._model = pydantic.create_model(  # type: ignore[call-overload]
                f"{name}_parameters",
                __config__=pydantic.ConfigDict(arbitrary_types_allowed=True, extra="ignore"),
                **fields,
            )
        return self._model


def _type_hints(fn: Callable[..., Any]) -> dict[str, Any]:
    """Return the resolved annotations of ``fn``; unresolvable ones are left out (Any)."""
    try:
        return typing.get_type_hints(fn, include_extras=True)
    except Exception:
        return {
            name: value
            for name, value in getattr(fn, "__annotations__", {}).items()
            if not isinstance(value, str)
        }


def _field(name: str) -> str:
    # pydantic reserves names starting with "model_" and underscores; alias keeps the real name.
    return f"p_{name}"


def _invalid_parameters_message(exc: pydantic.ValidationError) -> str:
    problems = []
    for error in exc.errors():
        loc = ".".join(str(part) for part in error["loc"])
        problems.append(f"{loc}: {error['msg']}")
    return "Flow run received invalid parameters:\n - " + "\n - ".join(problems)


def serialize_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    """Return a JSON-compatible copy of ``parameters``; values that cannot be encoded
    become ``"<TypeName>"``."""
    serialized: dict[str, Any] = {}
    for name, value in parameters.items():
        if isinstance(value, State) or hasattr(value, "task_run_id"):
            serialized[name] = f"<{type(value).__name__}>"
            continue
        try:
            serialized[name] = to_jsonable_python(value)
        except Exception:
            serialized[name] = f"<{type(value).__name__}>"
    return serialized


def resolve_run_name(
    template: str | Callable[..., str], parameters: dict[str, Any], option: str
) -> str:
    """Return a run name from a ``str.format`` template or a callable.

    A callable is called with no arguments, or with ``parameters=`` if it accepts that.

    Raises:
        TypeError: the option is neither a string nor a callable, or the callable did not
            return a string.
    """
    if callable(template):
        try:
            accepts_parameters = "parameters" in inspect.signature(template).parameters
        except (TypeError, ValueError):
            accepts_parameters = False
        name = template(parameters=parameters) if accepts_parameters else template()
        if not isinstance(name, str):
            raise TypeError(
                f"Callable {template} for {option!r} returned type {type(name).__name__} "
                "but a string is required."
            )
        return name
    if isinstance(template, str):
        return template.format(**parameters)
    raise TypeError(
        f"Expected string or callable for {option!r}; got {type(template).__name__} instead."
    )
