"""The vocabulary of supervision, as plain values.

Strategies, restart types, backoff, child specs, crash reports, and the control messages a
:class:`~actors.Supervisor` understands.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from ._actor import Actor

__all__ = [
    "AttachChild",
    "Backoff",
    "ChildSpec",
    "CrashReport",
    "Restart",
    "StartChild",
    "StopChild",
    "Strategy",
    "WhichChildren",
]


class Strategy(enum.Enum):
    """Which children a supervisor restarts when one of them must be restarted."""

    #: Only the child that exited.
    ONE_FOR_ONE = "one_for_one"
    #: All children: the others are stopped (reverse order), then all restart (in order).
    ONE_FOR_ALL = "one_for_all"
    #: The child that exited and those started after it.
    REST_FOR_ONE = "rest_for_one"


class Restart(enum.Enum):
    """When a child that exited is restarted."""

    #: Always, even after a normal exit.
    PERMANENT = "permanent"
    #: Only after a crash.
    TRANSIENT = "transient"
    #: Never; the child is removed when it exits.
    TEMPORARY = "temporary"


def _non_negative(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value >= 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


@attrs.frozen
class Backoff:
    """Exponential backoff between restarts, like Akka's ``restartWithBackoff``.

    The n-th restart of a child (n counting from 0) waits
    ``min(max_seconds, min_seconds * 2**n) * (1 + random() * jitter)`` seconds.

    Raises:
        ValueError: If a field is negative, or ``max_seconds < min_seconds``.
    """

    min_seconds: float = attrs.field(validator=_non_negative)
    max_seconds: float = attrs.field(validator=_non_negative)
    jitter: float = attrs.field(default=0.2, validator=_non_negative)

    def __attrs_post_init__(self) -> None:
        if self.max_seconds < self.min_seconds:
            raise ValueError(
                f"max_seconds ({self.max_seconds!r}) must be >= min_seconds ({self.min_seconds!r})"
            )

    def delay(self, restart_count: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait before restarting a child restarted ``restart_count`` times before.

        Args:
            restart_count: How many times the child was restarted before this restart.
            rand: Source of uniform numbers in [0, 1) for the jitter.

        Returns:
            The delay in seconds.
        """
        # 2.0 ** 1024 overflows; by then the delay is max_seconds anyway.
        base = min(self.max_seconds, self.min_seconds * 2.0 ** min(restart_count, 1000))
        return base * (1 + rand() * self.jitter)


@attrs.frozen
class ChildSpec:
    """How a supervisor starts, restarts and stops one child.

    Attributes:
        name: Unique among the supervisor's children; also the child's ref name.
        factory: Builds a fresh actor, once per (re)start.
        restart: When the child is restarted after it exits.
        shutdown_timeout: Seconds the child gets to stop gracefully before it is cancelled.
    """

    name: str
    factory: Callable[[], Actor]
    restart: Restart = Restart.PERMANENT
    shutdown_timeout: float = attrs.field(default=5.0, validator=_non_negative)


@attrs.frozen
class CrashReport:
    """What a supervisor reports when one of its children crashes.

    Attributes:
        supervisor: The supervisor's name.
        child: The crashed child's name.
        exception: What the child raised.
        restart_count: How many times the supervisor had restarted this child before.
        restarting: Whether the supervisor restarts it (False: its restart type says not
            to, the supervisor is stopping, or this restart was one too many within the
            intensity period and the supervisor gives up).
    """

    supervisor: str
    child: str
    exception: BaseException
    restart_count: int
    restarting: bool = True


@attrs.frozen
class StartChild:
    """Ask a supervisor to start a child; the reply is its :class:`~actors.ActorRef`.

    The child's mailbox exists at once, so messages sent right away queue up.
    """

    spec: ChildSpec


@attrs.frozen
class StopChild:
    """Ask a supervisor to stop a child for good; await ``ref.wait()`` to see it exit."""

    name: str


@attrs.frozen
class WhichChildren:
    """Ask a supervisor for its children: a list of ``(name, ActorRef)`` in start order."""


@attrs.frozen
class AttachChild:
    """Ask a supervisor to supervise work the caller runs itself; the reply is an
    :class:`~actors.Attachment`.

    ``actor`` becomes a temporary child named ``name`` whose incarnation is not a task of
    the supervisor's but the caller's own task (:meth:`Attachment.run`) or thread
    (:meth:`Attachment.run_on_thread`): no task is spawned, as a directly dispatched
    message spawns none. The supervisor lists it, reports its crash, and stops it when it
    shuts down. ``on_cancel`` is how a thread incarnation is asked to stop (a thread has
    no cancel scope); it gets the exit reason.

    Attaching from another thread than the supervisor's loop is allowed (for a thread
    incarnation): the supervisor handles this message and an attached child's exit on
    the sending thread.
    """

    name: str
    actor: Actor
    on_cancel: Callable[[Any], None] | None = None
