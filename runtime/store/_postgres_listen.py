"""A thread that hears a PostgreSQL store's changes from other processes (LISTEN/NOTIFY).

Writers send ``NOTIFY`` in the transaction that makes a change, so a notification
arrives only once the change is committed, and never for a change rolled back. The
listener holds one connection of its own, ``LISTEN``\\ s on the store's channel and hands
each notification's payload to the store as it arrives: a resume, a cancel or a released
slot wakes whoever waits for it in this process at once, with no polling.

When the connection is lost (a server restart, a network cut), notifications sent in the
meantime are lost too: the listener says it is not listening (the store then polls, see
``PostgresStore.sync_external``), reconnects with a growing delay, and once it listens
again asks the store to catch up on what changed meanwhile.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg

__all__ = ["Listener"]

_logger = logging.getLogger("stageflow")

IDLE_CHECK = 0.5
"""Seconds between the thread's checks that its store is still open, when all is quiet."""


class Listener:
    """The listening thread of one store; see the module docstring.

    Args:
        conninfo: the server's connection string.
        channel: the channel to listen on (an SQL identifier).
        where: the server, for log messages (``host:port/database``).
        on_notify: called on the thread with each notification's payload.
        on_listening: called on the thread each time it (re)starts listening, before any
            notification: the store catches up on what it may have missed.
    """

    def __init__(
        self,
        conninfo: str,
        channel: str,
        where: str,
        on_notify: Callable[[str], None],
        on_listening: Callable[[], None],
    ) -> None:
        self._conninfo = conninfo
        self._channel = channel
        self._where = where
        self._on_notify = on_notify
        self._on_listening = on_listening
        self._stopped = threading.Event()
        self._listening = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"stageflow-listen {channel}", daemon=True
        )
        self._thread.start()

    @property
    def listening(self) -> bool:
        """Whether notifications are being received now (else the store must poll)."""
        return self._listening.is_set()

    def wait_listening(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until the thread listens; return whether it does."""
        return self._listening.wait(timeout)

    def stop(self, timeout: float = 0.0) -> None:
        """Stop the thread: it ends within :data:`IDLE_CHECK` seconds, handling nothing
        more; wait up to ``timeout`` seconds for that."""
        self._stopped.set()
        self._listening.clear()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        delay = 0.05
        while not self._stopped.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True) as conn:
                    conn.execute(f"LISTEN {self._channel}")
                    self._listening.set()
                    delay = 0.05
                    self._call(self._on_listening)
                    while not self._stopped.is_set():
                        for notify in conn.notifies(timeout=IDLE_CHECK):
                            if self._stopped.is_set():
                                break
                            self._call(self._on_notify, notify.payload)
            except psycopg.Error as exc:
                if self._stopped.is_set():
                    break
                was_listening = self._listening.is_set()
                self._listening.clear()
                if was_listening:
                    _logger.warning(
                        "Lost the notification connection to the PostgreSQL server at %s "
                        "(%s); polling the store until it is back.",
                        self._where,
                        " ".join(str(exc).split()),
                    )
                self._stopped.wait(delay)
                delay = min(delay * 2, 2.0)
        self._listening.clear()

    @staticmethod
    def _call(handler: Callable[..., None], *args: str) -> None:
        try:
            handler(*args)
        except Exception:  # the store could not be read, or a listener failed: keep going
            _logger.exception("Could not report a change of the store to this process.")
