"""Flow files imported by path, under a name that is the same in every process.

``stageflow run FILE.py:flow``, ``stageflow serve``, ``stageflow worker`` and a run resumed
from its entrypoint import a user's file that is not on ``sys.path``. It is imported under
``stageflow_entrypoint_<digest of its resolved path>``, never ``__main__`` (its
``__main__`` block does not run): pickled results, queued calls and Dask task bodies refer
to what the file defines by module name, so any process on a machine that has the file
finds it again under the same name (:func:`flow_files` lists them for Dask workers).
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

__all__ = ["MODULE_PREFIX", "flow_files", "import_flow_file"]

MODULE_PREFIX = "stageflow_entrypoint_"


def import_flow_file(path: Path) -> ModuleType:
    """Import the Python file at ``path`` once per process (its ``__main__`` block does
    not run) and return the module, named ``MODULE_PREFIX`` + a digest of the resolved
    path.

    Raises:
        ImportError: the file is not a Python file.
        Exception: whatever importing the file raised.
    """
    path = path.resolve()
    name = f"{MODULE_PREFIX}{hashlib.sha256(str(path).encode()).hexdigest()[:16]}"
    module = sys.modules.get(name)
    if module is not None:
        return module
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    finally:
        sys.path.remove(str(path.parent))
    return module


def flow_files() -> list[str]:
    """The paths of the flow files this process imported with :func:`import_flow_file`."""
    return [
        module.__file__
        for name, module in list(sys.modules.items())
        if name.startswith(MODULE_PREFIX) and getattr(module, "__file__", None)
    ]
