"""The runtime: the orchestrator and store actors of one event loop.

``async with Runtime(store=...)`` starts them inside the caller's task group (asyncio or
trio, e.g. in a Starlette lifespan) and makes them the runtime of every flow called in
that event loop while the block runs, whichever task makes the call: a task that
inherited the context of a Runtime's block uses that one; any other task uses the
innermost Runtime open in its loop (:func:`loop_runtime`), found through an anyio
``RunVar``, since tasks a server starts per request do not inherit the lifespan's context.
Without an open Runtime, an async flow call opens an implicit one around itself, and sync
calls use a runtime that lives on the global loop.

A Runtime belongs to the loop it was started in. When code under a Runtime makes a *sync*
call (say a sync task called from an async flow), the engine for that call runs on the
global loop; there it uses a *companion* runtime that shares the same store backend, so
every run still lands in the same store.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from contextlib import AsyncExitStack
from collections.abc import Awaitable, Callable
from contextvars import Context, ContextVar
from functools import partial
from typing import Any

import anyio
from anyio.lowlevel import RunVar

from actors import (
    ActorRef,
    ChildSpec,
    Clock,
    CrashReport,
    GlobalLoop,
    LoopClosed,
    PendingCall,
    Restart,
    SystemClock,
    global_loop,
    open_actor_system,
)

from ..store._backend import StoreBackend
from ..store._urls import default_backend, open_backend
from ._liveness import LivenessActor, lease_keeper, lease_seconds_setting, release_process_lease
from ._orchestrator import Orchestrator
from ._ownership import reap_orphans
from ._store_actor import StoreActor

_logger = logging.getLogger("stageflow.engine")

__all__ = [
    "Runtime",
    "background_runtime",
    "current_runtime_var",
    "loop_runtime",
    "private_runtime",
    "set_recovery",
]


_current_runtime: ContextVar[Runtime | None] = ContextVar("stageflow_runtime", default=None)
current_runtime_var = _current_runtime
"""The Runtime whose block the calling code runs in (set by ``with``/``async with Runtime``)."""

_open_in_loop: RunVar[tuple[Runtime, ...]] = RunVar("stageflow_open_runtimes", default=())
"""The Runtimes open (``async with``) in the current event loop, innermost last."""


class Runtime:
    """The actors that run flows in one event loop.

    As an async context manager, it starts the orchestrator and store actors in the
    caller's task group, and while the block runs it serves every flow call made in that
    event loop, whichever task makes it (say, the request handlers of a service that opens
    it in its lifespan): a call made in a task that inherited the context of a Runtime's
    block uses that Runtime; any other task uses the innermost Runtime open in the loop.
    As a plain (sync) context manager, it makes its store (and its global loop) the ones
    of every flow and task the calling thread runs in the block; the actors then run on
    that global loop.

    Args:
        store: a store URL (``"memory://"``, ``"sqlite:///path/to.db"``), a
            :class:`~runtime.store._backend.StoreBackend`, or None for the default store.
        loop: where the engine of *sync* calls made under this runtime runs: an
            :class:`actors.GlobalLoop`, a backend name (``"asyncio"`` or ``"trio"``: a
            global loop of that backend, owned by this runtime and closed with it), or
            None for the process's global loop.
        clock: the clock the engine reads (retry delays, pause timeouts, schedules);
            tests pass a :class:`actors.FakeClock`.
        lease_seconds: the liveness bound on a store shared between processes: once this
            process runs a flow there, it keeps a lease renewed, and notices within this
            many seconds that another process is gone (marking that process's runs
            Crashed). None: ``$STAGEFLOW_LEASE_SECONDS``, else 15.
        recover: run again, in this runtime, the crashed runs of served flows whose
            process is gone (as the next ``serve`` of their schedule would, like DBOS's
            recovery), reusing their finished task results; checked when the runtime
            starts and every ``lease_seconds / 3`` seconds. Off by default.

    Raises:
        ValueError: ``loop`` names no backend, or ``lease_seconds`` is not positive.
        ConfigurationError: ``$STAGEFLOW_LEASE_SECONDS`` is not a positive number.

    Example::

        async with Runtime(store="memory://"):
            await my_async_flow()

        with Runtime(store="sqlite:///runs.db", loop="trio"):
            my_sync_flow()
    """

    def __init__(
        self,
        store: str | StoreBackend | None = None,
        *,
        loop: GlobalLoop | str | None = None,
        clock: Clock | None = None,
        lease_seconds: float | None = None,
        recover: bool = False,
    ) -> None:
        if isinstance(loop, str) and loop not in ("asyncio", "trio"):
            raise ValueError(f"loop must be 'asyncio', 'trio' or a GlobalLoop, got {loop!r}.")
        if loop is not None and not isinstance(loop, (str, GlobalLoop)):
            raise ValueError(f"loop must be 'asyncio', 'trio' or a GlobalLoop, got {loop!r}.")
        self._store_arg = store
        self._loop_arg = loop
        self.sync_loop: GlobalLoop | None = loop if isinstance(loop, GlobalLoop) else None
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.lease_seconds = lease_seconds_setting(lease_seconds)
        self.recover = bool(recover)
        self.backend: StoreBackend | None = None
        self.orchestrator: ActorRef | None = None
        self.store: ActorRef | None = None
        self._thread: int | None = None
        self._stack: AsyncExitStack | None = None
        self._token: Any = None
        self._owns_backend = False
        self._system: Any = None
        self._sync_token: Any = None
        self._serves_loop = True  # False for the runtimes made by private_runtime()
        self._per_call = False  # True for the implicit runtime of one call

    def _open(self) -> StoreBackend:
        if self._stack is not None or self._sync_token is not None:
            raise RuntimeError("This Runtime is already running; create a new one to nest.")
        if isinstance(self._store_arg, StoreBackend):
            backend = self._store_arg
        elif self._store_arg is None:
            backend = default_backend()
        else:
            backend, self._owns_backend = open_backend(self._store_arg)
        self.backend = backend
        if isinstance(self._loop_arg, str):
            self.sync_loop = GlobalLoop(self._loop_arg, name=f"stageflow-runtime-{self._loop_arg}")
        return backend

    def _close(self) -> None:
        """Stop this runtime's companions, flush and close what it owns."""
        _stop_companions(self)
        backend = self.backend
        if backend is not None and not backend.closed and backend.has_pending_writes():
            backend.commit()
        if self._owns_backend and backend is not None:
            release_process_lease(backend)
            backend.close()
        if isinstance(self._loop_arg, str) and self.sync_loop is not None:
            self.sync_loop.close()
            self.sync_loop = None

    def __enter__(self) -> Runtime:
        self._open()
        self._sync_token = _current_runtime.set(self)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        token, self._sync_token = self._sync_token, None
        _current_runtime.reset(token)
        self._close()

    async def __aenter__(self) -> Runtime:
        backend = self._open()
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            self._system = system = await stack.enter_async_context(
                open_actor_system("stageflow", on_crash=report_crash, clock=self.clock)
            )
            self.store = await system.spawn(
                ChildSpec("store", lambda: StoreActor(backend), restart=Restart.PERMANENT)
            )
            shared = backend.shared_across_processes
            # On a store other processes share, the process takes its lease there when it
            # first runs a flow on it (see runtime.orchestration._liveness).
            keeper = lease_keeper(backend, self.lease_seconds) if shared else None
            self.orchestrator = await system.spawn(
                ChildSpec(
                    "orchestrator",
                    lambda: Orchestrator(
                        backend,
                        self.clock,
                        None if keeper is None else partial(keeper.take, backend),
                    ),
                    restart=Restart.PERMANENT,
                )
            )
            if keeper is not None:
                await reap_orphans(self)
                # A runtime of one call leaves liveness to the process's background
                # runtime on the global loop, which outlives it (see _watch_in_background).
                if not (self._per_call and _watch_in_background(backend, self.clock)):
                    orchestrator = self.orchestrator
                    await system.spawn(
                        ChildSpec(
                            "liveness",
                            lambda: LivenessActor(backend, orchestrator, keeper),
                            restart=Restart.TRANSIENT,  # it returns once the store is closed
                            shutdown_timeout=0,
                        )
                    )
            if self.recover:
                await _start_recovery(self)
        except BaseException:
            await stack.__aexit__(None, None, None)
            raise
        self._stack = stack
        self._thread = threading.get_ident()
        self._token = _current_runtime.set(self)
        if self._serves_loop:
            _open_in_loop.set((*_open_in_loop.get(), self))
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        stack, self._stack = self._stack, None
        assert stack is not None
        if self._serves_loop:
            _open_in_loop.set(tuple(rt for rt in _open_in_loop.get() if rt is not self))
        try:
            _current_runtime.reset(self._token)
        except ValueError:
            # Exited in another context than it was entered in (e.g. a background
            # runtime cancelled from outside); the variable dies with that context.
            pass
        try:
            return await stack.__aexit__(*exc_info)
        finally:
            # The actors have stopped (perhaps cancelled mid-commit): _close flushes what
            # is left directly, so a runtime that exits never loses a recorded state.
            self._close()
            self._thread = None

    @property
    def running(self) -> bool:
        """Whether the runtime's actors are running."""
        return self._stack is not None

    @property
    def closed(self) -> bool:
        """Whether the runtime is outside its block (not entered yet, or exited)."""
        return self._stack is None and self._sync_token is None

    def is_local(self) -> bool:
        """Whether this runtime runs on the calling thread's event loop."""
        return self._thread == threading.get_ident() and self._stack is not None

    @property
    def root(self) -> ActorRef:
        """The runtime's root supervisor (top-level flow runs attach to it).

        Raises:
            RuntimeError: the runtime is not running (``async with`` it first).
        """
        if self._system is None:
            raise RuntimeError(f"{self!r} is not running: enter it with 'async with' first.")
        return self._system.root  # type: ignore[no-any-return]

    async def spawn(self, spec: ChildSpec) -> ActorRef:
        """Start a child actor under the runtime's root supervisor."""
        return await self._system.spawn(spec)  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        url = None if self.backend is None else self.backend.url
        return f"<Runtime store={url!r} running={self.running}>"


