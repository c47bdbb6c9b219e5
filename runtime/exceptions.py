"""The engine's exceptions (public names; see each class for when it is raised)."""

from .core._exceptions import *  # noqa: F403
from .core._exceptions import __all__ as __all__  # noqa: F401
