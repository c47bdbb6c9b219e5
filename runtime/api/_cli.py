"""The ``stageflow`` command line: run a flow, list and inspect stored runs, resume and
cancel them, serve flows on schedules and list the schedules, run task workers, and manage
tag concurrency limits.

Every command works on one store: ``--store URL``, else ``$STAGEFLOW_STORE``, else the
default store (see :func:`runtime.store._urls.default_backend`). Commands that run or change
runs do so inside a :class:`~runtime.Runtime` on that store; every command reads runs
through the public read functions (:mod:`runtime.api._read`), in a Runtime block on it.
Tables and the live progress line are drawn by :mod:`runtime.api._cli_output`.

Exit codes: 0 success (or the run Completed), 1 the run ended Failed/Crashed/Cancelled
or the command could not be done (unknown id, run not paused, run already final),
2 usage error, 3 the run stopped without finishing (paused or suspended), 130 interrupted
(128 + N after signal N), 141 stdout was closed by its reader (`| head`).

Why one module of ~850 lines: it is the whole command line (parser and twelve commands),
one job that nothing else imports; its sections follow the commands.
"""

from __future__ import annotations

import argparse
import atexit
import inspect
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any
from uuid import UUID

import anyio

from ..core._exceptions import (
    ConfigurationError,
    FlowPauseTimeout,
    InvalidRunInput,
    NotPausedError,
    ObjectNotFound,
    ParameterBindError,
    SchedulesFailed,
    StageflowError,
    TerminationSignal,
)
from ..core._models import FlowRun, TaskRun
from ..core._states import State
from ..engine._body import abandoned_bodies
from ..orchestration._runtime import Runtime
from ..store._backend import StoreBackend
from ..store._urls import default_backend, open_backend
from . import _concurrency as concurrency
from . import _flow_runs as flow_runs
from ._cli_output import (
    TaskRunProgress,
    format_duration,
    is_failing,
    print_table,
    state_counts,
)
from ._flow import Flow
from ._read import (
    ScheduleView,
    read_flow_run,
    read_flow_runs,
    read_schedules,
    read_state_history,
    read_task_run,
    read_task_runs,
)
from ._rerun import NO_INPUT, import_flow_file, rerun_flow_run
from ._serve import DEFAULT_GRACE_PERIOD, serve
from ._task import Task
from ._task_workers import DEFAULT_LIMIT, serve_tasks

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FINISHED = 3
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a Unix tool killed by it


