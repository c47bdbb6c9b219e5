"""Shared fixtures: every async test runs on asyncio and on trio.

The suite never touches the user's ``~/.stageflow``: ``STAGEFLOW_HOME`` points at a
temporary directory for the whole session (the default store and result storage live
there).
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

_home = tempfile.mkdtemp(prefix="stageflow-tests-")
os.environ["STAGEFLOW_HOME"] = _home


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_home, ignore_errors=True)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return request.param
