"""The ``stageflow`` command line: run, runs ls/show/resume/cancel, limits, exit codes.

Most tests call :func:`runtime.api._cli.main` in this process. Commands that need runs to
outlive one command run on two stores: the default store (with ``$STAGEFLOW_HOME`` in
``tmp_path``, reset around each test) and an explicit ``sqlite:///`` store (skipped until
``runtime.store._sqlite`` exists). A few tests start real processes, for true exit codes.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from runtime import FlowRun, Runtime, State
from runtime import states as S
from runtime.api._cli import _find_flow_run, main, parse_params
from runtime.api._cli_output import format_duration, format_table
from runtime.store._memory import MemoryStore
from runtime.store._urls import default_backend, open_backend

HAVE_SQLITE = importlib.util.find_spec("runtime.store._sqlite") is not None
needs_sqlite = pytest.mark.skipif(not HAVE_SQLITE, reason="runtime.store._sqlite is not there yet")

FLOWS = """
from dataclasses import dataclass

from runtime import flow, task
from runtime.flow_runs import pause_flow_run, suspend_flow_run


@dataclass
class Point:
    x: int


@task(persist_result=True)
def make_point(x: int) -> Point:
    return Point(x)


@flow
def point_then_number(x: int = 7) -> int:
    point = make_point(x)  # its result is reused (unpickled) when the run is resumed
    return point.x * suspend_flow_run(wait_for_input=int, timeout=None)


@task
def double(x: int) -> int:
    return 2 * x


@flow
def greet(name: str, count: int = 1, items: list | None = None) -> str:
    return f"{name}|{count}|{items}"


@flow
def boom() -> None:
    raise ValueError("boom")


@flow(name="child-flow")
def child(y: int) -> int:
    return double(y)


@flow
def with_tasks(x: int = 2) -> int:
    return child(double(x)) + 1


@task
def odd_fails(i: int) -> int:
    if i % 2 and i < 4:
        raise ValueError(f"odd {i}")
    return i


@flow
def many_tasks(n: int = 25) -> int:
    odd_fails.map(range(n)).wait()
    return n


@flow
async def async_hello(name: str = "async") -> str:
    return f"hello {name}"


@flow
def waits_for_number() -> int:
    return suspend_flow_run(wait_for_input=int, timeout=None) * 10


@flow
def pauses() -> str:
    return "got " + pause_flow_run(wait_for_input=str, timeout=60)


@flow
def dies_once(marker: str) -> str:
    import os, pathlib, signal

    if not pathlib.Path(marker).exists():
        pathlib.Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)  # as `kill -9` would
    return "survived"


def not_a_flow() -> None:
    pass


if __name__ == "__main__":
    raise SystemExit("the CLI must not run the __main__ block")
