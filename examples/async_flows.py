"""Async flows on asyncio and on trio: the same code, the engine in the caller's loop.

Run ``python examples/async_flows.py`` (both backends, one after the other).
"""

from __future__ import annotations

import anyio

from runtime import Runtime, flow, task


@task(retries=1, retry_delay_seconds=0)
async def fetch(item: int) -> int:
    """Pretend to fetch something; async tasks run concurrently in the flow's loop."""
    await anyio.sleep(0.01)
    return item * item


@task
def crunch(values: list[int]) -> int:
    """A sync task submitted from an async flow runs on a worker thread."""
    return sum(values)


@flow
async def squares(n: int = 10) -> int:
    """Fetch n squares concurrently, then add them up on a worker thread."""
    futures = fetch.map(range(n))
    values = [await future for future in futures]
    return await crunch.submit(values)


async def main() -> None:
    """Run the flow in a Runtime of our own, on whichever loop runs us."""
    async with Runtime(store="memory://"):
        state = await squares(10, return_state=True)
        print(f"{anyio.get_current_task().name}: {state!r}")


if __name__ == "__main__":
    for backend in ("asyncio", "trio"):
        print(f"--- {backend}")
        anyio.run(main, backend=backend)
