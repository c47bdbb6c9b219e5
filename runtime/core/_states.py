"""States: what a flow run or task run is doing, and the constructors for each kind.

A :class:`State` has a :class:`StateType` (the nine kinds below) and a ``name`` that refines
it: ``AwaitingRetry`` is a SCHEDULED state, ``Retrying`` a RUNNING one, ``Cached`` and
``RolledBack`` COMPLETED ones, ``TimedOut`` a FAILED one, ``NotReady`` a PENDING one,
``Suspended`` a PAUSED one. A final state carries the run's outcome in ``data``: the
return value (or a reference to its persisted copy), or the exception.
"""

from __future__ import annotations

import enum
from datetime import datetime, timedelta, timezone
from typing import Any, Generic, TypeVar
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ._exceptions import (
    CancelledRun,
    CrashedRun,
    FailedRun,
    MissingResult,
    PausedRun,
    UnfinishedRun,
)
from ._ids import new_id

__all__ = [
    "AwaitingConcurrencySlot",
    "AwaitingRetry",
    "Cancelled",
    "Cancelling",
    "Completed",
    "Crashed",
    "Failed",
    "Late",
    "Paused",
    "Pending",
    "ResultHandle",
    "Retrying",
    "Running",
    "STATE_NAMES",
    "Scheduled",
    "State",
    "StateDetails",
    "StateType",
    "Suspended",
    "TERMINAL_STATES",
    "replace",
    "replace_details",
    "run_details",
]

R = TypeVar("R")


def now_utc() -> datetime:
    """Return the current time as an aware UTC datetime."""
    return datetime.now(timezone.utc)


class StateType(str, enum.Enum):
    """The kind of a state."""

    SCHEDULED = "SCHEDULED"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    CRASHED = "CRASHED"
    PAUSED = "PAUSED"
    CANCELLING = "CANCELLING"

    def __str__(self) -> str:
        return self.value


TERMINAL_STATES = frozenset(
    {StateType.COMPLETED, StateType.CANCELLED, StateType.FAILED, StateType.CRASHED}
)

STATE_NAMES = (
    *("Scheduled", "Late", "AwaitingRetry", "AwaitingConcurrencySlot", "Resuming"),
    *("Pending", "NotReady", "Running", "Retrying", "Completed", "Cached", "RolledBack"),
    *("Failed", "TimedOut", "Crashed", "Cancelling", "Cancelled", "Paused", "Suspended"),
)
"""The names stageflow gives states: each type's own (``Completed``) and the refinements."""


class ResultHandle:
    """A stand-in for a result that is not held in memory; ``load()`` fetches it.

    ``runtime.results`` subclasses this for persisted results. States only know this
    interface, so the states layer does not depend on how results are stored.
    """

    def load(self) -> Any:
        """Return the value this handle stands for.

        Raises:
            MissingResult: if the value cannot be obtained.
        """
        raise NotImplementedError


class _Unavailable(ResultHandle):
    """The result of a state read back from a store, which kept no copy of it."""

    def load(self) -> Any:
        raise MissingResult(
            "State data is missing: the store kept no copy of the result (it could not be "
            "serialized, or the run had persist_result=False), so it is only available in the "
            "process that ran it. To read it elsewhere, return a value the result serializer "
            "can handle, and leave persist_result on (the default)."
        )

    def __repr__(self) -> str:
        return "<result not persisted>"


UNAVAILABLE: ResultHandle = _Unavailable()


