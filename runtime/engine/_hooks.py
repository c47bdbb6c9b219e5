"""Running state-change hooks: a hook that raises is logged, and the run's state stands."""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

from ..core._states import State
from ._drivers import Driver

__all__ = ["hook_name", "run_hooks"]


def hook_name(hook: Callable[..., Any]) -> str:
    """Return the name a hook is logged under."""
    name = getattr(hook, "name", None) or getattr(hook, "__name__", None)
    return str(name) if name else repr(hook)


async def run_hooks(
    hooks: Sequence[Callable[..., Any]],
    args: tuple[Any, ...],
    state: State[Any],
    logger: logging.LoggerAdapter,  # type: ignore[type-arg]
    driver: Driver,
) -> None:
    """Call each hook with ``args``, through the run's driver (async hooks awaited, sync
    ones where the run's sync code runs).

    Hooks run shielded from cancellation: a run that is being torn down still reports.
    """
    with driver.shielded():
        for hook in hooks:
            name = hook_name(hook)
            logger.info("Running hook %r in response to entering state %r", name, state.name)
            try:
                await driver.call(hook, *args)
            except Exception:
                logger.error("An error was encountered while running hook %r", name, exc_info=True)
            else:
                logger.info("Hook %r finished running successfully", name)