def report_crash(report: CrashReport) -> None:
    """The crash handler of the runtime's supervisors. A run actor's crash (its children
    are named ``flow-run-<id>`` and ``task-run-<id>``) goes to DEBUG: its engine has logged
    it and recorded the run Crashed already. Any other actor's crash is an error in
    stageflow: ERROR, with its traceback."""
    if report.child.startswith(("flow-run-", "task-run-")):
        _logger.debug("Run actor %r crashed: %r", report.child, report.exception)
    else:
        _logger.error(
            "Actor %r of supervisor %r crashed",
            report.child,
            report.supervisor,
            exc_info=report.exception,
        )


RecoveryStarter = Callable[[Runtime], Awaitable[None]]
"""Starts the recovery of crashed served runs in a runtime that asked for it."""

_recovery: list[RecoveryStarter] = []


def set_recovery(start: RecoveryStarter) -> None:
    """Install what ``Runtime(recover=True)`` starts. Running a crashed flow run again
    needs the flow and the engine, layers above this one: ``runtime.api`` installs its
    recovery when it is imported (``import runtime`` does)."""
    _recovery[:] = [start]


async def _start_recovery(runtime: Runtime) -> None:
    if not _recovery:
        raise RuntimeError(
            "Runtime(recover=True) needs the flow layer: import runtime (not only "
            "runtime.orchestration) before opening it."
        )
    await _recovery[0](runtime)


