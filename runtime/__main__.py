"""``python -m runtime``: the ``stageflow`` command line."""

from __future__ import annotations

import sys

from .api._cli import main

sys.exit(main())
