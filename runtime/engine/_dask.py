"""The Dask task runner: the bodies of submitted task runs run on a ``dask.distributed``
cluster, as with prefect-dask's ``DaskTaskRunner``.

Only the *body* leaves the flow's process. The task run's actor stays home, on the
task-runner loop: it resolves the parameters, proposes its states to the orchestrator,
retries, times out, caches and runs its hooks exactly as with the thread runner. When it
calls the body, its driver's remote body (:class:`_DaskPlacement`) submits it to the Dask
client, waits for the Dask future without blocking the loop (a done callback wakes it,
on asyncio or trio), and brings back what the body returned or raised.

- On the worker (:func:`_run_body`), the body runs in a task run context of its own (so
  ``get_run_logger()``, ``get_run_context()`` and ``log_prints`` work there; records go to
  the worker process's logging), with the run's timeout enforced from the moment the body
  starts: a sync body is interrupted as on a local worker thread, an async body (run by
  ``anyio.run`` on the worker's thread) through its cancel scope. An exception that
  cannot be pickled is replaced by a ``RuntimeError`` that says so and carries its text
  and traceback; a result that cannot come back fails the run with a ``RuntimeError``.
- A downstream run whose parameters hold an upstream's future is sent the upstream's Dask
  future in place of the value (when that value is not a plain scalar), so the worker
  gets the data from the worker that made it, not from the flow's process.
- A Dask worker that dies running the body (``KilledWorker``, once Dask has given up on
  the task) or a body the cluster loses ends the run Crashed (:class:`WorkerLost`).
- A run stopped while its body runs (a cancelled flow run, a flow run that timed out)
  cancels the Dask future.

``distributed`` is imported only when a ``DaskTaskRunner`` is made or used, so stageflow
imports without it.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
import traceback
import weakref
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Iterator

import anyio
import attrs
import cloudpickle  # type: ignore[import-untyped]

from actors import LoopWaker

from ..core._exceptions import TaskRunTimeoutError, WorkerLost
from ..core._flow_files import flow_files
from ._body import TIMEOUT, BodyPlacement, SyncTarget
from ._context import TaskRunContext, _task_run_context
from ._drivers import _with_timeout
from ._futures import TaskRunFuture
from ._interrupt import BodyInterrupted, InterruptibleCall, call_interruptibly
from ._logging import install_print_patch, log_prints_enabled
from ._resolve import collect_upstreams
from ._task_runners import Placement, RemoteBody, TaskRunner

if TYPE_CHECKING:
    import distributed

    from ..core._models import TaskRun

__all__ = ["DaskTaskRunner", "get_dask_client"]

_logger = logging.getLogger("stageflow.task_runners")

_ATOMS = (int, float, str, bytes, bool, type(None), complex)

_CANCEL_WAIT = 10.0
"""Seconds a stopped run waits for the scheduler to take back its body's Dask future."""


def _import_distributed() -> Any:
    """Return the ``distributed`` module.

    Raises:
        ImportError: it is not installed (the message says how to install it).
    """
    try:
        import distributed
    except ImportError as exc:
        raise ImportError(
            "DaskTaskRunner needs dask.distributed, which is not installed. Install it with: "
            "pip install 'stageflow[dask]'"
        ) from exc
    return distributed


