"""A throwaway PostgreSQL server on 127.0.0.1, for the tests, CI and the benchmarks.

``start()`` runs ``initdb`` in a new temporary directory and starts the server there with
``pg_ctl`` on a free port, listening on 127.0.0.1 only (no Unix socket), with trust
authentication for the user ``stageflow``, and creates the database ``stageflow``. The
server binaries are found in Debian's versioned directory (``/usr/lib/postgresql/*/bin``),
through ``pg_config --bindir``, or on ``PATH``. ``initdb`` refuses to run as root: as
root, the server runs as the ``postgres`` user, which owns the directory.

``start(watch=PID)`` also leaves a watchdog process that stops the server and removes its
directory once process PID is gone, so a test run killed outright (a timeout's
``os._exit``, ``kill -9``) leaves no server behind.

As a script (``.ci/run`` uses it)::

    python tests/postgres_server.py start [--durable] [--watch PID]   # prints DIR, then URL
    python tests/postgres_server.py stop DIR
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["PostgresServer", "ServerUnavailable", "find_bin_dir", "free_port", "start_for_tests"]

USER = "stageflow"
DATABASE = "stageflow"


class ServerUnavailable(RuntimeError):
    """Raised when no PostgreSQL server can be started here (no binaries, no user to run
    them as, or the server failed to start); the message says which."""


def find_bin_dir() -> Path | None:
    """Return the directory holding ``initdb`` and ``pg_ctl``, or None if there is none."""
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(candidate, "initdb").exists():
            return Path(candidate)
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        found = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        if found.returncode == 0 and Path(found.stdout.strip(), "initdb").exists():
            return Path(found.stdout.strip())
    initdb = shutil.which("initdb")
    return None if initdb is None else Path(initdb).parent


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """One server in its own directory; see the module docstring.

    Args:
        directory: an existing directory made by :meth:`start` (to stop it), or None.
        durable: keep fsync on (the benchmarks); off by default, for speed (tests).
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None, *, durable: bool = False):
        self.directory = Path(directory) if directory is not None else None
        self.durable = durable
        port = None if directory is None else Path(directory, "port")
        self.port: int | None = int(port.read_text()) if port and port.exists() else None
        self._bin = find_bin_dir()
        self._watchdog: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The URL of the server's ``stageflow`` database."""
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{DATABASE}"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        assert self._bin is not None
        as_postgres: dict[str, Any] = {}
        if os.geteuid() == 0:
            as_postgres = {"user": "postgres", "group": "postgres", "extra_groups": []}
        done = subprocess.run(
            [str(self._bin / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            cwd="/",
            timeout=120,
            **as_postgres,
        )
        if check and done.returncode != 0:
            raise ServerUnavailable(
                f"{args[0]} failed (exit {done.returncode}): {done.stderr.strip() or done.stdout}"
            )
        return done

    def start(self, watch: int | None = None) -> str:
        """Create the directory, start the server and return its URL; with ``watch``, a
        watchdog stops it once process ``watch`` is gone (see the module docstring).

        Raises:
            ServerUnavailable: no binaries, no ``postgres`` user (as root), or the server
                did not start.
        """
        if self._bin is None:
            raise ServerUnavailable(
                "No PostgreSQL server binaries (initdb, pg_ctl) in /usr/lib/postgresql/*/bin, "
                "from pg_config or on PATH: install them (apt-get install -y postgresql)."
            )
        self.directory = Path(tempfile.mkdtemp(prefix="stageflow-pg-"))
        if os.geteuid() == 0:
            try:
                shutil.chown(self.directory, "postgres", "postgres")
            except (LookupError, OSError) as exc:
                raise ServerUnavailable(
                    f"Running as root, and initdb refuses root: no 'postgres' user to run the "
                    f"server as ({exc})."
                ) from exc
        data = self.directory / "data"
        self._run("initdb", "-D", str(data), "-U", USER, "--auth=trust", "-E", "UTF8", "--no-sync")
        self.port = free_port()
        (self.directory / "port").write_text(str(self.port))
        settings = [
            f"port = {self.port}",
            "listen_addresses = '127.0.0.1'",
            "unix_socket_directories = ''",
            "max_connections = 300",
        ]
        if not self.durable:
            settings += ["fsync = off", "full_page_writes = off"]
        with open(data / "postgresql.conf", "a") as conf:  # kept by a restart or a new start
            conf.write("\n".join(["", "# stageflow's throwaway server", *settings, ""]))
        self.start_server()
        if watch is not None:
            self._watchdog = subprocess.Popen(
                [sys.executable, __file__, "watch", str(watch), str(self.directory)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, DATABASE)
        return self.url

    def restart(self) -> None:
        """Stop the server (dropping every connection) and start it again on its port."""
        assert self.directory is not None
        data, log = str(self.directory / "data"), str(self.directory / "log")
        # With a log file: the server must not hold our output pipes open.
        self._run("pg_ctl", "-D", data, "-l", log, "-m", "fast", "-w", "-t", "60", "restart")

    def stop_server(self) -> None:
        """Stop the server, keeping its directory (:meth:`start_server` starts it again)."""
        assert self.directory is not None
        self._run("pg_ctl", "-D", str(self.directory / "data"), "-m", "fast", "-w", "stop")

    def start_server(self) -> None:
        """Start a server :meth:`stop_server` stopped."""
        assert self.directory is not None
        data = self.directory / "data"
        self._run("pg_ctl", "-D", str(data), "-l", str(self.directory / "log"), "-w", "-t", "60",
                  "start")  # fmt: skip

    def stop(self) -> None:
        """Stop the server and remove its directory (nothing happens if it is not running)."""
        if self.directory is None or self._bin is None:
            return
        if (self.directory / "data" / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.directory / "data"), "-m", "immediate", "-w",
                      "stop", check=False)  # fmt: skip
        shutil.rmtree(self.directory, ignore_errors=True)
        if self._watchdog is not None:  # no longer needed (it would stop within a second)
            self._watchdog.terminate()
            self._watchdog.wait(10)
            self._watchdog = None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def watch(pid: int, directory: str) -> None:
    """Stop the server in ``directory`` once process ``pid`` is gone (checked every
    second); return at once when the directory is removed (the server was stopped)."""
    while Path(directory).exists():
        if not _alive(pid):
            PostgresServer(directory).stop()
            return
        time.sleep(1)


def start_for_tests(server: PostgresServer) -> str:
    """Start ``server`` for a test fixture (watched: it goes if the tests are killed) and
    return its URL; when no server can be started, skip the tests that need it, saying
    why, or fail them under CI (``$CI``)."""
    import pytest

    try:
        return server.start(watch=os.getpid())
    except ServerUnavailable as exc:
        server.stop()
        reason = f"no PostgreSQL server could be started ({exc})"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must run the PostgreSQL tests.")
        pytest.skip(reason)


def main(argv: list[str]) -> int:
    """``start`` (print the directory and the URL, one a line) or ``stop DIR``."""
    if argv[:1] == ["start"]:
        server = PostgresServer(durable="--durable" in argv)
        watched = int(argv[argv.index("--watch") + 1]) if "--watch" in argv else None
        try:
            url = server.start(watch=watched)
        except ServerUnavailable as exc:
            server.stop()
            print(f"Cannot start PostgreSQL: {exc}", file=sys.stderr)
            return 1
        print(server.directory)
        print(url)
        return 0
    if argv[:1] == ["stop"] and len(argv) == 2:
        PostgresServer(argv[1]).stop()
        return 0
    if argv[:1] == ["watch"] and len(argv) == 3:
        watch(int(argv[1]), argv[2])
        return 0
    print("usage: postgres_server.py start [--durable] [--watch PID] | stop DIR", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