"""

UUID_RE = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


@pytest.fixture
def flows(tmp_path: Path) -> Path:
    """A flow file in ``tmp_path``."""
    path = tmp_path / "flows.py"
    path.write_text(FLOWS)
    return path


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh ``$STAGEFLOW_HOME`` and a fresh default store for each test."""
    monkeypatch.setenv("STAGEFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("STAGEFLOW_STORE", raising=False)
    default_backend().close()
    yield tmp_path / "home"
    default_backend().close()


@pytest.fixture(params=["default", pytest.param("sqlite", marks=needs_sqlite)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> list[str]:
    """The options that select a store that keeps runs between commands."""
    if request.param == "default":
        return []
    return ["--store", f"sqlite:///{tmp_path / 'runs.db'}"]


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``stageflow argv`` in this process; return (exit code, stdout, stderr)."""
    code = main(["--log-level", "ERROR", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def run_id_of(out: str) -> str:
    match = re.search(rf"id:\s+({UUID_RE})", out)
    assert match is not None, out
    return match.group(1)


def table_rows(out: str) -> list[list[str]]:
    """Split a printed table into its data rows (2+ spaces separate the columns)."""
    return [re.split(r"\s{2,}", line.strip()) for line in out.strip().splitlines()[1:]]


# -- output helpers ------------------------------------------------------------------


class TestFormatTable:
    def test_aligns_columns_without_trailing_blanks(self) -> None:
        """Each column is as wide as its widest cell; lines end without blanks."""
        text = format_table(("A", "LONG HEADER"), [("xyz", 1), ("p", "q")])
        assert text.splitlines() == ["A    LONG HEADER", "xyz  1", "p    q"]

    def test_flattens_line_breaks(self) -> None:
        """A multi-line cell stays on its row."""
        assert format_table(None, [("a", "one\n two")]) == "a  one two"

    def test_empty(self) -> None:
        """No headers and no rows give an empty string."""
        assert format_table(None, []) == ""


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.0123, "0.012s"), (12.34, "12.3s"), (187, "3m 07s"), (7500, "2h 05m")],
)
def test_format_duration(seconds: float, text: str) -> None:
    from datetime import timedelta

    assert format_duration(timedelta(seconds=seconds)) == text


def test_parse_params_json_else_string() -> None:
    """Values that parse as JSON are JSON; the rest are kept as strings."""
    assert parse_params(["n=3", "xs=[1, 2]", "name=bob", 'q="7"', "e=", "eq=a=b"]) == {
        "n": 3,
        "xs": [1, 2],
        "name": "bob",
        "q": "7",
        "e": "",
        "eq": "a=b",
    }


class TestFindFlowRun:
    @pytest.fixture
    def backend(self) -> Iterator[MemoryStore]:
        """A store with three runs, the one a command reads (as ``_store`` arranges)."""
        backend = MemoryStore()
        for text in (
            "aaaa0000-0000-0000-0000-000000000001",
            "aaaa0000-0000-0000-0000-000000000002",
            "bbbb0000-0000-0000-0000-000000000003",
        ):
            run = FlowRun(id=UUID(text), name=f"run-{text[:4]}", flow_name="f", version=1)
            backend.create_run("flow", run)
        with Runtime(store=backend):
            yield backend

    def test_full_id_and_unique_prefix(self, backend: MemoryStore) -> None:
        """A full id or a unique prefix (any case) names one run."""
        assert _find_flow_run("bbbb0000-0000-0000-0000-000000000003").name == "run-bbbb"
        assert _find_flow_run("BBB").name == "run-bbbb"
        assert str(_find_flow_run("aaaa0000-0000-0000-0000-000000000002").id).endswith("2")

    def test_ambiguous_prefix(self, backend: MemoryStore) -> None:
        """A prefix of several ids is refused, naming them."""
        with pytest.raises(
            Exception,
            match=r"^id prefix 'aaaa' matches 2 flow runs \(aaaa0000-.*\); give more characters$",
        ):
            _find_flow_run("aaaa")

    @pytest.mark.parametrize(
        "text", ["cccc", "not-an-id", "", "aaaa0000-0000-0000-0000-000000000009"]
    )
    def test_unknown(self, backend: MemoryStore, text: str) -> None:
        """Nothing matches: the error names what was asked for."""
        with pytest.raises(Exception, match=rf"^no flow run with id {re.escape(text)}$"):
            _find_flow_run(text)


# -- help and version ----------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["run", "--help"],
        ["runs", "--help"],
        ["runs", "ls", "--help"],
        ["runs", "show", "-h"],
        ["runs", "resume", "-h"],
        ["runs", "cancel", "-h"],
        ["limits", "-h"],
        ["limits", "set", "-h"],
    ],
)
def test_help(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith("usage: stageflow")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert re.fullmatch(r"stageflow \S+\n", capsys.readouterr().out)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["runs"],
        ["runs", "show"],
        ["limits", "set", "db", "-1"],
        ["limits", "set", "db", "x"],
        ["runs", "ls", "--limit", "0"],
        ["frobnicate"],
    ],
)
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    assert main(argv) == 2
    assert "usage: stageflow" in capsys.readouterr().err


# -- stageflow run -------------------------------------------------------------------


def test_run_with_json_and_string_params(capsys: pytest.CaptureFixture[str], flows: Path) -> None:
    """JSON values arrive decoded, other values as strings; the run Completes (exit 0)."""
    code, out, err = cli(
        capsys,
        "--store",
        "memory://",
        "run",
        f"{flows}:greet",
        "--param",
        "name=bob",
        "--param",
        "count=3",
        "-p",
        'items=[1, "a"]',
    )
    assert (code, err) == (0, "")
    assert re.match(r"^Flow run '[\w-]+' finished in state Completed\(\)\n", out)
    assert "  result: \"bob|3|[1, 'a']\"\n" in out
    run_id_of(out)


def test_run_quoted_json_string_stays_a_string(
    capsys: pytest.CaptureFixture[str], flows: Path
) -> None:
    code, out, _ = cli(capsys, "--store", "memory://", "run", f"{flows}:greet", "-p", 'name="123"')
    assert code == 0
    assert "result: '123|1|None'" in out


def test_run_async_flow(capsys: pytest.CaptureFixture[str], flows: Path) -> None:
    code, out, _ = cli(capsys, "run", f"{flows}:async_hello", "-p", "name=you")
    assert code == 0
    assert "result: 'hello you'" in out


def test_failing_flow_exits_1(capsys: pytest.CaptureFixture[str], flows: Path) -> None:
    code, out, _ = cli(capsys, "--store", "memory://", "run", f"{flows}:boom")
    assert code == 1
    assert "finished in state Failed('Flow run encountered an exception: ValueError: boom')" in out
    assert "result:" not in out


def test_invalid_parameter_value_fails_the_run(
    capsys: pytest.CaptureFixture[str], flows: Path
) -> None:
    """A value the annotation rejects makes a Failed run (exit 1), as a call would."""
    code, out, _ = cli(
        capsys, "--store", "memory://", "run", f"{flows}:greet", "-p", "name=x", "-p", "count=many"
    )
    assert code == 1
    assert "Validation of flow parameters failed" in out


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("{dir}/missing.py:greet", "no such file: {dir}/missing.py"),
        ("{dir}/flows.py", "expected FILE.py:FLOW_FUNCTION, got '{dir}/flows.py'"),
        ("{dir}/flows.py:", "expected FILE.py:FLOW_FUNCTION, got '{dir}/flows.py:'"),
        (
            "{dir}/flows.py:nope",
            "{dir}/flows.py has no function 'nope'; the flows in it: point_then_number, "
            "greet, boom, child, with_tasks, many_tasks, async_hello, "
            "waits_for_number, pauses, dies_once",
        ),
        (
            "{dir}/flows.py:not_a_flow",
            "'not_a_flow' in {dir}/flows.py is not a flow: decorate it with @flow",
        ),
    ],
)
def test_bad_target_exits_2(
    capsys: pytest.CaptureFixture[str], flows: Path, target: str, message: str
) -> None:
    code, out, err = cli(capsys, "run", target.format(dir=flows.parent))
    assert (code, out) == (2, "")
    assert err == f"stageflow: {message.format(dir=flows.parent)}\n"


def test_file_that_fails_to_import_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('nope')\n")
    code, _, err = cli(capsys, "run", f"{broken}:f")
    assert code == 2
    assert err == f"stageflow: cannot import {broken}: RuntimeError: nope\n"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (["-p", "name"], "--param expects KEY=VALUE, got 'name'"),
        (["-p", "=3"], "--param expects KEY=VALUE, got '=3'"),
    ],
)
def test_bad_param_syntax_exits_2(
    capsys: pytest.CaptureFixture[str], flows: Path, params: list[str], message: str
) -> None:
    code, _, err = cli(capsys, "run", f"{flows}:greet", *params)
    assert (code, err) == (2, f"stageflow: {message}\n")


def test_unknown_parameter_exits_2(capsys: pytest.CaptureFixture[str], flows: Path) -> None:
    """Arguments that do not bind create no run: a usage error."""
    code, out, err = cli(capsys, "run", f"{flows}:greet", "-p", "name=x", "-p", "colour=red")
    assert (code, out) == (2, "")
    assert err == (
        f"stageflow: {flows}:greet: got an unexpected keyword argument 'colour' (the flow's "
        "parameters: (name: str, count: int = 1, items: list | None = None)); pass parameters as --param NAME=VALUE\n"
    )


def test_unsupported_store_url_exits_2(capsys: pytest.CaptureFixture[str], flows: Path) -> None:
    code, _, err = cli(capsys, "--store", "nosuch://x", "run", f"{flows}:greet", "-p", "name=x")
    assert code == 2
    assert err.startswith("stageflow: Unsupported store URL 'nosuch://x'")


# -- stageflow runs ls / show --------------------------------------------------------


def test_runs_ls_lists_newest_first_and_filters(
    capsys: pytest.CaptureFixture[str], flows: Path, store: list[str]
) -> None:
    ids = []
    for argv, expected in [
        ([f"{flows}:greet", "-p", "name=a"], 0),
        ([f"{flows}:boom"], 1),
        ([f"{flows}:greet", "-p", "name=b"], 0),
    ]:
        code, out, _ = cli(capsys, *store, "run", *argv)
        assert code == expected
        ids.append(run_id_of(out))

    code, out, _ = cli(capsys, *store, "runs", "ls")
    assert code == 0
    assert re.split(r"\s{2,}", out.splitlines()[0]) == [
        "ID",
        "FLOW",
        "NAME",
        "STATE",
        "START",
        "DURATION",
    ]
    rows = table_rows(out)
    assert [row[0] for row in rows] == ids[::-1]
    assert [(row[1], row[3]) for row in rows] == [
        ("greet", "Completed"),
        ("boom", "Failed"),
        ("greet", "Completed"),
    ]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", row[4]) for row in rows)
    assert all(re.fullmatch(r"\d+\.\d{3}s", row[5]) for row in rows)

    _, out, _ = cli(capsys, *store, "runs", "ls", "--state", "failed")
    assert [row[0] for row in table_rows(out)] == [ids[1]]
    _, out, _ = cli(capsys, *store, "runs", "ls", "--flow", "greet")
    assert [row[0] for row in table_rows(out)] == [ids[2], ids[0]]
    _, out, _ = cli(capsys, *store, "runs", "ls", "--flow", "greet", "--limit", "1")
    assert [row[0] for row in table_rows(out)] == [ids[2]]
    _, out, _ = cli(
        capsys, *store, "runs", "ls", "--state", "COMPLETED", "--state", "Failed", "--limit", "2"
    )
    assert [row[0] for row in table_rows(out)] == [ids[2], ids[1]]
    code, out, _ = cli(capsys, *store, "runs", "ls", "--state", "cancelled")
    assert (code, out) == (0, "No flow runs found.\n")


def test_runs_ls_by_state_name(
    capsys: pytest.CaptureFixture[str], flows: Path, store: list[str]
) -> None:
    """A state name that is not a type (Suspended) filters by name."""
    cli(capsys, *store, "run", f"{flows}:greet", "-p", "name=a")
    code, out, _ = cli(capsys, *store, "run", f"{flows}:waits_for_number")
    assert code == 3
    suspended = run_id_of(out)
    _, out, _ = cli(capsys, *store, "runs", "ls", "--state", "suspended")
    assert [(row[0], row[3]) for row in table_rows(out)] == [(suspended, "Suspended")]
    _, out, _ = cli(capsys, *store, "runs", "ls", "--state", "paused")
    assert [row[0] for row in table_rows(out)] == [suspended]


def test_runs_show(capsys: pytest.CaptureFixture[str], flows: Path, store: list[str]) -> None:
    """show prints the fields, the state history, the task runs and the subflow runs."""
    code, out, _ = cli(capsys, *store, "run", f"{flows}:with_tasks", "-p", "x=3")
    assert code == 0
    assert "result: 13" in out
    run_id = run_id_of(out)

    code, out, err = cli(capsys, *store, "runs", "show", run_id[:8])
    assert (code, err) == (0, "")
    head, history, tasks, subflows = out.split("\n\n")
    assert re.match(r"^Flow run '[\w-]+'\n", head)
    fields = dict(re.split(r":\s+", line.strip(), maxsplit=1) for line in head.splitlines()[1:])
    assert fields["id"] == run_id
    assert fields["flow"].startswith("with-tasks")
    assert fields["state"] == "Completed()"
    assert fields["parameters"] == '{"x": 3}'
    assert fields["run count"] == "1"
    assert fields["entrypoint"] == f"{flows.resolve()}:with_tasks"
    assert re.fullmatch(r"\d+\.\d{3}s", fields["duration"])

    assert history.splitlines()[0] == "State history"
    assert [row[1:3] for row in table_rows(history.split("\n", 1)[1])] == [
        ["Pending", "PENDING"],
        ["Running", "RUNNING"],
        ["Completed", "COMPLETED"],
    ]
    assert tasks.splitlines()[0] == "Task runs: 2 (2 Completed)"
    task_rows = table_rows(tasks.split("\n", 1)[1])
    assert [(row[1], row[2]) for row in task_rows] == [
        ("double-0", "Completed"),
        ("child-flow-0", "Completed"),
    ]
    assert subflows.splitlines()[0] == "Subflow runs"
    (sub,) = table_rows(subflows.split("\n", 1)[1])
    assert (sub[1], sub[3]) == ("child-flow", "Completed")

    # The subflow's own page names its parent and its task run.
    _, out, _ = cli(capsys, *store, "runs", "show", sub[0])
    assert f"parent run:  {run_id}" in out
    assert "double-0" in out
    assert out.endswith("Subflow runs\n  (none)\n")


def test_runs_show_summarises_many_task_runs(
    capsys: pytest.CaptureFixture[str], flows: Path, store: list[str]
) -> None:
    """Past 20 task runs, show counts them by state and lists the failed and crashed
    ones with their messages; --all lists every one."""
    code, out, _ = cli(capsys, *store, "run", f"{flows}:many_tasks")
    assert code == 0
    assert "  tasks:  25 (23 Completed, 2 Failed)\n" in out
    run_id = run_id_of(out)
    _, out, _ = cli(capsys, *store, "runs", "show", run_id)
    tasks = out.split("\n\n")[2]
    title, table, hint = tasks.split("\n", 1)[0], *tasks.split("\n", 1)[1].rsplit("\n  (", 1)
    assert title == "Task runs: 25 (23 Completed, 2 Failed)"
    assert [(row[1], row[2], row[-1]) for row in table_rows(table)] == [
        ("odd_fails-1", "Failed", "Task run encountered an exception ValueError: odd 1"),
        ("odd_fails-3", "Failed", "Task run encountered an exception ValueError: odd 3"),
    ]
    assert hint == "the failed and crashed ones are listed; --all lists every task run)"
    _, out, _ = cli(capsys, *store, "runs", "show", run_id, "--all")
    tasks = out.split("\n\n")[2]
    assert len(table_rows(tasks.split("\n", 1)[1])) == 25


def test_runs_ls_refuses_an_unknown_state(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "--store", "memory://", "runs", "ls", "--state", "bogus")
    assert (code, out) == (2, "")
    assert err.startswith(
        "stageflow: unknown --state 'bogus': use a state type (SCHEDULED, PENDING, RUNNING, "
    )
    assert "or a state name (Scheduled, Late, " in err


def test_runs_show_failed_run_has_message(
    capsys: pytest.CaptureFixture[str], flows: Path, store: list[str]
) -> None:
    _, out, _ = cli(capsys, *store, "run", f"{flows}:boom")
    _, out, _ = cli(capsys, *store, "runs", "show", run_id_of(out))
    assert re.search(
        r"  Failed +FAILED +Flow run encountered an exception: ValueError: boom\n", out
    )
    assert "Task runs\n  (none)\n" in out


@pytest.mark.parametrize("command", [["runs", "show"], ["runs", "resume"], ["runs", "cancel"]])
def test_unknown_id_exits_1(
    capsys: pytest.CaptureFixture[str], store: list[str], command: list[str]
) -> None:
    missing = "00000000-0000-0000-0000-000000001234"
    for text in (missing, "1234"):
        code, out, err = cli(capsys, *store, *command, text)
        assert (code, out, err) == (1, "", f"stageflow: no flow run with id {text}\n")


# -- stageflow runs resume / cancel --------------------------------------------------


def test_resume_of_a_run_that_is_not_paused(
    capsys: pytest.CaptureFixture[str], flows: Path, store: list[str]
) -> None:
    _, out, _ = cli(capsys, *store, "run", f"{flows}:greet", "-p", "name=a")
    run_id = run_id_of(out)
    code, out, err = cli(capsys, *store, "runs", "resume", run_id)
    assert (code, out) == (1, "")
    assert err == (
        f"stageflow: Cannot resume flow run {run_id}: it is not paused (it is Completed()). "
        "Only paused, suspended or crashed runs can be resumed.\n"
    )


def test_resume_with_invalid_json_exits_2(
    capsys: pytest.CaptureFixture[str], store: list[str]
) -> None:
    code, _, err = cli(capsys, *store, "runs", "resume", "1234", "--input", "{nope")
    assert code == 2
    assert err.startswith("stageflow: --input is not valid JSON: Expecting property name")


def test_suspend_then_resume_with_input(
    capsys: pytest.CaptureFixture[str], flows: Path, store: list[str]
) -> None:
    """A suspended run exits 3 with the resume command; resume re-runs it with the input."""
    code, out, _ = cli(capsys, *store, "run", f"{flows}:waits_for_number")
    assert code == 3
    run_id = run_id_of(out)
    hint = " ".join(["stageflow", *store, "runs", "resume", run_id])
    assert out.splitlines()[0].endswith(f"is Suspended(type=PAUSED); resume it with: {hint}")

    code, out, err = cli(capsys, *store, "runs", "resume", run_id, "--input", '"many"')
    assert (code, out) == (2, "")
    assert err.startswith(f"stageflow: Invalid input for flow run {run_id}:")

    code, out, _ = cli(capsys, *store, "runs", "resume", run_id[:13], "--input", "4")
    assert code == 0
    assert "finished in state Completed()" in out
    assert "result: 40" in out
    _, out, _ = cli(capsys, *store, "runs", "show", run_id)
    states = [row[1] for row in table_rows(out.split("\n\n")[1].split("\n", 1)[1])]
    assert states[-1] == "Completed" and "Suspended" in states
    assert re.search(r"run count:\s+2", out)


def test_resume_paused_run(capsys: pytest.CaptureFixture[str], flows: Path) -> None:
    """A paused run blocked elsewhere (here: another thread) continues with the input."""
    spec = importlib.util.spec_from_file_location("cli_paused_flows", flows)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    paused = threading.Event()
    seen: list[UUID] = []

    def on_state(run: Any, state: State[Any]) -> None:
        if isinstance(run, FlowRun) and state.is_paused():
            seen.append(run.id)
            paused.set()

    unsubscribe = default_backend().subscribe(None, on_state)
    final: list[State[Any]] = []
    worker = threading.Thread(target=lambda: final.append(module.pauses(return_state=True)))
    worker.start()
    try:
        assert paused.wait(10)
        code, out, err = cli(capsys, "runs", "resume", str(seen[0]), "--input", '"approval"')
        assert (code, err) == (0, "")
        # The resumed flow may finish before the CLI reads its state back.
        assert re.fullmatch(r"Resumed flow run '[\w-]+': it is (Running|Completed)\(\)\n", out)
    finally:
        unsubscribe()
        worker.join(10)
    assert final[0].result() == "got approval"


def test_resume_crashed_run_reruns_it(
    capsys: pytest.CaptureFixture[str], flows: Path, store: list[str], tmp_path: Path
) -> None:
    """A Crashed run is run again from its recorded entrypoint and parameters."""
    crashed = S.Crashed(message="The process was killed.")
    run = FlowRun(
        name="lost-run",
        flow_name="greet",
        entrypoint=f"{flows.resolve()}:greet",
        parameters={"name": "again", "count": 2},
        state=crashed,
        version=1,
    )
    backend, owned = (default_backend(), False) if not store else open_backend(store[1])
    backend.create_run("flow", run)
    backend.commit()
    if owned:
        backend.close()

    code, out, err = cli(capsys, *store, "runs", "resume", str(run.id))
    assert code == 0, err
    assert out.startswith("Flow run 'lost-run' finished in state Completed()\n")
    assert "result: 'again|2|None'" in out

    code, _, err = cli(capsys, *store, "runs", "resume", str(run.id), "--input", "1")
    assert code == 1  # Completed now: not resumable


def test_cancel_a_suspended_run(
    capsys: pytest.CaptureFixture[str], flows: Path, store: list[str]
) -> None:
    """A run nothing executes is Cancelled at once; a final run cannot be cancelled."""
    _, out, _ = cli(capsys, *store, "run", f"{flows}:waits_for_number")
    run_id = run_id_of(out)
    code, out, err = cli(capsys, *store, "runs", "cancel", run_id)
    assert (code, err) == (0, "")
    assert re.fullmatch(
        r"Cancelled flow run '[\w-]+': it is Cancelled\('The flow run was cancelled.'\)\n", out
    )

    code, out, err = cli(capsys, *store, "runs", "cancel", run_id)
    assert (code, out) == (1, "")
    assert err == (
        f"stageflow: flow run {run_id} already finished in state "
        "Cancelled('The flow run was cancelled.'); nothing to cancel\n"
    )


# -- stageflow limits ----------------------------------------------------------------


def test_limits_set_ls_rm(capsys: pytest.CaptureFixture[str], store: list[str]) -> None:
    assert cli(capsys, *store, "limits", "ls") == (0, "No concurrency limits.\n", "")
    assert cli(capsys, *store, "limits", "set", "db", "3") == (
        0,
        "Tag 'db': at most 3 task runs at once.\n",
        "",
    )
    cli(capsys, *store, "limits", "set", "api", "0")
    cli(capsys, *store, "limits", "set", "db", "5")
    code, out, _ = cli(capsys, *store, "limits", "ls")
    assert code == 0
    assert out.splitlines() == ["TAG  LIMIT  ACTIVE", "api  0      0", "db   5      0"]
    assert cli(capsys, *store, "limits", "rm", "api") == (
        0,
        "Removed the concurrency limit of tag 'api'.\n",
        "",
    )
    assert cli(capsys, *store, "limits", "rm", "api") == (
        1,
        "",
        "stageflow: no concurrency limit for tag 'api'\n",
    )
    assert table_rows(cli(capsys, *store, "limits", "ls")[1]) == [["db", "5", "0"]]


# -- stageflow serve / schedules ls -----------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], r"one of the arguments --interval --cron is required"),
        (["--interval", "0"], r"argument --interval: expected more than 0 seconds, got 0"),
        (["--cron", "daily"], r"flows.py:greet: cron='daily' is not a cron expression"),
        (["--cron", "0 3 * * *", "--timezone", "Mars/Base"], r"timezone='Mars/Base'"),
        (["--interval", "5", "-p", "tabel=1"], r"unexpected keyword argument 'tabel'"),
    ],
)
def test_serve_refuses_bad_options(
    capsys: pytest.CaptureFixture[str], flows: Path, argv: list[str], message: str
) -> None:
    """Bad ``stageflow serve`` options are usage errors (exit 2) that say what is wrong,
    before anything is served."""
    code, _, err = cli(capsys, "serve", f"{flows}:greet", "-p", "name=x", *argv)
    assert code == 2
    assert re.search(message, err), err


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("{flows}", r"expected FILE\.py:TASK\[,TASK\.\.\.\], got"),
        ("{flows}:double,", r"expected FILE\.py:TASK\[,TASK\.\.\.\], got"),
        (
            "{flows}:double,nothing",
            r"has no function 'nothing'; the tasks in it: make_point, double, odd_fails$",
        ),
        ("{flows}:double,greet", r"'greet' in .* is not a task: decorate it with @task"),
        ("missing.py:double", r"no such file: missing\.py"),
    ],
)
def test_worker_refuses_bad_targets(
    capsys: pytest.CaptureFixture[str], flows: Path, target: str, message: str
) -> None:
    """A ``stageflow worker`` target that names no tasks is a usage error (exit 2) that
    says what is wrong, before anything is served."""
    code, _, err = cli(capsys, "worker", target.format(flows=flows), "--limit", "2")
    assert code == 2
    assert re.search(message, err), err


@needs_sqlite
def test_schedules_ls(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """``schedules ls`` shows each schedule's trigger, status (a failed one with why),
    last and next slot, and last run; a schedule whose process is gone is stopped."""
    from datetime import datetime, timezone

    from runtime.store._records import ProcessLease, ScheduleRecord, ScheduleSlot

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    assert cli(capsys, "--store", url, "schedules", "ls")[1] == "No schedules.\n"
    now = datetime.now(timezone.utc)
    store, _ = open_backend(url)
    try:
        for name, status, message in [
            ("hourly", "serving", None),
            ("nightly", "failed", "Stopped: gave up after 4 crashes"),
            ("orphan", "serving", None),
        ]:
            cron = "0 3 * * *" if name == "nightly" else None
            store.register_schedule(
                ScheduleRecord(
                    name,
                    "etl",
                    None,
                    None if cron else 3600.0,
                    cron,
                    None,
                    now,
                    status=status,
                    message=message,
                )  # fmt: skip
            )
        store.claim_schedule_slot(ScheduleSlot("hourly", now, "me", now, fired=False))
        later = datetime.fromtimestamp(now.timestamp() + 60, timezone.utc)
        store.renew_lease(ProcessLease("me", "host", 1, now, now, later, serving=("hourly",)))
    finally:
        store.close()
    code, out, _ = cli(capsys, "--store", url, "schedules", "ls")
    assert code == 0
    rows = {row[0]: row for row in table_rows(out)}
    assert rows["hourly"][1:4] == ["etl", "every 3600 s", "serving"]
    assert rows["hourly"][4].endswith("(skipped)")
    assert rows["nightly"][2:4] == ["cron '0 3 * * *' (UTC)", "failed"]
    assert rows["nightly"][-1] == "Stopped: gave up after 4 crashes"
    assert rows["orphan"][3] == "stopped"  # no live process serves it


# -- stores chosen by option or environment ------------------------------------------


@needs_sqlite
def test_store_from_environment_and_after_the_command(
    capsys: pytest.CaptureFixture[str], flows: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$STAGEFLOW_STORE picks the store; --store also works after the command and wins."""
    url = f"sqlite:///{tmp_path / 'env.db'}"
    monkeypatch.setenv("STAGEFLOW_STORE", url)
    _, out, _ = cli(capsys, "run", f"{flows}:greet", "-p", "name=env")
    run_id = run_id_of(out)
    assert [row[0] for row in table_rows(cli(capsys, "runs", "ls")[1])] == [run_id]
    assert [row[0] for row in table_rows(cli(capsys, "runs", "ls", "--store", url)[1])] == [run_id]
    assert (
        cli(capsys, "runs", "ls", "--store", f"sqlite:///{tmp_path / 'other.db'}")[1]
        == "No flow runs found.\n"
    )


# -- real processes ------------------------------------------------------------------


def stageflow(
    *argv: str, module: str = "runtime.api._cli", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, "--log-level", "ERROR", *argv],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


@pytest.fixture
def env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["STAGEFLOW_HOME"] = str(home)
    env.pop("STAGEFLOW_STORE", None)
    return env


def test_process_exit_codes(flows: Path, env: dict[str, str]) -> None:
    failed = stageflow("run", f"{flows}:boom", env=env)
    assert failed.returncode == 1
    assert "finished in state Failed(" in failed.stdout
    bad = stageflow("run", f"{flows}:nope", env=env)
    assert (bad.returncode, bad.stdout) == (2, "")
    assert bad.stderr.startswith(f"stageflow: {flows} has no function 'nope'; the flows in it: ")


def test_run_logs_show_once_on_stderr(flows: Path, tmp_path: Path, env: dict[str, str]) -> None:
    """Run logs go to stderr in Prefect's console format, stdout keeps only the report;
    a flow file that configures logging gets each line once, in its own format."""

    def run(path: Path) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "runtime", "run", f"{path}:greet", "-p", "name=x"]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)

    plain = run(flows)
    assert plain.returncode == 0, plain.stderr
    finished = (
        r"^\d\d:\d\d:\d\d\.\d{3} \| INFO    \| Flow run '[\w-]+' - Finished in state Completed\(\)$"
    )
    assert len(re.findall(finished, plain.stderr, re.M)) == 1, plain.stderr
    assert "INFO" not in plain.stdout
    configured = tmp_path / "configured.py"
    setup = "import logging\nlogging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s')\n"
    configured.write_text(setup + flows.read_text())
    own = run(configured)
    assert own.returncode == 0, own.stderr
    assert own.stderr.splitlines().count("INFO Finished in state Completed()") == 1, own.stderr
    assert " | INFO" not in own.stderr


def test_python_dash_m_runtime(env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "runtime", "--version"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 0
    assert done.stdout.startswith("stageflow ")


@needs_sqlite
def test_runs_outlive_the_process(flows: Path, tmp_path: Path, env: dict[str, str]) -> None:
    """A run made by one process is listed, and resumed, by the next; the task result the
    first process persisted (an instance of a class the flow file defines) is reused."""
    store = ["--store", f"sqlite:///{tmp_path / 'runs.db'}"]
    suspended = stageflow(*store, "run", f"{flows}:point_then_number", env=env)
    assert suspended.returncode == 3, suspended.stderr
    run_id = run_id_of(suspended.stdout)
    listed = stageflow(*store, "runs", "ls", env=env)
    assert [(row[0], row[3]) for row in table_rows(listed.stdout)] == [(run_id, "Suspended")]
    resumed = stageflow(*store, "runs", "resume", run_id, "--input", "5", env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "result: 35" in resumed.stdout


@needs_sqlite
def test_a_killed_run_shows_crashed_and_resumes(
    capsys: pytest.CaptureFixture[str], flows: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    """A run whose process was killed is listed as Crashed, and resume runs it again."""
    store = ["--store", f"sqlite:///{tmp_path / 'runs.db'}"]
    marker = tmp_path / "marker"
    killed = stageflow(*store, "run", f"{flows}:dies_once", "-p", f"marker={marker}", env=env)
    assert killed.returncode == -9
    code, out, _ = cli(capsys, *store, "runs", "ls")
    ((run_id, flow_name, _, state, *_),) = table_rows(out)
    assert (flow_name, state) == ("dies-once", "Crashed")
    code, out, _ = cli(capsys, *store, "runs", "resume", run_id)
    assert code == 0
    assert "finished in state Completed()" in out
    assert "result: 'survived'" in out


def test_a_closed_stdout_stops_the_command_quietly(env: dict[str, str]) -> None:
    """`stageflow runs ls | head -1`: the reader went away; the command stops as Unix
    tools do (exit 141, 128 + SIGPIPE) without a traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write to stdout now fails with EPIPE
    try:
        done = subprocess.run(
            [sys.executable, "-m", "runtime", "runs", "ls"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )
    finally:
        os.close(write_end)
    assert done.returncode == 141, done.stderr
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr
