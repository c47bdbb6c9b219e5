"""Settings read from the environment that every layer may need."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["HOME_ENV", "stageflow_home"]

HOME_ENV = "STAGEFLOW_HOME"
"""Environment variable: the directory of the default store and result storage."""


def stageflow_home() -> Path:
    """Return ``$STAGEFLOW_HOME``, or ``~/.stageflow`` when it is unset."""
    home = os.environ.get(HOME_ENV)
    return Path(home).expanduser() if home else Path.home() / ".stageflow"
