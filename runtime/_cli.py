"""The ``stageflow`` command line: run a flow, list and inspect stored runs, resume and
cancel them, and manage tag concurrency limits.

Every command works on one store: ``--store URL``, else ``$STAGEFLOW_STORE``, else the
default store (see :func:`runtime._stores.default_backend`). Commands that run or change
runs do so inside a :class:`~runtime.Runtime` on that store; read-only commands read the
store directly.

Exit codes: 0 success (or the run Completed), 1 the run ended Failed/Crashed/Cancelled
or the command could not be done (unknown id, run not paused, run already final),
2 usage error, 3 the run stopped without finishing (paused or suspended), 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import sys
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator, Sequence
from uuid import UUID

import anyio

from ._exceptions import (
    ConfigurationError,
    FlowPauseTimeout,
    InvalidRunInput,
    NotPausedError,
    ObjectNotFound,
    ParameterBindError,
    StageflowError,
)
from ._flow import Flow
from ._logging import RUN_LOG_FORMAT
from ._models import FlowRun, TaskRun
from ._runtime import Runtime
from ._store import StoreBackend
from ._stores import default_backend, open_backend
from .states import State, StateType

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

    Cells are ``str()``-ed and their line breaks flattened to spaces.
    """
    table = [list(headers)] if headers else []
    table += [[" ".join(str(cell).split()) for cell in row] for row in rows]
    if not table:
        return ""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in table
    )


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
    return args.store or os.environ.get("STAGEFLOW_STORE") or None


@contextmanager
def _reading(args: argparse.Namespace) -> Iterator[StoreBackend]:
    """Yield the selected store's backend for direct reads (and small writes)."""
    url = _store_url(args)
    try:
        backend, owned = (default_backend(), False) if url is None else open_backend(url)
    except ConfigurationError as exc:
        raise _usage(_one_line(exc)) from None
    try:
        backend.sync_external()
        yield backend
        if backend.has_pending_writes():
            backend.commit()
    finally:
        if owned:
            backend.close()


@asynccontextmanager
async def _running(args: argparse.Namespace) -> AsyncIterator[Runtime]:
    """Yield a runtime on the selected store; flows called inside use it."""
    async with AsyncExitStack() as stack:
        try:
            runtime = await stack.enter_async_context(Runtime(store=_store_url(args)))
        except ConfigurationError as exc:
            raise _usage(_one_line(exc)) from None
        yield runtime


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


