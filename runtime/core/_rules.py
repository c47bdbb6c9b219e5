"""Orchestration rules: pure decisions about proposed state transitions.

:func:`decide` takes the run's current state, the proposed state and a
:class:`RuleContext` (the run's policy and the facts the orchestrator looked up) and
answers :class:`Accept`, :class:`Reject` (take this state instead), :class:`Wait` (propose
again after a delay) or :class:`Abort` (the transition cannot happen). No I/O, no clock, no
randomness: everything arrives in the context, so the rules are tested as a table.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any, Union

import attrs

from . import _states as S
from ._models import RunKind
from ._states import State, StateType

__all__ = [
    "Abort",
    "Accept",
    "Decision",
    "Reject",
    "RuleContext",
    "Wait",
    "decide",
    "jittered_delay",
    "retry_delay_for",
]


@attrs.frozen
class Accept:
    """The proposed state becomes the run's state."""

    state: State[Any]


@attrs.frozen
class Reject:
    """The run takes ``state`` instead of the proposed one (``None``: it keeps its state)."""

    state: State[Any] | None
    reason: str


@attrs.frozen
class Wait:
    """Propose again after ``delay`` seconds, or sooner if ``watch`` is a run whose state
    changes (the parent flow run, for a run held back by a pause)."""

    delay: float
    reason: str
    state: State[Any] | None = None
    watch: Any = None


SLOTS_RELEASED = "concurrency-slots-released"
"""What a run waiting for a concurrency slot watches: the store's slot releases."""


@attrs.frozen
class Abort:
    """The transition cannot happen; the run keeps its state."""

    reason: str


Decision = Union[Accept, Reject, Wait, Abort]


@attrs.frozen
class RuleContext:
    """What the rules know about a run besides its current and proposed states.

    Attributes:
        kind: "flow" or "task".
        now: the orchestrator's clock reading.
        run_count: how many times the run entered a RUNNING state so far.
        retries: how many retries the run's policy allows.
        retry_delays: delays before each retry (the last one repeats).
        retry_jitter_factor: spread of the jitter applied to retry delays, or None.
        jitter_sample: a uniform sample in [0, 1) the orchestrator drew for the jitter.
        parent_state: the current state of the parent flow run, if any.
        parent_id: the parent flow run's id, for ``Wait.watch``.
        force: apply the proposed state without any rule.
        cached_state: a valid cached COMPLETED state for the run's cache key, if any.
        slot_wait: seconds to wait for a concurrency slot, or None if slots are available.
        pause_keys: pause keys the flow run has already passed.
        has_parent_run: the flow run is a subflow.
        poll_interval: how long to wait before proposing again while the parent is paused.
        required_types: the proposal holds only if the run is in one of these state types
            now (a resume requires PAUSED: of two resumers, the second finds the run
            running and is aborted); None for no such condition.
    """

    kind: RunKind
    now: datetime
    run_count: int = 0
    retries: int = 0
    retry_delays: tuple[float, ...] = ()
    retry_jitter_factor: float | None = None
    jitter_sample: float = 0.5
    parent_state: State[Any] | None = None
    parent_id: Any = None
    force: bool = False
    cached_state: State[Any] | None = None
    slot_wait: float | None = None
    pause_keys: frozenset[str] = frozenset()
    has_parent_run: bool = False
    poll_interval: float = 10.0
    required_types: frozenset[StateType] | None = None


def decide(current: State[Any] | None, proposed: State[Any], ctx: RuleContext) -> Decision:
    """Decide what happens to a proposed transition from ``current`` to ``proposed``."""
    required = ctx.required_types
    if required is not None and (current is None or current.type not in required):
        found = "no state" if current is None else f"the {current.type.value} state"
        wanted = " or ".join(sorted(t.value for t in required))
        return Abort(f"The run is in {found}, not {wanted}.")
    if ctx.force:
        return Accept(proposed)
    if current is not None and current.is_final():
        return Abort(f"This run is already in terminal state {current.type.value}.")
    if current is not None and current.is_paused():
        return _leaving_pause(current, proposed, ctx)
    if (
        current is not None
        and current.is_cancelling()
        and not (proposed.is_cancelled() or proposed.is_crashed())
    ):
        # A cancellation, once requested, is how the run ends: whatever the body did
        # meanwhile (it failed on the cancellation, or just finished), it ends Cancelled.
        return Reject(
            S.Cancelled(message=current.message or "The run was cancelled."),
            "The run is being cancelled.",
        )
    if proposed.is_running():
        return _entering_running(current, proposed, ctx)
    if proposed.is_failed() and current is not None and current.is_running():
        return _retry_on_failure(proposed, ctx)
    if proposed.is_paused():
        return _entering_pause(current, proposed, ctx)
    return Accept(proposed)


