"""Transactions: task results that become visible together, or are undone together.

Every task run runs in a transaction keyed by its cache key. When the run completes, its
result is *staged* in that transaction, with the task's ``on_commit`` and ``on_rollback``
hooks. Outside any other transaction, the run's transaction commits at once: the cache
record is written and the ``on_commit`` hooks run. Inside ``with transaction():`` the
task's transaction joins the enclosing one and waits for it::

    with transaction():
        write_rows()          # staged
        publish_rows()        # raises: the block exits with an exception...

    # ...so the transaction rolls back: write_rows' on_rollback hooks run (newest first)
    # and no cache record of the block's runs is written.

When the block ends without an exception it commits: the cache records are written and
every staged ``on_commit`` hook runs, in staging order.

Hooks are plain functions called with the :class:`Transaction`; they run on the thread
that commits or rolls back. A hook that raises is logged, and the remaining hooks still
run. Read the transaction's values with :meth:`Transaction.get` (set by
:meth:`Transaction.set` anywhere inside the block).
"""

from __future__ import annotations

import contextvars
import enum
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import attrs

__all__ = ["Transaction", "TransactionState", "get_transaction", "transaction"]

_logger = logging.getLogger("stageflow.transactions")

_current: contextvars.ContextVar[Transaction | None] = contextvars.ContextVar(
    "stageflow_transaction", default=None
)

Hook = Callable[["Transaction"], Any]


class TransactionState(enum.Enum):
    """Where a transaction is in its life."""

    PENDING = "PENDING"
    ACTIVE = "ACTIVE"
    STAGED = "STAGED"
    COMMITTED = "COMMITTED"
    ROLLED_BACK = "ROLLED_BACK"


@attrs.define(eq=False)
class _Staged:
    """What a child transaction staged: hooks, and the write to make on commit."""

    transaction: Transaction
    on_commit: list[Hook]
    on_rollback: list[Hook]
    write: Callable[[], None] | None


class Transaction:
    """A unit of work whose staged results are committed or rolled back together.

    Attributes:
        key: the transaction's key (a task run's cache key), or None.
        parent: the enclosing transaction, if any.
        state: see :class:`TransactionState`.
        value: what was staged (a task run's result), once staged.
    """

    def __init__(self, key: str | None = None, parent: Transaction | None = None) -> None:
        self.key = key
        self.parent = parent
        self.state = TransactionState.PENDING
        self.value: Any = None
        self._values: dict[str, Any] = {}
        self._staged: list[_Staged] = []
        self._children: list[Transaction] = []  # nested blocks that handed their work up
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Transaction(key={self.key!r}, state={self.state.value})"

    # -- user-visible -------------------------------------------------------------------

    def is_committed(self) -> bool:
        """Whether the transaction committed."""
        return self.state is TransactionState.COMMITTED

    def is_rolled_back(self) -> bool:
        """Whether the transaction rolled back."""
        return self.state is TransactionState.ROLLED_BACK

    def is_staged(self) -> bool:
        """Whether a result was staged and waits for the enclosing transaction."""
        return self.state is TransactionState.STAGED

    def is_active(self) -> bool:
        """Whether the transaction's block is running."""
        return self.state is TransactionState.ACTIVE

    def set(self, name: str, value: Any) -> None:
        """Store a value that code and hooks in this transaction can :meth:`get`."""
        self._values[name] = value

    def get(self, name: str, default: Any = ...) -> Any:
        """Return a value :meth:`set` in this transaction or an enclosing one.

        Raises:
            ValueError: no such value and no ``default`` given.
        """
        txn: Transaction | None = self
        while txn is not None:
            if name in txn._values:
                return txn._values[name]
            txn = txn.parent
        if default is ...:
            raise ValueError(f"Could not retrieve value for unknown key {name!r}.")
        return default

    # -- the engine's side --------------------------------------------------------------

    def stage(
        self,
        value: Any,
        *,
        on_commit: Sequence[Hook] = (),
        on_rollback: Sequence[Hook] = (),
        write: Callable[[], None] | None = None,
    ) -> None:
        """Stage ``value`` with its hooks and the write that makes it visible (a cache
        record). Outside an active enclosing transaction, it commits at once."""
        self.value = value
        self.state = TransactionState.STAGED
        staged = _Staged(self, list(on_commit), list(on_rollback), write)
        if self.parent is None or not self.parent.is_active():
            self._finish_commit([staged])
            return
        with self.parent._lock:
            self.parent._staged.append(staged)

    def commit(self) -> bool:
        """Commit: make every staged write and run the ``on_commit`` hooks.

        Returns False (doing nothing) if the transaction already rolled back.
        """
        if self.state is TransactionState.ROLLED_BACK:
            return False
        with self._lock:
            staged, self._staged = self._staged, []
        if self.parent is not None and self.parent.is_active():
            # A nested block: hand its staged work to the enclosing transaction.
            self.state = TransactionState.STAGED
            with self.parent._lock:
                self.parent._staged.extend(staged)
                self.parent._children.append(self)
            return True
        self._finish_commit(staged)
        return True

    def _finish_commit(self, staged: list[_Staged]) -> None:
        for item in staged:
            if item.write is not None:
                try:
                    item.write()
                except Exception:
                    _logger.exception("Could not write the staged result of %r", item.transaction)
        self._settle(TransactionState.COMMITTED)
        for item in staged:
            item.transaction.state = TransactionState.COMMITTED
            _run_hooks(item.on_commit, item.transaction, "on_commit")

    def _settle(self, state: TransactionState) -> None:
        """Give this transaction and the nested blocks it absorbed their final state."""
        self.state = state
        for child in self._children:
            child._settle(state)

    def rollback(self) -> bool:
        """Roll back: run the staged ``on_rollback`` hooks, newest first; write nothing.

        Returns False (doing nothing) if the transaction already committed.
        """
        if self.state is TransactionState.COMMITTED:
            return False
        with self._lock:
            staged, self._staged = self._staged, []
        self._settle(TransactionState.ROLLED_BACK)
        for item in reversed(staged):
            item.transaction.state = TransactionState.ROLLED_BACK
            _run_hooks(list(reversed(item.on_rollback)), item.transaction, "on_rollback")
        return True


def _run_hooks(hooks: list[Hook], txn: Transaction, kind: str) -> None:
    for hook in hooks:
        name = getattr(hook, "__name__", repr(hook))
        try:
            _logger.info("Running %s hook %r", kind, name)
            hook(txn)
        except Exception:
            _logger.exception("An error was encountered while running %s hook %r", kind, name)


def get_transaction() -> Transaction | None:
    """Return the transaction the calling code runs in, or None."""
    return _current.get()


@contextmanager
def transaction(key: str | None = None) -> Iterator[Transaction]:
    """Run a block as one transaction; see the module docstring.

    Nested blocks join the enclosing transaction: their work commits or rolls back with it.

    Args:
        key: an optional key identifying the transaction (shown in logs and hooks).
    """
    txn = Transaction(key, parent=_current.get())
    txn.state = TransactionState.ACTIVE
    token = _current.set(txn)
    try:
        yield txn
    except BaseException:
        txn.rollback()
        raise
    else:
        txn.commit()
    finally:
        _current.reset(token)