def _import_file(path: Path) -> Any:
    # The module name matches the one runtime._rerun gives an entrypoint's file, so a
    # resume in this process reuses this module instead of importing the file again.
    name = f"stageflow_entrypoint_{abs(hash(str(path)))}"
    module = sys.modules.get(name)
    if module is not None:
        return module
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise _usage(f"cannot import {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise _usage(f"cannot import {path}: {type(exc).__name__}: {_one_line(exc)}") from None
    finally:
        sys.path.remove(str(path.parent))
    return module


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


def _report(args: argparse.Namespace, backend: StoreBackend, run_id: UUID, state: State[Any]) -> int:
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


def _cmd_run(args: argparse.Namespace) -> int:
    flow = load_flow_target(args.target)
    params = parse_params(args.param)
    call = partial(flow, **params, return_state=True)

    async def go() -> int:
        async with _running(args) as runtime:
            backend = runtime.backend
            assert backend is not None
            created: list[UUID] = []

            def first_flow_run(run: Any, state: State[Any]) -> None:
                if not created and isinstance(run, FlowRun):
                    created.append(run.id)

            unsubscribe = backend.subscribe(None, first_flow_run)
            try:
                if flow.is_async:
                    state = await call()
                else:
                    state = await anyio.to_thread.run_sync(call)
            except ParameterBindError as exc:
                raise _usage(_one_line(exc)) from None
            except Exception as exc:
                if not created:
                    raise
                raise CommandError(f"flow run {created[0]} crashed: {_one_line(exc)}") from None
            finally:
                unsubscribe()
            run_id = state.state_details.flow_run_id
            assert run_id is not None
            return _report(args, backend, run_id, state)

    return anyio.run(go)


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
        if names:
            runs = [
                run
                for run in backend.read_flow_runs(flow_name=args.flow)
                if run.state_type in types or (run.state_name or "").lower() in names
            ][: args.limit]
        else:
            runs = backend.read_flow_runs(
                state_types=types or None, flow_name=args.flow, limit=args.limit
            )
    if not runs:
        print("No flow runs found.")
        return EXIT_OK
    rows = [
        (run.id, run.flow_name, run.name, run.state_name or "-", _time(run.start_time), _duration(run))
        for run in runs
    ]
    print(format_table(("ID", "FLOW", "NAME", "STATE", "START", "DURATION"), rows))
    return EXIT_OK


def _cmd_runs_show(args: argparse.Namespace) -> int:
    with _reading(args) as backend:
        run = _find_flow_run(backend, args.id)
        history = backend.read_state_history("flow", run.id)
        task_runs = backend.read_task_runs(flow_run_id=run.id)
        subflows = [
            sub
            for task_run in task_runs
            for sub in backend.read_flow_runs(parent_task_run_id=task_run.id)
        ]
        parent = None
        if run.parent_task_run_id is not None:
            try:
                parent = backend.read_task_run(run.parent_task_run_id).flow_run_id
            except ObjectNotFound:
                parent = None
    fields = [
        ("id:", run.id),
        ("flow:", run.flow_name if run.flow_version is None else f"{run.flow_name} (version {run.flow_version})"),
        ("state:", run.state if run.state is not None else "-"),
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
    print(f"Flow run {run.name!r}")
    print(_indent(format_table(None, fields)))
    print("\nState history")
    rows = [(_time(s.timestamp, precise=True), s.name, s.type.value, s.message or "") for s in history]
    print(_indent(format_table(("TIME", "STATE", "TYPE", "MESSAGE"), rows)))
    print("\nTask runs")
    if task_runs:
        rows = [
            (t.id, t.name, t.state_name or "-", _time(t.start_time), _duration(t), t.state.message if t.state and t.state.message else "")
            for t in task_runs
        ]
        print(_indent(format_table(("ID", "NAME", "STATE", "START", "DURATION", "MESSAGE"), rows)))
    else:
        print("  (none)")
    print("\nSubflow runs")
    if subflows:
        rows = [(s.id, s.flow_name, s.name, s.state_name or "-", _duration(s)) for s in subflows]
        print(_indent(format_table(("ID", "FLOW", "NAME", "STATE", "DURATION"), rows)))
    else:
        print("  (none)")
    return EXIT_OK


def _indent(text: str) -> str:
    return "\n".join(f"  {line}" for line in text.splitlines())


def _cmd_runs_resume(args: argparse.Namespace) -> int:
    from . import flow_runs
    from ._rerun import rerun_flow_run

    run_input: Any = None
    if args.input is not None:
        try:
            run_input = json.loads(args.input)
        except ValueError as exc:
            raise _usage(f"--input is not valid JSON: {exc}") from None

    async def go() -> int:
        async with _running(args) as runtime:
            backend = runtime.backend
            assert backend is not None
            run = _find_flow_run(backend, args.id)
            state = run.state
            try:
                if state is not None and state.is_crashed():
                    if args.input is not None:
                        raise _usage(f"flow run {run.id} crashed; --input applies only to a paused or suspended run")
                    final = await rerun_flow_run(run.id)
                    return _report(args, backend, run.id, final)
                suspended = state is not None and state.state_details.pause_reschedule
                await flow_runs.resume_flow_run(run.id, run_input=run_input)
            except NotPausedError as exc:
                raise CommandError(f"{_one_line(exc)} Only paused, suspended or crashed runs can be resumed.") from None
            except InvalidRunInput as exc:
                raise _usage(_one_line(exc)) from None
            except (FlowPauseTimeout, ObjectNotFound) as exc:
                raise CommandError(_one_line(exc)) from None
            current = backend.read_flow_run(run.id)
            if suspended and current.state is not None:
                return _report(args, backend, run.id, current.state)
            print(f"Resumed flow run {run.name!r}: it is {current.state}")
            return EXIT_OK

    return anyio.run(go)


def _cmd_runs_cancel(args: argparse.Namespace) -> int:
    from . import flow_runs

    async def go() -> int:
        async with _running(args) as runtime:
            assert runtime.backend is not None
            run = _find_flow_run(runtime.backend, args.id)
            if run.state is not None and run.state.is_final():
                raise CommandError(f"flow run {run.id} already finished in state {run.state}; nothing to cancel")
            state = await flow_runs.cancel_flow_run(run.id)
            print(f"Cancelled flow run {run.name!r}: it is {state}")
            return EXIT_OK

    return anyio.run(go)


# -- stageflow limits ----------------------------------------------------------------------


def _cmd_limits_set(args: argparse.Namespace) -> int:
    with _reading(args) as backend:
        backend.set_concurrency_limit(args.tag, args.limit)
    print(f"Tag {args.tag!r}: at most {args.limit} task runs at once.")
    return EXIT_OK


def _cmd_limits_ls(args: argparse.Namespace) -> int:
    with _reading(args) as backend:
        limits = backend.read_concurrency_limits()
    if not limits:
        print("No concurrency limits.")
        return EXIT_OK
    rows = [(tag, limit, len(holders)) for tag, (limit, holders) in sorted(limits.items())]
    print(format_table(("TAG", "LIMIT", "ACTIVE"), rows))
    return EXIT_OK


def _cmd_limits_rm(args: argparse.Namespace) -> int:
    with _reading(args) as backend:
        if args.tag not in backend.read_concurrency_limits():
            raise CommandError(f"no concurrency limit for tag {args.tag!r}")
        backend.set_concurrency_limit(args.tag, None)
    print(f"Removed the concurrency limit of tag {args.tag!r}.")
    return EXIT_OK


# -- the parser ----------------------------------------------------------------------------


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("stageflow")
    except PackageNotFoundError:
        return "unknown"


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {value}")
    return value


def _positive(text: str) -> int:
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError("expected 1 or more, got 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Return the ``stageflow`` argument parser."""
    # Global options are accepted before and after the command: subparsers share them
    # with SUPPRESS defaults, so they only override the top-level value when given.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", metavar="URL", default=argparse.SUPPRESS, help="store URL (default: $STAGEFLOW_STORE, else the default store)")
    common.add_argument("--log-level", default=argparse.SUPPRESS, choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="level of the run logs written to stderr (default: INFO)")

    parser = argparse.ArgumentParser(prog="stageflow", description="Run stageflow flows and inspect their runs.")
    parser.add_argument("--version", action="version", version=f"stageflow {_version()}")
    parser.add_argument("--store", metavar="URL", default=None, help="store URL: memory://, sqlite:///path/to.db (default: $STAGEFLOW_STORE, else the default store)")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="level of the run logs written to stderr (default: INFO)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = commands.add_parser("run", parents=[common], help="run a flow", description="Load a flow from a file and run it to its final state.")
    run.add_argument("target", metavar="FILE.py:FLOW", help="the file and the name of the @flow function in it")
    run.add_argument("--param", "-p", metavar="KEY=VALUE", action="append", default=[], help="a flow parameter; VALUE is JSON when it parses as JSON, else a string (repeatable)")
    run.set_defaults(handler=_cmd_run)

    runs = commands.add_parser("runs", help="list, show, resume or cancel flow runs", description="Work with the flow runs in the store.")
    runs_commands = runs.add_subparsers(dest="runs_command", metavar="COMMAND", required=True)
    ls = runs_commands.add_parser("ls", parents=[common], help="list flow runs, newest first", description="List flow runs, newest first.")
    ls.add_argument("--state", action="append", metavar="STATE", help="only runs in this state type (COMPLETED, FAILED...) or state name (Suspended, Cached...); repeatable")
    ls.add_argument("--flow", metavar="NAME", help="only runs of the flow with this name")
    ls.add_argument("--limit", type=_positive, default=20, metavar="N", help="show at most N runs (default: 20)")
    ls.set_defaults(handler=_cmd_runs_ls)
    show = runs_commands.add_parser("show", parents=[common], help="show a flow run", description="Show a flow run: its fields, state history, task runs and subflow runs.")
    show.add_argument("id", metavar="ID", help="the flow run id, or a unique prefix of it")
    show.set_defaults(handler=_cmd_runs_show)
    resume = runs_commands.add_parser("resume", parents=[common], help="resume a paused, suspended or crashed flow run", description="Resume a paused flow run, or run a suspended or crashed one again in this process.")
    resume.add_argument("id", metavar="ID", help="the flow run id, or a unique prefix of it")
    resume.add_argument("--input", metavar="JSON", help="the input the paused run waits for, as JSON")
    resume.set_defaults(handler=_cmd_runs_resume)
    cancel = runs_commands.add_parser("cancel", parents=[common], help="cancel a flow run", description="Cancel a flow run that has not finished.")
    cancel.add_argument("id", metavar="ID", help="the flow run id, or a unique prefix of it")
    cancel.set_defaults(handler=_cmd_runs_cancel)

    limits = commands.add_parser("limits", help="manage tag concurrency limits", description="Manage tag concurrency limits.")
    limits_commands = limits.add_subparsers(dest="limits_command", metavar="COMMAND", required=True)
    limit_set = limits_commands.add_parser("set", parents=[common], help="limit how many task runs with a tag run at once")
    limit_set.add_argument("tag", metavar="TAG")
    limit_set.add_argument("limit", metavar="N", type=_non_negative, help="at most N task runs at once (0 holds them all)")
    limit_set.set_defaults(handler=_cmd_limits_set)
    limit_ls = limits_commands.add_parser("ls", parents=[common], help="list concurrency limits")
    limit_ls.set_defaults(handler=_cmd_limits_ls)
    limit_rm = limits_commands.add_parser("rm", parents=[common], help="remove a tag's concurrency limit")
    limit_rm.add_argument("tag", metavar="TAG")
    limit_rm.set_defaults(handler=_cmd_limits_rm)
    return parser


# -- main ----------------------------------------------------------------------------------


class _RunLabel(logging.Filter):
    # RUN_LOG_FORMAT names the run; engine records that belong to no run get the logger name.
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "run_label"):
            record.run_label = record.name
        return True


@contextmanager
def _run_logs(level: str) -> Iterator[None]:
    """Write the engine's run logs to stderr while a command runs."""
    logger = logging.getLogger("stageflow")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(RUN_LOG_FORMAT, datefmt="%H:%M:%S"))
    handler.addFilter(_RunLabel())
    handler.setLevel(level)
    previous = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > handler.level:
        logger.setLevel(level)
    try:
        yield
    finally:
        logger.removeHandler(handler)
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
        with _run_logs(args.log_level):
            return handler(args)
    except CommandError as exc:
        print(f"stageflow: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("stageflow: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except StageflowError as exc:
        print(f"stageflow: {_one_line(exc)}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