def _entering_running(
    current: State[Any] | None, proposed: State[Any], ctx: RuleContext
) -> Decision:
    parent = ctx.parent_state
    if parent is not None and not parent.is_running():
        if parent.is_paused():
            return Wait(ctx.poll_interval, "The parent flow run is paused.", watch=ctx.parent_id)
        if parent.is_cancelling() or parent.is_cancelled():
            return Reject(
                S.Cancelled(message="The parent flow run was cancelled."),
                "The parent flow run was cancelled.",
            )
        return Abort(f"The parent flow run is not running (it is {parent.type.value}).")
    if current is not None and current.is_scheduled():
        scheduled = current.state_details.scheduled_time
        if scheduled is not None and scheduled > ctx.now:
            return Wait((scheduled - ctx.now).total_seconds(), "Waiting for the scheduled time.")
    if ctx.cached_state is not None:
        return Reject(ctx.cached_state, "Found a cached result for the run's cache key.")
    if ctx.slot_wait is not None:
        return Wait(
            ctx.slot_wait,
            "Waiting for a concurrency slot.",
            state=S.AwaitingConcurrencySlot(),
            watch=SLOTS_RELEASED,
        )
    return Accept(proposed)


def _retry_on_failure(proposed: State[Any], ctx: RuleContext) -> Decision:
    if proposed.state_details.retriable is False or ctx.run_count > ctx.retries:
        return Accept(proposed)
    delay = retry_delay_for(ctx)
    if ctx.kind == "task" and delay <= 0:
        return Reject(S.Retrying(message=proposed.message), "Retrying")
    retry = S.AwaitingRetry(
        scheduled_time=ctx.now + timedelta(seconds=max(delay, 0.0)),
        message=proposed.message,
        data=proposed.data,
    )
    return Reject(retry, "Retrying")


def _entering_pause(current: State[Any] | None, proposed: State[Any], ctx: RuleContext) -> Decision:
    details = proposed.state_details
    if details.pause_key is not None and details.pause_key in ctx.pause_keys:
        return Reject(None, "This pause has already fired.")
    if details.pause_reschedule and ctx.has_parent_run:
        return Abort("Cannot suspend subflows: suspend the parent flow run instead.")
    if current is None or not current.is_running():
        return Abort("Only a running flow run can be paused.")
    return Accept(proposed)


def _leaving_pause(current: State[Any], proposed: State[Any], ctx: RuleContext) -> Decision:
    if proposed.is_cancelling():
        return Accept(proposed)
    if not (proposed.is_running() or proposed.is_scheduled() or proposed.is_final()):
        return Reject(
            None,
            f"This run cannot transition to the {proposed.type.value} state from the "
            f"{current.type.value} state.",
        )
    if proposed.is_final():
        return Accept(proposed)
    verb = "suspended" if current.state_details.pause_reschedule else "paused"
    timeout = current.state_details.pause_timeout
    if timeout is not None and timeout <= ctx.now:
        return Reject(
            S.Failed(message=f"The flow was {verb} and never resumed."),
            "The flow run pause has timed out and can no longer resume.",
        )
    return Accept(proposed)


def retry_delay_for(ctx: RuleContext) -> float:
    """Return the delay before the next retry of a run that entered RUNNING ``run_count`` times."""
    delays = ctx.retry_delays
    if not delays:
        return 0.0
    delay = float(delays[min(max(ctx.run_count, 1) - 1, len(delays) - 1)])
    if ctx.retry_jitter_factor is not None and delay > 0:
        delay = jittered_delay(delay, ctx.retry_jitter_factor, ctx.jitter_sample)
    return delay


def jittered_delay(average: float, factor: float, sample: float) -> float:
    """Spread ``average`` so that runs retrying together do not all wake at once.

    The delay is drawn from an exponential distribution with mean ``average``, truncated to
    ``[average * low, average * (1 + factor)]``, where ``low`` is chosen so the truncated
    distribution keeps ``average`` as its mean (approximately). ``sample`` is a uniform
    draw in [0, 1) that the caller supplies, so this function stays pure.

    Raises:
        ValueError: if ``factor`` is negative.
    """
    if factor < 0:
        raise ValueError(f"retry_jitter_factor must be >= 0, got {factor}.")
    if factor == 0:
        return average
    high_multiple = 1 + factor
    low_multiple = (
        0.0 if high_multiple >= 50 else math.log2(2**high_multiple / (2**high_multiple - 1))
    )

    def cdf(x: float) -> float:
        return 1 - math.exp(-x / average)

    lo, hi = cdf(average * low_multiple), cdf(average * high_multiple)
    u = lo + (hi - lo) * sample
    return -math.log(max(1 - u, 1e-10)) * average


def is_terminal(state_type: StateType) -> bool:
    """Return whether ``state_type`` is a terminal type."""
    return state_type in S.TERMINAL_STATES
