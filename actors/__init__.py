"""The actor kernel: actors, refs, supervisors, the global-loop actor and clocks.

Built on anyio; every piece runs unchanged on asyncio and trio. Knows nothing about
workflows (``actors`` never imports ``runtime``).
"""

from __future__ import annotations

from ._actor import Actor as Actor
from ._actor import ActorRef as ActorRef
from ._actor import ExitKind as ExitKind
from ._actor import ExitReason as ExitReason
from ._attach import Attachment as Attachment
from ._backend import LoopWaker as LoopWaker
from ._clock import Clock as Clock
from ._clock import FakeClock as FakeClock
from ._clock import SystemClock as SystemClock
from ._critical import critical as critical
from ._critical import defer as defer
from ._critical import in_critical as in_critical
from ._exceptions import ActorStopped as ActorStopped
from ._exceptions import ForeignThreadError as ForeignThreadError
from ._exceptions import LoopClosed as LoopClosed
from ._exceptions import LoopThreadError as LoopThreadError
from ._exceptions import NoWaitingThread as NoWaitingThread
from ._exceptions import SupervisorFailed as SupervisorFailed
from ._global_loop import GlobalLoop as GlobalLoop
from ._global_loop import PendingCall as PendingCall
from ._global_loop import global_loop as global_loop
from ._supervision import AttachChild as AttachChild
from ._supervision import Backoff as Backoff
from ._supervision import ChildSpec as ChildSpec
from ._supervision import CrashReport as CrashReport
from ._supervision import Restart as Restart
from ._supervision import StartChild as StartChild
from ._supervision import StopChild as StopChild
from ._supervision import Strategy as Strategy
from ._supervision import WhichChildren as WhichChildren
from ._supervisor import Supervisor as Supervisor
from ._system import ActorSystem as ActorSystem
from ._system import open_actor_system as open_actor_system

__all__ = [
    "Actor",
    "ActorRef",
    "ActorStopped",
    "ActorSystem",
    "AttachChild",
    "Attachment",
    "Backoff",
    "ChildSpec",
    "Clock",
    "CrashReport",
    "ExitKind",
    "ExitReason",
    "FakeClock",
    "ForeignThreadError",
    "GlobalLoop",
    "LoopClosed",
    "LoopThreadError",
    "LoopWaker",
    "NoWaitingThread",
    "PendingCall",
    "Restart",
    "StartChild",
    "StopChild",
    "Strategy",
    "Supervisor",
    "SupervisorFailed",
    "SystemClock",
    "WhichChildren",
    "critical",
    "defer",
    "global_loop",
    "in_critical",
    "open_actor_system",
]
