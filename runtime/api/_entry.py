"""Entry points: from a flow or task call to an engine run.

The engine is written once, async. Async calls run it in the caller's loop. Sync calls
are thin wrappers that run it on a global loop while the calling thread waits, ready to
run the sync body the engine sends back to it.

A sync call made *on* a global loop's thread (say, a sync task called from an async flow
that itself runs on the global loop) cannot wait for that same loop, so it goes to
another global loop; :func:`_loop_for_sync_call` keeps that set small and deadlock-free.
"""

from __future__ import annotations

import atexit
import io
import threading
from collections import Counter
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable, Generator, TypeVar

import anyio

from actors import ChildSpec, Clock, GlobalLoop, Restart, SystemClock, global_loop

from ..core._annotations import allow_failure, quote, unmapped
from ..core._exceptions import MappingLengthMismatch, MappingMissingIterable, ParameterBindError
from ..core._models import TaskRun
from ..engine._body import WORKER_THREADS, BodyPlacement, SyncTarget
from ..engine._context import FlowRunContext
from ..engine._drivers import Driver, InlineRefused, LoopDriver, ThreadDriver, drive
from ..engine._flow_engine import FlowRunEngine
from ..engine._futures import TaskRunFuture, TaskRunFutureList
from ..engine._generators import END, GeneratorChannel, GeneratorRunActor, generator_body
from ..engine._signals import capture_sigterm
from ..engine._task_engine import (
    TaskRunEngine,
    create_task_run,
    new_task_run,
    run_called,
)
from ..engine._transactions import get_transaction
from ..orchestration._runtime import Runtime, background_runtime, loop_runtime, private_runtime
from ..orchestration._runtime import current_runtime_var as _current_runtime
from ..store._backend import StoreBackend
from ..store._urls import default_backend

if TYPE_CHECKING:
    from ._flow import Flow
    from ._task import Task

__all__ = [
    "ambient_runtime",
    "iterate_flow",
    "iterate_task",
    "map_task",
    "refuse_generator",
    "run_flow_async",
    "run_flow_sync",
    "run_sync",
    "run_task_async",
    "run_task_sync",
    "runtime_scope",
    "submit_task",
]

T = TypeVar("T")

# -- which loop runs a sync call ---------------------------------------------------------

_loops: list[GlobalLoop] = []
_loops_lock = threading.Lock()
_waiting_loop_threads: Counter[int] = Counter()


def current_global_loop() -> GlobalLoop | None:
    """Return the global loop whose thread is the calling thread, if any."""
    for loop in _loops:
        if loop.is_loop_thread():
            return loop
    return None


def _preferred_loop(runtime: Runtime | None) -> GlobalLoop | None:
    """The global loop ``runtime`` asks sync calls to use, if any."""
    loop = runtime.sync_loop if runtime is not None else None
    return loop if loop is not None and not loop.closed else None


def _loop_for_sync_call(runtime: Runtime | None) -> tuple[GlobalLoop, GlobalLoop | None]:
    """Return (loop to call, loop whose thread is calling or None)."""
    primary = _preferred_loop(runtime) or global_loop()
    with _loops_lock:
        _loops[:] = [loop for loop in _loops if not loop.closed]
        if primary not in _loops:
            _loops.insert(0, primary)
        mine = current_global_loop()
        if mine is None:
            return primary, None
        for loop in [primary, *_loops]:
            thread = loop.thread
            if loop is not mine and (
                thread is None or _waiting_loop_threads[thread.ident or 0] == 0
            ):
                return loop, mine
        extra = GlobalLoop(primary.backend, name=f"stageflow-global-loop-{len(_loops)}")
        atexit.register(extra.close)
        _loops.append(extra)
        return extra, mine


def run_sync(fn: Callable[..., Any], *args: Any) -> Any:
    """Run the engine coroutine ``fn(loop, *args)`` on a global loop; block until done.

    The calling thread serves the callbacks the engine sends back to it meanwhile. The
    engine runs in a copy of this thread's context in which the runtime serving this
    call is the inherited one, so on the global loop it finds the same store.
    """
    inherited = _inherited_runtime()
    runtime = ambient_runtime()
    loop, mine = _loop_for_sync_call(runtime)
    token = None if runtime is inherited else _current_runtime.set(runtime)
    try:
        return _call_on(loop, mine, fn, *args)
    finally:
        if token is not None:
            _current_runtime.reset(token)


