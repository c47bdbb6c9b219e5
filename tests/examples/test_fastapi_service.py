"""examples/fastapi_service.py as its users run it: under Starlette's TestClient and under
real servers (uvicorn on asyncio, hypercorn on trio), spoken to over HTTP.

Every run the service makes must land in its own store, none in the default one.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any, Literal
from uuid import uuid4

import httpx
import pytest
from fastapi.testclient import TestClient

from runtime.store._sqlite import SqliteStore

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fastapi_service.py"
STARTUP_TIMEOUT = 60.0
"""Seconds a server may take to answer its first request (a loaded 2-core machine)."""


def _load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fastapi_service_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic resolves the models' annotations there
    spec.loader.exec_module(module)
    return module


def _flow_run_ids(db: Path) -> set[str]:
    if not db.exists():
        return set()
    store = SqliteStore(db)
    try:
        return {str(run.id) for run in store.read_flow_runs()}
    finally:
        store.close()


def _release_and_resume(client: Any, version: str) -> str:
    """Start a release, check it is suspended, resume it badly then well; return its id."""
    started = client.post("/releases", json={"version": version})
    assert started.status_code == 201, started.text
    run = started.json()
    assert (run["state"], run["type"], run["task_runs"]) == (
        "Suspended",
        "PAUSED",
        {"build-0": "Completed"},
    )
    shown = client.get(f"/runs/{run['id']}").json()
    assert shown["state"] == "Suspended"

    bad = client.post(f"/runs/{run['id']}/resume", json={"approved": "perhaps"})
    assert bad.status_code == 422
    assert "approved" in bad.json()["detail"] and "reviewer" in bad.json()["detail"]
    assert client.get(f"/runs/{run['id']}").json()["state"] == "Suspended"

    resumed = client.post(f"/runs/{run['id']}/resume", json={"approved": True, "reviewer": "ada"})
    assert resumed.status_code == 200, resumed.text
    final = resumed.json()
    assert (final["state"], final["result"]) == (
        "Completed",
        f"app-{version}.tar.gz published (approved by ada)",
    )
    assert final["task_runs"] == {"build-0": "Completed", "publish-0": "Completed"}
    again = client.post(f"/runs/{run['id']}/resume", json={"approved": True, "reviewer": "ada"})
    assert again.status_code == 409
    assert client.get(f"/runs/{uuid4()}").status_code == 404
    return str(run["id"])


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_under_test_client(
    backend: Literal["asyncio", "trio"], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "releases.db"
    monkeypatch.setenv("RELEASES_STORE", f"sqlite:///{db}")
    default_db = Path(os.environ["STAGEFLOW_HOME"]) / "stageflow.db"
    example = _load_example()
    with TestClient(example.app, backend=backend) as client:
        run_id = _release_and_resume(client, "1.0")
    assert run_id in _flow_run_ids(db)
    assert run_id not in _flow_run_ids(default_db)


# -- real servers ---------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_command(server: str, port: int) -> list[str]:
    if server == "uvicorn":
        app = ["--app-dir", str(EXAMPLE.parent), "fastapi_service:app"]
        return [sys.executable, "-m", "uvicorn", *app, "--host", "127.0.0.1", "--port", str(port)]
    bind = f"127.0.0.1:{port}"
    return [sys.executable, "-m", "hypercorn", "-k", "trio", "-b", bind, f"{EXAMPLE}:app"]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    """Start a server on 127.0.0.1; yield (base URL, its store, its default store)."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(server: str) -> tuple[str, Path, Path]:
        port = _free_port()
        db, home = tmp_path / "releases.db", tmp_path / "home"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "STAGEFLOW_HOME": str(home),
            "RELEASES_STORE": f"sqlite:///{db}",
        }
        log = tmp_path / f"{server}.log"
        with log.open("wb") as output:  # the server writes to its own copy of the file
            process = subprocess.Popen(
                _server_command(server, port), env=env, stdout=output, stderr=subprocess.STDOUT
            )
        processes.append(process)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:  # bounded wait until the server answers
            try:
                httpx.get(f"{url}/runs/{uuid4()}", timeout=5)
                break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"{server} did not start:\n{log.read_text()}")
                time.sleep(0.05)
        return url, db, home / "stageflow.db"

    yield start
    for process in processes:
        process.terminate()
        process.wait(30)


@pytest.mark.parametrize(
    "server", ["uvicorn", "hypercorn"], ids=["uvicorn-asyncio", "hypercorn-trio"]
)
def test_under_a_real_server(serve: Any, server: str) -> None:
    url, db, default_db = serve(server)
    with httpx.Client(base_url=url, timeout=60) as client:
        run_id = _release_and_resume(client, "2.0")

        def start(version: int) -> str:
            response = client.post("/releases", json={"version": f"3.{version}"})
            assert response.status_code == 201, response.text
            return str(response.json()["id"])

        with ThreadPoolExecutor(8) as pool:  # concurrent requests
            started = set(pool.map(start, range(24)))
    assert len(started) == 24
    stored = _flow_run_ids(db)
    assert {run_id, *started} <= stored
    assert not stored & _flow_run_ids(default_db)
