"""Property tests of the pure state machine: random saga shapes, random event sequences.

A driver keeps a simulated clock and its own model of the commands in flight (dispatched,
not yet answered or timed out, with the deadline a heartbeat extends). It feeds `decide`
replies (in-flight, duplicate, stale, unknown), heartbeats, timers before and after their due
time, cancels, and an operator's pause and resume; some sagas have a deadline and a
compensation deadline. Then a fair drain (resuming a paused saga first) answers everything
successfully. After every event the machine's view (which commands are in flight, their due
times) must equal the model's, nothing is dispatched while paused, and the invariants of
DESIGN.md sections 1, 4 and 6 must hold.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from pydantic import BaseModel

from orchestrator.definition import Saga
from orchestrator.machine import (
    CancelRequested,
    Decision,
    Event,
    PauseRequested,
    ReplyReceived,
    ResumeRequested,
    TimersDue,
    decide,
    idempotency_key,
    start,
)
from orchestrator.messages import Command, Reply, ReplyError
from orchestrator.retry import Retry
from orchestrator.state import (
    FINISHED,
    SAGA_MOVES,
    STEP_MOVES,
    SagaState,
    SagaStatus,
    StepStatus,
)
from sagas.order import saga as order_saga

T0 = datetime(2026, 1, 1, tzinfo=UTC)
ORDER_INPUT = {
    "order_id": "o-1",
    "customer_id": "c-1",
    "amount": "12.50",
    "items": [{"sku": "A-1", "qty": 2}],
}

Outcome = Literal["success", "failure", "timeout"]


class Payload(BaseModel):
    n: int = 0


# -- saga shapes ----------------------------------------------------------------------------------

retries = st.builds(
    lambda attempts, initial, mult, cap, jitter: Retry(
        max_attempts=attempts,
        initial_interval=initial,
        multiplier=mult,
        max_interval=initial * cap,
        jitter=jitter,
    ),
    attempts=st.integers(1, 3),
    initial=st.sampled_from([0.5, 1.0, 2.0]),
    mult=st.sampled_from([1.0, 2.0, 3.0]),
    cap=st.sampled_from([1.0, 2.0, 4.0]),
    jitter=st.sampled_from([0.0, 0.2, 0.5]),
)
timeouts = st.sampled_from([1.0, 5.0, 10.0])
# Mostly none: a deadline ends a run early, and the other paths need runs that go on.
deadlines = st.sampled_from([None, None, 3.0, 15.0])


@st.composite
def random_sagas(draw: st.DrawFn) -> Saga:
    """1-6 steps; compensatable ones (some without a compensation), maybe a pivot, then
    retriable steps."""
    n = draw(st.integers(1, 6))
    pivot = draw(st.none() | st.integers(0, n - 1))
    saga = Saga(
        "prop",
        version=1,
        input=Payload,
        timeout=draw(timeouts),
        deadline=draw(deadlines),
        compensation_deadline=draw(deadlines),
    )
    for i in range(n):
        before_pivot = pivot is None or i < pivot
        compensated = before_pivot and draw(st.booleans())
        saga.remote(
            f"s{i}",
            command=f"svc{i}.act",
            compensation=f"svc{i}.undo" if compensated else None,
            pivot=i == pivot,
            timeout=draw(timeouts),
            retry=draw(retries),
            compensation_timeout=draw(timeouts),
            compensation_retry=draw(retries),
        )
    saga.validate()
    return saga


sagas = st.one_of(random_sagas(), st.just(order_saga))


# -- the driver's model ---------------------------------------------------------------------------


@dataclass
class Sent:
    """A command the machine dispatched, as the driver sees it."""

    command: Command
    deadline: datetime
    resolution: Outcome | None = None  # None while in flight
    retryable: bool = True

    @property
    def key(self) -> tuple[str, str]:
        return (self.command.step, self.command.kind)


@dataclass
class Model:
    definition: Saga
    sent: list[Sent] = field(default_factory=list)
    replies: list[Reply] = field(default_factory=list)
    cancel_accepted: bool = False
    first_compensations: list[int] = field(default_factory=list)  # step indexes, in order
    compensated: set[int] = field(default_factory=set)
    history: list[str] = field(default_factory=list)

    def index(self, step: str) -> int:
        return next(i for i, s in enumerate(self.definition.steps) if s.name == step)

    def in_flight(self) -> list[Sent]:
        return [s for s in self.sent if s.resolution is None]

    def in_flight_of(self, kind: str) -> list[Sent]:
        return [s for s in self.in_flight() if s.command.kind == kind]

    def latest(self, step: str, kind: str) -> Sent | None:
        found = [s for s in self.sent if s.key == (step, kind)]
        return found[-1] if found else None

    def last_action(self, i: int) -> Sent | None:
        return self.latest(self.definition.steps[i].name, "action")

    def action_outcome(self, i: int) -> Outcome | None:
        last = self.last_action(i)
        return None if last is None else last.resolution

    def must_compensate(self) -> set[int]:
        """Steps with a compensation whose action succeeded or whose last attempt timed out."""
        return {
            i
            for i, spec in enumerate(self.definition.steps)
            if spec.compensation is not None and self.action_outcome(i) in ("success", "timeout")
        }

    def pivot_dispatched(self) -> bool:
        pivot = self.definition.pivot_index
        return pivot is not None and self.last_action(pivot) is not None


def reachable(moves: dict[Any, frozenset[Any]], old: Any, new: Any) -> bool:
    """`new` is `old` or reachable from it in the move table (one decision may chain moves)."""
    seen, todo = {old}, [old]
    while todo:
        for nxt in moves[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return new in seen


def in_flight_ids(state: SagaState) -> dict[uuid.UUID, datetime | None]:
    return {s.command_id: s.due_at for s in state.steps if s.in_flight and s.command_id}


# -- the state machine under test -----------------------------------------------------------------


class SagaRun(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = T0
        self.state: SagaState | None = None
        self.model: Model | None = None

    # -- plumbing ---------------------------------------------------------------------------------

    @property
    def m(self) -> Model:
        assert self.model is not None
        return self.model

    @property
    def s(self) -> SagaState:
        assert self.state is not None
        return self.state

    def decide(self, event: Event) -> Decision:
        before = self.s
        decision = decide(self.m.definition, before, event, self.now)
        again = decide(self.m.definition, before, event, self.now)
        assert decision == again, "decide is not deterministic"
        self.check_moves(before, decision.state)
        if decision.refused is not None:
            assert decision.state is before and not decision.changed
        if decision.state.status == SagaStatus.PAUSED or (
            before.status == SagaStatus.PAUSED and not isinstance(event, ResumeRequested)
        ):
            assert not decision.commands, "dispatched while paused"
            assert decision.state.next_due_at is None
        self.absorb(decision, event)
        self.state = decision.state
        self.check_model_matches()
        return decision

    def check_moves(self, before: SagaState, after: SagaState) -> None:
        assert reachable(SAGA_MOVES, before.status, after.status), (before.status, after.status)
        for old, new in zip(before.steps, after.steps, strict=True):
            assert reachable(STEP_MOVES, old.status, new.status), (old.name, old.status, new)

    def absorb(self, decision: Decision, event: Event | None) -> None:
        """Check what the decision dispatched and bring the model up to date."""
        m, definition = self.m, self.m.definition
        events = [h.event for h in decision.history]
        m.history += events
        if "saga_cancel_accepted" in events:
            m.cancel_accepted = True
        for h in decision.history:
            if h.event == "step_compensated":
                i = m.index(h.step or "")
                assert i not in m.compensated, f"step {h.step} compensated twice"
                m.compensated.add(i)
        for cmd in decision.commands:
            i = m.index(cmd.step)
            spec = definition.steps[i]
            previous = m.latest(cmd.step, cmd.kind)
            assert cmd.command_id not in {s.command.command_id for s in m.sent}
            assert cmd.attempt == (previous.command.attempt + 1 if previous else 1)
            assert cmd.idempotency_key == idempotency_key(self.s.saga_id, cmd.step, cmd.kind)
            if previous is not None:
                # A new attempt only after the previous one failed retryably or timed out.
                assert previous.resolution in ("failure", "timeout") and previous.retryable
            if cmd.kind == "action":
                assert not m.cancel_accepted, f"action {cmd.step} dispatched after cancel"
                assert cmd.command == spec.command
                assert cmd.attempt <= spec.retry.max_attempts
                assert all(m.action_outcome(j) == "success" for j in range(i)), (
                    f"{cmd.step} dispatched before the earlier steps succeeded"
                )
                timeout = spec.timeout
            else:
                assert spec.compensation is not None and cmd.command == spec.compensation
                assert cmd.attempt <= spec.compensation_retry.max_attempts
                assert i in m.must_compensate(), f"compensation of {cmd.step} not called for"
                pivot = definition.pivot_index
                assert pivot is None or i < pivot, "a step at or after the pivot compensated"
                later = {j for j in m.must_compensate() if j > i}
                assert later <= m.compensated, "compensations out of reverse order"
                if cmd.attempt == 1:
                    m.first_compensations.append(i)
                timeout = spec.compensation_timeout
            assert cmd.expires_at == self.now + timedelta(seconds=timeout)
            m.sent.append(Sent(cmd, deadline=cmd.expires_at))
        if decision.state.finished and not (event is not None and self.s.finished):
            assert [e.status for e in decision.events] == [decision.state.status.value]

    def check_model_matches(self) -> None:
        machine = in_flight_ids(self.s)
        model = {s.command.command_id: s.deadline for s in self.m.in_flight()}
        assert machine == model

    # -- rules ------------------------------------------------------------------------------------

    @initialize(definition=sagas, cancel_first=st.booleans(), seed=st.integers(0, 2**32))
    def begin(self, definition: Saga, cancel_first: bool, seed: int) -> None:
        self.model = Model(definition)
        payload = ORDER_INPUT if definition is order_saga else {"n": 1}
        args: dict[str, Any] = {
            "saga_id": uuid.UUID(int=seed),
            "key": f"k-{seed}",
            "input": payload,
            "now": self.now,
            "cancel_reason": "before start" if cancel_first and seed % 4 == 0 else None,
        }
        decision = start(definition, **args)
        assert decision == start(definition, **args)
        self.state = decision.state
        self.absorb(decision, None)
        self.check_model_matches()
        if args["cancel_reason"] is not None:
            assert decision.state.status == SagaStatus.CANCELLED
            assert decision.commands == ()
        else:
            assert [c.step for c in decision.commands] == [definition.steps[0].name]

    @precondition(lambda self: self.model is not None and self.m.in_flight())
    @rule(
        data=st.data(),
        outcome=st.sampled_from(["success", "failure", "fatal", "heartbeat", "bare_failure"]),
    )
    def reply_in_flight(self, data: st.DataObject, outcome: str) -> None:
        sent = data.draw(st.sampled_from(self.m.in_flight()))
        reply = make_reply(sent.command, outcome)
        before = self.s
        self.m.replies.append(reply)
        spec = self.m.definition.steps[self.m.index(sent.command.step)]
        if outcome == "heartbeat":
            timeout = spec.timeout if sent.command.kind == "action" else spec.compensation_timeout
            sent.deadline = self.now + timedelta(seconds=timeout)
        else:
            sent.resolution = "success" if outcome == "success" else "failure"
            sent.retryable = outcome != "fatal"
        decision = self.decide(ReplyReceived(reply))
        if outcome == "heartbeat":
            assert decision.state.status == before.status
            assert not decision.commands and not decision.events

    @precondition(lambda self: self.model is not None and self.m.replies)
    @rule(data=st.data())
    def duplicate_reply(self, data: st.DataObject) -> None:
        reply = data.draw(st.sampled_from(self.m.replies))
        if reply.command_id in {s.command.command_id for s in self.m.in_flight()}:
            # A repeated heartbeat for a command still in flight is not a duplicate.
            return
        self.ignored(reply)

    @precondition(
        lambda self: self.model is not None and any(s.resolution is not None for s in self.m.sent)
    )
    @rule(
        data=st.data(),
        outcome=st.sampled_from(["success", "failure", "fatal", "heartbeat"]),
    )
    def stale_reply(self, data: st.DataObject, outcome: str) -> None:
        old = [s for s in self.m.sent if s.resolution is not None]
        sent = data.draw(st.sampled_from(old))
        self.ignored(make_reply(sent.command, outcome))

    @precondition(lambda self: self.model is not None)
    @rule(
        data=st.data(),
        command_id=st.uuids(),
        outcome=st.sampled_from(["success", "failure", "heartbeat"]),
    )
    def unknown_reply(self, data: st.DataObject, command_id: uuid.UUID, outcome: str) -> None:
        names = [s.name for s in self.m.definition.steps] + ["no_such_step"]
        step = data.draw(st.sampled_from(names))
        reply = Reply(
            command_id=command_id,
            saga_id=self.s.saga_id,
            step=step,
            outcome=outcome,  # type: ignore[arg-type]
            result={"unknown": True},
        )
        self.ignored(reply)

    def ignored(self, reply: Reply) -> None:
        before = self.s
        decision = self.decide(ReplyReceived(reply))
        assert decision.state.steps == before.steps
        assert decision.state.status == before.status
        assert not decision.commands and not decision.events
        recorded = [h.event for h in decision.history]
        if reply.outcome == "heartbeat":
            # A stray heartbeat changes nothing; recording it is optional.
            assert recorded in ([], ["reply_ignored"])
        else:
            assert recorded == ["reply_ignored"]

    @precondition(lambda self: self.model is not None)
    @rule(
        when=st.sampled_from(["just_before", "at", "after", "anytime"]),
        seconds=st.floats(0.001, 40.0),
    )
    def timers(self, when: str, seconds: float) -> None:
        due = self.s.next_due_at
        if due is None or when == "anytime":
            target = self.now + timedelta(seconds=seconds)
        elif when == "just_before":
            target = due - timedelta(milliseconds=1)
        elif when == "at":
            target = due
        else:
            target = due + timedelta(seconds=seconds)
        self.now = max(self.now, target)
        self.fire_timers()

    def fire_timers(self) -> Decision:
        return self.with_timers(TimersDue())

    def with_timers(self, event: TimersDue | ResumeRequested) -> Decision:
        """Feed `event` (timers, or a resume, which fires what came due while paused) and
        check that exactly what was due happened."""
        before = self.s
        phase = before.resume_status if isinstance(event, ResumeRequested) else before.status
        if phase not in (SagaStatus.RUNNING, SagaStatus.COMPENSATING):
            # Paused (or finished): timers hold, whatever came due.
            decision = self.decide(event)
            assert decision.state == before and not decision.history
            return decision
        deadline = before.deadline_at if phase == SagaStatus.RUNNING else None
        overdue = before.compensation_deadline_at if phase == SagaStatus.COMPENSATING else None
        if deadline is not None and deadline <= self.now:
            return self.deadline_passed(event)
        if overdue is not None and overdue <= self.now:
            return self.compensation_overdue(event)
        expired = [s for s in self.m.in_flight() if s.deadline <= self.now]
        for sent in expired:
            sent.resolution = "timeout"
        waiting = [
            s
            for s in before.steps
            if s.status in (StepStatus.RUNNING, StepStatus.COMPENSATING)
            and not s.in_flight
            and s.due_at is not None
            and s.due_at <= self.now
        ]
        decision = self.decide(event)
        timed_out = sorted(
            (h.step or "", h.event)
            for h in decision.history
            if h.event in ("step_timed_out", "compensation_timed_out")
        )
        assert timed_out == sorted(
            (
                s.command.step,
                "step_timed_out" if s.command.kind == "action" else "compensation_timed_out",
            )
            for s in expired
        )
        if not expired and not waiting and isinstance(event, TimersDue):
            assert decision.state == before, "timers fired with nothing due"
        for step in waiting:
            # A retry wait that ran out dispatches the next attempt (unless a cancel stopped it).
            if step.status == StepStatus.RUNNING and phase == SagaStatus.RUNNING:
                assert any(c.step == step.name and c.kind == "action" for c in decision.commands)
            if step.status == StepStatus.COMPENSATING:
                assert any(
                    c.step == step.name and c.kind == "compensation" for c in decision.commands
                )
        return decision

    def deadline_passed(self, event: TimersDue | ResumeRequested) -> Decision:
        before = self.s
        pivot_dispatched = self.m.pivot_dispatched()
        # The step in flight is cut off (before the pivot) or dropped (past it): either way
        # the machine stops waiting for it, and its outcome is unknown.
        for sent in self.m.in_flight():
            assert sent.command.kind == "action"
            sent.resolution = "timeout"
        decision = self.decide(event)
        recorded = [h.event for h in decision.history]
        assert "saga_deadline_exceeded" in recorded
        assert "step_timed_out" not in recorded
        assert decision.state.error is not None
        assert all(c.kind == "compensation" for c in decision.commands)
        if pivot_dispatched:
            assert decision.state.status == SagaStatus.FAILED
            assert decision.state.error["type"] == "deadline_exceeded"
            assert not decision.commands
        else:
            assert decision.state.status in (SagaStatus.COMPENSATING, SagaStatus.COMPENSATED)
            assert before.cancel_reason is None
        return decision

    def compensation_overdue(self, event: TimersDue | ResumeRequested) -> Decision:
        for sent in self.m.in_flight_of("compensation"):
            sent.resolution = "timeout"  # dropped: its late reply is ignored
        decision = self.decide(event)
        assert [h.event for h in decision.history][-2:] == [
            "compensation_deadline_exceeded",
            "saga_failed",
        ]
        assert decision.state.status == SagaStatus.FAILED and not decision.commands
        assert decision.state.error is not None
        assert decision.state.error["type"] == "compensation_deadline_exceeded"
        return decision

    @precondition(lambda self: self.model is not None)
    @rule(reason=st.sampled_from(["customer cancelled", "fraud", ""]), dice=st.integers(0, 3))
    def cancel(self, reason: str, dice: int) -> None:
        if dice:
            # Cancels are rolled rarely: one accepted early ends most runs, and the paths
            # past the pivot need runs that go on.
            return
        before = self.s
        paused = before.status == SagaStatus.PAUSED
        phase = before.resume_status if paused else before.status
        pivot_dispatched = self.m.pivot_dispatched()
        decision = self.decide(CancelRequested(reason))
        events = [h.event for h in decision.history]
        if before.finished or (phase == SagaStatus.RUNNING and pivot_dispatched):
            assert events == ["cancel_refused"]
            assert [e.status for e in decision.events] == ["cancel_refused"]
            assert decision.state.steps == before.steps
            assert decision.state.status == before.status
            assert not decision.commands
        elif phase == SagaStatus.COMPENSATING:
            assert events == ["cancel_ignored"]
            assert decision.state.steps == before.steps and not decision.commands
        else:
            assert phase == SagaStatus.RUNNING
            assert "saga_cancel_accepted" in events
            assert decision.state.cancel_reason == reason
            assert all(c.kind == "compensation" for c in decision.commands)
            if paused:  # accepted, but compensations wait for the resume
                assert decision.state.status == SagaStatus.PAUSED
                assert decision.state.resume_status == SagaStatus.COMPENSATING
            else:
                assert decision.state.status in (SagaStatus.COMPENSATING, SagaStatus.CANCELLED)

    @precondition(lambda self: self.model is not None)
    @rule(dice=st.integers(0, 2))
    def pause(self, dice: int) -> None:
        if dice:
            return  # rolled now and then: most of a run goes on unpaused
        before = self.s
        decision = self.decide(PauseRequested("operator looks"))
        if before.status in (SagaStatus.RUNNING, SagaStatus.COMPENSATING):
            assert decision.refused is None
            assert [h.event for h in decision.history] == ["saga_paused"]
            assert decision.state.status == SagaStatus.PAUSED
            assert decision.state.resume_status == before.status
            assert decision.state.steps == before.steps
            assert decision.state.next_due_at is None
        else:
            assert decision.refused is not None

    @precondition(lambda self: self.model is not None)
    @rule()
    def resume(self) -> None:
        before = self.s
        if before.status != SagaStatus.PAUSED:
            assert self.decide(ResumeRequested("carry on")).refused is not None
            return
        decision = self.with_timers(ResumeRequested("carry on"))
        assert decision.history[0].event == "saga_resumed"
        assert decision.state.status != SagaStatus.PAUSED

    # -- invariants -------------------------------------------------------------------------------

    @invariant()
    def post_pivot_never_compensated(self) -> None:
        if self.model is None:
            return
        pivot = self.m.definition.pivot_index
        if pivot is not None and self.m.action_outcome(pivot) == "success":
            assert self.s.status not in (
                SagaStatus.COMPENSATING,
                SagaStatus.COMPENSATED,
                SagaStatus.CANCELLED,
            ), "the saga undoes steps after its pivot succeeded"

    @invariant()
    def paused_sagas_know_where_to_resume(self) -> None:
        if self.model is None:
            return
        if self.s.status == SagaStatus.PAUSED:
            assert self.s.resume_status in (SagaStatus.RUNNING, SagaStatus.COMPENSATING)
            assert self.s.next_due_at is None

    @invariant()
    def compensations_in_reverse_order(self) -> None:
        if self.model is None:
            return
        firsts = self.m.first_compensations
        assert firsts == sorted(firsts, reverse=True) and len(set(firsts)) == len(firsts)

    # -- drain and final checks -------------------------------------------------------------------

    def teardown(self) -> None:
        if self.model is None:
            return
        if self.s.status == SagaStatus.PAUSED:
            self.with_timers(ResumeRequested("drain"))
        bound = 5 * len(self.m.definition.steps) + 5
        for _ in range(bound):
            if self.s.finished:
                break
            in_flight = self.m.in_flight()
            if in_flight:
                sent = in_flight[0]
                sent.resolution = "success"
                reply = make_reply(sent.command, "success")
                self.m.replies.append(reply)
                self.decide(ReplyReceived(reply))
            else:
                due = self.s.next_due_at
                assert due is not None, f"stuck: {self.s.status}, nothing in flight or due"
                self.now = max(self.now, due)
                self.fire_timers()
        assert self.s.finished, f"not finished after {bound} drain steps: {self.s}"
        if (self.s.error or {}).get("type") != "compensation_deadline_exceeded":
            # (a step awaited when a cancel was accepted may still be out then)
            assert not self.m.in_flight()
        self.check_final()

    def check_final(self) -> None:
        m, state = self.m, self.s
        definition = m.definition
        pivot = definition.pivot_index
        must = m.must_compensate()
        compensations = [s for s in m.sent if s.command.kind == "compensation"]
        assert state.status in FINISHED
        event(f"final status: {state.status.value} {(state.error or {}).get('type', '')}")
        event(f"cancel accepted: {m.cancel_accepted}")
        event(f"timeouts: {sum(s.resolution == 'timeout' for s in m.sent) > 0}")
        event(f"paused: {'saga_paused' in m.history}")
        if state.status == SagaStatus.COMPLETED:
            assert not compensations, "a completed saga compensated"
            assert not m.cancel_accepted
            assert all(m.action_outcome(i) == "success" for i in range(len(definition.steps)))
            assert state.results() == {s.name: {"ok": s.name} for s in definition.steps}
        elif state.status in (SagaStatus.COMPENSATED, SagaStatus.CANCELLED):
            assert m.cancel_accepted == (state.status == SagaStatus.CANCELLED)
            assert m.compensated == must, (m.compensated, must)
            assert m.first_compensations == sorted(must, reverse=True)
            if pivot is not None:
                assert m.action_outcome(pivot) != "success"
        else:
            assert state.status == SagaStatus.FAILED and state.error is not None
            if state.error["type"] == "compensation_failed":
                parked = m.index(state.error["step"])
                assert parked in must and parked not in m.compensated
                assert m.compensated <= must
                assert m.compensated == {i for i in must if i > parked}
            elif state.error["type"] == "compensation_deadline_exceeded":
                assert definition.compensation_deadline is not None
                assert m.compensated <= must
                assert "compensation_deadline_exceeded" in m.history
            elif state.error["type"] == "deadline_exceeded":
                assert definition.deadline is not None and m.pivot_dispatched()
                assert not compensations
            else:
                assert state.error["type"] == "retries_exhausted"
                assert pivot is not None and m.action_outcome(pivot) == "success"
                assert m.index(state.error["step"]) > pivot
                assert not compensations
        if m.cancel_accepted:
            assert state.status in (SagaStatus.CANCELLED, SagaStatus.FAILED)
        # Finished means finished: nothing more happens, whatever arrives.
        before = state
        for late in (TimersDue(), CancelRequested("late")):
            self.now += timedelta(hours=1)
            decision = self.decide(late)
            assert decision.state.steps == before.steps and not decision.commands


def make_reply(command: Command, outcome: str) -> Reply:
    if outcome == "success":
        return Reply(
            command_id=command.command_id,
            saga_id=command.saga_id,
            step=command.step,
            outcome="success",
            result={"ok": command.step},
        )
    if outcome == "heartbeat":
        return Reply(
            command_id=command.command_id,
            saga_id=command.saga_id,
            step=command.step,
            outcome="heartbeat",
        )
    return Reply(
        command_id=command.command_id,
        saga_id=command.saga_id,
        step=command.step,
        outcome="failure",
        error=None
        if outcome == "bare_failure"
        else ReplyError(type="boom", message=outcome, retryable=outcome != "fatal"),
    )


SagaRun.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestSagaRun = SagaRun.TestCase
