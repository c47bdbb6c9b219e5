"""States: what a flow run or task run is doing, and a constructor for each kind.

The public face of :mod:`runtime.core._states`."""

from __future__ import annotations

from .core._states import TERMINAL_STATES as TERMINAL_STATES
from .core._states import UNAVAILABLE as UNAVAILABLE
from .core._states import AwaitingConcurrencySlot as AwaitingConcurrencySlot
from .core._states import AwaitingRetry as AwaitingRetry
from .core._states import Cancelled as Cancelled
from .core._states import Cancelling as Cancelling
from .core._states import Completed as Completed
from .core._states import Crashed as Crashed
from .core._states import Failed as Failed
from .core._states import Late as Late
from .core._states import Paused as Paused
from .core._states import Pending as Pending
from .core._states import ResultHandle as ResultHandle
from .core._states import Retrying as Retrying
from .core._states import Running as Running
from .core._states import Scheduled as Scheduled
from .core._states import State as State
from .core._states import StateDetails as StateDetails
from .core._states import StateType as StateType
from .core._states import Suspended as Suspended
from .core._states import now_utc as now_utc
from .core._states import state_exception as state_exception

__all__ = [
    "AwaitingConcurrencySlot",
    "AwaitingRetry",
    "Cancelled",
    "Cancelling",
    "Completed",
    "Crashed",
    "Failed",
    "Late",
    "Paused",
    "Pending",
    "ResultHandle",
    "Retrying",
    "Running",
    "Scheduled",
    "State",
    "StateDetails",
    "StateType",
    "Suspended",
    "TERMINAL_STATES",
]