def private_runtime(backend: StoreBackend, clock: Clock, loop: GlobalLoop | None = None) -> Runtime:
    """Return a Runtime that serves only the calls made in its block's context, not every
    task of its event loop: without ``loop``, the implicit runtime of one async call made
    with no Runtime open; with it, a global loop's background runtime.

    The runtime of one call starts no liveness actor of its own (starting and stopping
    one per call would cost every call): on a store shared between processes, the
    background runtime of the process's global loop keeps the lease and watches for dead
    processes, started by the first such call and living on (:func:`_watch_in_background`).
    """
    runtime = Runtime(backend, clock=clock, loop=loop)
    runtime._serves_loop = False
    runtime._per_call = loop is None
    return runtime


_watch_requests: set[tuple[int, int]] = set()  # (loop, backend) background runtimes asked for


def _watch_in_background(backend: StoreBackend, clock: Clock) -> bool:
    """Have the background runtime of the process's global loop run the liveness actor of
    ``backend`` (renewing this process's lease there, reaping dead processes), starting it
    without waiting if it does not run yet; return False if it cannot (the global loop is
    closed: the caller then runs a liveness actor itself).

    The liveness bound holds: the run that takes the lease writes it at once (valid
    ``2 L / 3`` seconds), and the background runtime's actor renews it from its start,
    within moments; unlike a per-call actor, it goes on renewing and watching between
    calls. Its one cost is the global loop's thread, started once per process.
    """
    loop = global_loop()
    key = (id(loop), id(backend))
    with _companions_lock:
        if key in _companions or key in _watch_requests:
            return True
        _watch_requests.add(key)

    def done(call: PendingCall[Runtime]) -> None:
        with _companions_lock:
            _watch_requests.discard(key)
        try:
            call.result()
        except BaseException as exc:  # noqa: BLE001 - reported, and the next call tries again
            _logger.warning(
                "The background runtime keeping this process's lease in %s did not start: %r",
                backend.url,
                exc,
            )

    try:
        pending = loop.call_soon(background_runtime, backend, clock, loop, context=Context())
    except LoopClosed:
        with _companions_lock:
            _watch_requests.discard(key)
        return False
    pending.add_done_callback(done)
    return True


