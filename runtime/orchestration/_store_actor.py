"""The store actor: commits a backend's pending writes, many at a time.

Writes land in the backend as they happen (the run records in memory, rows in a pending
batch for a file-backed store); a :class:`Commit` asks the store actor to make them
durable. Commits queued while one is in progress are served by the next single commit
(group commit), so a burst of finishing runs costs one transaction, not one each.
"""

from __future__ import annotations

from typing import Any

import anyio
import attrs

from actors import Actor

from ..store._backend import StoreBackend

__all__ = ["Commit", "StoreActor"]


@attrs.frozen
class Commit:
    """Make every write made so far durable; the reply comes after the commit."""


class StoreActor(Actor):
    """Fronts a :class:`~runtime.store._backend.StoreBackend` for committing; see the module docstring."""

    def __init__(self, backend: StoreBackend) -> None:
        self.backend = backend

    async def receive(self, message: Any) -> None:
        """Handle a :class:`Commit`."""
        if type(message) is not Commit:
            raise TypeError(f"The store actor does not understand {message!r}.")
        if self.backend.has_pending_writes():
            await anyio.to_thread.run_sync(self.backend.commit)
