"""examples/demo.py as the README's quick start runs it: from the repository root, with
the virtualenv *not* on PATH."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(argv: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` from the repository root with the virtualenv not on PATH."""
    env = {"PATH": "/usr/bin:/bin", "STAGEFLOW_HOME": str(home)}
    return subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_demo_runs_and_its_closing_hint_works(tmp_path: Path) -> None:
    demo = _run([sys.executable, "examples/demo.py"], tmp_path)
    assert demo.returncode == 0, demo.stderr
    assert "result: {'total': 36.0, 'largest': 12.0}" in demo.stdout
    assert "Flow run '" in demo.stderr  # its run logs, with no logging set up
    hint = demo.stdout.splitlines()[-1]
    prefix = "Inspect it again with: "
    assert hint.startswith(prefix), hint
    shown = _run(shlex.split(hint[len(prefix) :]), tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("Flow run '")
