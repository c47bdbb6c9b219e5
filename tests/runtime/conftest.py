"""Fixtures for the engine behaviour tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from runtime import Runtime


@pytest.fixture(params=["asyncio", "trio"])
def sync_runtime(request: pytest.FixtureRequest) -> Iterator[Runtime]:
    """A memory-store Runtime for sync code, whose sync calls run their engine on a global
    loop of each backend in turn (so sync tests cover asyncio and trio too)."""
    with Runtime(store="memory://", loop=request.param) as runtime:
        yield runtime
