"""What only the PostgreSQL store does (the contract itself is in test_store_contract.py):
its URL, its schema and concurrent upgrades, LISTEN/NOTIFY across processes, and a lost
connection (a server restarted under a running store and a running flow).

The server comes from the session fixture in ``tests/conftest.py``; the tests that stop or
restart a server start one of their own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import attrs
import psycopg
import pytest
from postgres_server import PostgresServer, free_port, start_for_tests
from test_store_contract import T0, apply, new_flow_run, new_task_run, queued

from runtime import Runtime, flow, task
from runtime import states as S
from runtime.core._exceptions import ConfigurationError, StoreError
from runtime.core._models import evolve
from runtime.core._rules import SLOTS_RELEASED
from runtime.store._backend import TASK_QUEUED, StaleRun
from runtime.store._postgres import PostgresStore
from runtime.store._postgres_schema import MIGRATIONS, SCHEMA_VERSION
from runtime.store._urls import open_backend

REPO = Path(__file__).resolve().parents[2]
WAIT = 30.0  # the longest a test waits for another thread or process (bounded, not a sleep)


def open_store(url: str, **options: Any) -> PostgresStore:
    store, _ = open_backend(url)
    assert isinstance(store, PostgresStore)
    for name, value in options.items():
        setattr(store, name, value)
    return store


def split(url: str) -> tuple[str, str]:
    """(the server URL, the schema) of a test's store URL."""
    server, _, query = url.partition("?schema=")
    return server, query


def schema_version(url: str) -> int:
    server, schema = split(url)
    with psycopg.connect(server) as conn:
        row = conn.execute(f"SELECT version FROM {schema}.schema_version").fetchone()
    assert row is not None
    return int(row[0])


