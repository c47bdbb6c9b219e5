"""States: constructors, display, predicates and results."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from runtime import states as S
from runtime.exceptions import (
    CancelledRun,
    CrashedRun,
    FailedRun,
    MissingResult,
    PausedRun,
    UnfinishedRun,
    UpstreamTaskError,
)
from runtime.states import State, StateType


class TestConstructors:
    @pytest.mark.parametrize(
        ("make", "state_type", "name"),
        [
            (S.Scheduled, StateType.SCHEDULED, "Scheduled"),
            (S.Pending, StateType.PENDING, "Pending"),
            (S.Running, StateType.RUNNING, "Running"),
            (S.Completed, StateType.COMPLETED, "Completed"),
            (S.Failed, StateType.FAILED, "Failed"),
            (S.Crashed, StateType.CRASHED, "Crashed"),
            (S.Cancelling, StateType.CANCELLING, "Cancelling"),
            (S.Cancelled, StateType.CANCELLED, "Cancelled"),
            (S.Paused, StateType.PAUSED, "Paused"),
            (S.Suspended, StateType.PAUSED, "Suspended"),
            (S.AwaitingRetry, StateType.SCHEDULED, "AwaitingRetry"),
            (S.AwaitingConcurrencySlot, StateType.SCHEDULED, "AwaitingConcurrencySlot"),
            (S.Retrying, StateType.RUNNING, "Retrying"),
            (S.Late, StateType.SCHEDULED, "Late"),
        ],
    )
    def test_type_and_default_name(self, make, state_type, name) -> None:
        """Each constructor makes its type with the Prefect-style default name."""
        state = make()
        assert state.type is state_type
        assert state.name == name

    def test_scheduled_defaults_its_time(self) -> None:
        """A SCHEDULED state without a time is scheduled for now."""
        before = datetime.now(timezone.utc)
        assert S.Scheduled().state_details.scheduled_time >= before

    def test_scheduled_rejects_two_times(self) -> None:
        """A time given twice is an error."""
        when = datetime.now(timezone.utc)
        with pytest.raises(
            ValueError, match=r"^An extra scheduled_time was provided in state_details$"
        ):
            S.Scheduled(scheduled_time=when, state_details={"scheduled_time": when})

    def test_paused_timeout_sets_expiration(self) -> None:
        """timeout_seconds becomes pause_timeout; Suspended asks to reschedule."""
        state = S.Paused(timeout_seconds=60, pause_key="1")
        assert state.state_details.pause_timeout > datetime.now(timezone.utc) + timedelta(
            seconds=50
        )
        assert state.state_details.pause_key == "1"
        assert not state.state_details.pause_reschedule
        assert S.Suspended().state_details.pause_reschedule

    def test_paused_rejects_both_timeouts(self) -> None:
        """A timeout and an expiration time together are an error."""
        with pytest.raises(
            ValueError, match=r"^Cannot supply both a pause_expiration_time and timeout_seconds$"
        ):
            S.Paused(timeout_seconds=1, pause_expiration_time=datetime.now(timezone.utc))


class TestDisplay:
    def test_str_plain(self) -> None:
        """A state named after its type shows only its message."""
        assert str(S.Completed()) == "Completed()"
        assert str(S.Failed(message="boom")) == "Failed('boom')"

    def test_str_named(self) -> None:
        """A state with its own name also shows its type."""
        assert str(S.AwaitingRetry()) == "AwaitingRetry(type=SCHEDULED)"
        assert str(S.Completed(name="Cached", message="hit")) == "Cached('hit', type=COMPLETED)"

    def test_repr(self) -> None:
        """repr adds the type and the result."""
        assert repr(S.Completed(data=3)) == "Completed(message=None, type=COMPLETED, result=3)"


class TestPredicates:
    def test_final_states(self) -> None:
        """COMPLETED, FAILED, CRASHED and CANCELLED are final; the rest are not."""
        final = {t for t in StateType if State(type=t).is_final()}
        assert final == {
            StateType.COMPLETED,
            StateType.FAILED,
            StateType.CRASHED,
            StateType.CANCELLED,
        }

    def test_each_predicate_matches_its_type(self) -> None:
        """is_<type>() is true exactly for its own type."""
        for state_type in StateType:
            state = State(type=state_type)
            assert getattr(state, f"is_{state_type.value.lower()}")()
            others = [t for t in StateType if t is not state_type]
            assert not any(getattr(state, f"is_{t.value.lower()}")() for t in others)


class TestResult:
    def test_completed_returns_data(self) -> None:
        """A completed state's result is its data."""
        assert S.Completed(data={"a": 1}).result() == {"a": 1}

    def test_failed_raises_its_exception(self) -> None:
        """A failed state raises its exception, or returns it when asked not to raise."""
        error = ValueError("boom")
        state = S.Failed(data=error)
        with pytest.raises(ValueError, match=r"^boom$"):
            state.result()
        assert state.result(raise_on_failure=False) is error

    def test_crashed_raises_base_exception(self) -> None:
        """A crashed state raises whatever stopped the run."""
        with pytest.raises(KeyboardInterrupt):
            S.Crashed(data=KeyboardInterrupt()).result()

    @pytest.mark.parametrize(
        ("make", "error"),
        [(S.Failed, FailedRun), (S.Crashed, CrashedRun), (S.Cancelled, CancelledRun)],
    )
    def test_no_exception_raises_wrapper(self, make, error) -> None:
        """A failed state without an exception raises a wrapper with its message."""
        with pytest.raises(error, match=r"^it went wrong$"):
            make(message="it went wrong").result()

    def test_aggregate_raises_first_failure(self) -> None:
        """A state whose data is a list of states raises the first failed one's exception."""
        inner = [S.Completed(data=1), S.Failed(data=KeyError("k"))]
        with pytest.raises(KeyError):
            S.Failed(data=inner).result()

    def test_unfinished(self) -> None:
        """A state that is not final has no result yet."""
        with pytest.raises(
            UnfinishedRun, match=r"^Run is in RUNNING state, its result is not available\.$"
        ):
            S.Running().result()

    def test_not_ready_raises_why_it_never_ran(self) -> None:
        """A NotReady state carries the error that kept its run from starting."""
        error = UpstreamTaskError("upstream failed")
        state = S.Pending(name="NotReady", message="upstream failed", data=error)
        with pytest.raises(UpstreamTaskError, match=r"^upstream failed$"):
            state.result()
        assert state.result(raise_on_failure=False) is error
        with pytest.raises(UpstreamTaskError, match=r"^upstream failed$"):
            S.Failed(data=[S.Completed(data=1), state]).result()

    def test_awaiting_retry_is_unfinished(self) -> None:
        """A state waiting for a retry has no result yet, though it keeps the exception."""
        with pytest.raises(
            UnfinishedRun, match=r"^Run is in SCHEDULED state, its result is not available\.$"
        ):
            S.AwaitingRetry(data=KeyError("k")).result()

    def test_paused(self) -> None:
        """A paused state has no result yet."""
        with pytest.raises(PausedRun, match=r"^Run is paused, its result is not available\.$"):
            S.Paused().result()

    def test_unavailable(self) -> None:
        """A result that was neither kept nor persisted says so."""
        with pytest.raises(MissingResult, match=r"could not be serialized, or the run had persist_result=False"):
            S.Completed(data=S.UNAVAILABLE).result()


def test_fresh_copy_has_new_id_and_time() -> None:
    """fresh_copy keeps the content but not the identity."""
    state = S.Completed(message="m", data=1)
    copy = state.fresh_copy()
    assert copy.id != state.id
    assert copy.timestamp >= state.timestamp
    assert (copy.type, copy.message, copy.data) == (state.type, state.message, state.data)
