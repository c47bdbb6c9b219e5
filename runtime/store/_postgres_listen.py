"""How a PostgreSQL store hears other processes' changes (LISTEN/NOTIFY), and reports
them to this process's subscribers.

Writers send ``NOTIFY`` in the transaction that makes a change, so a notification
arrives only once the change is committed, and never for a change rolled back. The
listener holds one connection of its own, ``LISTEN``\\ s on the store's channel and hands
each notification's payload to the store as it arrives: a resume, a cancel or a released
slot wakes whoever waits for it in this process at once, with no polling.

When the connection is lost (a server restart, a network cut), notifications sent in the
meantime are lost too: the listener says it is not listening (the store then polls, see
``PostgresStore.sync_external``), reconnects with a growing delay, and once it listens
again asks the store to catch up on what changed meanwhile.

:class:`Changes` turns payloads into notifications: a run's change (``"flow <id hex>
<version> <writer>"``) is reported to the run's subscribers with the run as it is then,
unless this process knows that version already (it wrote it, or reported it); released
slots (``"slots <writer>"``) wake the task runs waiting for one; a task run queued or put
back (``"queue <writer>"``) wakes the task workers; a queued task run's end (``"done <id
hex> <writer>"``) is reported to its subscribers (a submitter waiting on its future). Catching up (or polling,
while not listening) compares the versions of the runs someone here waits on with the
ones it knows.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any
from uuid import UUID

import psycopg

from ..core._exceptions import ObjectNotFound

__all__ = ["Changes", "Listener"]

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


class Changes:
    """Reports other processes' changes to a store's subscribers; see the module docstring.

    Args:
        store: the ``PostgresStore`` (its subscribers, ``_read`` and ``_versions``).
        conninfo: the server's connection string.
        channel: the store's notification channel.
        writer: the tag of the store's own changes.
        keep: how many runs' known versions to keep (the oldest half goes past it).
    """

    def __init__(self, store: Any, conninfo: str, channel: str, writer: int, keep: int) -> None:
        self._store = store
        self._writer = str(writer)
        self._keep = keep
        self._lock = threading.Lock()
        self._seen: dict[UUID, int] = {}  # run id -> newest version known here
        self._listener = Listener(conninfo, channel, store.where, self.on_notify, self.catch_up)

    @property
    def listening(self) -> bool:
        """Whether changes are heard as they happen (else :meth:`catch_up` polls)."""
        return self._listener.listening

    def wait_listening(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until changes are heard; return whether they are."""
        return self._listener.wait_listening(timeout)

    def stop(self) -> None:
        """Stop listening."""
        self._listener.stop()
        self._seen.clear()

    def saw(self, run_id: UUID, version: int) -> None:
        """Note that this process knows the run at ``version``: not news for its
        subscribers."""
        seen = self._seen
        seen[run_id] = version
        if len(seen) > self._keep:
            with self._lock:
                for old in list(seen)[: len(seen) // 2]:
                    seen.pop(old, None)

    def on_notify(self, payload: str) -> None:
        """Handle a notification's payload (on the listener's thread)."""
        store = self._store
        parts = payload.split()
        if parts[-1] == self._writer or store.closed:
            return  # this store's own change: its subscribers heard it already
        if parts[0] == "slots":
            store.notify_slots_released()
            return
        if parts[0] == "queue":
            store.notify_task_queued()
            return
        if parts[0] == "done":  # a queued task run is over: wake whoever waits on it here
            run_id = UUID(parts[1])
            if store.has_listeners(run_id):
                self._report("task", run_id)
            return
        kind, run_id, version = parts[0], UUID(parts[1]), int(parts[2])
        if store.has_listeners(run_id) and self._seen.get(run_id, 0) < version:
            self._report(kind, run_id)

    def _report(self, kind: str, run_id: UUID) -> None:
        try:
            run = self._store._read(kind, run_id)
        except ObjectNotFound:
            return
        if run.state is not None and self._seen.get(run_id, 0) < run.version:
            self._seen[run_id] = run.version
            self._store.notify(run, run.state)

    def catch_up(self) -> None:
        """Report the changes made elsewhere to the runs someone here waits on, since the
        versions this process knows (what notifications would have said)."""
        store = self._store
        with store._listeners_lock:
            ids = [key for key in store._listeners if isinstance(key, UUID)]
        if not ids or store.closed:
            return
        for kind, run_id, version in store._versions(ids):
            if self._seen.get(run_id, 0) < version:
                self._report(kind, run_id)
