"""The engine's exceptions (public names; see each class for when it is raised)."""

from ._exceptions import *  # noqa: F403
from ._exceptions import __all__ as __all__  # noqa: F401
