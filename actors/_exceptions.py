"""Exceptions raised by the actor kernel.

Every class says when it is raised; messages name the actor or loop involved and what to do.
"""

from __future__ import annotations

__all__ = [
    "ActorStopped",
    "ForeignThreadError",
    "LoopClosed",
    "LoopThreadError",
    "NoWaitingThread",
    "SupervisorFailed",
]


class ActorStopped(RuntimeError):
    """Raised when a message is sent to a stopped actor, or an ask's actor stops before replying."""


class ForeignThreadError(RuntimeError):
    """Raised when an ActorRef is used from a thread other than the one running its actor's loop."""


class SupervisorFailed(RuntimeError):
    """Raised by a supervisor whose children crashed more often than its restart intensity allows.

    Its parent supervisor sees this exception as the supervisor's own crash. ``report`` is the
    crash report that tipped the intensity over.
    """

    def __init__(self, message: str, report: object | None = None) -> None:
        super().__init__(message)
        self.report = report


class LoopThreadError(RuntimeError):
    """Raised when a blocking call into the global loop is made from the loop's own thread."""


class LoopClosed(RuntimeError):
    """Raised when the global loop has shut down, or shuts down while a call is pending."""


class NoWaitingThread(RuntimeError):
    """Raised when work is sent back to a waiting thread from a task that no thread waits on."""
