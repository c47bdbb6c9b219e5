"""The orchestrator on a MemoryStore and a FakeClock, driven message by message.

The orchestrator's ``receive`` is synchronous, so these tests call it directly, as a
direct dispatch does. Two orchestrators sharing one store stand for two processes (or two
event loops) deciding on the same run.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from actors import FakeClock
from runtime import states as S
from runtime.core._models import FlowRun, FlowRunPolicy, TaskRun, TaskRunPolicy
from runtime.core._rules import decide
from runtime.orchestration._orchestrator import (
    CreateRun,
    EndTaskRunsOf,
    Orchestrator,
    ProposeState,
    ReadRun,
    Transition,
    UpdateRun,
)
from runtime.states import State, StateType
from runtime.store._backend import CacheRecord, RunInputWrite
from runtime.store._memory import MemoryStore
from runtime.store._records import ProcessLease

START = 1_800_000_000.0


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def orchestrator(store: MemoryStore, clock: FakeClock) -> Orchestrator:
    return Orchestrator(store, clock)


def create_flow_run(orchestrator: Orchestrator, **fields: Any) -> FlowRun:
    run = FlowRun(name="calm-otter", flow_name="etl", **fields)
    transition = orchestrator.receive(CreateRun("flow", run, S.Pending()))
    assert transition.status == "ACCEPT"
    return transition.run  # type: ignore[no-any-return]


def create_task_run(orchestrator: Orchestrator, flow_run: FlowRun | None, **fields: Any) -> TaskRun:
    run = TaskRun(
        name="load-0",
        task_key="load",
        dynamic_key="0",
        flow_run_id=None if flow_run is None else flow_run.id,
        **fields,
    )
    return orchestrator.receive(CreateRun("task", run, S.Pending())).run  # type: ignore[no-any-return]


def propose(
    orchestrator: Orchestrator, kind: str, run_id: UUID, state: State[Any], **options: Any
) -> Transition:
    return orchestrator.receive(ProposeState(kind, run_id, state, **options))  # type: ignore[arg-type, no-any-return]


def history(store: MemoryStore, kind: str, run_id: UUID) -> list[str]:
    return [state.name or "" for state in store.read_state_history(kind, run_id)]  # type: ignore[arg-type]


class TestSnapshots:
    def test_created_run_is_a_stored_snapshot(
        self, orchestrator: Orchestrator, store: MemoryStore
    ) -> None:
        """The reply of a CreateRun is the run as stored, at version 1, its state stamped."""
        run = create_flow_run(orchestrator)
        assert run.version == 1 and run.state is not None and run.state.is_pending()
        assert run.state.state_details.flow_run_id == run.id
        assert store.read_flow_run(run.id) is run

    @pytest.mark.parametrize("started", [False, True])
    def test_a_create_asked_again_records_the_run_once(
        self, tmp_path: Any, clock: FakeClock, started: bool
    ) -> None:
        """An engine whose thread got a signal right after its CreateRun was answered asks
        again (its run still looks unrecorded to it), here to record the crash: the run is
        recorded once, and the crash is decided on the run as it is."""
        from runtime.store._sqlite import SqliteStore

        path = tmp_path / f"twice-{started}.db"
        for store in (MemoryStore(), SqliteStore(path)):
            orchestrator = Orchestrator(store, clock)
            run = TaskRun(name="load-0", task_key="load", dynamic_key="0")
            first = orchestrator.receive(
                CreateRun("task", run, S.Pending(), S.Running() if started else None)
            )
            again = orchestrator.receive(CreateRun("task", run, S.Pending()))
            assert again.status == "ACCEPT" and again.run == first.run
            crashed = orchestrator.receive(CreateRun("task", run, S.Pending(), S.Crashed()))
            assert crashed.status == "ACCEPT" and crashed.run.state.is_crashed()
            if isinstance(store, SqliteStore):
                store.close()  # commits the batch of writes
                store = SqliteStore(path)
            assert [r.id for r in store.read_task_runs()] == [run.id]
            assert history(store, "task", run.id) == (  # type: ignore[arg-type]
                ["Pending", "Running", "Crashed"] if started else ["Pending", "Crashed"]
            )
            store.close()

    def test_each_transition_makes_a_new_snapshot(
        self, orchestrator: Orchestrator, clock: FakeClock
    ) -> None:
        """Running counts the run and starts its clock; the final state stops it. Earlier
        snapshots are left as they were."""
        created = create_flow_run(orchestrator)
        running = propose(orchestrator, "flow", created.id, S.Running()).run
        clock.jump(5)
        done = propose(orchestrator, "flow", created.id, S.Completed(data=3))
        assert done.status == "ACCEPT"
        assert (created.version, running.version, done.run.version) == (1, 2, 3)
        assert (created.run_count, running.run_count) == (0, 1)
        assert created.state.is_pending() and running.state.is_running()  # type: ignore[union-attr]
        assert running.start_time is not None and done.run.end_time is not None
        assert done.run.total_run_time == done.run.end_time - running.start_time
        assert done.state.result() == 3

    def test_timestamps_never_go_back(self, orchestrator: Orchestrator) -> None:
        run = create_flow_run(orchestrator)
        early = S.Running()
        late = propose(orchestrator, "flow", run.id, S.Running()).state
        second = propose(
            orchestrator,
            "flow",
            run.id,
            S.State(type=StateType.COMPLETED, timestamp=early.timestamp),
        )
        assert second.state.timestamp > late.timestamp

    def test_update_and_read(self, orchestrator: Orchestrator) -> None:
        run = create_flow_run(orchestrator)
        renamed = orchestrator.receive(UpdateRun("flow", run.id, {"name": "bold-heron"}))
        assert (renamed.name, renamed.version, run.name) == ("bold-heron", 2, "calm-otter")
        assert orchestrator.receive(ReadRun("flow", run.id)) is renamed


class TestRules:
    def test_a_final_state_stays_final(
        self, orchestrator: Orchestrator, store: MemoryStore
    ) -> None:
        """No proposal leaves a final state (a crash path, a late cancel), unless forced."""
        run = create_flow_run(orchestrator)
        propose(orchestrator, "flow", run.id, S.Running())
        propose(orchestrator, "flow", run.id, S.Completed())
        for late in (S.Crashed(), S.Cancelled(), S.Running(), S.Failed()):
            answer = propose(orchestrator, "flow", run.id, late)
            assert (answer.status, answer.state.name) == ("ABORT", "Completed")
        forced = propose(orchestrator, "flow", run.id, S.Scheduled(name="Resuming"), force=True)
        assert forced.status == "ACCEPT"
        assert history(store, "flow", run.id) == [
            "Pending",
            "Running",
            "Completed",
            "Resuming",
        ]

    def test_a_cancelling_run_ends_cancelled(self, orchestrator: Orchestrator) -> None:
        """Whatever the body did after a cancel request, the run ends Cancelled."""
        for finish in (S.Completed(), S.Failed(data=ValueError("x"))):
            run = create_flow_run(orchestrator)
            propose(orchestrator, "flow", run.id, S.Running())
            propose(orchestrator, "flow", run.id, S.Cancelling())
            answer = propose(orchestrator, "flow", run.id, finish)
            assert (answer.status, answer.state.type) == ("REJECT", StateType.CANCELLED)

    def test_required_types_hold_with_the_write(self, orchestrator: Orchestrator) -> None:
        """A resume requires PAUSED: the second of two resumes is aborted."""
        run = create_flow_run(orchestrator)
        propose(orchestrator, "flow", run.id, S.Running())
        propose(orchestrator, "flow", run.id, S.Paused(pause_key="1"))
        paused = frozenset({StateType.PAUSED})
        first = propose(orchestrator, "flow", run.id, S.Running(), required_types=paused)
        second = propose(orchestrator, "flow", run.id, S.Running(), required_types=paused)
        assert first.status == "ACCEPT"
        assert (second.status, second.reason) == (
            "ABORT",
            "The run is in the RUNNING state, not PAUSED.",
        )

    def test_a_resume_input_lands_only_with_its_resume(
        self, orchestrator: Orchestrator, store: MemoryStore
    ) -> None:
        run = create_flow_run(orchestrator)
        propose(orchestrator, "flow", run.id, S.Running())
        propose(orchestrator, "flow", run.id, S.Paused(pause_key="1"))
        paused = frozenset({StateType.PAUSED})
        for value in ('"first"', '"second"'):
            propose(
                orchestrator,
                "flow",
                run.id,
                S.Running(),
                required_types=paused,
                run_input=RunInputWrite("response", value),
            )
        assert store.read_run_input(run.id, "response") == '"first"'

    def test_task_retries(self, orchestrator: Orchestrator, clock: FakeClock) -> None:
        policy = TaskRunPolicy(retries=2, retry_delay=(10.0,))
        run = create_task_run(orchestrator, None, empirical_policy=policy)
        propose(orchestrator, "task", run.id, S.Running())
        retry = propose(orchestrator, "task", run.id, S.Failed(data=ValueError("x")))
        assert (retry.status, retry.state.name) == ("REJECT", "AwaitingRetry")
        scheduled = retry.state.state_details.scheduled_time
        assert scheduled is not None and scheduled.timestamp() == START + 10
        wait = propose(orchestrator, "task", run.id, S.Retrying())
        assert (wait.status, wait.delay) == ("WAIT", 10.0)
        clock.jump(10)
        assert propose(orchestrator, "task", run.id, S.Retrying()).status == "ACCEPT"

    def test_a_valid_cache_record_answers_cached(
        self, orchestrator: Orchestrator, store: MemoryStore, clock: FakeClock
    ) -> None:
        store.write_cache_record(CacheRecord("k", S.Completed(data=7)))
        run = create_task_run(orchestrator, None)
        running = S.Running(state_details=S.StateDetails(cache_key="k"))
        answer = propose(orchestrator, "task", run.id, running)
        assert (answer.status, answer.state.name, answer.state.result()) == ("REJECT", "Cached", 7)
        assert answer.state.state_details.task_run_id == run.id

    def test_a_full_tag_waits_for_a_slot(
        self, orchestrator: Orchestrator, store: MemoryStore
    ) -> None:
        store.set_concurrency_limit("db", 1)
        first = create_task_run(orchestrator, None, tags=["db"])
        second = create_task_run(orchestrator, None, tags=["db"])
        assert propose(orchestrator, "task", first.id, S.Running()).status == "ACCEPT"
        waiting = propose(orchestrator, "task", second.id, S.Running())
        assert (waiting.status, waiting.state.name) == ("WAIT", "AwaitingConcurrencySlot")
        propose(orchestrator, "task", first.id, S.Completed())
        assert propose(orchestrator, "task", second.id, S.Running()).status == "ACCEPT"

    def test_running_waits_while_the_parent_is_paused(self, orchestrator: Orchestrator) -> None:
        flow_run = create_flow_run(orchestrator)
        task_run = create_task_run(orchestrator, flow_run)
        propose(orchestrator, "flow", flow_run.id, S.Running())
        propose(orchestrator, "flow", flow_run.id, S.Paused(pause_key="1"))
        waiting = propose(orchestrator, "task", task_run.id, S.Running())
        assert (waiting.status, waiting.watch) == ("WAIT", flow_run.id)

    def test_pause_keys_are_remembered(self, orchestrator: Orchestrator) -> None:
        run = create_flow_run(orchestrator)
        propose(orchestrator, "flow", run.id, S.Running())
        paused = propose(orchestrator, "flow", run.id, S.Paused(pause_key="approve")).run
        assert paused.empirical_policy.pause_keys == ("approve",)
        propose(orchestrator, "flow", run.id, S.Running())
        again = propose(orchestrator, "flow", run.id, S.Paused(pause_key="approve"))
        assert (again.status, again.state.name) == ("REJECT", "Running")


class TestCascades:
    def test_cancelling_a_flow_run_cancels_its_task_runs(
        self, orchestrator: Orchestrator, store: MemoryStore
    ) -> None:
        flow_run = create_flow_run(orchestrator)
        propose(orchestrator, "flow", flow_run.id, S.Running())
        running = create_task_run(orchestrator, flow_run)
        propose(orchestrator, "task", running.id, S.Running())
        propose(orchestrator, "flow", flow_run.id, S.Cancelling())
        assert store.read_task_run(running.id).state.is_cancelled()  # type: ignore[union-attr]
        # The task run's own engine learns it when it next proposes: its decision is
        # made on the run as it is, not on the snapshot it holds.
        late = propose(orchestrator, "task", running.id, S.Completed())
        assert (late.status, late.state.type) == ("ABORT", StateType.CANCELLED)

    @pytest.mark.parametrize(
        ("lease", "cascades"),
        [("expired", True), ("renewed", False), ("none", False)],
    )
    def test_a_cancel_cascades_once_the_owner_on_another_host_is_gone(
        self, orchestrator: Orchestrator, store: MemoryStore, lease: str, cascades: bool
    ) -> None:
        """A flow run owned by a process on another host: its task runs are that process's
        to write, until its lease (valid when the run was recorded) expires; then a cancel
        here cancels them. Without a lease, nothing tells it is gone."""
        owner = "elsewhere:7:1:cafe"
        now = datetime.now(timezone.utc)
        if lease != "none":
            expires = now - timedelta(seconds=60) if lease == "expired" else now + timedelta(hours=1)
            started = now - timedelta(hours=1)
            store.renew_lease(ProcessLease(owner, "elsewhere", 7, started, started, expires))
        flow_run = create_flow_run(orchestrator, owner=owner, created=now - timedelta(seconds=120))
        propose(orchestrator, "flow", flow_run.id, S.Running())
        running = create_task_run(orchestrator, flow_run)
        propose(orchestrator, "task", running.id, S.Running())
        propose(orchestrator, "flow", flow_run.id, S.Cancelling())
        state = store.read_task_run(running.id).state
        assert state is not None and state.is_cancelled() is cascades

    def test_a_subflow_state_is_mirrored_on_its_task_run(
        self, orchestrator: Orchestrator, store: MemoryStore
    ) -> None:
        parent = create_flow_run(orchestrator)
        propose(orchestrator, "flow", parent.id, S.Running())
        stand_in = create_task_run(orchestrator, parent)
        child = create_flow_run(orchestrator, parent_task_run_id=stand_in.id)
        propose(orchestrator, "flow", child.id, S.Running())
        propose(orchestrator, "flow", child.id, S.Completed(data=1))
        mirrored = store.read_task_run(stand_in.id).state
        assert mirrored is not None and mirrored.is_completed()
        assert mirrored.state_details.child_flow_run_id == child.id


    def test_a_crashed_flow_runs_unended_task_runs_end_crashed(
        self, orchestrator: Orchestrator, store: MemoryStore
    ) -> None:
        """EndTaskRunsOf (a crashed flow run's engine, at its end): its task runs that no
        engine ended (left Pending or Running) end Crashed; its finished ones and another
        flow run's are left as they are."""
        flow_run = create_flow_run(orchestrator)
        propose(orchestrator, "flow", flow_run.id, S.Running())
        other = create_flow_run(orchestrator)
        left_pending = create_task_run(orchestrator, flow_run)
        left_running = create_task_run(orchestrator, flow_run)
        propose(orchestrator, "task", left_running.id, S.Running())
        finished = create_task_run(orchestrator, flow_run)
        propose(orchestrator, "task", finished.id, S.Running())
        propose(orchestrator, "task", finished.id, S.Completed())
        not_its_own = create_task_run(orchestrator, other)
        ended = orchestrator.receive(EndTaskRunsOf(flow_run.id, S.Crashed(message="orphaned")))
        assert ended == 2
        assert history(store, "task", left_pending.id) == ["Pending", "Crashed"]
        assert history(store, "task", left_running.id) == ["Pending", "Running", "Crashed"]
        assert store.read_task_run(left_running.id).state.message == "orphaned"  # type: ignore[union-attr]
        assert history(store, "task", finished.id) == ["Pending", "Running", "Completed"]
        assert history(store, "task", not_its_own.id) == ["Pending"]
        assert orchestrator.receive(EndTaskRunsOf(flow_run.id, S.Crashed())) == 0


class TestTwoOrchestrators:
    def test_a_decision_on_a_stale_snapshot_is_made_again(
        self, store: MemoryStore, clock: FakeClock
    ) -> None:
        """One orchestrator drives the run (and remembers it); another, like another
        process, cancels it. The driver's next proposal is decided on the run as it is."""
        driver, other = Orchestrator(store, clock), Orchestrator(store, clock)
        run = create_flow_run(driver)
        propose(driver, "flow", run.id, S.Running())
        assert propose(other, "flow", run.id, S.Cancelling()).status == "ACCEPT"
        answer = propose(driver, "flow", run.id, S.Completed())
        assert (answer.status, answer.state.type) == ("REJECT", StateType.CANCELLED)
        assert history(store, "flow", run.id) == ["Pending", "Running", "Cancelling", "Cancelled"]

    def test_two_resumes_one_wins(self, store: MemoryStore, clock: FakeClock) -> None:
        one, two = Orchestrator(store, clock), Orchestrator(store, clock)
        run = create_flow_run(one)
        propose(one, "flow", run.id, S.Running())
        propose(one, "flow", run.id, S.Suspended(pause_key="1"))
        paused = frozenset({StateType.PAUSED})
        resume = S.Scheduled(name="Resuming")
        answers = [
            propose(orchestrator, "flow", run.id, resume, required_types=paused)
            for orchestrator in (two, one)
        ]
        assert [a.status for a in answers] == ["ACCEPT", "ABORT"]


# -- properties: no illegal transition, a final state is final -------------------------------

PROPOSALS: list[Any] = [
    S.Pending,
    S.Running,
    S.Retrying,
    S.Completed,
    lambda: S.Failed(data=ValueError("x")),
    S.Crashed,
    S.Cancelling,
    S.Cancelled,
    lambda: S.Paused(pause_key="p"),
    lambda: S.Suspended(pause_key="s"),
    lambda: S.Scheduled(name="Resuming"),
    lambda: S.AwaitingRetry(),
]


class OrchestratorMachine(RuleBasedStateMachine):
    """Random proposals from two orchestrators sharing a store: every recorded history
    is one the rules allow."""

    def __init__(self) -> None:
        super().__init__()
        self.store = MemoryStore()
        self.clock = FakeClock(START)
        self.orchestrators = [
            Orchestrator(self.store, self.clock),
            Orchestrator(self.store, self.clock),
        ]
        self.runs: list[tuple[str, UUID]] = []
        self.forced: dict[UUID, set[int]] = {}  # run -> the versions a forced proposal wrote

    @rule(retries=st.integers(0, 2), subflow=st.booleans())
    def create(self, retries: int, subflow: bool) -> None:
        orchestrator = self.orchestrators[0]
        flow_run = FlowRun(name="r", flow_name="f", empirical_policy=FlowRunPolicy(retries=retries))
        run = orchestrator.receive(CreateRun("flow", flow_run, S.Pending())).run
        self.runs.append(("flow", run.id))
        task = TaskRun(
            name="t",
            task_key="t",
            dynamic_key=str(len(self.runs)),
            flow_run_id=run.id,
            empirical_policy=TaskRunPolicy(retries=retries),
        )
        self.runs.append(
            ("task", orchestrator.receive(CreateRun("task", task, S.Pending())).run.id)
        )

    @precondition(lambda self: bool(self.runs))
    @rule(
        which=st.integers(0, 1_000),
        by=st.integers(0, 1),
        proposal=st.sampled_from(PROPOSALS),
        force=st.booleans(),
        seconds=st.floats(0, 100),
    )
    def propose(self, which: int, by: int, proposal: Any, force: bool, seconds: float) -> None:
        kind, run_id = self.runs[which % len(self.runs)]
        force = force and which % 7 == 0  # forcing is rare
        before = self.store.read_run(kind, run_id)  # type: ignore[arg-type]
        answer = self.orchestrators[by].receive(ProposeState(kind, run_id, proposal(), force))  # type: ignore[arg-type]
        after = self.store.read_run(kind, run_id)  # type: ignore[arg-type]
        assert answer.run is after and answer.state is after.state
        if after.version != before.version and force and answer.status == "ACCEPT":
            self.forced.setdefault(run_id, set()).add(after.version)
        self.clock.jump(seconds)

    @invariant()
    def histories_are_legal(self) -> None:
        for kind, run_id in self.runs:
            run = self.store.read_run(kind, run_id)  # type: ignore[arg-type]
            states = self.store.read_state_history(kind, run_id)  # type: ignore[arg-type]
            assert run.version == len(states)
            forced = self.forced.get(run_id, set())
            for version, (before, after) in enumerate(zip(states, states[1:]), start=2):
                if version in forced:
                    continue
                # A final state is only ever left by a forced proposal.
                assert not before.is_final(), [s.name for s in states]
                assert after.timestamp > before.timestamp
            running = sum(1 for s in states if s.is_running())
            assert run.run_count == running


TestOrchestratorMachine = OrchestratorMachine.TestCase
TestOrchestratorMachine.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# -- the hot path decides as the rules do -----------------------------------------------------

_STATES = {
    "Pending": S.Pending,
    "Running": S.Running,
    "Completed": S.Completed,
    "Failed": S.Failed,
    "Cancelling": S.Cancelling,
    "Paused": lambda **kw: S.Paused(pause_key="p", **kw),
    "Scheduled": S.Scheduled,
    "Crashed": S.Crashed,
}


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(["flow", "task"]),
    current=st.sampled_from(sorted(_STATES)),
    proposed=st.sampled_from(sorted(_STATES)),
    parent=st.sampled_from([None, *sorted(_STATES)]),
    tags=st.booleans(),
    cache_key=st.booleans(),
    force=st.booleans(),
)
def test_the_plain_path_accepts_only_what_the_rules_accept(
    kind: str,
    current: str,
    proposed: str,
    parent: str | None,
    tags: bool,
    cache_key: bool,
    force: bool,
) -> None:
    """Whenever the orchestrator takes its shortcut (no rule context), decide() on the full
    context accepts the same proposal."""
    store = MemoryStore()
    orchestrator = Orchestrator(store, FakeClock(START))
    parent_run = None
    if parent is not None:
        parent_run = create_flow_run(orchestrator)
        if parent != "Pending":
            propose(orchestrator, "flow", parent_run.id, S.Running())
            if parent != "Running":
                propose(orchestrator, "flow", parent_run.id, _STATES[parent](), force=True)
    if kind == "flow":
        stand_in = None if parent_run is None else create_task_run(orchestrator, parent_run)
        run: Any = create_flow_run(
            orchestrator, parent_task_run_id=None if stand_in is None else stand_in.id
        )
    else:
        run = create_task_run(orchestrator, parent_run, tags=["db"] if tags else [])
    if current != "Pending":
        run = propose(orchestrator, kind, run.id, _STATES[current](), force=True).run
    details = S.StateDetails(cache_key="k" if cache_key else None)
    message = ProposeState(kind, run.id, _STATES[proposed](state_details=details), force=force)  # type: ignore[arg-type]
    if orchestrator._plainly_accepted(kind, run, message):  # type: ignore[arg-type]
        ctx = orchestrator._rule_context(kind, run, message)  # type: ignore[arg-type]
        assert type(decide(run.state, message.state, ctx)).__name__ == "Accept"
