"""Choosing a store backend from a URL, and the process's default store."""

from __future__ import annotations

import os
import threading
from typing import Any
from urllib.parse import parse_qs, parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from ..core._exceptions import ConfigurationError
from ..core._settings import stageflow_home
from ._backend import StoreBackend
from ._memory import DEFAULT_MAX_RUNS, MemoryStore
from ._sqlite import SqliteStore

__all__ = ["STORE_ENV", "default_backend", "open_backend", "stageflow_home"]

STORE_ENV = "STAGEFLOW_STORE"
"""Environment variable: the URL of the store to use when none is given."""

_FLAGS = {"1": True, "true": True, "yes": True, "on": True}
_FLAGS.update(dict.fromkeys(("0", "false", "no", "off"), False))

_default: StoreBackend | None = None
_default_lock = threading.Lock()


def open_backend(url: str) -> tuple[StoreBackend, bool]:
    """Return the backend for ``url`` and whether the caller owns (must close) it.

    ``memory://`` gives a new private in-memory store (``memory://?max_runs=N``: keep at most
    N finished top-level flow runs; 0 keeps all); ``sqlite:///relative/path.db`` and
    ``sqlite:////absolute/path.db`` (optionally ``?fsync=1``) open an SQLite file, which
    other processes may use at the same time; ``postgresql://user:password@host:port/dbname``
    (or ``postgres://``) opens a PostgreSQL database that processes on any machine share
    (``pip install 'stageflow[postgres]'``), with the options ``schema=NAME``, ``fsync=1``,
    ``reconnect_timeout=SECONDS`` and ``pool_size=N`` besides libpq's own (``sslmode``, ...).

    Raises:
        ConfigurationError: the URL names no store this build supports, or its options are
            invalid, or the store belongs to a newer stageflow or another program, or the
            PostgreSQL driver is not installed.
        StoreError: the SQLite file cannot be created or read; the PostgreSQL server cannot
            be reached.
    """
    if url.startswith("memory://"):
        return _open_memory(url), True
    if url.startswith("sqlite:"):
        return _open_sqlite(url), True
    if url.startswith(("postgresql://", "postgres://")):
        return _open_postgres(url), True
    raise ConfigurationError(
        f"Unsupported store URL {url!r}: use 'memory://', 'sqlite:///path/to/file.db' or "
        "'postgresql://user:password@host:port/dbname'."
    )


def _open_memory(url: str) -> MemoryStore:
    """Open ``memory://``, optionally with ``?max_runs=N``."""
    _, _, query = url.partition("?")
    max_runs = DEFAULT_MAX_RUNS
    for key, values in parse_qs(query, keep_blank_values=True).items():
        value = values[-1].strip()
        if key != "max_runs" or not value.isdigit():
            raise ConfigurationError(
                f"Unsupported option {key}={values[-1]!r} in the store URL {url!r}: the only "
                "option is max_runs=N, a whole number (0 keeps every run)."
            )
        max_runs = int(value)
    return MemoryStore(url, max_runs=max_runs)


def _open_sqlite(url: str) -> SqliteStore:
    """Open ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db`` (the path is
    what follows ``sqlite:///``, as in SQLAlchemy), optionally with ``?fsync=1``."""
    if not url.startswith("sqlite:///"):
        raise ConfigurationError(
            f"Invalid SQLite store URL {url!r}: write 'sqlite:///relative/path.db' or "
            "'sqlite:////absolute/path.db'."
        )
    path, _, query = url[len("sqlite:///") :].partition("?")
    if not path:
        raise ConfigurationError(
            f"The SQLite store URL {url!r} names no file: add its path after 'sqlite:///'."
        )
    fsync = None
    for key, values in parse_qs(query, keep_blank_values=True).items():
        value = values[-1].strip().lower()
        if key != "fsync" or value not in _FLAGS:
            raise ConfigurationError(
                f"Unsupported option {key}={values[-1]!r} in the store URL {url!r}: the only "
                "option is fsync, set to 1, true, yes or on, or to 0, false, no or off (any case)."
            )
        fsync = _FLAGS[value]
    return SqliteStore(unquote(path), fsync=fsync)


