"""Transactions: stage task results, then commit them together or roll back.

The public face of :mod:`runtime.engine._transactions`."""

from __future__ import annotations

from .engine._transactions import Transaction as Transaction
from .engine._transactions import TransactionState as TransactionState
from .engine._transactions import get_transaction as get_transaction
from .engine._transactions import transaction as transaction

__all__ = [
    "Transaction",
    "TransactionState",
    "get_transaction",
    "transaction",
]
