"""Fixtures for the engine behaviour tests.

Tests of several processes sharing a store take ``store_url``: they run on an SQLite file
and on PostgreSQL.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from engine_support import StoreUrl

from runtime import Runtime


@pytest.fixture(params=["asyncio", "trio"])
def sync_runtime(request: pytest.FixtureRequest) -> Iterator[Runtime]:
    """A memory-store Runtime for sync code, whose sync calls run their engine on a global
    loop of each backend in turn (so sync tests cover asyncio and trio too)."""
    with Runtime(store="memory://", loop=request.param) as runtime:
        yield runtime


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest) -> Iterator[StoreUrl]:
    """Each store that processes share: an SQLite file in the given directory, or a new
    schema of the session's PostgreSQL database (dropped at the end)."""
    if request.param == "sqlite":
        yield lambda directory: f"sqlite:///{directory / 'stageflow.db'}"
        return
    import psycopg

    server: str = request.getfixturevalue("postgres_server_url")
    schemas: list[str] = []

    def make(directory: Path) -> str:
        schemas.append(f"shared_{uuid.uuid4().hex[:12]}")
        return f"{server}?schema={schemas[-1]}"

    yield make
    with psycopg.connect(server, autocommit=True) as conn:
        for schema in schemas:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