class DaskTaskRunner(TaskRunner):
    """Runs the bodies of submitted task runs on a Dask cluster, as prefect-dask's
    ``DaskTaskRunner`` does.

    With no ``address``, each flow run attempt that submits a task starts a cluster of its
    own (``cluster_class(**cluster_kwargs)``, a ``distributed.LocalCluster`` by default,
    scaled by ``cluster.adapt(**adapt_kwargs)`` if given) and closes it when the attempt
    ends. With ``address``, it connects to the running scheduler there and leaves the
    cluster running. Either way it talks to the cluster through a synchronous
    ``distributed.Client(**client_kwargs)`` (``set_as_default=False`` unless given).

    Only the body goes to a worker (pickled with cloudpickle): the task run itself, with
    its states, retries, timeout, cache and hooks, stays in the flow's process, and tasks
    that are *called* (not submitted) run in the caller as always. The workers need
    stageflow and the task's code importable. Inside a body, :func:`get_dask_client`
    gives a client for Dask collections.

    Args:
        cluster_class: the cluster to start: a class (or any callable returning a cluster)
            or its qualified name, e.g. ``"dask_jobqueue.SLURMCluster"``.
        cluster_kwargs: keyword arguments for ``cluster_class``, e.g. ``{"n_workers": 4,
            "processes": True}``.
        address: the address of a running scheduler, e.g. ``"tcp://10.0.0.5:8786"``.
        client_kwargs: keyword arguments for ``distributed.Client``.
        adapt_kwargs: keyword arguments for the started cluster's ``adapt`` (adaptive
            scaling, e.g. ``{"minimum": 1, "maximum": 8}``); none: no adaptive scaling.

    Raises:
        ImportError: dask.distributed is not installed (``pip install 'stageflow[dask]'``).
        ValueError: ``address`` was given with ``cluster_class``, ``cluster_kwargs`` or
            ``adapt_kwargs``; ``cluster_kwargs`` or ``client_kwargs`` set ``asynchronous``;
            or ``cluster_class`` names nothing that can be imported.

    Example:
        ```python
        from runtime import flow, task
        from runtime.task_runners import DaskTaskRunner

        @task
        def square(n: int) -> int:
            return n * n

        @flow(task_runner=DaskTaskRunner(cluster_kwargs={"n_workers": 2}))
        def squares() -> list[int]:
            return square.map(range(10)).result()
        ```
    """

    def __init__(
        self,
        cluster_class: str | Callable[..., Any] | None = None,
        cluster_kwargs: dict[str, Any] | None = None,
        address: str | None = None,
        client_kwargs: dict[str, Any] | None = None,
        adapt_kwargs: dict[str, Any] | None = None,
    ) -> None:
        _import_distributed()
        if address is not None and (cluster_class is not None or cluster_kwargs or adapt_kwargs):
            raise ValueError(
                "DaskTaskRunner(address=...) connects to a running cluster, so it takes no "
                "cluster_class, cluster_kwargs or adapt_kwargs (those start a new cluster): "
                "give one or the other."
            )
        cluster_kwargs = dict(cluster_kwargs or {})
        client_kwargs = dict(client_kwargs or {})
        for name, kwargs in (("cluster_kwargs", cluster_kwargs), ("client_kwargs", client_kwargs)):
            if "asynchronous" in kwargs:
                raise ValueError(
                    f"DaskTaskRunner({name}=...) cannot set 'asynchronous': stageflow runs the "
                    "Dask client and cluster in synchronous mode, on threads of their own. "
                    "Leave it out."
                )
        client_kwargs.setdefault("set_as_default", False)
        super().__init__()
        self.address = address
        self.cluster_class = _cluster_class(cluster_class)
        self.cluster_kwargs = cluster_kwargs
        self.client_kwargs = client_kwargs
        self.adapt_kwargs = dict(adapt_kwargs or {})

    def duplicate(self) -> DaskTaskRunner:
        """Return a fresh runner with the same settings, for one flow run."""
        return type(self)(
            cluster_class=self.cluster_class,
            cluster_kwargs=self.cluster_kwargs,
            address=self.address,
            client_kwargs=self.client_kwargs,
            adapt_kwargs=self.adapt_kwargs,
        )

    async def open(self) -> Placement:
        """Start the cluster (or connect to ``address``) and a client, on a worker thread.

        Raises:
            Exception: the cluster did not start or the scheduler could not be reached
                (e.g. ``OSError`` after the client's connect timeout).
        """
        return await anyio.to_thread.run_sync(self._connect)

    def _connect(self) -> _DaskPlacement:
        distributed = _import_distributed()
        if self.address is not None:
            _logger.info("Connecting to an existing Dask cluster at %s", self.address)
            client = distributed.Client(self.address, **self.client_kwargs)
            return _DaskPlacement(_with_flow_files(client), None)
        cluster_class = self.cluster_class or distributed.LocalCluster
        _logger.info("Creating a new Dask cluster with `%s`", _qualified_name(cluster_class))
        cluster = cluster_class(**self.cluster_kwargs)
        try:
            if self.adapt_kwargs:
                cluster.adapt(**self.adapt_kwargs)
            client = distributed.Client(cluster, **self.client_kwargs)
        except BaseException:
            cluster.close()
            raise
        link = getattr(cluster, "dashboard_link", None)
        if link:
            _logger.info("The Dask dashboard is available at %s", link)
        return _DaskPlacement(_with_flow_files(client), cluster)

    def _settings(self) -> tuple[Any, ...]:
        return (
            self.address,
            self.cluster_class,
            self.cluster_kwargs,
            self.client_kwargs,
            self.adapt_kwargs,
        )

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, DaskTaskRunner)
            and type(self) is type(other)
            and self._settings() == other._settings()
        )

    def __hash__(self) -> int:
        return hash((type(self), self.address, self.cluster_class))

    def __repr__(self) -> str:
        if self.address is not None:
            return f"DaskTaskRunner(address={self.address!r})"
        name = None if self.cluster_class is None else _qualified_name(self.cluster_class)
        return f"DaskTaskRunner(cluster_class={name!r}, cluster_kwargs={self.cluster_kwargs!r})"


