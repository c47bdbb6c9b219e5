"""Run logs on the console: shown with no setup, in Prefect's format, once; the program's
own logging configuration takes over; settings; the root logger untouched.

Under pytest the root logger has pytest's handlers, so the console handler stays quiet
here: what a user sees is checked in real processes.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from runtime.core._exceptions import ConfigurationError
from runtime.engine._console import ConsoleHandler, RunLogFormatter, logging_level
from runtime.engine._logging import flow_run_logger

LINE = r"\d\d:\d\d:\d\d\.\d\d\d \| {level:<7} \| {label} - {message}"


def _line(level: str, label: str, message: str) -> str:
    return "^" + LINE.format(level=level, label=label, message=message)


def _python(tmp_path: Path, code: str, **env: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    return subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
        env={"PATH": os.environ.get("PATH", ""), "STAGEFLOW_HOME": str(tmp_path / "home"), **env},
    )


HELLO = """
{setup}
from runtime import flow, get_run_logger, task

@task
def step() -> int:
    get_run_logger().warning("careful")
    return 1

@flow(name="hello", log_prints=True)
def hello() -> int:
    print("printed by the flow")
    get_run_logger().info("from the run logger")
    return step()

hello()
import logging
print("root handlers after:", logging.getLogger().handlers)
"""


def test_a_plain_script_shows_run_logs_and_prints(tmp_path: Path) -> None:
    done = _python(tmp_path, HELLO.format(setup=""))
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    run = "Flow run '(?P<name>[a-z]+-[a-z]+)'"
    name = re.match(_line("INFO", run, "Beginning"), lines[0])
    assert name is not None, lines[0]
    run = f"Flow run '{name['name']}'"
    expected = [
        ("INFO", run, f"Beginning flow run '{name['name']}' for flow 'hello'"),
        ("INFO", run, "printed by the flow"),
        ("INFO", run, "from the run logger"),
        ("INFO", "Task run 'step-0'", "Created task run 'step-0' for task 'step'"),
        ("WARNING", "Task run 'step-0'", "careful"),
        ("INFO", "Task run 'step-0'", r"Finished in state Completed\(\)"),
        ("INFO", run, r"Finished in state Completed\(\)"),
    ]
    assert len(lines) == len(expected), done.stderr
    for line, (level, label, message) in zip(lines, expected):
        assert re.fullmatch(_line(level, label, message), line), line
    assert done.stdout == "root handlers after: []\n"  # the root logger is left alone


@pytest.mark.parametrize(
    "setup",
    [
        "import logging; logging.basicConfig(level=logging.INFO, format='%(name)s: %(message)s')",
        textwrap.dedent(
            """
            import logging.config
            logging.config.dictConfig({
                "version": 1,
                "formatters": {"f": {"format": "%(name)s: %(message)s"}},
                "handlers": {"h": {"class": "logging.StreamHandler", "formatter": "f"}},
                "root": {"handlers": ["h"], "level": "INFO"},
            })
            """
        ),
        textwrap.dedent(
            """
            import logging, sys
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
            logging.getLogger("stageflow").addHandler(handler)
            """
        ),
    ],
    ids=["basicConfig", "dictConfig", "handler-on-stageflow"],
)
def test_the_programs_own_configuration_takes_over(tmp_path: Path, setup: str) -> None:
    done = _python(tmp_path, HELLO.format(setup=setup))
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines[0].startswith("stageflow.flow_runs: Beginning flow run '")
    assert lines[1:] == [
        "stageflow.flow_runs: printed by the flow",
        "stageflow.flow_runs: from the run logger",
        "stageflow.task_runs: Created task run 'step-0' for task 'step'",
        "stageflow.task_runs: careful",
        "stageflow.task_runs: Finished in state Completed()",
        "stageflow.flow_runs: Finished in state Completed()",
    ]


def test_settings_set_the_level_and_turn_the_console_off(tmp_path: Path) -> None:
    quiet = _python(tmp_path, HELLO.format(setup=""), STAGEFLOW_LOGGING_LEVEL="warning")
    assert [line.split(" | ", 1)[1] for line in quiet.stderr.splitlines()] == [
        "WARNING | Task run 'step-0' - careful"
    ]
    assert quiet.stdout.startswith("printed by the flow\n")  # below the level: printed
    off = _python(tmp_path, HELLO.format(setup=""), STAGEFLOW_LOGGING_TO_CONSOLE="false")
    assert off.stderr == "careful\n"  # no handler at all: Python's last resort, WARNING+
    bad = _python(tmp_path, HELLO.format(setup=""), STAGEFLOW_LOGGING_LEVEL="loud")
    assert bad.returncode == 1
    assert (
        "STAGEFLOW_LOGGING_LEVEL='loud' is not a logging level: use DEBUG, INFO, WARNING, "
        "ERROR, CRITICAL or a number." in bad.stderr
    )


def test_a_cancelled_run_labels_each_line(tmp_path: Path) -> None:
    done = _python(
        tmp_path,
        """
        import anyio
        from runtime import cancel_flow_run, flow, get_run_context, task

        @task
        async def hang(i: int) -> None:
            await anyio.Event().wait()

        @flow(flow_run_name="doomed")
        async def doomed() -> None:
            for i in range(3):
                hang.submit(i)
            await anyio.wait_all_tasks_blocked()
            await cancel_flow_run(get_run_context().flow_run.id)
            await anyio.Event().wait()

        print(anyio.run(lambda: doomed(return_state=True)))
        """,
    )
    assert done.returncode == 0, done.stderr
    finished = [line for line in done.stderr.splitlines() if "Finished in state" in line]
    labels = sorted(line.split(" | ")[2].split(" - ")[0] for line in finished)
    assert labels == ["Flow run 'doomed'", *(f"Task run 'hang-{i}'" for i in range(3))]


# -- the pieces, in this process ---------------------------------------------------------


def test_the_formatter_labels_run_records_and_names_the_others() -> None:
    formatter = RunLogFormatter()
    run = flow_run_logger(type("Run", (), {"name": "brave-fox", "id": 1})())
    run_record = run.logger.makeRecord(
        "stageflow.flow_runs", logging.INFO, "f", 1, "hi", (), None, extra=run.extra
    )
    other = logging.LogRecord("stageflow.engine", logging.WARNING, "f", 1, "ho", (), None)
    assert re.match(_line("INFO", "Flow run 'brave-fox'", "hi"), formatter.format(run_record))
    assert re.match(_line("WARNING", "stageflow.engine", "ho"), formatter.format(other))


def test_the_handler_stays_quiet_where_another_handler_shows_the_record(
    capsys: pytest.CaptureFixture[str],
) -> None:
    handler = ConsoleHandler()
    alone = logging.getLogger("stageflow.tests.alone")
    alone.propagate = False  # nothing above it: the record is the console handler's
    record = alone.makeRecord(alone.name, logging.INFO, "f", 1, "shown", (), None)
    handler.handle(record)
    assert capsys.readouterr().err.endswith("| INFO    | stageflow.tests.alone - shown\n")
    alone.addHandler(logging.NullHandler())
    handler.handle(record)
    assert capsys.readouterr().err == ""
    quiet = logging.getLogger("stageflow.tests.quiet")  # propagates to pytest's root handlers
    handler.handle(quiet.makeRecord(quiet.name, logging.INFO, "f", 1, "hidden", (), None))
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(("text", "level"), [("", 20), ("debug", 10), (" ERROR ", 40), ("5", 5)])
def test_logging_level_setting(monkeypatch: pytest.MonkeyPatch, text: str, level: int) -> None:
    monkeypatch.setenv("STAGEFLOW_LOGGING_LEVEL", text)
    assert logging_level() == level


def test_a_bad_logging_level_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STAGEFLOW_LOGGING_LEVEL", "chatty")
    with pytest.raises(ConfigurationError, match=r"^STAGEFLOW_LOGGING_LEVEL='chatty' is not a "):
        logging_level()
