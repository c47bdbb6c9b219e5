"""Checking the input a resumer gives a paused flow run.

A pause waiting in this process validates with its real pydantic model (coercion
included); from another process, the input is checked against the JSON schema the
pause stored with its state.
"""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

import pydantic

from ..core._exceptions import InvalidRunInput
from ..core._input import wrap_payload

__all__ = ["validated_input", "waiting_models"]

waiting_models: dict[tuple[UUID, str], Any] = {}
"""The input models of the pauses waiting in this process, by (flow run id, response key)."""


def validated_input(backend: Any, flow_run_id: UUID, keyset: dict[str, str], run_input: Any) -> str:
    """Return ``run_input`` as JSON after checking it against what the run waits for.

    Raises:
        InvalidRunInput: the input does not fit; the message names every bad field.
    """
    model = waiting_models.get((flow_run_id, keyset["response"]))
    if model is not None:
        try:
            return model.model_validate(wrap_payload(model, run_input)).model_dump_json()  # type: ignore[no-any-return]
        except pydantic.ValidationError as exc:
            problems = [(error["loc"], error["msg"]) for error in exc.errors()]
            wrapped = set(model.model_fields) == {"value"}
            raise _invalid_input(flow_run_id, problems, wrapped=wrapped) from None
    schema_text = backend.read_run_input(flow_run_id, keyset["schema"])
    if schema_text is None:
        raise InvalidRunInput(f"Flow run {flow_run_id} waits for input but its schema is missing.")
    schema = json.loads(schema_text)
    wrapped = set(schema.get("properties", {})) == {"value"}
    payload = run_input
    if wrapped and not (isinstance(run_input, dict) and set(run_input) == {"value"}):
        payload = {"value": run_input}
    import jsonschema  # only a resume from another process needs it: keep imports light

    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(payload), key=lambda error: list(error.absolute_path))
    if errors:
        problems = [(tuple(error.absolute_path), error.message) for error in errors]
        raise _invalid_input(flow_run_id, problems, wrapped=wrapped)
    return json.dumps(payload)


def _invalid_input(
    flow_run_id: UUID, problems: list[tuple[tuple[Any, ...], str]], *, wrapped: bool
) -> InvalidRunInput:
    """The error for input with these (field path, message) problems, naming every field."""
    described = []
    for path, message in problems:
        if wrapped and path[:1] == ("value",):  # a plain type's input is wrapped as "value"
            path = path[1:]
        described.append(f"{'.'.join(str(part) for part in path) or 'input'}: {message}")
    return InvalidRunInput(f"Invalid input for flow run {flow_run_id}: {'; '.join(described)}")
