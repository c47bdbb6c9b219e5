"""Typed input for paused and suspended flow runs.

``pause_flow_run(wait_for_input=...)`` takes a :class:`RunInput` subclass, or any type
pydantic can validate (``int``, a dataclass, ``list[str]``...), which is wrapped in a
one-field RunInput (``value``). The flow waits for input of that shape; the resumer's
input is validated before the run resumes, so bad input leaves the run paused.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import pydantic

__all__ = ["RunInput", "keyset_for"]


class RunInput(pydantic.BaseModel):
    """Base class of typed run inputs: subclass it and declare fields.

    Example::

        class Approval(RunInput):
            approved: bool
            reviewer: str

        approval = pause_flow_run(wait_for_input=Approval)
    """

    model_config = pydantic.ConfigDict(extra="forbid")


class _Wrapped(RunInput):
    """Marker base of the RunInputs made for plain types; ``value`` is the input."""


@lru_cache(maxsize=None)
def _wrap(kind: Any) -> type[RunInput]:
    return pydantic.create_model("AutomaticRunInput", __base__=_Wrapped, value=(kind, ...))


def input_model(wait_for_input: Any) -> type[RunInput]:
    """Return the RunInput class for a ``wait_for_input`` argument.

    Raises:
        TypeError: pydantic cannot build a model for the type.
    """
    if isinstance(wait_for_input, type) and issubclass(wait_for_input, RunInput):
        return wait_for_input
    try:
        return _wrap(wait_for_input)
    except Exception as exc:
        raise TypeError(
            f"wait_for_input must be a RunInput subclass or a type pydantic can validate; "
            f"got {wait_for_input!r} ({exc})."
        ) from None


def unwrap(model: RunInput) -> Any:
    """Return what ``pause_flow_run`` returns for validated input: the model, or the plain
    value of a wrapped type."""
    return model.value if isinstance(model, _Wrapped) else model  # type: ignore[attr-defined]


def wrap_payload(model: type[RunInput], run_input: Any) -> Any:
    """Shape a resumer's ``run_input`` for ``model``: a plain value for a wrapped type
    may be given bare (``5``) or as ``{"value": 5}``."""
    if issubclass(model, _Wrapped) and not (
        isinstance(run_input, dict) and set(run_input) == {"value"}
    ):
        return {"value": run_input}
    return run_input


def keyset_for(pause_key: str) -> dict[str, str]:
    """Return the store keys under which a pause's input schema and response live."""
    return {
        "schema": f"paused-{pause_key}-schema",
        "response": f"paused-{pause_key}-response",
    }


def schema_json(model: type[RunInput]) -> str:
    """Return the JSON schema of ``model`` as a string, for resumers in other processes."""
    return json.dumps(model.model_json_schema())