class StateDetails(BaseModel):
    """Run links and scheduling, caching and pausing details attached to a state.

    Immutable, like the state that carries it: build a changed copy with
    ``details.model_copy(update={...})``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    flow_run_id: UUID | None = None
    task_run_id: UUID | None = None
    child_flow_run_id: UUID | None = None
    scheduled_time: datetime | None = None
    cache_key: str | None = None
    cache_expiration: datetime | None = None
    untrackable_result: bool = False
    pause_timeout: datetime | None = None
    pause_reschedule: bool = False
    pause_key: str | None = None
    run_input_keyset: dict[str, str] | None = None
    refresh_cache: bool | None = None
    retriable: bool | None = None
    transition_id: UUID | None = None


class State(BaseModel, Generic[R]):
    """The state of a flow run or task run.

    ``str(state)`` is short, for logs: ``Completed()``, ``Failed('boom')``,
    ``AwaitingRetry(type=SCHEDULED)``. ``repr(state)`` adds the type and result.

    States are immutable: a run's state is proposed, decided and recorded as one value,
    which every party may hold without copying. ``state.model_copy(update={...})`` (or
    :meth:`fresh_copy`) makes a changed copy; assigning a field raises
    ``pydantic.ValidationError``.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    id: UUID = Field(default_factory=new_id)
    type: StateType
    name: str | None = None
    timestamp: datetime = Field(default_factory=now_utc)
    message: str | None = None
    state_details: StateDetails = Field(default_factory=StateDetails)
    data: Any = None

    @model_validator(mode="after")
    def _defaults(self) -> State[R]:
        # The model is frozen: fill in the defaults the way validation does, in place.
        if self.name is None:
            _object_setattr(self, "name", self.type.value.title())
        if self.type is StateType.SCHEDULED and self.state_details.scheduled_time is None:
            details = replace_details(self.state_details, scheduled_time=now_utc())
            _object_setattr(self, "state_details", details)
        return self

    # -- predicates -------------------------------------------------------------------

    def is_scheduled(self) -> bool:
        """Return whether this is a SCHEDULED state."""
        return self.type is StateType.SCHEDULED

    def is_pending(self) -> bool:
        """Return whether this is a PENDING state."""
        return self.type is StateType.PENDING

    def is_running(self) -> bool:
        """Return whether this is a RUNNING state."""
        return self.type is StateType.RUNNING

    def is_completed(self) -> bool:
        """Return whether this is a COMPLETED state."""
        return self.type is StateType.COMPLETED

    def is_failed(self) -> bool:
        """Return whether this is a FAILED state."""
        return self.type is StateType.FAILED

    def is_crashed(self) -> bool:
        """Return whether this is a CRASHED state."""
        return self.type is StateType.CRASHED

    def is_cancelled(self) -> bool:
        """Return whether this is a CANCELLED state."""
        return self.type is StateType.CANCELLED

    def is_cancelling(self) -> bool:
        """Return whether this is a CANCELLING state."""
        return self.type is StateType.CANCELLING

    def is_paused(self) -> bool:
        """Return whether this is a PAUSED state (including ``Suspended``)."""
        return self.type is StateType.PAUSED

    def is_final(self) -> bool:
        """Return whether this state is terminal: COMPLETED, FAILED, CRASHED or CANCELLED."""
        return self.type in TERMINAL_STATES

    # -- results ----------------------------------------------------------------------

    def result(self, raise_on_failure: bool = True) -> R | BaseException:
        """Return the run's result, or raise (or return) its exception.

        Args:
            raise_on_failure: for a FAILED, CRASHED or CANCELLED state, raise its exception
                if true, return it if false (for a state aggregating run states, return
                those states).

        Raises:
            PausedRun: the state is PAUSED; the run has no result yet.
            UpstreamTaskError: the state is NotReady: the run never started because an
                upstream run did not complete (with ``raise_on_failure=True``; else it is
                returned).
            UnfinishedRun: the state is not final.
            MissingResult: the result was neither kept in memory nor persisted.
            BaseException: the run's own exception, for a failed state with
                ``raise_on_failure=True``.
        """
        if self.type is StateType.PAUSED:
            raise PausedRun("Run is paused, its result is not available.", state=self)
        if self.type not in TERMINAL_STATES:
            if self.type is StateType.PENDING and isinstance(self.data, BaseException):
                # A run that cannot start (NotReady: an upstream run did not complete)
                # carries the reason, and never produces a result.
                if raise_on_failure:
                    raise self.data
                return self.data
            raise UnfinishedRun(f"Run is in {self.type.value} state, its result is not available.")
        if self.type is not StateType.COMPLETED:
            if not raise_on_failure and _holds_states(self.data):
                # An aggregate of run states (a flow that returned them): as in Prefect,
                # the states themselves, so the caller can look at each one.
                return self.data  # type: ignore[return-value]
            exc = state_exception(self)
            if raise_on_failure:
                raise exc
            return exc
        data = self.data
        if isinstance(data, ResultHandle):
            return data.load()  # type: ignore[no-any-return]
        return data  # type: ignore[no-any-return]

    async def aresult(self, raise_on_failure: bool = True) -> R | BaseException:
        """Async spelling of :meth:`result`, for code that awaits results."""
        return self.result(raise_on_failure=raise_on_failure)

    # -- copies and display -----------------------------------------------------------

    def fresh_copy(self, **update: Any) -> State[R]:
        """Return a copy with a new id and timestamp (and ``update`` applied)."""
        return self.model_copy(update={"id": new_id(), "timestamp": now_utc(), **update})

    def __str__(self) -> str:
        display = []
        if self.message:
            display.append(repr(self.message))
        if self.name is not None and self.type.value.lower() != self.name.lower():
            display.append(f"type={self.type.value}")
        return f"{self.name}({', '.join(display)})"

    def __repr__(self) -> str:
        display = {
            "message": repr(self.message),
            "type": self.type.value,
            "result": repr(self.data),
        }
        return f"{self.name}({', '.join(f'{k}={v}' for k, v in display.items())})"

    def __hash__(self) -> int:
        return hash(self.id)


