"""Orchestration rules, as a table: (current, proposed, context) -> decision."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from runtime import states as S
from runtime.core._rules import Abort, Accept, Reject, RuleContext, Wait, decide, jittered_delay

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def ctx(**overrides) -> RuleContext:
    return RuleContext(**{"kind": "task", "now": NOW, **overrides})


def later(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


# Each row: id, current state, proposed state, context, expected decision type,
# expected resulting state name (or None when the run keeps its state).
TABLE = [
    ("force wins over terminal", S.Completed(), S.Running(), ctx(force=True), Accept, "Running"),
    ("pending to running", S.Pending(), S.Running(), ctx(), Accept, "Running"),
    ("running to completed", S.Running(), S.Completed(), ctx(), Accept, "Completed"),
    ("completed stays completed", S.Completed(), S.Running(), ctx(), Abort, None),
    ("failed stays failed", S.Failed(), S.Completed(), ctx(), Abort, None),
    ("crashed stays crashed", S.Crashed(), S.Running(), ctx(), Abort, None),
    ("cancelled stays cancelled", S.Cancelled(), S.Completed(), ctx(), Abort, None),
    (
        "task retry without delay",
        S.Running(),
        S.Failed(),
        ctx(run_count=1, retries=2),
        Reject,
        "Retrying",
    ),
    (
        "task retry with delay",
        S.Running(),
        S.Failed(),
        ctx(run_count=1, retries=2, retry_delays=(5.0,)),
        Reject,
        "AwaitingRetry",
    ),
    (
        "task retries exhausted",
        S.Running(),
        S.Failed(),
        ctx(run_count=3, retries=2),
        Accept,
        "Failed",
    ),
    (
        "retry vetoed by condition",
        S.Running(),
        S.Failed(state_details={"retriable": False}),
        ctx(run_count=1, retries=2),
        Accept,
        "Failed",
    ),
    (
        "flow retry waits",
        S.Running(),
        S.Failed(),
        ctx(kind="flow", run_count=1, retries=1),
        Reject,
        "AwaitingRetry",
    ),
    (
        "timed out task retries",
        S.Running(),
        S.Failed(name="TimedOut"),
        ctx(run_count=1, retries=1),
        Reject,
        "Retrying",
    ),
    (
        "crash is not retried",
        S.Running(),
        S.Crashed(),
        ctx(run_count=1, retries=3),
        Accept,
        "Crashed",
    ),
    (
        "scheduled time not reached",
        S.AwaitingRetry(scheduled_time=later(10)),
        S.Retrying(),
        ctx(),
        Wait,
        None,
    ),
    (
        "scheduled time reached",
        S.AwaitingRetry(scheduled_time=later(-1)),
        S.Retrying(),
        ctx(),
        Accept,
        "Retrying",
    ),
    ("parent not running", S.Pending(), S.Running(), ctx(parent_state=S.Completed()), Abort, None),
    (
        "parent paused",
        S.Pending(),
        S.Running(),
        ctx(parent_state=S.Paused(), parent_id="p"),
        Wait,
        None,
    ),
    (
        "parent cancelling",
        S.Pending(),
        S.Running(),
        ctx(parent_state=S.Cancelling()),
        Reject,
        "Cancelled",
    ),
    ("parent running", S.Pending(), S.Running(), ctx(parent_state=S.Running()), Accept, "Running"),
    (
        "cache hit",
        S.Pending(),
        S.Running(),
        ctx(cached_state=S.Completed(name="Cached", data=1)),
        Reject,
        "Cached",
    ),
    ("no concurrency slot", S.Pending(), S.Running(), ctx(slot_wait=2.0), Wait, None),
    (
        "cancelling refuses running",
        S.Cancelling(),
        S.Running(),
        ctx(kind="flow"),
        Reject,
        "Cancelled",
    ),
    (
        "cancelling accepts final",
        S.Cancelling(),
        S.Cancelled(),
        ctx(kind="flow"),
        Accept,
        "Cancelled",
    ),
    (
        "pause a running flow",
        S.Running(),
        S.Paused(pause_key="1"),
        ctx(kind="flow"),
        Accept,
        "Paused",
    ),
    (
        "pause already fired",
        S.Running(),
        S.Paused(pause_key="1"),
        ctx(kind="flow", pause_keys=frozenset({"1"})),
        Reject,
        None,
    ),
    (
        "suspend a subflow",
        S.Running(),
        S.Suspended(pause_key="1"),
        ctx(kind="flow", has_parent_run=True),
        Abort,
        None,
    ),
    (
        "resume a paused flow",
        S.Paused(pause_expiration_time=later(60)),
        S.Running(),
        ctx(kind="flow"),
        Accept,
        "Running",
    ),
    (
        "resume after the pause timed out",
        S.Paused(pause_expiration_time=later(-1)),
        S.Running(),
        ctx(kind="flow"),
        Reject,
        "Failed",
    ),
    ("paused flow cannot go pending", S.Paused(), S.Pending(), ctx(kind="flow"), Reject, None),
    ("first state of a run", None, S.Pending(), ctx(), Accept, "Pending"),
]


@pytest.mark.parametrize(
    ("current", "proposed", "context", "decision", "name"),
    [row[1:] for row in TABLE],
    ids=[row[0] for row in TABLE],
)
def test_rules_table(current, proposed, context, decision, name) -> None:
    """Every row of the table decides as expected."""
    outcome = decide(current, proposed, context)
    assert type(outcome) is decision
    if decision is Accept:
        assert outcome.state is proposed
        assert outcome.state.name == name
    elif decision is Reject:
        assert (outcome.state.name if outcome.state is not None else None) == name


def test_retry_delay_list_repeats_last_value() -> None:
    """Delays are picked by attempt; the last one repeats."""
    delays = (1.0, 2.0)
    got = []
    for run_count in (1, 2, 3):
        outcome = decide(
            S.Running(), S.Failed(), ctx(run_count=run_count, retries=5, retry_delays=delays)
        )
        got.append((outcome.state.state_details.scheduled_time - NOW).total_seconds())
    assert got == [1.0, 2.0, 2.0]


def test_awaiting_retry_keeps_the_failure() -> None:
    """AwaitingRetry carries the failed state's message and exception."""
    error = ValueError("x")
    outcome = decide(
        S.Running(), S.Failed(message="boom", data=error), ctx(kind="flow", run_count=1, retries=1)
    )
    assert outcome.state.message == "boom"
    assert outcome.state.data is error


