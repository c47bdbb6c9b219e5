"""Actor kernel micro-benchmarks, on asyncio and trio in the same run.

Run: ``python benchmarks/actors_bench.py [--quick]``. Prints operations per second and µs per
operation for each section and backend. Each section is an async function taking the
iteration count and returning (label, ops, seconds) rows; add a section by appending it to
``SECTIONS``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import attrs

from actors import Actor, ChildSpec, Restart, open_actor_system

Row = tuple[str, int, float]
Section = Callable[[int], Awaitable[list[Row]]]


@attrs.frozen
class Ping:
    """The benchmark message."""

    n: int


class SyncEcho(Actor):
    """Sync receive: eligible for direct dispatch."""

    def receive(self, message: Any) -> Any:
        return message


class AsyncEcho(Actor):
    """Async receive: always goes through the mailbox."""

    async def receive(self, message: Any) -> Any:
        return message


class Sink(Actor):
    """Counts tells; answers the count to an ask."""

    mailbox_size = 1000

    def __init__(self) -> None:
        self.count = 0

    async def receive(self, message: Any) -> Any:
        if message is None:
            return self.count
        self.count += 1
        return None


async def raw_ping_pong(n: int) -> list[Row]:
    """Round trips between two tasks over anyio memory object streams: the floor."""
    to_echo_send, to_echo_receive = anyio.create_memory_object_stream[Any](1)
    back_send, back_receive = anyio.create_memory_object_stream[Any](1)

    async def echo() -> None:
        async with to_echo_receive, back_send:
            async for item in to_echo_receive:
                await back_send.send(item)

    async with anyio.create_task_group() as tg, back_receive:
        tg.start_soon(echo)
        async with to_echo_send:
            start = time.perf_counter()
            for i in range(n):
                await to_echo_send.send(i)
                await back_receive.receive()
            elapsed = time.perf_counter() - start
    return [("raw memory-stream ping-pong", n, elapsed)]


async def actor_sections(n: int) -> list[Row]:
    """Asks through the mailbox, asks by direct dispatch, and tell throughput."""
    rows: list[Row] = []
    async with open_actor_system("bench") as system:
        mailbox_echo = await system.spawn(ChildSpec("async-echo", AsyncEcho))
        direct_echo = await system.spawn(ChildSpec("sync-echo", SyncEcho))
        sink = await system.spawn(ChildSpec("sink", Sink))
        await mailbox_echo.ask(Ping(0))
        await direct_echo.ask(Ping(0))

        start = time.perf_counter()
        for i in range(n):
            await mailbox_echo.ask(Ping(i))
        rows.append(("ask via mailbox (async receive)", n, time.perf_counter() - start))

        start = time.perf_counter()
        for i in range(n):
            await direct_echo.ask(Ping(i))
        rows.append(("ask via direct dispatch (sync receive)", n, time.perf_counter() - start))

        start = time.perf_counter()
        for i in range(n):
            await sink.tell(Ping(i))
        await sink.ask(None)
        rows.append(("tell throughput via mailbox", n, time.perf_counter() - start))
    return rows


class Once(Actor):
    """A process actor that returns at once: the shape of a short-lived task-run actor."""

    async def run(self) -> None:
        pass


async def temporary_children(n: int) -> list[Row]:
    """Start short-lived TEMPORARY children and wait for each to exit and be removed."""
    count = max(n // 10, 1)
    async with open_actor_system("bench") as system:
        start = time.perf_counter()
        for i in range(count):
            ref = await system.spawn(ChildSpec(f"t{i}", Once, restart=Restart.TEMPORARY))
            await ref.wait()
        elapsed = time.perf_counter() - start
    return [("temporary child: spawn, run, exit", count, elapsed)]


SECTIONS: list[Section] = [raw_ping_pong, actor_sections, temporary_children]


def run_backend(backend: str, n: int) -> list[Row]:
    rows: list[Row] = []
    for section in SECTIONS:
        rows.extend(anyio.run(section, n, backend=backend))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20_000, help="iterations per measurement")
    parser.add_argument("--quick", action="store_true", help="2,000 iterations")
    args = parser.parse_args()
    n = 2_000 if args.quick else args.n
    for backend in ("asyncio", "trio"):
        rows = run_backend(backend, n)
        floor = rows[0][2] / rows[0][1]
        print(f"\n{backend} ({n} iterations)")
        for label, ops, seconds in rows:
            per_op = seconds / ops
            ratio = f"{per_op / floor:5.2f}x raw" if "ask" in label else ""
            print(f"  {label:42} {ops / seconds:>10,.0f} ops/s {per_op * 1e6:8.2f} µs/op  {ratio}")


if __name__ == "__main__":
    main()