def _holds_states(data: Any) -> bool:
    """Whether ``data`` is a State or a non-empty list/tuple/set of States."""
    if isinstance(data, State):
        return True
    return (
        isinstance(data, (list, tuple, set))
        and bool(data)
        and all(isinstance(s, State) for s in data)
    )


def state_exception(state: State[Any]) -> BaseException:
    """Return the exception a FAILED, CRASHED or CANCELLED state stands for."""
    data = state.data
    if isinstance(data, ResultHandle):
        try:
            data = data.load()
        except MissingResult:
            data = None
    if isinstance(data, BaseException):
        return data
    if isinstance(data, State):
        return state_exception(data)
    if isinstance(data, (list, tuple, set)) and data and all(isinstance(s, State) for s in data):
        for sub in data:
            if sub.type in (StateType.FAILED, StateType.CRASHED, StateType.CANCELLED):
                return state_exception(sub)
        for sub in data:
            if sub.type is StateType.PENDING and isinstance(sub.data, BaseException):
                return sub.data  # NotReady: why it never ran
    if data is not None and not isinstance(data, (list, tuple, set)):
        return TypeError(
            f"Unexpected result for failed state: {data!r} —— {type(data).__name__} cannot be "
            "resolved into an exception"
        )
    wrapper: type[BaseException] = {
        StateType.CRASHED: CrashedRun,
        StateType.CANCELLED: CancelledRun,
    }.get(state.type, FailedRun)
    return wrapper(state.message or f"Run is in {state.type.value} state.")


# -- fast construction ----------------------------------------------------------------
#
# The engine builds several states per task run, and validating one costs ~5 µs. When
# every keyword is one that validation would keep unchanged (a ``str`` name and message,
# any data, a StateDetails instance), the state is assembled directly: the same field
# values, defaults, ``model_fields_set`` and post-validation defaults as ``State(...)``.
# Anything else (another keyword, a value of another type) is validated as usual.

_object_new = object.__new__
_object_setattr = object.__setattr__
_DETAILS_DEFAULTS = {name: field.default for name, field in StateDetails.model_fields.items()}
if any(field.default_factory is not None for field in StateDetails.model_fields.values()):
    raise AssertionError("_new_details() assumes StateDetails has only plain defaults")
_FAST_KEYWORDS = frozenset({"name", "message", "data", "state_details"})
_DEFAULT_NAMES = {state_type: state_type.value.title() for state_type in StateType}