def test_wait_for_scheduled_time_says_how_long() -> None:
    """A run scheduled in 10 s waits 10 s."""
    outcome = decide(S.AwaitingRetry(scheduled_time=later(10)), S.Retrying(), ctx())
    assert outcome.delay == 10.0


def test_wait_for_paused_parent_watches_it() -> None:
    """A run held back by its paused parent is woken by the parent's next change."""
    outcome = decide(S.Pending(), S.Running(), ctx(parent_state=S.Paused(), parent_id="parent"))
    assert outcome.watch == "parent"


class TestJitter:
    @pytest.mark.parametrize("sample", [0.0, 0.25, 0.5, 0.75, 0.999999])
    def test_jitter_stays_within_bounds(self, sample: float) -> None:
        """A jittered delay never exceeds average * (1 + factor) and is never negative."""
        delay = jittered_delay(10.0, 0.5, sample)
        assert 0 <= delay <= 15.0 + 1e-9

    def test_jitter_grows_with_the_sample(self) -> None:
        """The sample drives the delay monotonically."""
        delays = [jittered_delay(10.0, 0.5, s) for s in (0.1, 0.5, 0.9)]
        assert delays == sorted(delays)

    def test_no_jitter_factor(self) -> None:
        """A zero factor leaves the delay alone."""
        assert jittered_delay(10.0, 0.0, 0.3) == 10.0

    def test_negative_factor_is_an_error(self) -> None:
        """A negative factor is rejected with a clear message."""
        with pytest.raises(ValueError, match=r"^retry_jitter_factor must be >= 0, got -1\.$"):
            jittered_delay(10.0, -1, 0.5)

    def test_rule_applies_jitter(self) -> None:
        """With a jitter factor the retry delay is spread."""
        outcome = decide(
            S.Running(),
            S.Failed(),
            ctx(
                run_count=1,
                retries=1,
                retry_delays=(10.0,),
                retry_jitter_factor=0.5,
                jitter_sample=0.999,
            ),
        )
        delay = (outcome.state.state_details.scheduled_time - NOW).total_seconds()
        assert 10.0 < delay <= 15.0
