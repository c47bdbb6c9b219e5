"""The public surface of ``runtime``: what it exports, and that every public name says what
it does (the API reference is built from these docstrings)."""

from __future__ import annotations

import importlib
import inspect

import pytest

import runtime

PUBLIC_MODULES = [
    "runtime",
    "runtime.annotations",
    "runtime.cache_policies",
    "runtime.concurrency",
    "runtime.exceptions",
    "runtime.flow_runs",
    "runtime.futures",
    "runtime.input",
    "runtime.results",
    "runtime.serializers",
    "runtime.states",
    "runtime.task_runners",
    "runtime.transactions",
]


def test_reading_runs_is_public() -> None:
    for name in (
        "read_flow_run",
        "read_flow_runs",
        "read_task_run",
        "read_task_runs",
        "read_state_history",
    ):
        assert name in runtime.__all__
        assert getattr(runtime, name) is getattr(importlib.import_module("runtime.flow_runs"), name)


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_every_public_name_has_a_docstring(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert inspect.getdoc(module), module_name
    missing = []
    for name in module.__all__:
        obj = getattr(module, name)
        if (inspect.isclass(obj) or callable(obj)) and not inspect.getdoc(obj):
            missing.append(name)
        if inspect.isclass(obj):
            missing += [
                f"{name}.{attr}"
                for attr, value in vars(obj).items()
                if not attr.startswith("_") and callable(value) and not inspect.getdoc(value)
            ]
    assert missing == []
