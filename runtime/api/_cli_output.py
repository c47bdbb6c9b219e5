"""What the ``stageflow`` command prints: tables, task-run summaries and the live progress
line of a running flow, laid out with ``rich`` (as Prefect's CLI is).

Tables are plain text with columns two spaces apart (no colours, no trailing blanks, no
wrapping) so scripts can read them; on a terminal they show with bold headers. The live
progress line only draws on a terminal; elsewhere a command prints plain lines.
"""

from __future__ import annotations

import io
import sys
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..core._models import TaskRun
from ..core._states import State, StateType

__all__ = [
    "TaskRunProgress",
    "format_duration",
    "format_table",
    "print_table",
    "state_counts",
]

_UNLIMITED = 100_000
"""Console width for text that must not wrap (pipes, files, tests)."""

_FAILING = (StateType.FAILED, StateType.CRASHED)


def _table(headers: Sequence[str] | None, rows: Iterable[Sequence[Any]]) -> Table:
    table = Table(
        box=None,
        pad_edge=False,
        show_edge=False,
        show_header=headers is not None,
        header_style="bold",
    )
    rows = [[_cell(cell) for cell in row] for row in rows]
    columns = headers if headers is not None else [""] * (len(rows[0]) if rows else 0)
    for header in columns:
        # On a narrow terminal a long cell folds onto more lines; nothing is cut off.
        table.add_column(header, overflow="fold")
    for row in rows:
        table.add_row(*row)
    return table


def _cell(value: Any) -> str:
    return "-" if value is None else " ".join(str(value).split())


def format_table(headers: Sequence[str] | None, rows: Sequence[Sequence[Any]]) -> str:
    """Return ``rows`` as left-aligned columns two spaces apart (no trailing blanks).

    Cells are ``str()``-ed with their line breaks flattened to spaces; None shows as ``-``.
    """
    if not rows and not headers:
        return ""
    buffer = io.StringIO()
    Console(file=buffer, width=_UNLIMITED, color_system=None).print(_table(headers, rows))
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines())


def print_table(
    headers: Sequence[str] | None, rows: Sequence[Sequence[Any]], *, indent: str = ""
) -> None:
    """Print a table on stdout: styled on a terminal, else as :func:`format_table` text."""
    console = Console()
    if console.is_terminal and not indent:
        console.print(_table(headers, rows))
        return
    text = format_table(headers, rows)
    print("\n".join(f"{indent}{line}" for line in text.splitlines()))


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


def state_counts(task_runs: Sequence[TaskRun]) -> str:
    """Return ``"2700 (2690 Completed, 10 Failed)"``: how many task runs, by state name
    (most common first)."""
    counts = Counter((run.state_name or "no state") for run in task_runs)
    by_state = ", ".join(f"{count} {name}" for name, count in counts.most_common())
    return f"{len(task_runs)} ({by_state})" if task_runs else "0"


def is_failing(run: TaskRun) -> bool:
    """Whether a task run ended Failed (TimedOut included) or Crashed."""
    return run.state_type in _FAILING


class TaskRunProgress:
    """Counts the task runs of a command by state, from store notifications, and on a
    terminal shows them as a live line on stderr (completed / failed / running).

    Use as a context manager around the run; :meth:`on_state` is the store listener (it
    may be called from any thread).

    Args:
        console: where the live line draws (default: stderr); nothing draws unless it
            is a terminal.
    """

    def __init__(self, console: Console | None = None) -> None:
        self._console = console if console is not None else Console(file=sys.stderr)
        self._lock = threading.Lock()
        self._states: dict[Any, StateType] = {}
        self._progress: Progress | None = None
        self._task: Any = None

    def __enter__(self) -> TaskRunProgress:
        if self._console.is_terminal and not self._console.is_dumb_terminal:
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("[bold]task runs[/bold] {task.description}"),
                TimeElapsedColumn(),
                console=self._console,
                transient=True,
            )
            self._task = self._progress.add_task(self._describe(), total=None)
            self._progress.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._progress is not None:
            with self._lock:
                description = self._describe()
            self._progress.update(self._task, description=description)
            self._progress.stop()

    def on_state(self, run: Any, state: State[Any]) -> None:
        """Count ``run``'s new state, if ``run`` is a task run."""
        if not isinstance(run, TaskRun):
            return
        with self._lock:
            self._states[run.id] = state.type
            description = self._describe()
        if self._progress is not None:
            self._progress.update(self._task, description=description)

    def _describe(self) -> str:
        counts = Counter(self._states.values())
        failed = sum(counts[kind] for kind in _FAILING)
        return (
            f"{counts[StateType.COMPLETED]} completed · {failed} failed · "
            f"{counts[StateType.RUNNING]} running · {len(self._states)} in all"
        )
