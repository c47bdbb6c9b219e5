"""Shared fixtures: every async test runs on asyncio and on trio.

The suite never touches the user's ``~/.stageflow``: ``STAGEFLOW_HOME`` points at a
temporary directory for the whole session (the default store and result storage live
there).

PostgreSQL: ``postgres_server_url`` is a server for the whole session,
``$STAGEFLOW_TEST_POSTGRES_URL`` if set (``.ci/run`` starts one), else a throwaway server
started here (``postgres_server.py``). Each test that asks for ``postgres_url`` gets a
store URL of its own (a new PostgreSQL schema, dropped afterwards). Without a server, such
tests are skipped, saying why; under CI (``$CI`` set) they fail instead.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator

import pytest
from postgres_server import PostgresServer, start_for_tests

_home = tempfile.mkdtemp(prefix="stageflow-tests-")
os.environ["STAGEFLOW_HOME"] = _home


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_home, ignore_errors=True)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return request.param


POSTGRES_URL_ENV = "STAGEFLOW_TEST_POSTGRES_URL"


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """The URL of a PostgreSQL database the tests may create schemas in."""
    url = os.environ.get(POSTGRES_URL_ENV)
    if url:
        yield url
        return
    server = PostgresServer()
    url = start_for_tests(server)
    try:
        yield url
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server_url: str) -> Iterator[str]:
    """A store URL of this test's own: a new schema in the session's database."""
    import psycopg

    schema = f"test_{uuid.uuid4().hex[:12]}"
    yield f"{postgres_server_url}?schema={schema}"
    with psycopg.connect(postgres_server_url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")