_POSTGRES_OPTIONS = ("schema", "fsync", "reconnect_timeout", "pool_size")


def _open_postgres(url: str) -> StoreBackend:
    """Open ``postgresql://...``: stageflow's options are taken out of the query, the rest
    goes to libpq as it is; the URL kept for messages hides the password."""
    parts = urlsplit(url)
    ours: dict[str, Any] = {}
    theirs = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in _POSTGRES_OPTIONS:
            theirs.append((key, value))
            continue
        if key == "schema":
            ours["schema"] = value
        elif key == "fsync":
            if value.strip().lower() not in _FLAGS:
                raise ConfigurationError(
                    f"Unsupported value fsync={value!r} in the store URL {_hide_password(url)!r}: "
                    "set it to 1, true, yes or on, or to 0, false, no or off (any case)."
                )
            ours["fsync"] = _FLAGS[value.strip().lower()]
        elif key == "pool_size":
            if not value.strip().isdigit() or int(value) < 1:
                raise ConfigurationError(
                    f"Unsupported value pool_size={value!r} in the store URL "
                    f"{_hide_password(url)!r}: give a whole number of connections, 1 or more."
                )
            ours["pool_size"] = int(value)
        else:
            try:
                ours["reconnect_timeout"] = float(value)
            except ValueError:
                raise ConfigurationError(
                    f"Unsupported value reconnect_timeout={value!r} in the store URL "
                    f"{_hide_password(url)!r}: give a number of seconds."
                ) from None
    conninfo = urlunsplit(parts._replace(query=urlencode(theirs)))
    from ._postgres import PostgresStore, psycopg  # imports psycopg: only when asked for

    try:  # what libpq cannot read is the URL's fault, not the server's
        psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError as exc:
        reason = str(exc).strip()
        if parts.password:  # libpq may quote the token it could not read
            reason = reason.replace(parts.password, "***")
        raise ConfigurationError(
            f"Invalid PostgreSQL store URL {_hide_password(url)!r} ({reason}): write "
            "'postgresql://user:password@host:port/dbname', with %-escapes for special "
            "characters in the user or password, and options libpq knows (sslmode, "
            "connect_timeout, ...) or stageflow's (schema, fsync, reconnect_timeout, pool_size)."
        ) from None
    for key, value in theirs:
        if key in _LIBPQ_INTEGERS and not value.strip().lstrip("-").isdigit():
            # libpq would refuse it only when connecting, which the pool retries for its
            # whole reconnect_timeout before saying the connection was lost.
            raise ConfigurationError(
                f"Unsupported value {key}={value!r} in the store URL "
                f"{_hide_password(url)!r}: libpq takes a whole number there."
            )
    return PostgresStore(conninfo, url=_hide_password(url), **ours)


_LIBPQ_INTEGERS = frozenset(
    {
        "connect_timeout",
        "keepalives",
        "keepalives_idle",
        "keepalives_interval",
        "keepalives_count",
        "tcp_user_timeout",
    }
)
"""libpq connection options that take a whole number (seconds or a count)."""


def _hide_password(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def default_backend() -> StoreBackend:
    """Return the store used when none is configured, shared by the whole process:
    ``$STAGEFLOW_STORE`` if set, else the SQLite file ``stageflow.db`` in
    :func:`stageflow_home`. A closed default store is replaced by a new one.

    Raises:
        ConfigurationError: ``$STAGEFLOW_STORE`` is not a valid store URL.
        StoreError: the store file cannot be created or read.
    """
    global _default
    with _default_lock:
        if _default is None or _default.closed:
            url = os.environ.get(STORE_ENV)
            if url:
                _default = open_backend(url)[0]
            else:
                _default = SqliteStore(stageflow_home() / "stageflow.db")
        return _default
