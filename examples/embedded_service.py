"""Embedding stageflow in long-running async programs.

- ``OrderService`` is an asyncio service (the shape of a Starlette/FastAPI app with a
  lifespan): the ``Runtime`` opens with the service and its actors run in the service's
  own task group; request handlers call flows directly.
- ``trio_worker`` is a trio program doing the same in a nursery.

Run ``python examples/embedded_service.py``.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import AsyncIterator

import anyio

from runtime import Runtime, flow, get_run_logger, task


@task
async def charge(order_id: int, amount: float) -> str:
    """Pretend to charge a card."""
    await anyio.sleep(0)
    return f"charge-{order_id}"


@task
async def reserve(order_id: int) -> str:
    """Pretend to reserve stock."""
    return f"stock-{order_id}"


@flow(flow_run_name="order-{order_id}")
async def place_order(order_id: int, amount: float) -> dict[str, str]:
    """The flow each request runs."""
    charged, reserved = charge.submit(order_id, amount), reserve.submit(order_id)
    get_run_logger().info("placing order %s", order_id)
    return {"charge": await charged, "stock": await reserved}


class OrderService:
    """A minimal asyncio service: a lifespan that owns the Runtime, and a handler."""

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """What a Starlette ``lifespan`` would do: run the Runtime for the app's life."""
        async with Runtime(store="memory://"):
            yield

    async def handle(self, order_id: int) -> dict[str, str]:
        """A request handler: just call the flow."""
        return await place_order(order_id, 9.99)


async def asyncio_service() -> None:
    """Serve three concurrent 'requests' on asyncio."""
    service = OrderService()
    async with service.lifespan():
        results = await asyncio.gather(*(service.handle(i) for i in range(3)))
        print("asyncio service:", results)


async def trio_worker() -> None:
    """A trio program: the Runtime in its nursery, flows started as child tasks."""
    results: dict[int, dict[str, str]] = {}

    async def work(order_id: int) -> None:
        results[order_id] = await place_order(order_id, 1.0)

    async with Runtime(store="memory://"):
        async with anyio.create_task_group() as nursery:
            for order_id in range(3):
                nursery.start_soon(work, order_id)
    print("trio worker:", [results[i] for i in sorted(results)])


if __name__ == "__main__":
    asyncio.run(asyncio_service())
    anyio.run(trio_worker, backend="trio")
