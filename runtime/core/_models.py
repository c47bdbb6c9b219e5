"""Flow runs and task runs: the records the store keeps and hooks receive.

A run record is an immutable snapshot. Only the orchestrator makes new ones (with
:func:`evolve`, as it decides a run's states); the engines, futures, hooks and stores
receive and pass snapshots around, and never change one. ``version`` counts the writes of
the run in its store: a write is checked against the version it was decided on, so a
decision made on a stale snapshot is detected and made again.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from ._ids import new_id
from ._states import State, now_utc

__all__ = [
    "FlowRun",
    "FlowRunPolicy",
    "RunKind",
    "TaskRun",
    "TaskRunInput",
    "TaskRunPolicy",
    "evolve",
    "new_task_run_record",
]

RunKind = Literal["flow", "task"]


class FlowRunPolicy(BaseModel):
    """How the orchestrator treats a flow run's failures and pauses."""

    model_config = ConfigDict(frozen=True)

    retries: int = 0
    retry_delay: float = 0.0
    pause_keys: tuple[str, ...] = ()
    resuming: bool = False


class TaskRunPolicy(BaseModel):
    """How the orchestrator treats a task run's failures."""

    model_config = ConfigDict(frozen=True)

    retries: int = 0
    retry_delay: tuple[float, ...] = ()
    retry_jitter_factor: float | None = None


class TaskRunInput(BaseModel):
    """An upstream dependency of a task run: another task run, or a flow parameter."""

    model_config = ConfigDict(frozen=True)

    input_type: Literal["task_run", "parameter", "constant"] = "task_run"
    id: UUID | None = None
    name: str | None = None


class _Run(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

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
    version: int = 0
    """How many times the store wrote this run (0: not stored yet)."""

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


# -- building task runs on the hot path -----------------------------------------------------

_object_new = object.__new__
_object_setattr = object.__setattr__
_TASK_RUN_FIELDS = [
    "id", "name", "tags", "run_count", "created", "expected_start_time", "start_time",
    "end_time", "total_run_time", "state", "version", "flow_run_id", "task_key",
    "dynamic_key", "task_version", "cache_key", "cache_expiration", "empirical_policy",
    "task_inputs", "flow_run_run_count",
]  # fmt: skip
_FAST_TASK_RUNS = list(TaskRun.model_fields) == _TASK_RUN_FIELDS  # else always validate
_TASK_RUN_ARGUMENTS = (
    "name", "flow_run_id", "task_key", "dynamic_key", "task_version", "empirical_policy",
    "tags", "task_inputs", "flow_run_run_count",
)  # fmt: skip
_ZERO = timedelta(0)


def new_task_run_record(
    *,
    name: str,
    flow_run_id: UUID | None,
    task_key: str,
    dynamic_key: str,
    task_version: str | None,
    empirical_policy: TaskRunPolicy,
    tags: list[str],
    task_inputs: dict[str, list[TaskRunInput]],
    flow_run_run_count: int,
) -> TaskRun:
    """``TaskRun(**fields)`` for the engine, which makes one per task run.

    Validation costs ~5 µs; when every value already has exactly its field's type (what
    validation would keep unchanged), the record is assembled directly, with the same
    values, defaults and ``model_fields_set``. Otherwise it is validated as usual (and
    raises as usual).
    """
    if (
        _FAST_TASK_RUNS
        and type(name) is str
        and (flow_run_id is None or type(flow_run_id) is UUID)
        and type(task_key) is str
        and type(dynamic_key) is str
        and (task_version is None or type(task_version) is str)
        and type(empirical_policy) is TaskRunPolicy
        and type(tags) is list
        and all(type(tag) is str for tag in tags)
        and type(task_inputs) is dict
        and all(
            type(key) is str
            and type(inputs) is list
            and all(type(i) is TaskRunInput for i in inputs)
            for key, inputs in task_inputs.items()
        )
        and type(flow_run_run_count) is int
    ):
        run = _object_new(TaskRun)
        _object_setattr(
            run,
            "__dict__",
            {
                "id": new_id(),
                "name": name,
                "tags": tags,
                "run_count": 0,
                "created": now_utc(),
                "expected_start_time": None,
                "start_time": None,
                "end_time": None,
                "total_run_time": _ZERO,
                "state": None,
                "version": 0,
                "flow_run_id": flow_run_id,
                "task_key": task_key,
                "dynamic_key": dynamic_key,
                "task_version": task_version,
                "cache_key": None,
                "cache_expiration": None,
                "empirical_policy": empirical_policy,
                "task_inputs": task_inputs,
                "flow_run_run_count": flow_run_run_count,
            },
        )
        _object_setattr(run, "__pydantic_fields_set__", set(_TASK_RUN_ARGUMENTS))
        _object_setattr(run, "__pydantic_extra__", None)
        _object_setattr(run, "__pydantic_private__", None)
        return run
    return TaskRun(
        name=name,
        flow_run_id=flow_run_id,
        task_key=task_key,
        dynamic_key=dynamic_key,
        task_version=task_version,
        empirical_policy=empirical_policy,
        tags=tags,
        task_inputs=task_inputs,
        flow_run_run_count=flow_run_run_count,
    )


RunT = TypeVar("RunT", FlowRun, TaskRun)


def evolve(run: RunT, **changes: Any) -> RunT:
    """Return a copy of the snapshot ``run`` with ``changes``, without validation.

    The orchestrator's way to make a run's next snapshot: the values must already have
    their fields' types (they are the engine's own, never user input).
    """
    new = _object_new(type(run))
    values = run.__dict__.copy()
    values.update(changes)
    _object_setattr(new, "__dict__", values)
    _object_setattr(new, "__pydantic_fields_set__", run.__pydantic_fields_set__ | changes.keys())
    _object_setattr(new, "__pydantic_extra__", None)
    _object_setattr(new, "__pydantic_private__", None)
    return new
