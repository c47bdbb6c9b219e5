"""The ``stageflow`` command line: run a flow, list and inspect stored runs, resume and
cancel them, and manage tag concurrency limits.

Every command works on one store: ``--store URL``, else ``$STAGEFLOW_STORE``, else the
default store (see :func:`runtime.store._urls.default_backend`). Commands that run or change
runs do so inside a :class:`~runtime.Runtime` on that store; read-only commands read the
store directly.

Exit codes: 0 success (or the run Completed), 1 the run ended Failed/Crashed/Cancelled
or the command could not be done (unknown id, run not paused, run already final),
2 usage error, 3 the run stopped without finishing (paused or suspended), 130 interrupted
(128 + N after signal N).

Why one module of ~700 lines: it is the whole command line (parser, nine commands and
their output), one job that nothing else imports; its sections follow the commands.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime, timedelta
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
    StageflowError,
    TerminationSignal,
)
from ..core._models import FlowRun, TaskRun
from ..core._states import State, StateType
from ..orchestration._runtime import Runtime
from ..store._backend import StoreBackend
from ..store._urls import default_backend, open_backend
from . import _concurrency as concurrency
from . import _flow_runs as flow_runs
from ._flow import Flow
from ._rerun import import_flow_file, rerun_flow_run

__all__ = ["format_table", "main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FINISHED = 3
EXIT_INTERRUPTED = 130


class CommandError(Exception):
    """Raised when a command cannot be done; ``code`` is the process exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def _usage(message: str) -> CommandError:
    return CommandError(message, EXIT_USAGE)


# -- output helpers ------------------------------------------------------------------------


def format_table(headers: Sequence[str] | None, rows: Sequence[Sequence[Any]]) -> str:
    """Return ``rows`` as left-aligned columns separated by two spaces (no trailing blanks).

    Cells are ``str()``-ed with their line breaks flattened to spaces; None shows as ``-``.
    """
    table = [list(headers)] if headers else []
    table += [[_cell(cell) for cell in row] for row in rows]
    if not table:
        return ""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in table
    )


def _cell(value: Any) -> str:
    return "-" if value is None else " ".join(str(value).split())


def _time(value: datetime | None, *, precise: bool = False) -> str:
    if value is None:
        return "-"
    text = value.astimezone().strftime("%Y-%m-%d %H:%M:%S.%f" if precise else "%Y-%m-%d %H:%M:%S")
    return text[:-3] if precise else text


def _duration(run: FlowRun | TaskRun) -> str:
    if run.start_time is None:
        return "-"
    return format_duration(run.estimated_run_time)


def format_duration(value: timedelta) -> str:
    """Return a short human duration: ``0.012s``, ``12.5s``, ``3m 07s``, ``2h 05m``."""
    seconds = value.total_seconds()
    if seconds < 10:
        return f"{seconds:.3f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


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
def _reading(args: argparse.Namespace) -> Iterator[StoreBackend]:
    """Yield the selected store's backend for reading, once orphaned runs are marked."""
    url = _store_url(args)
    backend, owned = (default_backend(), False) if url is None else open_backend(url)
    try:
        backend.sync_external()
        anyio.run(_open_runtime, backend)
        yield backend
    finally:
        if owned:
            backend.close()


async def _open_runtime(backend: StoreBackend) -> None:
    # Opening a runtime marks Crashed the runs whose process died, so that what the
    # command shows is true (a run killed with -9 does not stay Running forever).
    async with Runtime(store=backend):
        pass


def _runtime(args: argparse.Namespace) -> Runtime:
    """Return a runtime on the selected store: flows and run controls inside use it."""
    return Runtime(store=_store_url(args))


def _find_flow_run(backend: StoreBackend, text: str) -> FlowRun:
    """Return the flow run whose id is ``text`` or starts with it.

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
            return backend.read_flow_run(run_id)
        except ObjectNotFound:
            raise CommandError(f"no flow run with id {text}") from None
    if not wanted or set(wanted) - set("0123456789abcdef-"):
        raise CommandError(f"no flow run with id {text}")
    matches = [run for run in backend.read_flow_runs() if str(run.id).startswith(wanted)]
    if not matches:
        raise CommandError(f"no flow run with id {text}")
    if len(matches) > 1:
        shown = ", ".join(str(run.id) for run in matches[:3])
        more = ", ..." if len(matches) > 3 else ""
        raise CommandError(
            f"id prefix {text!r} matches {len(matches)} flow runs ({shown}{more}); "
            "give more characters"
        )
    return matches[0]


# -- stageflow run -------------------------------------------------------------------------


def _import_file(path: Path, code: int = EXIT_USAGE) -> Any:
    """Import the file at ``path`` once per process (see :func:`runtime.api._rerun.import_flow_file`).

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
    file_text, sep, qualname = target.rpartition(":")
    if not sep or not file_text or not qualname:
        raise _usage(f"expected FILE.py:FLOW_FUNCTION, got {target!r}")
    path = Path(file_text).expanduser()
    if not path.is_file():
        raise _usage(f"no such file: {file_text}")
    found: Any = _import_file(path.resolve())
    for part in qualname.split("."):
        found = getattr(found, part, None)
        if found is None:
            raise _usage(f"{file_text} has no function {qualname!r}")
    if not isinstance(found, Flow):
        raise _usage(f"{qualname!r} in {file_text} is not a flow: decorate it with @flow")
    return found


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


