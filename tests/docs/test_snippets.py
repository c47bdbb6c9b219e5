"""Every Python block of the README and of docs/ runs as it is, in a fresh process with
its own ``$STAGEFLOW_HOME``.

A block's ``if __name__ == "__main__":`` part is left out (it waits for a person); the
README's pause example, which has one, is run whole by a test of its own that resumes the
run with the command the README gives.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runtime import Runtime, read_flow_runs

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
RUN_AS_MODULE = "import runpy, sys; runpy.run_path(sys.argv[1], run_name='snippet')"
PAUSE_TIMEOUT = 60.0
"""Seconds the README's pause example may take to pause (a loaded 2-core machine)."""


def _blocks() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        text = page.read_text()
        for match in BLOCK.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.append((f"{page.relative_to(ROOT)}:{line}", match.group(1)))
    return found


def _env(tmp_path: Path) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "STAGEFLOW_HOME": str(tmp_path)}


@pytest.mark.parametrize(("where", "code"), _blocks(), ids=[where for where, _ in _blocks()])
def test_block_runs(tmp_path: Path, where: str, code: str) -> None:
    snippet = tmp_path / "snippet.py"
    snippet.write_text(code)
    done = subprocess.run(
        [sys.executable, "-c", RUN_AS_MODULE, str(snippet)],
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"{where}:\n{done.stderr}"


def test_the_readme_pause_example_resumes_as_the_readme_says(tmp_path: Path) -> None:
    (code,) = [code for where, code in _blocks() if "pause_flow_run(" in code and "README" in where]
    snippet = tmp_path / "release.py"
    snippet.write_text(code)
    env = _env(tmp_path)
    process = subprocess.Popen(
        [sys.executable, str(snippet)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + PAUSE_TIMEOUT
        with Runtime(store=f"sqlite:///{tmp_path / 'stageflow.db'}"):
            while not (paused := read_flow_runs(flow_name="release", state="paused")):
                assert process.poll() is None and time.monotonic() < deadline, "never paused"
                time.sleep(0.05)  # bounded: the deadline above
        resume = [sys.executable, "-m", "runtime", "runs", "resume", str(paused[0].id)]
        resumed = subprocess.run(
            [*resume, "--input", '{"approved": true, "reviewer": "ada"}'],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert resumed.returncode == 0, resumed.stderr
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 0, err
    assert "Finished in state Completed()" in err.splitlines()[-1]