def _call_on(loop: GlobalLoop, mine: GlobalLoop | None, fn: Callable[..., Any], *args: Any) -> Any:
    """Call ``fn(loop, *args)`` on ``loop``, chosen by :func:`_loop_for_sync_call` (which
    said ``mine``, the loop whose thread is calling, if any)."""
    if mine is None:
        return loop.call(fn, loop, *args)
    ident = threading.get_ident()
    _waiting_loop_threads[ident] += 1
    try:
        return loop.call(fn, loop, *args)
    finally:
        _waiting_loop_threads[ident] -= 1


# -- which runtime serves the call -------------------------------------------------------


def _inherited_runtime() -> Runtime | None:
    """The runtime of the enclosing flow run, else of the Runtime block whose context the
    calling code inherited."""
    flow_ctx = FlowRunContext.get()
    return flow_ctx.runtime if flow_ctx is not None else _current_runtime.get()


def ambient_runtime() -> Runtime | None:
    """Return the Runtime that serves calls made here, local to this loop or not.

    The inherited one (see :func:`_inherited_runtime`) while it is open; else the
    innermost Runtime open in this event loop (or, on a worker thread, in the loop that
    started it); else None (a call then uses an implicit runtime on the default store).
    """
    runtime = _inherited_runtime()
    if runtime is None or runtime.closed:
        return loop_runtime()
    return runtime


def current_runtime() -> Runtime | None:
    """Return the runtime the calling code runs under, if it is local to this loop."""
    runtime = _inherited_runtime()
    if runtime is not None and runtime.is_local():  # the common case, checked first
        return runtime
    runtime = ambient_runtime()
    return runtime if runtime is not None and runtime.is_local() else None


def inherited_backend() -> tuple[StoreBackend, Clock]:
    """Return the backend and clock the calling code should use, local runtime or not."""
    runtime = ambient_runtime()
    if runtime is not None and runtime.backend is not None:
        return runtime.backend, runtime.clock
    return default_backend(), SystemClock()


@asynccontextmanager
async def runtime_scope() -> AsyncIterator[Runtime]:
    """Yield the runtime for an engine run in the current loop.

    The enclosing flow run's runtime or the open ``Runtime`` when local; on a global loop,
    the background runtime sharing their store; otherwise an implicit runtime for the
    duration of this call.
    """
    runtime = current_runtime()
    if runtime is not None:
        yield runtime
        return
    backend, clock = inherited_backend()
    loop = current_global_loop()
    if loop is not None:
        yield await background_runtime(backend, clock, loop)
        return
    async with private_runtime(backend, clock) as runtime:
        yield runtime


# -- tasks ------------------------------------------------------------------------------


async def _run_task(
    task: Task[..., Any],
    parameters: dict[str, Any],
    wait_for: Any,
    return_type: str,
    target: SyncTarget,
    record: TaskRun | None = None,
) -> Any:
    runtime = current_runtime()
    if runtime is not None:  # the common case: no need for runtime_scope()'s machinery
        driver = LoopDriver(runtime, target)
        return await _run_task_in(driver, task, parameters, wait_for, return_type, record)
    async with runtime_scope() as runtime:
        driver = LoopDriver(runtime, target)
        return await _run_task_in(driver, task, parameters, wait_for, return_type, record)


async def _run_task_in(
    driver: Driver,
    task: Task[..., Any],
    parameters: dict[str, Any],
    wait_for: Any,
    return_type: str,
    record: TaskRun | None = None,
) -> Any:
    """Create (or, in a resumed flow run, find) the task run and run it to its end.
    ``record`` is the run's record if it was built already (it holds its dynamic key)."""
    flow_ctx = FlowRunContext.get()
    _refuse_if_abandoned(flow_ctx)
    if record is None:
        record = new_task_run(task, flow_ctx, parameters, wait_for)
    task_run, done = await create_task_run(driver, record, flow_ctx)
    if done is not None:
        return done if return_type == "state" else done.result()
    runtime = driver.runtime
    engine = TaskRunEngine(task, task_run, parameters, wait_for, runtime, flow_ctx, driver)
    state = await run_called(engine)
    return state if return_type == "state" else engine.result()


async def run_task_async(
    task: Task[..., Any], parameters: dict[str, Any], wait_for: Any, return_type: str
) -> Any:
    """Run an async task called from async code, in the caller's loop."""
    return await _run_task(task, parameters, wait_for, return_type, WORKER_THREADS)


async def _run_task_on_loop(
    loop: GlobalLoop,
    task: Task[..., Any],
    parameters: dict[str, Any],
    wait_for: Any,
    return_type: str,
    record: TaskRun | None = None,
) -> Any:
    target = SyncTarget(BodyPlacement.WAITING_THREAD, loop)
    return await _run_task(task, parameters, wait_for, return_type, target, record)