def _new_details(**fields: Any) -> StateDetails:
    """``StateDetails(**fields)`` without validation, for values of the fields' own types
    (the engine's; user input goes through ``StateDetails(...)``)."""
    details = _object_new(StateDetails)
    values = _DETAILS_DEFAULTS.copy()
    values.update(fields)
    _object_setattr(details, "__dict__", values)
    _object_setattr(details, "__pydantic_fields_set__", set(fields))
    _object_setattr(details, "__pydantic_extra__", None)
    _object_setattr(details, "__pydantic_private__", None)
    return details


def run_details(flow_run_id: UUID | None, task_run_id: UUID | None = None) -> StateDetails:
    """The details of a run's states that only link it (one object a run may share among
    all its states, since details are immutable)."""
    return _new_details(flow_run_id=flow_run_id, task_run_id=task_run_id)


def replace_details(details: StateDetails, **changes: Any) -> StateDetails:
    """Return a copy of ``details`` with ``changes``, without validation (engine values)."""
    new = _object_new(StateDetails)
    values = details.__dict__.copy()
    values.update(changes)
    _object_setattr(new, "__dict__", values)
    _object_setattr(
        new, "__pydantic_fields_set__", details.__pydantic_fields_set__ | changes.keys()
    )
    _object_setattr(new, "__pydantic_extra__", None)
    _object_setattr(new, "__pydantic_private__", None)
    return new


def replace(state: State[R], **changes: Any) -> State[R]:
    """Return a copy of ``state`` (same id) with ``changes``, without validation.

    For the engine and the orchestrator, which change states they built (stamping run ids,
    attaching a persisted result); the values must have their fields' types.
    """
    new = _object_new(type(state))
    values = state.__dict__.copy()
    values.update(changes)
    _object_setattr(new, "__dict__", values)
    _object_setattr(new, "__pydantic_fields_set__", state.__pydantic_fields_set__ | changes.keys())
    _object_setattr(new, "__pydantic_extra__", None)
    _object_setattr(new, "__pydantic_private__", None)
    return new


def _new_state(state_type: StateType, kwargs: dict[str, Any]) -> State[Any]:
    """``State(type=state_type, **kwargs)``; see the section comment."""
    if kwargs.keys() <= _FAST_KEYWORDS:
        name = kwargs.get("name")
        message = kwargs.get("message")
        details = kwargs.get("state_details", _new_details)
        if (
            (name is None or type(name) is str)
            and (message is None or type(message) is str)
            and (details is _new_details or type(details) is StateDetails)
        ):
            if details is _new_details:
                details = _new_details()
            if state_type is StateType.SCHEDULED and details.scheduled_time is None:
                details = replace_details(details, scheduled_time=now_utc())
            state = _object_new(State)
            _object_setattr(
                state,
                "__dict__",
                {
                    "id": new_id(),
                    "type": state_type,
                    "name": _DEFAULT_NAMES[state_type] if name is None else name,
                    "timestamp": now_utc(),
                    "message": message,
                    "state_details": details,
                    "data": kwargs.get("data"),
                },
            )
            _object_setattr(state, "__pydantic_fields_set__", {"type", "name", *kwargs})
            _object_setattr(state, "__pydantic_extra__", None)
            _object_setattr(state, "__pydantic_private__", None)
            return state
    return State(type=state_type, **kwargs)


# -- constructors ---------------------------------------------------------------------


def _details(kwargs: dict[str, Any], **changes: Any) -> StateDetails:
    """The ``state_details`` keyword of a constructor (a StateDetails, a dict or None),
    with ``changes``."""
    details = kwargs.pop("state_details", None)
    if details is None:
        return _new_details(**changes)
    if not isinstance(details, StateDetails):
        details = StateDetails.model_validate(details)
    return replace_details(details, **changes) if changes else details


