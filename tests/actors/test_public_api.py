"""Pins the public surface of the actors package."""

from __future__ import annotations

import inspect

import actors

EXPECTED = [
    "Actor",
    "ActorRef",
    "ActorStopped",
    "ActorSystem",
    "AttachChild",
    "Attachment",
    "Backoff",
    "ChildSpec",
    "Clock",
    "CrashReport",
    "ExitKind",
    "ExitReason",
    "FakeClock",
    "ForeignThreadError",
    "GlobalLoop",
    "LoopClosed",
    "LoopThreadError",
    "LoopWaker",
    "NoWaitingThread",
    "PendingCall",
    "Restart",
    "StartChild",
    "StopChild",
    "Strategy",
    "Supervisor",
    "SupervisorFailed",
    "SystemClock",
    "WhichChildren",
    "critical",
    "defer",
    "global_loop",
    "in_critical",
    "open_actor_system",
]


def test_all_is_pinned() -> None:
    assert actors.__all__ == EXPECTED


def test_every_public_name_exists() -> None:
    for name in actors.__all__:
        assert hasattr(actors, name), name


def test_kernel_names_are_documented() -> None:
    """Every public name of the kernel core (not the clock/global-loop modules) has a docstring."""
    owned = {
        "actors._actor",
        "actors._exceptions",
        "actors._supervision",
        "actors._supervisor",
        "actors._system",
    }
    for name in actors.__all__:
        obj = getattr(actors, name)
        if getattr(obj, "__module__", None) in owned:
            assert inspect.getdoc(obj), name