def run_task_sync(
    task: Task[..., Any], parameters: dict[str, Any], wait_for: Any, return_type: str
) -> Any:
    """Run a sync task called from sync code.

    Inside a flow run, the whole run happens right here, on the calling thread
    (:class:`~runtime.engine._drivers.ThreadDriver`): the flow run's orchestrator is asked
    by direct dispatch, the body is called on this thread, and no thread hop is made.
    Elsewhere (no flow run, or an orchestrator busy on this very thread), the engine runs
    on a global loop and sends the body back to this thread.
    """
    runtime = _inline_runtime()
    if runtime is None:
        return run_sync(_run_task_on_loop, task, parameters, wait_for, return_type)
    record = new_task_run(task, FlowRunContext.get(), parameters, wait_for)
    driver = ThreadDriver(runtime)
    try:
        return drive(_run_task_in(driver, task, parameters, wait_for, return_type, record))
    except InlineRefused:  # nothing was recorded: run it the other way
        return run_sync(_run_task_on_loop, task, parameters, wait_for, return_type, record)


def _inline_runtime() -> Runtime | None:
    """The runtime a sync task called here can use from this thread, if any: the current
    flow run's, when its orchestrator is running."""
    flow_ctx = FlowRunContext.get()
    if flow_ctx is None:
        return None
    runtime = flow_ctx.runtime
    if runtime.orchestrator is None or not runtime.running:
        return None
    return runtime


def submit_task(
    task: Task[..., Any], parameters: dict[str, Any], wait_for: Any
) -> TaskRunFuture[Any]:
    """Start a task run under the current flow run's supervisor; return its future.

    Raises:
        RuntimeError: there is no current flow run.
    """
    flow_ctx = _require_flow_context()
    future = _new_future(flow_ctx, task, parameters, wait_for)
    flow_ctx.task_host.submit([(task, parameters, wait_for, future, flow_ctx)])
    return future


def _require_flow_context() -> FlowRunContext:
    flow_ctx = FlowRunContext.get()
    if flow_ctx is None or flow_ctx.task_host is None:
        raise RuntimeError(
            "Unable to determine task runner to use for submission. If you are submitting a "
            "task outside of a flow, please use `.delay` to submit the task run for deferred "
            "execution."
        )
    _refuse_if_abandoned(flow_ctx)
    return flow_ctx


def _refuse_if_abandoned(flow_ctx: FlowRunContext | None) -> None:
    """Refuse new runs from a flow body the engine stopped waiting for (a sync body that
    ran on after its flow run timed out or was cancelled).

    Raises:
        FlowRunTimeoutError: the flow run timed out.
        CancelledRun: the flow run was cancelled or terminated.
    """
    if flow_ctx is not None and flow_ctx.abandoned is not None:
        error = flow_ctx.abandoned
        raise type(error)(*error.args)


def _new_future(
    flow_ctx: FlowRunContext, task: Task[..., Any], parameters: dict[str, Any], wait_for: Any
) -> TaskRunFuture[Any]:
    # The run record (and its dynamic key) is made here, on the submitting thread, so
    # dynamic keys follow submission order.
    future: TaskRunFuture[Any] = TaskRunFuture(new_task_run(task, flow_ctx, parameters, wait_for))
    future._transaction = get_transaction()  # the run joins the submitter's transaction
    return future