def child(source: str, *args: str) -> subprocess.Popen[str]:
    """A Python process running ``source`` (stageflow importable), with ``args``."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(source), *args],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# -- the URL ---------------------------------------------------------------------------------


class TestUrls:
    def test_options_and_hidden_password(self, postgres_url: str) -> None:
        """``schema``, ``fsync`` and ``reconnect_timeout`` are stageflow's; the URL shown in
        messages hides the password; both schemes work."""
        server, schema = split(postgres_url)
        secret = server.replace("stageflow@", "stageflow:s3cret@")
        options = "fsync=1&reconnect_timeout=2.5&pool_size=2&application_name=x"
        store = open_store(f"{secret}?schema={schema}&{options}".replace("postgresql", "postgres"))
        try:
            assert (store.schema, store.fsync, store.reconnect_timeout) == (schema, True, 2.5)
            assert store._db._pool.max_size == 2
            assert "s3cret" not in store.url and ":***@" in store.url
        finally:
            store.close()
        store = open_store(f"{server}?schema={schema}")
        assert not store.fsync and store.reconnect_timeout == 30.0
        store.close()

    @pytest.mark.parametrize(
        ("query", "message"),
        [
            ("fsync=maybe", r"Unsupported value fsync='maybe' in the store URL "),
            ("reconnect_timeout=soon", r"give a number of seconds\.$"),
            ("pool_size=0", r"give a whole number of connections, 1 or more\.$"),
            ("schema=Bad-Name", r"^Invalid PostgreSQL schema name 'Bad-Name' for the store"),
            ("connect_timeout=x", r"connect_timeout='x' .*libpq takes a whole number there\.$"),
            ("keepalives_idle=1.5", r"keepalives_idle='1.5' .*whole number there\.$"),
        ],
    )
    def test_bad_options(self, postgres_server_url: str, query: str, message: str) -> None:
        """Invalid options are refused, saying what to write."""
        with pytest.raises(ConfigurationError, match=message):
            open_backend(f"{postgres_server_url}?{query}")

    @pytest.mark.parametrize(
        ("url", "message"),
        [
            ("postgresql://u@127.0.0.1:5432/x?bogus=1", r'invalid URI query parameter: "bogus"'),
            ("postgresql://u:se%cret@127.0.0.1:5432/x", r"invalid percent-encoded token"),
            ("postgresql://", r"missing \"=\""),
        ],
    )
    def test_a_malformed_url_is_a_configuration_error(self, url: str, message: str) -> None:
        """A URL libpq cannot read (an unknown option, a bad %-escape) is refused as a
        ConfigurationError that names the URL, without its password, and says what to
        write; it is not psycopg's own error."""
        with pytest.raises(ConfigurationError, match=message) as caught:
            open_backend(url)
        assert "se%cret" not in str(caught.value) and "cret" not in str(caught.value)
        assert "Invalid PostgreSQL store URL" in str(caught.value)
        assert "postgresql://user:password@host:port/dbname" in str(caught.value)

    def test_an_unreachable_server_is_named(self) -> None:
        """A server that does not answer raises StoreError naming its host and port."""
        port = free_port()
        message = (
            rf"^The PostgreSQL server at 127\.0\.0\.1:{port}/x cannot be reached or refused the "
            r"connection \(.*\)\. Check that it runs and accepts TCP connections there, and "
            r"the user, password and database in the store URL\.$"
        )
        with pytest.raises(StoreError, match=message):
            open_backend(f"postgresql://u:p@127.0.0.1:{port}/x")

    def test_without_the_driver_the_error_says_what_to_install(self) -> None:
        """Without psycopg (stageflow installed without its [postgres] extra), opening a
        PostgreSQL store says which extra to install."""
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; sys.modules['psycopg'] = None\n"
                "from runtime.store._urls import open_backend\n"
                "open_backend('postgresql://u@127.0.0.1:1/x')",
            ],
            env={**os.environ, "PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 1
        assert done.stderr.splitlines()[-1] == (
            "runtime.core._exceptions.ConfigurationError: The PostgreSQL store needs psycopg 3 "
            "and psycopg_pool (import of psycopg halted; None in sys.modules): install them "
            "with pip install 'stageflow[postgres]'."
        )

    def test_unsupported_url_names_every_store(self) -> None:
        message = (
            r"^Unsupported store URL 'mysql://x': use 'memory://', 'sqlite:///path/to/file\.db' "
            r"or 'postgresql://user:password@host:port/dbname'\.$"
        )
        with pytest.raises(ConfigurationError, match=message):
            open_backend("mysql://x")


# -- the schema --------------------------------------------------------------------------------

# A second upgrade step that leaves a trace each time it runs.
TRACED_STEP = (
    "CREATE TABLE {s}.upgrades (pid integer)",
    "INSERT INTO {s}.upgrades VALUES (pg_backend_pid())",
)
TRACED = [*MIGRATIONS, TRACED_STEP]

UPGRADER = f"""
import sys, time
from pathlib import Path
from runtime.store._postgres import PostgresStore
from runtime.store._postgres_schema import MIGRATIONS

barrier, count, me, conninfo, schema = sys.argv[1:]
(Path(barrier) / me).touch()
deadline = time.monotonic() + 30
while len(list(Path(barrier).iterdir())) < int(count) and time.monotonic() < deadline:
    pass
PostgresStore(conninfo, schema=schema, migrations=[*MIGRATIONS, {TRACED_STEP!r}]).close()
print("ok")
"""


class TestSchema:
    def test_a_new_schema_is_current(self, postgres_url: str) -> None:
        """Opening a store makes its schema, at the current version."""
        open_store(postgres_url).close()
        assert schema_version(postgres_url) == SCHEMA_VERSION == len(MIGRATIONS)

    def test_a_newer_schema_is_refused(self, postgres_url: str) -> None:
        """A schema written by a newer stageflow is refused, saying to upgrade."""
        open_store(postgres_url).close()
        server, schema = split(postgres_url)
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f"UPDATE {schema}.schema_version SET version = 99")
        message = (
            rf"^The PostgreSQL schema '{schema}' of 127\.0\.0\.1:\d+/stageflow has stageflow "
            rf"schema version 99, but this stageflow only knows versions up to "
            rf"{SCHEMA_VERSION}: it was written by a newer stageflow\. Upgrade stageflow "
            r"\(pip install -U stageflow\), or choose another schema with \?schema=NAME in "
            r"the store URL\.$"
        )
        with pytest.raises(ConfigurationError, match=message):
            open_store(postgres_url)

    def test_processes_upgrading_at_once_upgrade_once(
        self, postgres_url: str, tmp_path: Path
    ) -> None:
        """Four processes open a current schema at once with a newer stageflow (one more
        step): one of them upgrades it, once; all of them open it; its runs are kept."""
        store = open_store(postgres_url)
        run = new_flow_run(store)
        store.close()
        server, schema = split(postgres_url)
        barrier = tmp_path / "barrier"
        barrier.mkdir()
        racers = [
            subprocess.Popen(
                [sys.executable, "-c", UPGRADER, str(barrier), "4", str(i), server, schema],
                env={**os.environ, "PYTHONPATH": str(REPO)},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(4)
        ]
        for racer in racers:
            out, err = racer.communicate(timeout=60)
            assert racer.returncode == 0 and out.strip() == "ok", err
        assert schema_version(postgres_url) == SCHEMA_VERSION + 1
        with psycopg.connect(server) as conn:
            assert conn.execute(f"SELECT COUNT(*) FROM {schema}.upgrades").fetchone() == (1,)
        again = PostgresStore(server, schema=schema, migrations=TRACED)
        try:
            assert again.read_flow_run(run.id).id == run.id
        finally:
            again.close()

    def test_a_version_1_schema_is_upgraded(self, postgres_url: str) -> None:
        """A schema made before the pipeline tables and the task queue (version 1) gains
        them on opening, its runs kept."""
        server, schema = split(postgres_url)
        old = PostgresStore(server, schema=schema, migrations=MIGRATIONS[:1])
        run = new_flow_run(old)
        old.close()
        assert schema_version(postgres_url) == 1
        store = open_store(postgres_url)
        try:
            assert schema_version(postgres_url) == SCHEMA_VERSION
            assert store.read_flow_run(run.id).id == run.id
            assert store.read_schedules() == [] and store.read_leases() == []
            assert store.read_task_queue() == []
        finally:
            store.close()

    def test_stores_in_other_schemas_are_apart(self, postgres_url: str) -> None:
        """Two schemas of one database are two stores."""
        server, schema = split(postgres_url)
        one = open_store(postgres_url)
        other = open_store(f"{server}?schema={schema}_other")
        try:
            new_flow_run(one)
            assert other.read_flow_runs() == []
        finally:
            one.close()
            other.close()
            with psycopg.connect(server, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA {schema}_other CASCADE")


# -- the task-run batch ------------------------------------------------------------------------


class TestTaskRunBatch:
    def test_task_run_writes_wait_for_commit(self, postgres_url: str) -> None:
        """Task-run writes wait in a batch for the group commit, or the next flow-run
        write, which lands after them; flow-run writes land at once."""
        store, other = open_store(postgres_url), open_store(postgres_url)
        store._batch.commit_delay = 60
        try:
            flow_run = new_flow_run(store)
            assert not store.has_pending_writes()
            assert other.read_flow_run(flow_run.id).id == flow_run.id
            task = new_task_run(store, flow_run)
            assert store.has_pending_writes() and other.read_task_runs() == []
            store.commit()
            assert not store.has_pending_writes()
            assert [run.id for run in other.read_task_runs()] == [task.id]
            task = apply(store, "task", task, S.Running())
            apply(store, "flow", flow_run, S.Completed())  # writes the batch first
            assert not store.has_pending_writes()
            assert other.read_task_run(task.id).state_name == "Running"
        finally:
            store.close()
            other.close()

    def test_a_batch_is_written_soon_without_a_commit(self, postgres_url: str) -> None:
        """With no commit and no further writes, the helper thread writes a batch after
        ``commit_delay`` (here 1 ms; the test waits up to 30 s)."""
        store, other = open_store(postgres_url), open_store(postgres_url)
        store._batch.commit_delay = 0.001
        try:
            task = new_task_run(store, None)
            wait_until(lambda: not store.has_pending_writes(), "the batch to be written")
            assert other.read_task_run(task.id).id == task.id
        finally:
            store.close()
            other.close()

    def test_a_stale_batched_write_is_refused(self, postgres_url: str) -> None:
        """A task-run write decided on an older version than this store wrote is refused
        at once, with the run as it is."""
        store = open_store(postgres_url)
        try:
            task = new_task_run(store, None)
            apply(store, "task", task, S.Running())
            stale = evolve(task, state=S.Completed(), version=task.version + 1)
            with pytest.raises(StaleRun) as caught:
                store.write_run("task", stale, state=stale.state)
            assert caught.value.current.state_name == "Running"
        finally:
            store.close()


# -- other processes ---------------------------------------------------------------------------


class Heard:
    """A subscriber that records what it hears and lets a test wait for it."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._changed = threading.Condition()

    def __call__(self, run: Any, state: Any) -> None:
        with self._changed:
            self.items.append(None if state is None else (run.version, state.name))
            self._changed.notify_all()

    def wait_for(self, count: int, timeout: float = WAIT) -> list[Any]:
        with self._changed:
            self._changed.wait_for(lambda: len(self.items) >= count, timeout)
            return list(self.items)


@pytest.fixture
def two_stores(postgres_url: str) -> Iterator[tuple[PostgresStore, PostgresStore]]:
    """Two stores on one schema, as two processes have; both listening."""
    one, two = open_store(postgres_url), open_store(postgres_url)
    assert one._changes.wait_listening(WAIT) and two._changes.wait_listening(WAIT)
    yield one, two
    one.close()
    two.close()


class TestNotifications:
    def test_changes_elsewhere_are_heard_without_polling(
        self, two_stores: tuple[PostgresStore, PostgresStore]
    ) -> None:
        """Another store's flow-run change reaches this store's subscribers as it commits,
        with no call to sync_external; this store's own changes are not news."""
        one, two = two_stores
        run = apply(one, "flow", new_flow_run(one), S.Running())
        heard = Heard()
        one.subscribe(run.id, heard)
        run = apply(one, "flow", run, S.Paused())
        theirs = apply(two, "flow", two.read_flow_run(run.id), S.Running(name="Resuming"))
        assert heard.wait_for(1) == [(theirs.version, "Resuming")]
        apply(two, "flow", theirs, S.Completed())
        assert heard.wait_for(2) == [(theirs.version, "Resuming"), (5, "Completed")]

    def test_released_slots_are_heard(
        self, two_stores: tuple[PostgresStore, PostgresStore]
    ) -> None:
        """A slot given back elsewhere wakes this process's waiters for slots."""
        one, two = two_stores
        heard = Heard()
        one.subscribe(SLOTS_RELEASED, heard)
        two.set_concurrency_limit("db", 1)
        holder = uuid4()
        assert two.acquire_slots(["db"], holder)
        two.release_slots(holder)
        two.release_slots(holder)  # nothing held: nothing to tell
        assert heard.wait_for(1) == [None]
        assert one.acquire_slots(["db"], uuid4())

    def test_the_task_queue_wakes_workers_and_waiters_elsewhere(
        self, two_stores: tuple[PostgresStore, PostgresStore]
    ) -> None:
        """A task run queued (or put back) elsewhere wakes this process's task workers; a
        queued run's end elsewhere reaches the subscribers of its run here."""
        one, two = two_stores
        workers, waiter = Heard(), Heard()
        one.subscribe(TASK_QUEUED, workers)
        entry = queued(two)
        assert workers.wait_for(1) == [None]
        one.subscribe(entry.task_run_id, waiter)
        assert two.claim_task_runs(None, "w", T0, 1) == [
            attrs.evolve(entry, claimer="w", claimed=T0)
        ]
        assert two.release_task_run(entry.task_run_id, "w", done=False)
        assert workers.wait_for(2) == [None, None]
        two.claim_task_runs(None, "w", T0, 1)
        run = apply(two, "task", two.read_task_run(entry.task_run_id), S.Completed())
        assert two.release_task_run(entry.task_run_id, "w", done=True)
        assert waiter.wait_for(1) == [(run.version, "Completed")]

    def test_sync_external_polls_while_not_listening(
        self, two_stores: tuple[PostgresStore, PostgresStore]
    ) -> None:
        """Without its listener, a store finds others' changes by sync_external, once."""
        one, two = two_stores
        one._changes.stop()
        run = apply(one, "flow", new_flow_run(one), S.Running())
        heard = Heard()
        one.subscribe(run.id, heard)
        one.sync_external()
        assert heard.items == []
        apply(two, "flow", two.read_flow_run(run.id), S.Cancelling())
        one.sync_external()
        one.sync_external()
        assert heard.items == [(3, "Cancelling")]

    def test_a_change_in_another_process_is_heard(self, postgres_url: str) -> None:
        """A real subprocess cancels a run; this process hears it as it happens."""
        store = open_store(postgres_url)
        try:
            assert store._changes.wait_listening(WAIT)
            run = apply(store, "flow", new_flow_run(store), S.Running())
            heard = Heard()
            store.subscribe(run.id, heard)
            canceller = child(
                """
                import sys
                from uuid import UUID
                from runtime import states as S
                from runtime.core._models import evolve
                from runtime.store._urls import open_backend

                store, _ = open_backend(sys.argv[1])
                run = store.read_flow_run(UUID(sys.argv[2]))
                run = evolve(run, state=S.Cancelling(), version=run.version + 1)
                store.write_run("flow", run, state=run.state)
                store.close()
                """,
                postgres_url,
                str(run.id),
            )
            _, err = canceller.communicate(timeout=60)
            assert canceller.returncode == 0, err
            assert heard.wait_for(1) == [(3, "Cancelling")]
        finally:
            store.close()

    def test_a_paused_flow_is_resumed_from_another_process_at_once(
        self, postgres_url: str
    ) -> None:
        """A flow paused with an hour-long poll interval is resumed by another process
        within the test's bounded wait: the resume arrives by notification."""
        waiter = child(
            """
            import sys
            from runtime import Runtime, flow, pause_flow_run

            @flow
            def approve() -> str:
                return pause_flow_run(wait_for_input=str, timeout=600, poll_interval=3600)

            with Runtime(store=sys.argv[1]):
                print("result", approve(), flush=True)
            """,
            postgres_url,
        )
        store = open_store(postgres_url)
        try:
            paused = wait_until(
                lambda: next(
                    (r for r in store.read_flow_runs(flow_name="approve") if r.state.is_paused()),
                    None,
                ),
                "the flow run to pause",
            )
            resumer = child(
                """
                import sys
                from runtime import Runtime, resume_flow_run
                with Runtime(store=sys.argv[1]):
                    resume_flow_run(sys.argv[2], run_input="yes")
                """,
                postgres_url,
                str(paused.id),
            )
            _, err = resumer.communicate(timeout=60)
            assert resumer.returncode == 0, err
            out, err = waiter.communicate(timeout=WAIT)
            assert waiter.returncode == 0 and out.strip() == "result yes", err
        finally:
            waiter.kill()
            store.close()


def wait_until(predicate: Callable[[], Any], what: str) -> Any:
    """Return ``predicate()`` once true, checking every 10 ms for up to :data:`WAIT` s
    (another process's progress is seen only by reading the store)."""
    deadline = time.monotonic() + WAIT
    pause = threading.Event()
    while (value := predicate()) is None or value is False:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        pause.wait(0.01)
    return value


# -- a lost connection -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def own_server() -> Iterator[PostgresServer]:
    """A server of this module's own, which its tests stop and restart."""
    server = PostgresServer()
    start_for_tests(server)
    yield server
    server.stop()


@pytest.fixture
def own_url(own_server: PostgresServer) -> str:
    return f"{own_server.url}?schema=test_{uuid4().hex[:12]}"


class LosesAnswers(PostgresStore):
    """A store whose next statement lands but whose answer is lost with the connection."""

    lose_next = False

    def _run(self, work: Any, flush: bool = True) -> Any:
        if not self.lose_next:
            return super()._run(work, flush)
        self.lose_next = False
        first = [True]

        def landed_then_lost(conn: Any, retried: bool) -> Any:
            result = work(conn, retried)
            if first:
                first.clear()
                raise psycopg.OperationalError("server closed the connection unexpectedly")
            return result

        return super()._run(landed_then_lost, flush)


class TestLostConnection:
    def test_writes_go_on_across_a_server_restart(
        self, own_server: PostgresServer, own_url: str
    ) -> None:
        """After a restart (every connection dropped), reads and writes are tried again on
        new connections and land once; the listener comes back and hears changes again."""
        store, other = open_store(own_url), open_store(own_url)
        try:
            run = apply(store, "flow", new_flow_run(store), S.Running())
            task_run = apply(store, "task", new_task_run(store, run), S.Running())
            own_server.restart()
            task_run = apply(store, "task", task_run, S.Completed(data=1))
            run = apply(store, "flow", run, S.Paused())
            assert [s.name for s in store.read_state_history("task", task_run.id)] == [
                "Pending",
                "Running",
                "Completed",
            ]
            assert store._changes.wait_listening(WAIT)
            heard = Heard()
            store.subscribe(run.id, heard)
            apply(other, "flow", other.read_flow_run(run.id), S.Running())
            assert heard.wait_for(1) == [(run.version + 1, "Running")]
        finally:
            store.close()
            other.close()

    def test_a_write_whose_answer_was_lost_is_not_written_twice(self, own_url: str) -> None:
        """A write that landed before the connection broke is found by its retry: it
        succeeds, once; a create likewise."""
        store = LosesAnswers(own_url.partition("?")[0], schema=own_url.partition("=")[2])
        try:
            store.lose_next = True
            run = new_flow_run(store)
            store.lose_next = True
            running = apply(store, "flow", run, S.Running())
            assert [s.name for s in store.read_state_history("flow", run.id)] == [
                "Pending",
                "Running",
            ]
            stale = evolve(run, state=S.Cancelled(), version=2)
            store.lose_next = True
            with pytest.raises(StaleRun):  # not its write: a real conflict stays one
                store.write_run("flow", stale, state=stale.state)
            assert store.read_flow_run(run.id).version == running.version
            task_run = apply(store, "task", new_task_run(store, run), S.Running())
            store.lose_next = True
            store.commit()  # the batch landed, its answer was lost: written once
            assert [s.name for s in store.read_state_history("task", task_run.id)] == [
                "Pending",
                "Running",
            ]
        finally:
            store.close()

    def test_a_server_that_stays_down_fails_loudly(
        self, own_server: PostgresServer, own_url: str
    ) -> None:
        """While the server is down past ``reconnect_timeout``, calls raise StoreError
        naming the server and what to check, and write nothing; once it is back, the same
        store works again."""
        store = open_store(own_url, reconnect_timeout=0.3)
        run = apply(store, "flow", new_flow_run(store), S.Running())
        own_server.stop_server()
        try:
            message = (
                rf"^Lost the connection to the PostgreSQL server at 127\.0\.0\.1:"
                rf"{own_server.port}/stageflow and could not get it back within 0\.3 s \(.*\)\. "
                r"Check that the server runs and accepts connections there, then try again\.$"
            )
            with pytest.raises(StoreError, match=message):
                apply(store, "flow", run, S.Completed())
        finally:
            own_server.start_server()
        store.reconnect_timeout = WAIT
        try:
            assert store.read_flow_run(run.id).state.name == "Running"  # type: ignore[union-attr]
            apply(store, "flow", run, S.Completed())
        finally:
            store.close()

    def test_a_flow_goes_on_across_a_server_restart(
        self, own_server: PostgresServer, own_url: str
    ) -> None:
        """A flow whose task restarts the server completes, every state recorded once."""

        @task
        def restart() -> str:
            own_server.restart()
            return "restarted"

        @task
        def after(value: str) -> str:
            return f"{value}, then on"

        @flow
        def survive() -> str:
            return after(restart())

        with Runtime(store=own_url):
            assert survive() == "restarted, then on"
        store = open_store(own_url)
        try:
            (run,) = store.read_flow_runs(flow_name="survive")
            history = [s.name for s in store.read_state_history("flow", run.id)]
            assert history == ["Pending", "Running", "Completed"]
            tasks = store.read_task_runs(flow_run_id=run.id)
            assert [t.state_name for t in tasks] == ["Completed", "Completed"]
            for t in tasks:
                names = [s.name for s in store.read_state_history("task", t.id)]
                assert names == ["Pending", "Running", "Completed"], names
        finally:
            store.close()


def test_the_command_line_uses_it(postgres_url: str, tmp_path: Path) -> None:
    """``stageflow --store postgresql://...`` runs a flow into the store, and another
    command lists it."""
    (tmp_path / "flows.py").write_text(
        "from runtime import flow\n\n@flow\ndef hello(name: str) -> str:\n    return name\n"
    )

    def stageflow(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "runtime", "--store", postgres_url, *args],
            env={**os.environ, "PYTHONPATH": str(REPO)},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    stageflow("run", "flows.py:hello", "--param", "name=pg")
    listing = stageflow("runs", "ls")
    assert "hello" in listing and "Completed" in listing
