"""Flow runs and task runs: the records the store keeps and hooks receive."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from ._ids import new_id
from .states import State, now_utc

__all__ = [
    "FlowRun",
    "FlowRunPolicy",
    "RunKind",
    "TaskRun",
    "TaskRunInput",
    "TaskRunPolicy",
]

RunKind = Literal["flow", "task"]


class FlowRunPolicy(BaseModel):
    """How the orchestrator treats a flow run's failures and pauses."""

    retries: int = 0
    retry_delay: float = 0.0
    pause_keys: list[str] = Field(default_factory=list)
    resuming: bool = False


class TaskRunPolicy(BaseModel):
    """How the orchestrator treats a task run's failures."""

    retries: int = 0
    retry_delay: list[float] = Field(default_factory=list)
    retry_jitter_factor: float | None = None


class TaskRunInput(BaseModel):
    """An upstream dependency of a task run: another task run, or a flow parameter."""

    input_type: Literal["task_run", "parameter", "constant"] = "task_run"
    id: UUID | None = None
    name: str | None = None


class _Run(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True, validate_assignment=False)

    id: UUID = Field(default_factory=new_id)
    name: str
    tags: list[str] = Field(default_factory=list)
    run_count: int = 0
    created: datetime = Field(default_factory=now_utc)
    expected_start_time: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    total_run_time: timedelta = timedelta(0)
    state: State[Any] | None = None
    state_history: list[State[Any]] = Field(default_factory=list, repr=False)

    @property
    def state_type(self) -> Any:
        """The type of the current state, or None before the first state."""
        return None if self.state is None else self.state.type

    @property
    def state_name(self) -> str | None:
        """The name of the current state, or None before the first state."""
        return None if self.state is None else self.state.name

    @property
    def estimated_run_time(self) -> timedelta:
        """Run time so far, counting the current Running stretch."""
        state = self.state
        if state is not None and state.is_running():
            return self.total_run_time + (now_utc() - state.timestamp)
        return self.total_run_time


class FlowRun(_Run):
    """One execution of a flow: its parameters, state, history and links."""

    flow_name: str
    flow_version: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    parent_task_run_id: UUID | None = None
    empirical_policy: FlowRunPolicy = Field(default_factory=FlowRunPolicy)
    entrypoint: str | None = None
    owner: str | None = None
    heartbeat: datetime | None = None


class TaskRun(_Run):
    """One execution of a task inside (or outside) a flow run."""

    flow_run_id: UUID | None = None
    task_key: str
    dynamic_key: str
    task_version: str | None = None
    cache_key: str | None = None
    cache_expiration: datetime | None = None
    empirical_policy: TaskRunPolicy = Field(default_factory=TaskRunPolicy)
    task_inputs: dict[str, list[TaskRunInput]] = Field(default_factory=dict)
    flow_run_run_count: int = 0