def _report(
    args: argparse.Namespace, backend: StoreBackend, run_id: UUID, state: State[Any]
) -> int:
    """Print how the run ended; return the exit code for it."""
    name = backend.read_flow_run(run_id).name
    if state.is_paused():
        print(f"Flow run {name!r} is {state}; resume it with: {_resume_hint(args, run_id)}")
    else:
        print(f"Flow run {name!r} finished in state {state}")
    print(f"  id:     {run_id}")
    if state.is_completed():
        try:
            text = repr(state.result())
        except StageflowError:
            text = None
        if text is not None:
            print(f"  result: {text if len(text) <= 200 else text[:197] + '...'}")
    return _exit_code(state)


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
    call = partial(flow, **parse_params(args.param), return_state=True)
    with _runtime_for_sync_calls(args) as runtime:
        backend = runtime.backend
        assert backend is not None
        created: list[UUID] = []

        def first_flow_run(run: Any, state: State[Any]) -> None:
            if not created and isinstance(run, FlowRun):
                created.append(run.id)

        unsubscribe = backend.subscribe(None, first_flow_run)
        try:
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
        return _report(args, backend, run_id, state)


# -- stageflow runs ------------------------------------------------------------------------


def _state_filter(values: Sequence[str]) -> tuple[set[StateType], set[str]]:
    types: set[StateType] = set()
    names: set[str] = set()
    for value in values:
        try:
            types.add(StateType(value.upper()))
        except ValueError:
            names.add(value.lower())
    return types, names


def _cmd_runs_ls(args: argparse.Namespace) -> int:
    types, names = _state_filter(args.state or [])
    with _reading(args) as backend:
        if names:  # a state name is no store filter: filter here, then limit
            runs = backend.read_flow_runs(flow_name=args.flow)
            runs = [r for r in runs if r.state_type in types or _state_name(r) in names]
            runs = runs[: args.limit]
        else:
            runs = backend.read_flow_runs(
                state_types=types or None, flow_name=args.flow, limit=args.limit
            )
    if not runs:
        print("No flow runs found.")
        return EXIT_OK
    headers = ("ID", "FLOW", "NAME", "STATE", "START", "DURATION")
    rows = [
        (r.id, r.flow_name, r.name, r.state_name, _time(r.start_time), _duration(r)) for r in runs
    ]
    print(format_table(headers, rows))
    return EXIT_OK


def _state_name(run: FlowRun | TaskRun) -> str:
    return (run.state_name or "").lower()


def _cmd_runs_show(args: argparse.Namespace) -> int:
    with _reading(args) as backend:
        run = _find_flow_run(backend, args.id)
        history = backend.read_state_history("flow", run.id)
        task_runs = backend.read_task_runs(flow_run_id=run.id)
        subflows = [
            sub for t in task_runs for sub in backend.read_flow_runs(parent_task_run_id=t.id)
        ]
        parent = None
        if run.parent_task_run_id is not None:
            with suppress(ObjectNotFound):
                parent = backend.read_task_run(run.parent_task_run_id).flow_run_id
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
    rows = [
        (t.id, t.name, t.state_name, _time(t.start_time), _duration(t), _message(t))
        for t in task_runs
    ]
    _section("\nTask runs", ("ID", "NAME", "STATE", "START", "DURATION", "MESSAGE"), rows)
    rows = [(s.id, s.flow_name, s.name, s.state_name, _duration(s)) for s in subflows]
    _section("\nSubflow runs", ("ID", "FLOW", "NAME", "STATE", "DURATION"), rows)
    return EXIT_OK


def _message(run: FlowRun | TaskRun) -> str:
    return "" if run.state is None else run.state.message or ""


def _section(title: str, headers: Sequence[str] | None, rows: Sequence[Sequence[Any]]) -> None:
    print(title)
    text = format_table(headers, rows) if rows else "(none)"
    print("\n".join(f"  {line}" for line in text.splitlines()))


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

    async def go() -> int:
        async with _runtime(args) as runtime:
            backend = runtime.backend
            assert backend is not None
            run = _find_flow_run(backend, args.id)
            state = run.state
            try:
                if state is not None and state.is_crashed():
                    if args.input is not None:
                        raise _usage(f"flow run {run.id} crashed: it takes no --input")
                    _preload_entrypoint(run)
                    final = await rerun_flow_run(run.id)
                    return _report(args, backend, run.id, final)
                suspended = state is not None and state.state_details.pause_reschedule
                if suspended:
                    _preload_entrypoint(run)
                await flow_runs.resume_flow_run(run.id, run_input=run_input)
            except NotPausedError as exc:
                raise CommandError(
                    f"{_one_line(exc)} Only paused, suspended or crashed runs can be resumed."
                ) from None
            except InvalidRunInput as exc:
                raise _usage(_one_line(exc)) from None
            except (FlowPauseTimeout, ObjectNotFound, RuntimeError) as exc:
                raise CommandError(_one_line(exc)) from None
            current = backend.read_flow_run(run.id)
            if suspended and current.state is not None:
                return _report(args, backend, run.id, current.state)
            print(f"Resumed flow run {run.name!r}: it is {current.state}")
            return EXIT_OK

    return anyio.run(go)


def _cmd_runs_cancel(args: argparse.Namespace) -> int:

    async def go() -> int:
        async with _runtime(args) as runtime:
            assert runtime.backend is not None
            run = _find_flow_run(runtime.backend, args.id)
            if run.state is not None and run.state.is_final():
                raise CommandError(
                    f"flow run {run.id} already finished in state {run.state}; nothing to cancel"
                )
            state = await flow_runs.cancel_flow_run(run.id)
            print(f"Cancelled flow run {run.name!r}: it is {state}")
            return EXIT_OK

    return anyio.run(go)


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
    print(format_table(("TAG", "LIMIT", "ACTIVE"), rows))
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
        prog="stageflow", description="Run flows; list, inspect, resume and cancel their runs."
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
    run.add_argument(
        *("-p", "--param"),
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="a flow parameter; VALUE is read as JSON if it parses, else as a string",
    )

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
    return the exit code."""
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
