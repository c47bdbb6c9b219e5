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

A task run's own transaction is the current one while its body runs
(:func:`get_transaction` returns it there): values the body :meth:`~Transaction.set` reach
its ``on_commit``/``on_rollback`` hooks (called with that transaction) and the runs it
calls, whose transactions are nested in it. What those runs stage waits for the task run:
it commits or rolls back with the task's own result, and a failed attempt rolls it back.
A completed task run that a later failure rolls back is recorded in the ``RolledBack``
state (a COMPLETED state, as in Prefect).

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
    """What a child transaction staged: hooks, the write to make on commit, and what to
    call (after the ``on_rollback`` hooks) once it rolled back."""

    transaction: Transaction
    on_commit: list[Hook]
    on_rollback: list[Hook]
    write: Callable[[], None] | None
    rolled_back: Callable[[], None] | None = None


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

    def enter_task_body(self) -> contextvars.Token[Transaction | None]:
        """Make this transaction, a task run's own, current and active while the task's
        body runs, so the body can reach it and what the body's runs stage joins it.
        Undo with :meth:`leave_task_body`."""
        self.state = TransactionState.ACTIVE
        return _current.set(self)

    def leave_task_body(self, token: contextvars.Token[Transaction | None]) -> None:
        """The task's body ended: this transaction is no longer current, nor active."""
        _current.reset(token)
        with self._lock:
            if self.state is TransactionState.ACTIVE:
                self.state = TransactionState.PENDING

    def stage(
        self,
        value: Any,
        *,
        on_commit: Sequence[Hook] = (),
        on_rollback: Sequence[Hook] = (),
        write: Callable[[], None] | None = None,
        rolled_back: Callable[[], None] | None = None,
    ) -> None:
        """Stage ``value`` with its hooks and the write that makes it visible (a cache
        record), after what nested transactions staged in this one. Outside an active
        enclosing transaction, it commits at once. ``rolled_back`` is called, after the
        ``on_rollback`` hooks, if it rolls back."""
        self.value = value
        with self._lock:
            staged, self._staged = self._staged, []
            self.state = TransactionState.STAGED
        staged.append(_Staged(self, list(on_commit), list(on_rollback), write, rolled_back))
        if not self._hand_up(staged, absorbed=False):
            self._finish_commit(staged)

    def commit(self) -> bool:
        """Commit: make every staged write and run the ``on_commit`` hooks.

        Returns False (doing nothing) if the transaction already rolled back.
        """
        if self.state is TransactionState.ROLLED_BACK:
            return False
        with self._lock:
            staged, self._staged = self._staged, []
            self.state = TransactionState.STAGED  # no longer active: nothing more joins it
        if not self._hand_up(staged, absorbed=True):
            self._finish_commit(staged)
        return True

    def _hand_up(self, staged: list[_Staged], *, absorbed: bool) -> bool:
        """Give ``staged`` to the enclosing transaction if it is active, to commit or roll
        back with it (``absorbed``: this nested block then settles with it too); return
        False if there is no active enclosing transaction."""
        parent = self.parent
        if parent is None:
            return False
        with parent._lock:  # checked under the lock, so the parent cannot finish meanwhile
            if not parent.is_active():
                return False
            parent._staged.extend(staged)
            if absorbed:
                parent._children.append(self)
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
            self.state = TransactionState.ROLLED_BACK
        self._settle(TransactionState.ROLLED_BACK)
        for item in reversed(staged):
            item.transaction.state = TransactionState.ROLLED_BACK
            _run_hooks(list(reversed(item.on_rollback)), item.transaction, "on_rollback")
            if item.rolled_back is not None:
                try:
                    item.rolled_back()
                except Exception:
                    _logger.exception("Could not record the rollback of %r", item.transaction)
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
