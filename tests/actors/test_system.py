"""Tests for actors._system: open_actor_system and ActorSystem."""

from __future__ import annotations

from functools import partial
from typing import Any

import anyio
import pytest
from anyio.lowlevel import checkpoint

from actors import (
    Actor,
    ActorStopped,
    ActorSystem,
    ChildSpec,
    ExitKind,
    ExitReason,
    FakeClock,
    SupervisorFailed,
    WhichChildren,
    open_actor_system,
)


class Logged(Actor):
    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    def receive(self, message: Any) -> Any:
        return (self.name, message)

    async def on_stop(self) -> None:
        self.log.append(self.name)


class Crasher(Actor):
    async def on_start(self) -> None:
        await checkpoint()
        raise RuntimeError("cannot start")


async def test_spawn_and_shutdown_in_reverse_order() -> None:
    log: list[str] = []
    async with open_actor_system("sys", clock=FakeClock()) as system:
        assert system.name == "sys"
        assert repr(system) == "<ActorSystem 'sys'>"
        refs = [await system.spawn(ChildSpec(n, partial(Logged, n, log))) for n in "abc"]
        assert await refs[1].ask("hi") == ("b", "hi")
        children = await system.root.ask(WhichChildren())
        assert children == [(ref.name, ref) for ref in refs]
    assert log == ["c", "b", "a"]
    assert system.root.exit_reason == ExitReason(
        ExitKind.SHUTDOWN, None, "actor system 'sys' closed"
    )
    assert refs[0].exit_reason == ExitReason(ExitKind.SHUTDOWN, None, "supervisor 'sys' shut down")
    with pytest.raises(
        ActorStopped,
        match=r"^cannot send StartChild to actor 'sys': it has exited "
        r"\(shutdown: actor system 'sys' closed\)$",
    ):
        await system.spawn(ChildSpec("late", Actor))


async def test_root_failure_cancels_the_body_and_propagates() -> None:
    body_cancelled = False
    with pytest.raises(SupervisorFailed, match=r"^supervisor 'system' gave up: ") as info:
        async with open_actor_system(clock=FakeClock(), on_crash=lambda r: None) as system:
            await system.spawn(ChildSpec("c", Crasher))
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class():
                body_cancelled = True
                raise
    assert body_cancelled
    assert isinstance(info.value.__cause__, RuntimeError)


async def test_body_error_propagates_unwrapped_after_shutdown() -> None:
    log: list[str] = []
    with pytest.raises(KeyError, match=r"^'oops'$"):
        async with open_actor_system(clock=FakeClock()) as system:
            await system.spawn(ChildSpec("a", partial(Logged, "a", log)))
            raise KeyError("oops")
    assert log == ["a"]


async def test_a_base_exception_in_the_body_propagates_unwrapped() -> None:
    """KeyboardInterrupt & co. come out as themselves, not in an exception group."""
    log: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        async with open_actor_system(clock=FakeClock()) as system:
            await system.spawn(ChildSpec("a", partial(Logged, "a", log)))
            raise KeyboardInterrupt
    assert log == ["a"]


async def test_outer_cancellation_cancels_the_actors() -> None:
    log: list[str] = []
    with anyio.CancelScope() as scope:
        async with open_actor_system(clock=FakeClock()) as system:
            ref = await system.spawn(ChildSpec("a", partial(Logged, "a", log)))
            scope.cancel()
            await anyio.sleep_forever()
    assert scope.cancelled_caught
    assert log == ["a"]
    assert ref.exit_reason is not None
    assert ref.exit_reason.kind is ExitKind.CANCELLED


def test_system_has_no_public_constructor() -> None:
    with pytest.raises(
        TypeError,
        match=r"^ActorSystem has no public constructor; "
        r"use 'async with actors\.open_actor_system\(\) as system'$",
    ):
        ActorSystem()  # type: ignore[call-arg]