def _with_flow_files(client: Any) -> Any:
    """Have ``client``'s workers import the flow files this process imported by path (a
    flow run from ``stageflow run FILE.py:flow``), so task bodies defined there load on
    them; return ``client``."""
    paths = flow_files()
    if paths:
        from ._dask_plugin import FlowFiles

        try:
            client.register_plugin(FlowFiles(paths))
        except BaseException:
            client.close()
            raise
    return client


def _cluster_class(value: str | Callable[..., Any] | None) -> Callable[..., Any] | None:
    """Return the cluster class named by ``value`` (a class, or its qualified name).

    Raises:
        ValueError: the name cannot be imported.
    """
    if not isinstance(value, str):
        return value
    module_name, _, attribute = value.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attribute)  # type: ignore[no-any-return]
    except (ImportError, AttributeError, ValueError) as exc:
        raise ValueError(
            f"DaskTaskRunner(cluster_class={value!r}) cannot be imported ({exc!r}): give a "
            "cluster class or its qualified name, e.g. 'distributed.LocalCluster'."
        ) from exc


def _qualified_name(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


@contextlib.contextmanager
def get_dask_client(timeout: float | str | None = None) -> Iterator[distributed.Client]:
    """Yield a synchronous Dask client to the cluster running this task body, for Dask
    collections (``dask.bag``, ``dask.dataframe``, ``dask.delayed``...), as prefect-dask's
    ``get_dask_client`` does.

    Use it inside the body of a task run that a :class:`DaskTaskRunner` runs. It is
    ``distributed.worker_client``: while the block runs, the body's thread leaves the
    worker's thread pool, so the work it hands the cluster can run on that worker too.

    ```python
    @task
    def total(n: int) -> int:
        import dask.bag as db

        with get_dask_client() as client:
            return client.compute(db.from_sequence(range(n), npartitions=4).sum()).result()
    ```

    Args:
        timeout: seconds (or a Dask duration string such as ``"30s"``) to wait for the
            connection to the scheduler; default: ``distributed.comm.timeouts.connect``.

    Raises:
        ImportError: dask.distributed is not installed.
        RuntimeError: called outside a task body running on a Dask worker.
    """
    distributed = _import_distributed()
    try:
        distributed.get_worker()
    except ValueError:
        raise RuntimeError(
            "get_dask_client() works inside the body of a task run that a DaskTaskRunner "
            "runs on a Dask worker: submit the task (task.submit() or task.map()) from a "
            "flow whose task_runner is a DaskTaskRunner."
        ) from None
    with distributed.worker_client(timeout=timeout) as client:
        yield client


# -- the flow's side -----------------------------------------------------------------------


@attrs.frozen
class _Kept:
    """What an upstream's body returned, and the Dask future that holds it on the cluster."""

    value: Any
    dask_future: Any


class _DaskPlacement(Placement):
    """The bodies of one flow run attempt's submitted task runs, on a Dask cluster.

    Args:
        client: a synchronous ``distributed.Client``.
        cluster: the cluster this attempt started (closed with the client), or None.
    """

    def __init__(self, client: Any, cluster: Any) -> None:
        # Hooks and retry conditions still run locally, on worker threads.
        super().__init__(SyncTarget(BodyPlacement.WORKER_THREAD))
        self.client = client
        self.cluster = cluster
        # Kept while the upstream run's future lives, for downstream runs to depend on.
        self._kept: weakref.WeakKeyDictionary[TaskRunFuture[Any], _Kept] = (
            weakref.WeakKeyDictionary()
        )

    def remote_body(self, parameters: dict[str, Any], future: Any) -> RemoteBody:
        return partial(self._call, parameters, future)

    async def _call(
        self,
        parameters: dict[str, Any],
        future: TaskRunFuture[Any],
        fn: Callable[..., Any],
        is_async: bool,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
    ) -> Any:
        ctx = TaskRunContext.get()  # the engine's, around this call
        assert ctx is not None
        task_run = ctx.task_run
        body_ctx = _BodyContext(
            _TaskInfo(ctx.task.name, ctx.task.task_key, ctx.task.version, ctx.task.tags),
            task_run,
            ctx.log_prints,
            ctx.start_time,
        )
        args, kwargs = self._with_upstreams(parameters, args, kwargs)
        try:
            dask_future = self.client.submit(
                _run_body,
                fn,
                is_async,
                args,
                kwargs,
                timeout,
                body_ctx,
                key=f"{task_run.name}-{task_run.id.hex}-{task_run.run_count}",
                pure=False,
            )
        except Exception as exc:
            raise RuntimeError(
                f"The body of task run {task_run.name!r} could not be sent to the Dask "
                f"cluster: {exc}"
            ) from exc
        try:
            await _wait_done(dask_future)
        except BaseException:  # the run was stopped: its body is not wanted any more
            with anyio.CancelScope(shield=True), anyio.move_on_after(_CANCEL_WAIT):
                await anyio.to_thread.run_sync(_cancel, dask_future, abandon_on_cancel=True)
            raise
        result = await self._outcome(dask_future, task_run)
        if not isinstance(result, _ATOMS):
            self._kept[future] = _Kept(result, dask_future)
        return result

    def _with_upstreams(
        self, parameters: dict[str, Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Put the Dask futures of upstream results in place of those results (found by
        identity: the engine resolved each upstream future to the very object kept)."""
        if not self._kept:
            return args, kwargs
        swaps: dict[int, Any] = {}
        for upstream in collect_upstreams(parameters):
            kept = self._kept.get(upstream) if isinstance(upstream, TaskRunFuture) else None
            if kept is not None:
                swaps[id(kept.value)] = kept.dask_future
        if not swaps:
            return args, kwargs
        return _swap(args, swaps), _swap(kwargs, swaps)

    async def _outcome(self, dask_future: Any, task_run: TaskRun) -> Any:
        """Return what the body returned, or raise what it raised.

        Raises:
            WorkerLost: its worker died (Dask gave up on it), or the cluster lost it.
            RuntimeError: what it returned cannot be pickled to come back.
            BaseException: the body's own exception.
        """
        distributed = _import_distributed()
        try:
            return await anyio.to_thread.run_sync(dask_future.result)
        except _Raised as raised:
            raise raised.exc from None
        except distributed.KilledWorker as exc:
            raise WorkerLost(
                f"The Dask worker running the body of task run {task_run.name!r} died: {exc}"
            ) from exc
        except Exception as exc:
            status = dask_future.status
            if status == "error":
                raise  # the body's own exception
            if status == "finished" and not isinstance(exc, OSError):
                (first_line, *_) = str(exc).splitlines() or [""]
                raise RuntimeError(
                    f"What the body of task run {task_run.name!r} returned could not be "
                    f"brought back from its Dask worker ({type(exc).__name__}: {first_line}); "
                    "return something that can be pickled."
                ) from exc
            raise WorkerLost(
                f"The Dask cluster lost the body of task run {task_run.name!r} (its Dask "
                f"future is {status!r}): {exc!r}"
            ) from exc

    async def aclose(self) -> None:
        """Close the client, then the cluster this attempt started (on a worker thread)."""
        await anyio.to_thread.run_sync(self._close)

    def _close(self) -> None:
        try:
            self.client.close()
        finally:
            if self.cluster is not None:
                self.cluster.close()


async def _wait_done(dask_future: Any) -> None:
    """Wait for a Dask future without blocking this loop (asyncio or trio): Dask calls
    the callback on a thread of its own."""
    if dask_future.done():
        return
    done = anyio.Event()
    waker = LoopWaker()
    dask_future.add_done_callback(lambda _: waker.wake(done.set))
    await done.wait()


def _cancel(dask_future: Any) -> None:
    try:
        dask_future.cancel()
    except Exception as exc:  # the client is closing: the future goes with it
        _logger.debug("Could not cancel the Dask future %r: %r", dask_future, exc)


def _swap(value: Any, swaps: dict[int, Any]) -> Any:
    """Return ``value`` with each object whose id is in ``swaps`` replaced, inside the
    lists, tuples and dicts Dask looks into for futures."""
    swapped = swaps.get(id(value))
    if swapped is not None:
        return swapped
    kind = type(value)
    if kind is list or kind is tuple:
        return kind(_swap(item, swaps) for item in value)
    if kind is dict:
        return {key: _swap(item, swaps) for key, item in value.items()}
    return value


# -- the worker's side ---------------------------------------------------------------------


@attrs.frozen
class _TaskInfo:
    """What a body on a worker sees of its task (``get_run_context().task``)."""

    name: str
    task_key: str
    version: str | None
    tags: frozenset[str]


@attrs.frozen
class _BodyContext:
    """What a body's run context holds on the worker."""

    task: _TaskInfo
    task_run: TaskRun
    log_prints: bool
    start_time: datetime

    def for_call(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> TaskRunContext:
        try:
            bound = inspect.signature(fn).bind(*args, **kwargs)
            bound.apply_defaults()
            parameters = dict(bound.arguments)
        except (TypeError, ValueError):  # no signature to read: the context goes without
            parameters = {}
        return TaskRunContext(
            task=self.task,  # type: ignore[arg-type]
            task_run=self.task_run,
            parameters=parameters,
            log_prints=self.log_prints,
            start_time=self.start_time,
        )


class _Raised(Exception):
    """Carries what a body raised that is not an ``Exception`` (``SystemExit``,
    ``KeyboardInterrupt``) back from the worker, to be raised again in the flow's process."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(exc)
        self.exc = exc


def _run_body(
    fn: Callable[..., Any],
    is_async: bool,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    timeout: float | None,
    body_ctx: _BodyContext,
) -> Any:
    """Run a task run's body on a Dask worker's thread; see the module docstring.

    Raises:
        TaskRunTimeoutError: the body ran longer than ``timeout`` seconds.
        Exception: what the body raised (a ``RuntimeError`` in its place if it cannot be
            pickled; :class:`_Raised` around what is not an ``Exception``).
    """
    task_token = _task_run_context.set(body_ctx.for_call(fn, args, kwargs))
    prints_token = log_prints_enabled().set(body_ctx.log_prints)
    if body_ctx.log_prints:
        install_print_patch()
    try:
        try:
            return _call_here(fn, is_async, args, kwargs, timeout)
        except Exception as exc:
            error: Exception | None = _unpicklable(exc)
            if error is None:
                raise
        except BaseException as exc:
            error = _Raised(exc)
        # Raised out here, not in the handler: it must not drag the original along as its
        # __context__ (Dask pickles the whole chain).
        raise error
    finally:
        log_prints_enabled().reset(prints_token)
        _task_run_context.reset(task_token)


def _call_here(
    fn: Callable[..., Any],
    is_async: bool,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    timeout: float | None,
) -> Any:
    if is_async:
        return anyio.run(_with_timeout, fn, args, kwargs, timeout)
    if timeout is None:
        return fn(*args, **kwargs)
    try:
        return call_interruptibly(InterruptibleCall(), fn, args, kwargs, timeout, TIMEOUT)
    except BodyInterrupted:
        raise TaskRunTimeoutError(f"Scope timed out after {timeout} second(s).") from None


def _unpicklable(exc: Exception) -> RuntimeError | None:
    """Return the error to raise in place of ``exc`` if it cannot travel back from the
    worker (it cannot be pickled and unpickled), else None."""
    try:
        cloudpickle.loads(cloudpickle.dumps(exc))
    except Exception as problem:
        trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return RuntimeError(
            f"The task body raised {exc!r} on its Dask worker, and that exception cannot be "
            f"pickled to come back ({problem!r}); make it picklable to get it as raised. "
            f"Its traceback on the worker:\n{trace}"
        )
    return None