class CommandError(Exception):
    """Raised when a command cannot be done; ``code`` is the process exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def _usage(message: str) -> CommandError:
    return CommandError(message, EXIT_USAGE)


# -- output helpers ------------------------------------------------------------------------


def _time(value: datetime | None, *, precise: bool = False) -> str:
    if value is None:
        return "-"
    text = value.astimezone().strftime("%Y-%m-%d %H:%M:%S.%f" if precise else "%Y-%m-%d %H:%M:%S")
    return text[:-3] if precise else text


def _duration(run: FlowRun | TaskRun) -> str:
    if run.start_time is None:
        return "-"
    return format_duration(run.estimated_run_time)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _exit_code(state: State[Any]) -> int:
    if state.is_completed():
        return EXIT_OK
    if state.is_final():
        return EXIT_FAILED
    return EXIT_NOT_FINISHED


# -- stores --------------------------------------------------------------------------------


def _store_url(args: argparse.Namespace) -> str | None:
    # None selects the default store, which honours $STAGEFLOW_STORE itself.
    return args.store or None


@contextmanager
def _store(args: argparse.Namespace) -> Iterator[StoreBackend]:
    """Open the selected store for a command: in the block, the public read functions
    (and the run controls called from sync code) use it. Runs whose process died are
    marked Crashed first, so that what the command shows is true (a run killed with -9
    does not stay Running forever)."""
    url = _store_url(args)
    backend, owned = (default_backend(), False) if url is None else open_backend(url)
    try:
        backend.sync_external()
        anyio.run(_open_runtime, backend)
        with Runtime(store=backend):
            yield backend
    finally:
        if owned:
            backend.close()


async def _open_runtime(backend: StoreBackend) -> None:
    # Opening a runtime on a store marks Crashed the runs whose owner process is gone.
    async with Runtime(store=backend):
        pass


def _find_flow_run(text: str) -> FlowRun:
    """Return the flow run whose id is ``text`` or starts with it, from the command's store.

    Raises:
        CommandError: no flow run, or several, match.
    """
    wanted = text.strip().lower()
    try:
        run_id = UUID(wanted)
    except ValueError:
        run_id = None
    if run_id is not None:
        try:
            return read_flow_run(run_id)  # type: ignore[no-any-return]
        except ObjectNotFound:
            raise CommandError(f"no flow run with id {text}") from None
    if not wanted or set(wanted) - set("0123456789abcdef-"):
        raise CommandError(f"no flow run with id {text}")
    matches = [run for run in read_flow_runs(limit=None) if str(run.id).startswith(wanted)]
    if not matches:
        raise CommandError(f"no flow run with id {text}")
    if len(matches) > 1:
        shown = ", ".join(str(run.id) for run in matches[:3])
        more = ", ..." if len(matches) > 3 else ""
        raise CommandError(
            f"id prefix {text!r} matches {len(matches)} flow runs ({shown}{more}); "
            "give more characters"
        )
    return matches[0]  # type: ignore[no-any-return]


# -- stageflow run -------------------------------------------------------------------------


def _import_file(path: Path, code: int = EXIT_USAGE) -> Any:
    """Import the file at ``path`` once per process (see :func:`runtime.core._flow_files.import_flow_file`).

    Raises:
        CommandError: with ``code``, when the file fails to import.
    """
    try:
        return import_flow_file(path)
    except Exception as exc:  # noqa: BLE001 - whatever the user's module raises
        reason = f"{type(exc).__name__}: {_one_line(exc)}"
        raise CommandError(f"cannot import {path}: {reason}", code) from None


def load_flow_target(target: str) -> Flow[..., Any]:
    """Return the flow named by ``FILE.py:flow_function``.

    Raises:
        CommandError: (usage) the target is malformed, the file is missing or fails to
            import, or the name is missing or not a flow.
    """
    (flow,) = _load_targets(target, Flow, "a flow: decorate it with @flow", "FLOW_FUNCTION")
    assert isinstance(flow, Flow)
    return flow


def load_task_targets(target: str) -> list[Task[..., Any]]:
    """Return the tasks named by ``FILE.py:task_a,task_b``.

    Raises:
        CommandError: (usage) the target is malformed, the file is missing or fails to
            import, or a name is missing or not a task.
    """
    return _load_targets(target, Task, "a task: decorate it with @task", "TASK[,TASK...]")


def _load_targets(target: str, kind: type, what: str, names: str) -> list[Any]:
    file_text, sep, qualnames = target.rpartition(":")
    wanted = [name.strip() for name in qualnames.split(",")]
    if not sep or not file_text or not all(wanted):
        raise _usage(f"expected FILE.py:{names}, got {target!r}")
    if kind is Flow and len(wanted) > 1:
        raise _usage(f"expected FILE.py:{names}, got {target!r}")
    path = Path(file_text).expanduser()
    if not path.is_file():
        raise _usage(f"no such file: {file_text}")
    module: Any = _import_file(path.resolve())
    found = []
    for qualname in wanted:
        obj = module
        for part in qualname.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                raise _usage(f"{file_text} has no function {qualname!r}; {_defined(module, kind)}")
        if not isinstance(obj, kind):
            raise _usage(f"{qualname!r} in {file_text} is not {what}")
        found.append(obj)
    return found


def _defined(module: Any, kind: type) -> str:
    """Which flows (or tasks) ``module`` defines at its top level, for a message."""
    what = "flows" if kind is Flow else "tasks"
    names = [name for name, obj in vars(module).items() if isinstance(obj, kind)]
    return f"the {what} in it: {', '.join(names)}" if names else f"it defines no {what}"


def parse_params(items: Sequence[str]) -> dict[str, Any]:
    """Return ``{key: value}`` for ``KEY=VALUE`` items; values are JSON when they parse as
    JSON, else the raw string.

    Raises:
        CommandError: (usage) an item has no ``=`` or an empty key.
    """
    params: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise _usage(f"--param expects KEY=VALUE, got {item!r}")
        try:
            params[key.strip()] = json.loads(text)
        except ValueError:
            params[key.strip()] = text
    return params


def _resume_hint(args: argparse.Namespace, run_id: UUID) -> str:
    store = f" --store {args.store}" if args.store else ""
    return f"stageflow{store} runs resume {run_id}"


def _report(args: argparse.Namespace, run_id: UUID, state: State[Any]) -> int:
    """Print how the run ended (and its task runs, by state); return the exit code."""
    name = read_flow_run(run_id).name
    if state.is_paused():
        print(f"Flow run {name!r} is {state}; resume it with: {_resume_hint(args, run_id)}")
    else:
        print(f"Flow run {name!r} finished in state {state}")
    print(f"  id:     {run_id}")
    task_runs = read_task_runs(run_id)
    if task_runs:
        print(f"  tasks:  {state_counts(task_runs)}")
    if state.is_completed():
        try:
            text = repr(state.result())
        except StageflowError:
            text = None
        if text is not None:
            print(f"  result: {text if len(text) <= 200 else text[:197] + '...'}")
    return _exit_code(state)


def _check_parameters(flow: Flow[..., Any], target: str, params: dict[str, Any]) -> None:
    """Refuse ``--param`` values that do not fit the flow's signature, naming the file.

    Raises:
        CommandError: (usage) a parameter is unknown or a required one is missing.
    """
    signature = flow.signature.signature
    try:
        signature.bind(**params)
    except TypeError as exc:
        # Annotations of classes defined in the flow file would show the internal module
        # name the file was imported under: show them as the file spells them.
        parameters = signature.replace(return_annotation=inspect.Signature.empty)
        shown = str(parameters).replace(f"{flow.fn.__module__}.", "")
        raise _usage(
            f"{target}: {exc} (the flow's parameters: {shown}); "
            "pass parameters as --param NAME=VALUE"
        ) from None


def _runtime_for_sync_calls(args: argparse.Namespace) -> Runtime:
    """A runtime on the selected store for the flow calls this thread makes in its block.

    Used as a plain ``with`` block, a sync flow then runs as a plain call does: its body on
    this (the main) thread, so Ctrl-C interrupts it and the run is recorded as Crashed.
    """
    return Runtime(store=_store_url(args))


def _crashed(run_id: UUID, exc: BaseException) -> CommandError:
    reason = type(exc).__name__ + (f": {_one_line(exc)}" if str(exc) else "")
    if isinstance(exc, KeyboardInterrupt):
        return CommandError(f"flow run {run_id} was interrupted ({reason})", EXIT_INTERRUPTED)
    if isinstance(exc, TerminationSignal):
        return CommandError(f"flow run {run_id} was terminated ({reason})", 128 + exc.signal)
    return CommandError(f"flow run {run_id} crashed ({reason})")


def _cmd_run(args: argparse.Namespace) -> int:
    flow = load_flow_target(args.target)
    params = parse_params(args.param)
    _check_parameters(flow, args.target, params)
    call = partial(flow, **params, return_state=True)
    with _runtime_for_sync_calls(args) as runtime:
        backend = runtime.backend
        assert backend is not None
        created: list[UUID] = []
        progress = TaskRunProgress()

        def on_state(run: Any, state: State[Any]) -> None:
            if not created and isinstance(run, FlowRun):
                created.append(run.id)
            progress.on_state(run, state)

        unsubscribe = backend.subscribe(None, on_state)
        try:
            with progress:
                state = anyio.run(call) if flow.is_async else call()
        except ParameterBindError as exc:
            raise _usage(_one_line(exc)) from None
        except (Exception, SystemExit, KeyboardInterrupt, TerminationSignal) as exc:
            # The engine recorded the run as Crashed; say which run it was.
            if not created:
                raise
            raise _crashed(created[0], exc) from None
        finally:
            unsubscribe()
        run_id = state.state_details.flow_run_id
        assert run_id is not None
        return _report(args, run_id, state)


# -- stageflow runs ------------------------------------------------------------------------


def _cmd_runs_ls(args: argparse.Namespace) -> int:
    with _store(args):
        try:
            runs = read_flow_runs(flow_name=args.flow, state=args.state, limit=args.limit)
        except ValueError as exc:  # an unknown --state: the message lists the valid ones
            raise _usage(str(exc).replace("Unknown state", "unknown --state", 1)) from None
    if not runs:
        print("No flow runs found.")
        return EXIT_OK
    headers = ("ID", "FLOW", "NAME", "STATE", "START", "DURATION")
    rows = [
        (r.id, r.flow_name, r.name, r.state_name, _time(r.start_time), _duration(r)) for r in runs
    ]
    print_table(headers, rows)
    return EXIT_OK


SHOW_ALL_UP_TO = 20
"""``runs show`` lists every task run of a flow run with at most this many; past it, a
count by state and the failed and crashed ones (``--all`` lists every one)."""


def _cmd_runs_show(args: argparse.Namespace) -> int:
    with _store(args):
        run = _find_flow_run(args.id)
        history = read_state_history(run.id)
        task_runs = read_task_runs(run.id)
        subflows = [
            sub for t in task_runs for sub in read_flow_runs(parent_task_run_id=t.id, limit=None)
        ]
        parent = None
        if run.parent_task_run_id is not None:
            with suppress(ObjectNotFound):
                parent = read_task_run(run.parent_task_run_id).flow_run_id
    version = "" if run.flow_version is None else f" (version {run.flow_version})"
    fields: list[tuple[str, Any]] = [
        ("id:", run.id),
        ("flow:", f"{run.flow_name}{version}"),
        ("state:", run.state),
        ("parameters:", json.dumps(run.parameters, default=repr)),
        ("tags:", ", ".join(run.tags) or "-"),
        ("created:", _time(run.created)),
        ("started:", _time(run.start_time)),
        ("ended:", _time(run.end_time)),
        ("duration:", _duration(run)),
        ("run count:", run.run_count),
        ("entrypoint:", run.entrypoint or "-"),
    ]
    if parent is not None:
        fields.append(("parent run:", parent))
    _section(f"Flow run {run.name!r}", None, fields)
    rows: list[Sequence[Any]]
    rows = [(_time(s.timestamp, precise=True), s.name, s.type, s.message or "") for s in history]
    _section("\nState history", ("TIME", "STATE", "TYPE", "MESSAGE"), rows)
    _task_runs_section(task_runs, every=args.all)
    rows = [(s.id, s.flow_name, s.name, s.state_name, _duration(s)) for s in subflows]
    _section("\nSubflow runs", ("ID", "FLOW", "NAME", "STATE", "DURATION"), rows)
    return EXIT_OK


def _task_runs_section(task_runs: Sequence[TaskRun], *, every: bool) -> None:
    """Every task run when there are few (or ``every``); else the failed and crashed ones.
    Either way under a count of the task runs by state."""
    if not task_runs:
        _section("\nTask runs", None, [])
        return
    shown = [t for t in task_runs if every or len(task_runs) <= SHOW_ALL_UP_TO or is_failing(t)]
    print(f"\nTask runs: {state_counts(task_runs)}")
    if shown:
        rows = [
            (t.id, t.name, t.state_name, _time(t.start_time), _duration(t), _message(t))
            for t in shown
        ]
        print_table(("ID", "NAME", "STATE", "START", "DURATION", "MESSAGE"), rows, indent="  ")
    if len(shown) < len(task_runs):
        listed = "the failed and crashed ones are listed" if shown else "none failed or crashed"
        print(f"  ({listed}; --all lists every task run)")


def _message(run: FlowRun | TaskRun) -> str:
    return "" if run.state is None else run.state.message or ""


def _section(title: str, headers: Sequence[str] | None, rows: Sequence[Sequence[Any]]) -> None:
    print(title)
    if rows:
        print_table(headers, rows, indent="  ")
    else:
        print("  (none)")


def _preload_entrypoint(run: FlowRun) -> None:
    """Import the file of the run's flow as ``stageflow run`` did, before it runs again.

    The flow registers itself, so the rerun uses it, and results persisted by the first
    process unpickle (see :func:`_import_file`).
    """
    path = Path((run.entrypoint or "").rpartition(":")[0])
    if path.is_file():
        _import_file(path, EXIT_FAILED)


def _cmd_runs_resume(args: argparse.Namespace) -> int:
    run_input: Any = None
    if args.input is not None:
        try:
            run_input = json.loads(args.input)
        except ValueError as exc:
            raise _usage(f"--input is not valid JSON: {exc}") from None
    with _store(args) as backend:
        run = _find_flow_run(args.id)
        state = run.state
        crashed = state is not None and state.is_crashed()
        suspended = state is not None and state.state_details.pause_reschedule
        if crashed or suspended:
            _preload_entrypoint(run)

        async def go() -> State[Any] | None:
            async with Runtime(store=backend):
                try:
                    if crashed:
                        return await rerun_flow_run(
                            run.id, NO_INPUT if args.input is None else run_input
                        )
                    await flow_runs.resume_flow_run(run.id, run_input=run_input)
                    return None
                except NotPausedError as exc:
                    raise CommandError(
                        f"{_one_line(exc)} Only paused, suspended or crashed runs can be resumed."
                    ) from None
                except InvalidRunInput as exc:
                    raise _usage(_one_line(exc)) from None
                except (FlowPauseTimeout, ObjectNotFound, RuntimeError) as exc:
                    raise CommandError(_one_line(exc)) from None

        final = anyio.run(go)
        current = read_flow_run(run.id)
        if final is not None:
            return _report(args, run.id, final)
        if suspended and current.state is not None:
            return _report(args, run.id, current.state)
    print(f"Resumed flow run {run.name!r}: it is {current.state}")
    return EXIT_OK


def _cmd_runs_cancel(args: argparse.Namespace) -> int:
    with _store(args) as backend:
        run = _find_flow_run(args.id)
        if run.state is not None and run.state.is_final():
            raise CommandError(
                f"flow run {run.id} already finished in state {run.state}; nothing to cancel"
            )

        async def go() -> State[Any]:
            async with Runtime(store=backend):
                return await flow_runs.cancel_flow_run(run.id)  # type: ignore[no-any-return]

        state = anyio.run(go)
    print(f"Cancelled flow run {run.name!r}: it is {state}")
    return EXIT_OK


# -- stageflow serve, stageflow schedules ---------------------------------------------------


def _cmd_serve(args: argparse.Namespace) -> int:
    flow = load_flow_target(args.target)
    params = parse_params(args.param)
    _check_parameters(flow, args.target, params)
    try:
        schedule = flow.to_schedule(
            args.name,
            interval=args.interval,
            cron=args.cron,
            parameters=params,
            timezone=args.timezone,
            overlap=args.overlap,
            catchup=args.catchup,
        )
    except ValueError as exc:
        raise _usage(f"{args.target}: {_one_line(exc)}") from None
    with _runtime_for_sync_calls(args):
        try:
            serve(schedule, grace_period=args.grace_period)
        except SchedulesFailed as exc:
            raise CommandError(_one_line(exc)) from None
    print(f"Stopped serving schedule {schedule.name!r}.")
    return EXIT_OK


def _cmd_worker(args: argparse.Namespace) -> int:
    tasks = load_task_targets(args.target)
    with _runtime_for_sync_calls(args):
        serve_tasks(*tasks, limit=args.limit, grace_period=args.grace_period)
    print(f"Stopped serving task(s) {', '.join(task.name for task in tasks)}.")
    return EXIT_OK


def _cmd_schedules_ls(args: argparse.Namespace) -> int:
    with _store(args):
        views: list[ScheduleView] = read_schedules()
    if not views:
        print("No schedules.")
        return EXIT_OK
    headers = ("NAME", "FLOW", "TRIGGER", "STATUS", "LAST SLOT", "NEXT SLOT", "LAST RUN", "MESSAGE")
    print_table(headers, [_schedule_row(view) for view in views])
    return EXIT_OK


def _schedule_row(view: ScheduleView) -> tuple[Any, ...]:
    record = view.record
    status = view.status
    if view.servers > 1:
        status += f" ({view.servers} processes)"
    last_slot = view.last_slot
    last = "-" if last_slot is None else _time(last_slot.slot)
    if last_slot is not None and not last_slot.fired:
        last += " (skipped)"
    last_run = "-" if view.last_run is None else view.last_run.state_name
    message = record.message if view.status == "failed" else None
    return (
        record.name,
        record.flow_name,
        view.trigger,
        status,
        last,
        _time(view.next_slot),
        last_run,
        message,
    )


# -- stageflow limits ----------------------------------------------------------------------


def _cmd_limits_set(args: argparse.Namespace) -> int:
    try:
        concurrency.set_concurrency_limit(args.tag, args.limit, store=_store_url(args))
    except ValueError as exc:
        raise _usage(_one_line(exc)) from None
    print(f"Tag {args.tag!r}: at most {args.limit} task runs at once.")
    return EXIT_OK


def _cmd_limits_ls(args: argparse.Namespace) -> int:
    limits = concurrency.read_concurrency_limits(store=_store_url(args))
    if not limits:
        print("No concurrency limits.")
        return EXIT_OK
    rows = [(limit.tag, limit.limit, len(limit.active_slots)) for limit in limits]
    print_table(("TAG", "LIMIT", "ACTIVE"), rows)
    return EXIT_OK


def _cmd_limits_rm(args: argparse.Namespace) -> int:
    url = _store_url(args)
    if all(limit.tag != args.tag for limit in concurrency.read_concurrency_limits(store=url)):
        raise CommandError(f"no concurrency limit for tag {args.tag!r}")
    concurrency.delete_concurrency_limit(args.tag, store=url)
    print(f"Removed the concurrency limit of tag {args.tag!r}.")
    return EXIT_OK


# -- the parser ----------------------------------------------------------------------------


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("stageflow")
    except PackageNotFoundError:
        return "unknown"


def _at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {minimum} or more, got {value}")
        return value

    return parse


def _param_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        *("-p", "--param"),
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help=f"{what}; VALUE is read as JSON if it parses, else as a string",
    )


def _grace_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--grace-period",
        metavar="SECONDS",
        type=float,
        default=DEFAULT_GRACE_PERIOD,
        help=f"once stopped, seconds in-flight runs get to finish ({DEFAULT_GRACE_PERIOD:g})",
    )


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected more than 0 seconds, got {text}")
    return value


_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_ID_HELP = "the flow run id, or a unique prefix of it"


def _global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    # Global options work before and after the command: a subcommand's copies default
    # to SUPPRESS, so they only replace the top-level value when given.
    default = None if top else argparse.SUPPRESS
    parser.add_argument(
        "--store",
        metavar="URL",
        default=default,
        help="memory:// or sqlite:///path.db (default: $STAGEFLOW_STORE, else the default)",
    )
    parser.add_argument(
        "--log-level",
        default=default,
        choices=_LEVELS,
        help="the least level of run logs shown on stderr (default: $STAGEFLOW_LOGGING_LEVEL, "
        "else INFO)",
    )


def build_parser() -> argparse.ArgumentParser:
    """Return the ``stageflow`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="stageflow",
        description="Run and serve flows; list, inspect, resume and cancel their runs.",
    )
    parser.add_argument("--version", action="version", version=f"stageflow {_version()}")
    _global_options(parser, top=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(group: Any, name: str, handler: Any, text: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = group.add_parser(name, help=text, description=f"{text}.")
        _global_options(sub, top=False)
        sub.set_defaults(handler=handler)
        return sub

    run = command(commands, "run", _cmd_run, "Run a flow from a file to its final state")
    run.add_argument("target", metavar="FILE.py:FLOW", help="a file and a @flow function in it")
    _param_option(run, "a flow parameter")

    runs = commands.add_parser("runs", help="List, show, resume or cancel flow runs")
    runs_commands = runs.add_subparsers(dest="runs_command", metavar="COMMAND", required=True)
    ls = command(runs_commands, "ls", _cmd_runs_ls, "List flow runs, newest first")
    ls.add_argument(
        "--state",
        action="append",
        help="a state type (COMPLETED...) or name (Suspended...) to show; repeatable",
    )
    ls.add_argument("--flow", metavar="NAME", help="only runs of the flow with this name")
    ls.add_argument("--limit", metavar="N", type=_at_least(1), default=20, help="at most N (20)")
    show = command(
        runs_commands, "show", _cmd_runs_show, "Show a flow run, its states and its task runs"
    )
    show.add_argument("id", metavar="ID", help=_ID_HELP)
    show.add_argument(
        "--all",
        action="store_true",
        help=f"list every task run (by default, past {SHOW_ALL_UP_TO} task runs, a count by "
        "state and the failed and crashed ones)",
    )
    resume = command(
        runs_commands,
        "resume",
        _cmd_runs_resume,
        "Resume a paused flow run, or run a suspended or crashed one again here",
    )
    resume.add_argument("id", metavar="ID", help=_ID_HELP)
    resume.add_argument("--input", metavar="JSON", help="the input the run waits for, as JSON")
    cancel = command(runs_commands, "cancel", _cmd_runs_cancel, "Cancel a flow run")
    cancel.add_argument("id", metavar="ID", help=_ID_HELP)

    served = command(
        commands, "serve", _cmd_serve, "Run a flow on a schedule, in this process, until stopped"
    )
    served.add_argument("target", metavar="FILE.py:FLOW", help="a file and a @flow function in it")
    when = served.add_mutually_exclusive_group(required=True)
    when.add_argument(
        "--interval", metavar="SECONDS", type=_positive, help="run every SECONDS seconds"
    )
    when.add_argument("--cron", metavar="EXPR", help="run at the times a cron expression matches")
    _param_option(served, "a flow parameter of every run")
    served.add_argument("--name", help="the schedule's name (default: the flow's name)")
    served.add_argument("--timezone", metavar="TZ", help="the IANA timezone of --cron (UTC)")
    served.add_argument(
        "--overlap",
        choices=("skip", "queue", "allow"),
        default="skip",
        help="while the previous run runs: skip the slot (default), queue a run, or allow it",
    )
    served.add_argument(
        "--catchup",
        choices=("latest", "all", "none"),
        default="latest",
        help="slots missed while not served: one run for the latest (default), all, none",
    )
    _grace_option(served)
    worker = command(
        commands,
        "worker",
        _cmd_worker,
        "Run the queued runs of tasks (task.delay()), in this process, until stopped",
    )
    worker.add_argument(
        "target", metavar="FILE.py:TASK[,TASK...]", help="a file and @task functions in it"
    )
    worker.add_argument(
        "--limit",
        metavar="N",
        type=_at_least(1),
        default=DEFAULT_LIMIT,
        help=f"run at most N task runs at once ({DEFAULT_LIMIT})",
    )
    _grace_option(worker)
    schedules = commands.add_parser("schedules", help="List served schedules")
    schedule_commands = schedules.add_subparsers(
        dest="schedules_command", metavar="COMMAND", required=True
    )
    command(
        schedule_commands,
        "ls",
        _cmd_schedules_ls,
        "List schedules: status, last and next slot, last run",
    )

    limits = commands.add_parser("limits", help="Manage tag concurrency limits")
    limit_commands = limits.add_subparsers(dest="limits_command", metavar="COMMAND", required=True)
    limit_set = command(
        limit_commands, "set", _cmd_limits_set, "Let at most N task runs with a tag run at once"
    )
    limit_set.add_argument("tag", metavar="TAG")
    limit_set.add_argument("limit", metavar="N", type=_at_least(0), help="0 holds them all")
    command(limit_commands, "ls", _cmd_limits_ls, "List tag concurrency limits")
    limit_rm = command(limit_commands, "rm", _cmd_limits_rm, "Remove a tag's concurrency limit")
    limit_rm.add_argument("tag", metavar="TAG")
    return parser


# -- main ----------------------------------------------------------------------------------


@contextmanager
def _log_level(level: str | None) -> Iterator[None]:
    """Set the ``stageflow`` logger's level while a command runs (None: leave it as
    ``$STAGEFLOW_LOGGING_LEVEL`` or the program set it).

    Run logs reach stderr through the console handler (see
    :mod:`runtime.engine._console`), or through the handlers of a flow file that
    configures logging itself: never through both.
    """
    logger = logging.getLogger("stageflow")
    previous = logger.level
    if level is not None:
        logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``stageflow`` command line with ``argv`` (default: ``sys.argv[1:]``);
    return the exit code.

    As the command itself (``argv`` None), it exits at once when it is done, even if run
    bodies it abandoned (stuck in a call that cannot be interrupted, their runs already
    recorded) still hold their threads, which the interpreter would otherwise wait for.
    """
    code = _run_command(argv)
    if argv is None and (stuck := abandoned_bodies()):
        print(
            f"stageflow: exiting without waiting for {stuck} abandoned run "
            f"bod{'y' if stuck == 1 else 'ies'} still stuck on {'its' if stuck == 1 else 'their'} "
            "thread (in a call that cannot be interrupted; the runs' states are recorded).",
            file=sys.stderr,
        )
        atexit._run_exitfuncs()  # what the interpreter would run at exit: stores, leases
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _run_command(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        with _log_level(args.log_level):
            return handler(args)
    except CommandError as exc:
        print(f"stageflow: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("stageflow: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader of stdout went away (`stageflow runs ls | head -1`): stop quietly, as
        # Unix tools do, and keep the interpreter's last flush from failing again.
        with suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except TerminationSignal as exc:
        print(f"stageflow: {exc}", file=sys.stderr)
        return 128 + exc.signal
    except ConfigurationError as exc:  # a bad --store URL, or a bad option of the flow
        print(f"stageflow: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except StageflowError as exc:
        print(f"stageflow: {_one_line(exc)}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