# -- finding the runtime for the current loop ------------------------------------------


def loop_runtime() -> Runtime | None:
    """Return the innermost Runtime open (``async with``) in the calling thread's event
    loop, or, on an anyio worker thread, in the loop that started the thread.

    None outside any event loop, or when no Runtime is open in it.
    """
    try:
        return _innermost()
    except anyio.NoEventLoopError:
        pass
    try:
        return anyio.from_thread.run_sync(_innermost)
    except (anyio.NoEventLoopError, anyio.RunFinishedError):
        # Not an anyio worker thread, or one whose loop has finished.
        return None


def _innermost() -> Runtime | None:
    """The innermost Runtime open in the current event loop (raises outside one)."""
    for runtime in reversed(_open_in_loop.get()):
        if runtime.is_local():
            return runtime
    return None


COMPANION_STOP_TIMEOUT = 10.0
"""Seconds a closing runtime waits for the background runtimes sharing its store."""

_companions: dict[tuple[int, int], _Companion] = {}
_companions_lock = threading.Lock()


class _Companion:
    """A runtime serving a backend in the background of a global loop."""

    def __init__(self, backend: StoreBackend, clock: Clock, loop: GlobalLoop) -> None:
        self.runtime = private_runtime(backend, clock, loop)
        self.loop = loop
        self.ready = anyio.Event()
        self.failed: BaseException | None = None
        self._stop = anyio.Event()
        self.exited = anyio.Event()

    async def serve(self) -> None:
        # The runtime runs shielded, so that when the loop closes (cancelling this task)
        # its actors are not cancelled mid-write: the watcher turns the cancellation into
        # an orderly stop instead.
        async def watch_for_cancellation() -> None:
            try:
                await anyio.sleep_forever()
            finally:
                self._stop.set()

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(watch_for_cancellation)
                with anyio.CancelScope(shield=True):
                    async with self.runtime:
                        self.ready.set()
                        await self._stop.wait()
                tg.cancel_scope.cancel()
        except BaseException as exc:
            self.failed = exc
            self.ready.set()
            raise
        finally:
            self.exited.set()

    def request_stop(self) -> None:
        """Ask the runtime to stop; call on its loop."""
        self._stop.set()

    async def stop(self) -> None:
        """Stop the runtime and wait until it has; call on its loop."""
        self._stop.set()
        await self.exited.wait()


async def background_runtime(backend: StoreBackend, clock: Clock, loop: GlobalLoop) -> Runtime:
    """Return the runtime serving ``backend`` on ``loop`` (the current loop), starting it
    in the background if needed. It lives until the runtime that owns the backend exits,
    or until the loop closes."""
    key = (id(loop), id(backend))
    with _companions_lock:
        companion = _companions.get(key)
        if companion is None:
            companion = _companions[key] = _Companion(backend, clock, loop)
            loop.start_background(companion.serve, name=f"stageflow-runtime-{backend.url}")
    await companion.ready.wait()
    if companion.failed is not None:
        with _companions_lock:
            _companions.pop(key, None)
        raise RuntimeError(
            f"The background runtime for {backend.url} could not start: {companion.failed!r}"
        ) from companion.failed
    return companion.runtime


def _stop_companions(runtime: Runtime) -> None:
    """Stop the background runtimes that share the backend this runtime owned, and wait
    (a bounded time) until they have, so their last writes land before the store closes."""
    if not runtime._owns_backend or runtime.backend is None:
        return
    backend_id = id(runtime.backend)
    with _companions_lock:
        doomed = [key for key in _companions if key[1] == backend_id]
        companions = [_companions.pop(key) for key in doomed]
    for companion in companions:
        with contextlib.suppress(LoopClosed):
            if companion.loop.is_loop_thread():
                companion.request_stop()
            else:
                pending = companion.loop.call_soon(companion.stop)
                with contextlib.suppress(TimeoutError):
                    pending.result(timeout=COMPANION_STOP_TIMEOUT)
