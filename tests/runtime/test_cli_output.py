"""What the CLI prints for long work: task-run counts, and the live progress line that
``stageflow run`` draws on a terminal (and only there)."""

from __future__ import annotations

import io
import os
import pty
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from rich.console import Console

from runtime import FlowRun, State, TaskRun
from runtime import states as S
from runtime.api._cli_output import TaskRunProgress, state_counts


def _plain(text: str) -> str:
    """``text`` without its terminal control sequences."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def _task_run(name: str, state: State[Any] | None = None) -> TaskRun:
    return TaskRun(name=name, task_key="k", dynamic_key=name, state=state)


def test_state_counts_most_common_first() -> None:
    states = [S.Completed(), S.Failed(), S.Completed(), S.Crashed(), None]
    runs = [_task_run(str(i), state) for i, state in enumerate(states)]
    assert state_counts(runs) == "5 (2 Completed, 1 Failed, 1 Crashed, 1 no state)"
    assert state_counts([]) == "0"


def test_progress_counts_task_runs_and_draws_only_on_a_terminal() -> None:
    terminal = io.StringIO()
    with TaskRunProgress(Console(file=terminal, force_terminal=True, width=100)) as progress:
        runs = [_task_run(str(i)) for i in range(4)]
        for run in runs:
            progress.on_state(run, S.Running())
        progress.on_state(runs[0], S.Completed())
        progress.on_state(runs[1], S.Failed())
        progress.on_state(runs[2], S.Crashed())
        progress.on_state(FlowRun(name="f", flow_name="f"), S.Completed())  # not counted
    assert "task runs 1 completed · 2 failed · 1 running · 4 in all" in _plain(terminal.getvalue())

    pipe = io.StringIO()
    with TaskRunProgress(Console(file=pipe)) as progress:
        progress.on_state(_task_run("x"), S.Completed())
    assert pipe.getvalue() == ""


MANY = """
from runtime import flow, task

@task
def work(i: int) -> int:
    if i == 3:
        raise ValueError("three")
    return i

@flow
def many(n: int = 30) -> int:
    work.map(range(n)).wait()
    return n
"""


def test_stageflow_run_shows_a_live_line_on_a_terminal(tmp_path: Path) -> None:
    flows = tmp_path / "many.py"
    flows.write_text(textwrap.dedent(MANY))
    argv = [sys.executable, "-m", "runtime", "run", f"{flows}:many"]
    env = {"PATH": os.environ.get("PATH", ""), "STAGEFLOW_HOME": str(tmp_path), "TERM": "xterm"}
    main, child = pty.openpty()
    process = subprocess.Popen(argv, stdin=child, stdout=child, stderr=child, env=env)
    os.close(child)
    output = b""
    while True:  # read until the child closes the terminal (EIO on Linux)
        try:
            chunk = os.read(main, 65536)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    os.close(main)
    assert process.wait(60) == 0, output.decode(errors="replace")
    text = _plain(output.decode(errors="replace"))
    assert "task runs 29 completed · 1 failed · 0 running · 30 in all" in text
    assert "tasks:  30 (29 Completed, 1 Failed)" in text

    piped = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, check=False)
    assert piped.returncode == 0, piped.stderr
    assert "in all" not in piped.stdout + piped.stderr  # no live line off a terminal
    assert "tasks:  30 (29 Completed, 1 Failed)" in piped.stdout