def map_task(
    task: Task[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    wait_for: Any,
    *,
    deferred: bool = False,
) -> TaskRunFutureList[Any]:
    """Submit one run of ``task`` per element of its iterable arguments.

    Raises:
        MappingMissingIterable: no argument is iterable.
        MappingLengthMismatch: the iterables differ in length.
    """
    flow_ctx = None if deferred else _require_flow_context()
    calls = _mapped_calls(task, args, kwargs)
    futures: TaskRunFutureList[Any] = TaskRunFutureList()
    if deferred:  # one queued run per element, for task workers
        from ._task_workers import queue_task_run

        futures.extend(queue_task_run(task, parameters, wait_for) for parameters in calls)
        return futures
    assert flow_ctx is not None
    items = []
    for parameters in calls:
        future = _new_future(flow_ctx, task, parameters, wait_for)
        futures.append(future)
        items.append((task, parameters, wait_for, future, flow_ctx))
    flow_ctx.task_host.submit(items)
    return futures


def _is_iterable(value: Any) -> bool:
    try:
        iter(value)
    except TypeError:
        return False
    return not isinstance(value, (str, bytes, io.IOBase))


def _mapped_calls(
    task: Task[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> list[dict[str, Any]]:
    signature = task.signature.signature
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise ParameterBindError(
            f"Error binding parameters for task {task.name!r} in map(): {exc}."
        ) from None
    parameters = dict(bound.arguments)
    var_keyword = next(
        (p.name for p in signature.parameters.values() if p.kind is p.VAR_KEYWORD), None
    )
    exploded = dict(parameters.pop(var_keyword, {})) if var_keyword else {}
    parameters.update(exploded)

    iterables: dict[str, list[Any]] = {}
    static: dict[str, Any] = {}
    annotations: dict[str, Any] = {}
    for name, value in parameters.items():
        if isinstance(value, (allow_failure, quote)):
            annotations[name] = value
            value = value.unwrap()
        if isinstance(value, TaskRunFuture):
            value = value.result()
        if isinstance(value, unmapped):
            static[name] = value.value
        elif _is_iterable(value):
            iterables[name] = list(value)
        else:
            static[name] = value
    if not iterables:
        raise MappingMissingIterable(
            "No iterable parameters were received. Parameters for map must include at least "
            f"one iterable. Parameters: {parameters}"
        )
    lengths = {name: len(values) for name, values in iterables.items()}
    if len(set(lengths.values())) > 1:
        raise MappingLengthMismatch(
            "Received iterable parameters with different lengths. Parameters for map must all "
            f"be the same length. Got lengths: {lengths}"
        )
    calls = []
    for index in range(next(iter(lengths.values()))):
        call = {name: values[index] for name, values in iterables.items()}
        call.update(static)
        for name, annotation in annotations.items():
            call[name] = annotation.rewrap(call[name])
        if var_keyword:
            call[var_keyword] = {name: call.pop(name) for name in exploded}
        for name, default in task.signature.defaults.items():
            call.setdefault(name, default)
        calls.append(call)
    return calls


# -- generator tasks and flows ------------------------------------------------------------


def refuse_generator(
    obj: Task[..., Any] | Flow[..., Any], kind: str, action: str, when: bool = True
) -> None:
    """Refuse to ``action`` a generator task or flow (``kind``), when ``when``.

    Raises:
        ValueError: ``obj`` is a generator task or flow.
    """
    if not (when and obj.is_generator):
        return
    returning_state = action == "return its final state"
    message = (
        f"Generator {kind} {obj.name!r} cannot {action}: its run yields its items to the code "
        f"that iterates over its call. Call it{' without return_state=True' * returning_state} "
        f"and iterate over the call (`{'async for' if obj.is_async else 'for'} item in ...`)."
    )
    if returning_state:  # Prefect's words first, for code that looks for them
        message = f"The return_type for a generator {kind} must be 'result'. {message}"
    raise ValueError(message)


def iterate_task(task: Task[..., Any], parameters: dict[str, Any], wait_for: Any) -> Any:
    """Return the generator a call of a generator task returns; the run starts when the
    iteration does."""
    start = partial(_start_generator, partial(_generator_task_run, task, parameters, wait_for))
    return _items_async(start) if task.is_async else _items_sync(start)


def iterate_flow(flow: Flow[..., Any], parameters: dict[str, Any], wait_for: Any) -> Any:
    """Return the generator a call of a generator flow returns; the run starts when the
    iteration does.

    Raises:
        ValueError: ``wait_for`` outside of a flow run.
    """
    _check_wait_for(wait_for)
    start = partial(_start_generator, partial(_generator_flow_run, flow, parameters, wait_for))
    return _items_async(start) if flow.is_async else _items_sync(start)


GeneratorRun = Callable[
    [Runtime, FlowRunContext | None, GeneratorChannel], tuple[Any, Callable[[], Awaitable[Any]]]
]
"""Builds the engine of a generator run; returns the run's id and what runs it."""


async def _start_generator(make_run: GeneratorRun, runtime: Runtime) -> GeneratorChannel:
    """Start a generator task or flow run beside the code iterating it (in the calling
    code's context); return the channel its items come through."""
    flow_ctx = FlowRunContext.get()
    _refuse_if_abandoned(flow_ctx)
    channel = GeneratorChannel()
    run_id, work = make_run(runtime, flow_ctx, channel)
    await runtime.spawn(
        ChildSpec(
            f"generator-run-{run_id}",
            partial(GeneratorRunActor, work, channel, runtime),
            restart=Restart.TEMPORARY,
        )
    )
    return channel


def _generator_task_run(
    task: Task[..., Any],
    parameters: dict[str, Any],
    wait_for: Any,
    runtime: Runtime,
    flow_ctx: FlowRunContext | None,
    channel: GeneratorChannel,
) -> tuple[Any, Callable[[], Awaitable[Any]]]:
    engine = TaskRunEngine(
        task,
        new_task_run(task, flow_ctx, parameters, wait_for),
        parameters,
        wait_for,
        runtime,
        flow_ctx,
        LoopDriver(runtime, WORKER_THREADS),
        get_transaction(),
        body=generator_body(task.fn, task.is_async, channel),
    )

    async def work() -> Any:
        task_run, _ = await create_task_run(
            engine.driver, engine.task_run, flow_ctx, reuse_completed=False
        )
        engine.use_run(task_run)
        await engine.run()
        return engine.result()

    return engine.task_run.id, work


def _generator_flow_run(
    flow: Flow[..., Any],
    parameters: dict[str, Any],
    wait_for: Any,
    runtime: Runtime,
    parent: FlowRunContext | None,
    channel: GeneratorChannel,
) -> tuple[Any, Callable[[], Awaitable[Any]]]:
    body = generator_body(flow.fn, flow.is_async, channel)
    engine = FlowRunEngine(flow, parameters, wait_for, runtime, WORKER_THREADS, parent, body=body)

    async def work() -> Any:
        await engine.run()
        return engine.result()

    return engine.flow_run.id, work


async def _items_async(start: Callable[[Runtime], Any]) -> AsyncIterator[Any]:
    """The async generator a call of an async generator task or flow returns."""
    async with AsyncExitStack() as stack:
        runtime = current_runtime()
        if runtime is None:
            runtime = await stack.enter_async_context(runtime_scope())
        channel: GeneratorChannel = await start(runtime)
        try:
            while (item := await channel.receive()) is not END:
                yield item
        finally:
            with anyio.CancelScope(shield=True):
                await channel.stop()
        channel.result()  # the run's exception, if it failed


def _items_sync(start: Callable[[Runtime], Any]) -> Generator[Any, None, Any]:
    """The generator a call of a sync generator task or flow returns; it returns what the
    user's generator returned."""
    loop, mine = _loop_for_sync_call(ambient_runtime())
    channel: GeneratorChannel = _call_on(loop, mine, _start_on_loop, start)
    try:
        while (item := _call_on(loop, mine, _on_loop, channel.receive)) is not END:
            yield item
    finally:
        _call_on(loop, mine, _on_loop, channel.stop)
    return channel.result()


async def _start_on_loop(loop: GlobalLoop, start: Callable[[Runtime], Any]) -> GeneratorChannel:
    async with runtime_scope() as runtime:  # on a global loop: a runtime that stays up
        return await start(runtime)  # type: ignore[no-any-return]


async def _on_loop(loop: GlobalLoop, fn: Callable[[], Any]) -> Any:
    return await fn()


# -- flows ------------------------------------------------------------------------------


def _check_wait_for(wait_for: Any) -> FlowRunContext | None:
    parent = FlowRunContext.get()
    _refuse_if_abandoned(parent)
    if wait_for is not None and parent is None:
        raise ValueError("Only flows run as subflows can wait for dependencies.")
    return parent


async def _run_flow(
    flow: Flow[..., Any],
    parameters: dict[str, Any],
    wait_for: Any,
    return_type: str,
    target: SyncTarget,
) -> Any:
    async with runtime_scope() as runtime:
        engine = FlowRunEngine(flow, parameters, wait_for, runtime, target, FlowRunContext.get())
        state = await engine.run()
        return state if return_type == "state" else engine.result()


async def run_flow_async(
    flow: Flow[..., Any], parameters: dict[str, Any], wait_for: Any, return_type: str
) -> Any:
    """Run an async flow in the caller's loop."""
    parent = _check_wait_for(wait_for)
    with capture_sigterm(raise_in_main_thread=False, top_level=parent is None):
        return await _run_flow(flow, parameters, wait_for, return_type, WORKER_THREADS)


async def _run_flow_on_loop(loop: GlobalLoop, *args: Any) -> Any:
    return await _run_flow(*args, SyncTarget(BodyPlacement.WAITING_THREAD, loop))


def run_flow_sync(
    flow: Flow[..., Any], parameters: dict[str, Any], wait_for: Any, return_type: str
) -> Any:
    """Run a sync flow: the engine on a global loop, the body on this thread."""
    parent = _check_wait_for(wait_for)
    with capture_sigterm(raise_in_main_thread=True, top_level=parent is None):
        return run_sync(_run_flow_on_loop, flow, parameters, wait_for, return_type)
