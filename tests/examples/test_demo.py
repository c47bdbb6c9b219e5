"""examples/demo.py as the README's quick start runs it: from the repository root, with
the virtualenv *not* on PATH."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_demo_runs_and_its_closing_hint_works(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "STAGEFLOW_HOME": str(tmp_path)}
    demo = subprocess.run(
        [sys.executable, "examples/demo.py"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert demo.returncode == 0, demo.stderr
    assert "result: {'total': 36.0, 'largest': 12.0}" in demo.stdout
    assert "Flow run '" in demo.stderr  # its run logs, with no logging set up
    hint = demo.stdout.splitlines()[-1]
    prefix = "Inspect it again with: "
    assert hint.startswith(prefix), hint
    shown = subprocess.run(
        shlex.split(hint[len(prefix) :]),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("Flow run '")
