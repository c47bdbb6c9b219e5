"""A FastAPI service that runs flows in its own event loop, with its own store.

The lifespan opens a ``Runtime`` on the service's store; while it is open, every flow call
and every run read made by a request handler uses it (request tasks do not inherit the
lifespan's context: the Runtime serves its whole event loop). Releases wait for a human:
the ``release`` flow builds, then *suspends* until someone approves it, so no task waits
in the service meanwhile and a restart loses nothing.

Endpoints:

- ``POST /releases`` with ``{"version": "1.2.0"}``: run the release flow until it
  suspends; answers the flow run's id and state (201).
- ``GET /runs/{id}``: the run's state and its task runs (404 for an unknown id).
- ``POST /runs/{id}/resume`` with ``{"approved": true, "reviewer": "ada"}``: resume the
  suspended run; its body runs again in this request (finished tasks are not redone) and
  the answer is its final state. 409 when the run is not paused; 422, listing every bad
  field, when the input does not fit.

Run it with ``python examples/fastapi_service.py`` (uvicorn, asyncio), or on trio with
``hypercorn --worker-class trio examples/fastapi_service.py:app``. The store is
``$RELEASES_STORE``, else ``sqlite:///releases.db``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from uuid import UUID

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from runtime import (
    FlowRun,
    RunInput,
    Runtime,
    flow,
    get_run_logger,
    read_flow_run,
    read_task_runs,
    resume_flow_run,
    suspend_flow_run,
    task,
)
from runtime.exceptions import InvalidRunInput, NotPausedError, ObjectNotFound


class Approval(RunInput):
    """What a reviewer answers to a suspended release."""

    approved: bool
    reviewer: str


@task(persist_result=True)
async def build(version: str) -> str:
    """Build the release artifact (persisted, so a resume in a new process reuses it)."""
    return f"app-{version}.tar.gz"


@task
async def publish(artifact: str, reviewer: str) -> str:
    """Publish an approved artifact."""
    return f"{artifact} published (approved by {reviewer})"


@flow(name="release", persist_result=True)
async def release(version: str) -> str:
    """Build, wait for approval (suspended: the call returns), then publish or stop."""
    artifact = await build(version)
    approval: Approval = await suspend_flow_run(wait_for_input=Approval, timeout=7 * 86400)
    if not approval.approved:
        get_run_logger().warning("Release %s rejected by %s", version, approval.reviewer)
        return f"{artifact} rejected by {approval.reviewer}"
    return await publish(artifact, approval.reviewer)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Run the Runtime (orchestrator and store actors) for the life of the service."""
    async with Runtime(store=os.environ.get("RELEASES_STORE", "sqlite:///releases.db")):
        yield


app = FastAPI(title="releases", lifespan=lifespan)


class ReleaseRequest(BaseModel):
    """The body of ``POST /releases``."""

    version: str


class RunView(BaseModel):
    """What the service shows of a flow run."""

    id: UUID
    flow: str
    state: str
    type: str
    message: str | None
    result: Any = None
    task_runs: dict[str, str]


async def _view(run: FlowRun) -> RunView:
    state = run.state
    assert state is not None
    result = state.result() if state.is_completed() else None
    return RunView(
        id=run.id,
        flow=run.flow_name,
        state=state.name or state.type.value,
        type=state.type.value,
        message=state.message,
        result=result,
        task_runs={t.name: t.state_name or "-" for t in await read_task_runs(run.id)},
    )


@app.post("/releases", status_code=201)
async def start_release(request: ReleaseRequest) -> RunView:
    """Run a release until it suspends for approval; answer its run."""
    state = await release(request.version, return_state=True)
    return await _view(await read_flow_run(state.state_details.flow_run_id))


@app.get("/runs/{run_id}")
async def show_run(run_id: UUID) -> RunView:
    """Answer a flow run's state and task runs."""
    try:
        return await _view(await read_flow_run(run_id))
    except ObjectNotFound as exc:
        raise HTTPException(404, str(exc)) from None


@app.post("/runs/{run_id}/resume")
async def resume_run(run_id: UUID, run_input: dict[str, Any]) -> RunView:
    """Resume a suspended release with the reviewer's answer; answer its final run."""
    try:
        await resume_flow_run(run_id, run_input=run_input)
    except ObjectNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except NotPausedError as exc:
        raise HTTPException(409, str(exc)) from None
    except InvalidRunInput as exc:
        raise HTTPException(422, str(exc)) from None
    return await _view(await read_flow_run(run_id))


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=8000)