def Scheduled(scheduled_time: datetime | None = None, **kwargs: Any) -> State[Any]:
    """A run that is scheduled to start at ``scheduled_time`` (default: now)."""
    details = _details(kwargs)
    if scheduled_time is not None and details.scheduled_time is not None:
        raise ValueError("An extra scheduled_time was provided in state_details")
    details = replace_details(
        details, scheduled_time=scheduled_time or details.scheduled_time or now_utc()
    )
    return _new_state(StateType.SCHEDULED, {"state_details": details, **kwargs})


def Pending(**kwargs: Any) -> State[Any]:
    """A run that is about to start."""
    return _new_state(StateType.PENDING, kwargs)


def Running(**kwargs: Any) -> State[Any]:
    """A run whose code is executing."""
    return _new_state(StateType.RUNNING, kwargs)


def Completed(**kwargs: Any) -> State[Any]:
    """A run that finished successfully; ``data`` holds its result."""
    return _new_state(StateType.COMPLETED, kwargs)


def Failed(**kwargs: Any) -> State[Any]:
    """A run whose code raised; ``data`` holds the exception."""
    return _new_state(StateType.FAILED, kwargs)


def Crashed(**kwargs: Any) -> State[Any]:
    """A run stopped by something outside its code: an interrupt, a signal, a cancellation."""
    return _new_state(StateType.CRASHED, kwargs)


def Cancelling(**kwargs: Any) -> State[Any]:
    """A run that was asked to cancel and is winding down."""
    return _new_state(StateType.CANCELLING, kwargs)


def Cancelled(**kwargs: Any) -> State[Any]:
    """A run that was cancelled."""
    return _new_state(StateType.CANCELLED, kwargs)


def Paused(
    timeout_seconds: float | None = None,
    pause_expiration_time: datetime | None = None,
    reschedule: bool = False,
    pause_key: str | None = None,
    **kwargs: Any,
) -> State[Any]:
    """A flow run that waits to be resumed, until ``pause_expiration_time`` if given."""
    details = _details(kwargs)
    if details.pause_timeout is not None:
        raise ValueError("An extra pause timeout was provided in state_details")
    if pause_expiration_time is not None and timeout_seconds is not None:
        raise ValueError("Cannot supply both a pause_expiration_time and timeout_seconds")
    if timeout_seconds is not None:
        pause_expiration_time = now_utc() + timedelta(seconds=timeout_seconds)
    details = replace_details(
        details,
        pause_timeout=pause_expiration_time,
        pause_reschedule=reschedule,
        pause_key=pause_key,
    )
    return _new_state(StateType.PAUSED, {"state_details": details, **kwargs})


def Suspended(
    timeout_seconds: float | None = None,
    pause_expiration_time: datetime | None = None,
    pause_key: str | None = None,
    **kwargs: Any,
) -> State[Any]:
    """A flow run that left its process and is re-run from the top when resumed."""
    kwargs.setdefault("name", "Suspended")
    return Paused(
        timeout_seconds=timeout_seconds,
        pause_expiration_time=pause_expiration_time,
        reschedule=True,
        pause_key=pause_key,
        **kwargs,
    )


def AwaitingRetry(scheduled_time: datetime | None = None, **kwargs: Any) -> State[Any]:
    """A failed run that will be retried at ``scheduled_time``."""
    kwargs.setdefault("name", "AwaitingRetry")
    return Scheduled(scheduled_time=scheduled_time, **kwargs)


def AwaitingConcurrencySlot(scheduled_time: datetime | None = None, **kwargs: Any) -> State[Any]:
    """A run waiting for a slot of a tag concurrency limit."""
    kwargs.setdefault("name", "AwaitingConcurrencySlot")
    return Scheduled(scheduled_time=scheduled_time, **kwargs)


def Retrying(**kwargs: Any) -> State[Any]:
    """A run executing again after a failure."""
    kwargs.setdefault("name", "Retrying")
    return _new_state(StateType.RUNNING, kwargs)


def Late(scheduled_time: datetime | None = None, **kwargs: Any) -> State[Any]:
    """A scheduled run whose start time has passed."""
    kwargs.setdefault("name", "Late")
    return Scheduled(scheduled_time=scheduled_time, **kwargs)
