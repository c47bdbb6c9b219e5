"""Run logs on the console until the program configures logging itself.

Like Prefect, stageflow shows its run logs with no setup: importing it puts one handler,
:class:`ConsoleHandler`, on the ``stageflow`` logger (never on the root logger) and sets
that logger's level to ``$STAGEFLOW_LOGGING_LEVEL`` (INFO by default) unless the program
set one already. The handler writes to stderr in Prefect's console format::

    12:03:44.120 | INFO    | Flow run 'tidy-otter' - Finished in state Completed()

As soon as a record would reach any other handler (``logging.basicConfig``,
``dictConfig``, a handler on ``stageflow`` or on the root logger, pytest's capture), the
console handler stays quiet for it, so the program's own configuration takes over and
nothing is printed twice. ``STAGEFLOW_LOGGING_TO_CONSOLE=false`` leaves the handler out.
"""

from __future__ import annotations

import logging
import os
import sys

from ..core._exceptions import ConfigurationError

__all__ = [
    "CONSOLE_DATE_FORMAT",
    "CONSOLE_FORMAT",
    "LOGGING_LEVEL_ENV",
    "LOGGING_TO_CONSOLE_ENV",
    "ConsoleHandler",
    "RunLogFormatter",
    "install_console_handler",
    "logging_level",
]

LOGGING_LEVEL_ENV = "STAGEFLOW_LOGGING_LEVEL"
"""Environment variable: the level of the ``stageflow`` logger (a name or a number)."""

LOGGING_TO_CONSOLE_ENV = "STAGEFLOW_LOGGING_TO_CONSOLE"
"""Environment variable: ``false`` (or 0, no, off) leaves out the console handler."""

CONSOLE_FORMAT = "%(asctime)s.%(msecs)03d | %(levelname)-7s | %(run_label)s - %(message)s"
"""Prefect's console format; ``run_label`` is ``Flow run 'name'`` or ``Task run 'name'``
for run records and the logger's name for the others."""

CONSOLE_DATE_FORMAT = "%H:%M:%S"

_FALSE = ("0", "false", "no", "off")


class RunLogFormatter(logging.Formatter):
    """Formats run records with their run's label, and other records with their logger's
    name in its place (as Prefect's ``PrefectFormatter`` does).

    Args:
        fmt: a %-style format that may use ``%(run_label)s``.
        datefmt: the format of ``%(asctime)s``.
    """

    def __init__(self, fmt: str = CONSOLE_FORMAT, datefmt: str = CONSOLE_DATE_FORMAT) -> None:
        super().__init__(fmt, datefmt)
        self._other = logging.PercentStyle(fmt.replace("%(run_label)s", "%(name)s"))

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        if hasattr(record, "run_label"):
            return super().formatMessage(record)
        return self._other.format(record)


class ConsoleHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes ``stageflow`` records to stderr while no other handler would show them.

    It writes to ``sys.stderr`` as it is at each record (not as it was at import), so
    tools that redirect stderr (pytest, a live progress display) see the lines.
    """

    def __init__(self, level: int = logging.NOTSET) -> None:
        logging.Handler.__init__(self, level)
        self.setFormatter(RunLogFormatter())

    @property
    def stream(self) -> object:
        """The current ``sys.stderr``."""
        return sys.stderr

    def handle(self, record: logging.LogRecord) -> bool:
        """Emit ``record`` unless the program's own handlers will."""
        if _handled_elsewhere(record, self):
            return False
        return super().handle(record)


def _handled_elsewhere(record: logging.LogRecord, mine: logging.Handler) -> bool:
    """Whether a handler other than ``mine`` sits where ``record`` propagates."""
    logger: logging.Logger | None = logging.getLogger(record.name)
    while logger is not None:
        if any(handler is not mine for handler in logger.handlers):
            return True
        if not logger.propagate:
            return False
        logger = logger.parent
    return False


def logging_level() -> int:
    """Return ``$STAGEFLOW_LOGGING_LEVEL`` as a level number (INFO when unset).

    Raises:
        ConfigurationError: the variable names no logging level.
    """
    text = os.environ.get(LOGGING_LEVEL_ENV, "").strip() or "INFO"
    if text.isdigit():
        return int(text)
    level = logging.getLevelName(text.upper())
    if not isinstance(level, int):
        raise ConfigurationError(
            f"{LOGGING_LEVEL_ENV}={text!r} is not a logging level: use DEBUG, INFO, WARNING, "
            "ERROR, CRITICAL or a number."
        )
    return level


def install_console_handler() -> ConsoleHandler | None:
    """Set the ``stageflow`` logger's level (unless the program set one) and add the
    console handler to it (unless ``$STAGEFLOW_LOGGING_TO_CONSOLE`` is false, or it is
    there already); return the handler. The root logger is left as it is.

    Raises:
        ConfigurationError: ``$STAGEFLOW_LOGGING_LEVEL`` names no logging level.
    """
    logger = logging.getLogger("stageflow")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging_level())
    for handler in logger.handlers:
        if isinstance(handler, ConsoleHandler):
            return handler
    if os.environ.get(LOGGING_TO_CONSOLE_ENV, "").strip().lower() in _FALSE:
        return None
    handler = ConsoleHandler()
    logger.addHandler(handler)
    return handler
