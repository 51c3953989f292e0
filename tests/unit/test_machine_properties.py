"""Property tests of the pure state machine: random saga shapes, random event sequences.

Shapes: sequential sagas (compensatable steps, maybe a pivot, retriable steps), staged sagas
mixing plain steps, parallel groups of 2-3 branches and map steps (0-4 items computed from the
input or from earlier results, concurrency 1-3) before or after the pivot, and the order saga
(v2 reserves in parallel, v1 in sequence).

A driver keeps a simulated clock and its own model of the commands in flight (dispatched,
not yet answered or timed out, with the deadline a heartbeat extends). It feeds `decide`
replies (in-flight, duplicate, stale, unknown), heartbeats, timers before and after their due
time, cancels, and an operator's pause and resume; some sagas have a deadline and a
compensation deadline. Half the runs are calm (their random replies succeed) so they get
far; a drawn fault (the k-th action, or compensation, the driver answers is refused) ends
runs in the states worth checking: parked past the pivot with siblings still out, undoing a
stage, parked while compensating. Then a fair drain answers what is in flight (a parked saga
still hears from it), resumes a paused saga and runs it to its end. After every event the
machine's view (which commands are in flight, their due times) must equal the model's,
nothing is dispatched while paused, a finished saga keeps its outcome, and the invariants of
DESIGN.md sections 1, 4 and 6 must hold, among them:

- a map's items are steps `<map>[<n>]` appended to the state, each command carries its item,
  and never more than `concurrency` items of one map are out (actions or compensations);
- a stage (one step, a parallel group, a map and its items) begins all at once, and only once
  every earlier stage has succeeded;
- compensations wait for every action in flight, undo the later stage before the earlier one
  (a group's together, a map's latest items first, up to its concurrency), undo each unit that
  succeeded or timed out exactly once, and never touch a step past the pivot; a failure past
  the pivot parks the saga.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

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

from orchestrator.definition import GuardContext, Saga
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
from orchestrator.messages import Command, Reply
from orchestrator.retry import Retry
from orchestrator.state import (
    FINISHED,
    SAGA_MOVES,
    STEP_MOVES,
    SagaState,
    SagaStatus,
    StepStatus,
)
from sagas.order import order_v1
from sagas.order import order_v2 as order_saga
from tests.unit.builders import Limits
from tests.unit.property_model import (
    Model,
    Sent,
    in_flight_ids,
    item_number,
    make_reply,
    map_of,
    phase_of,
    reachable,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
ORDER_INPUT = {
    "order_id": "o-1",
    "customer_id": "c-1",
    "amount": "12.50",
    "items": [{"sku": "A-1", "qty": 2}],
}


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


@st.composite
def limits(draw: st.DrawFn) -> Limits:
    """An action's and a compensation's timeouts, each maybe with a heartbeat timeout."""

    def timeout_and_heartbeat() -> tuple[float, float | None]:
        timeout = draw(timeouts)
        return timeout, draw(st.sampled_from([None, None] + [b for b in (1.0, 2.0) if b < timeout]))

    timeout, heartbeat = timeout_and_heartbeat()
    undo_timeout, undo_heartbeat = timeout_and_heartbeat()
    return Limits(
        timeout=timeout,
        heartbeat_timeout=heartbeat,
        compensation_timeout=undo_timeout,
        compensation_heartbeat_timeout=undo_heartbeat,
    )


# Mostly none: a deadline ends a run early, and the other paths need runs that go on.
deadlines = st.sampled_from([None, None, 3.0, 15.0])


# Map steps' work lists: 0-4 JSON items, from the input (`n` is drawn 0-4 per run) or from
# the results of the stages before the map.
def parts(ctx: GuardContext) -> list[Any]:
    return [{"part": i} for i in range(int(ctx.input["n"]))]


def countdown(ctx: GuardContext) -> list[Any]:
    return list(range(4 - int(ctx.input["n"]), 0, -1))


def earlier_steps(ctx: GuardContext) -> list[Any]:
    return sorted(ctx.results)[:4]


ITEMS = (parts, countdown, earlier_steps)


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
            retry=draw(retries),
            compensation_retry=draw(retries),
            **draw(limits()),
        )
    saga.validate()
    return saga


@st.composite
def staged_sagas(draw: st.DrawFn) -> Saga:
    """2-5 stages, at least one a parallel group (2-3 branches) or a map step; maybe a pivot
    (a plain step: never in a group). Before the pivot steps and maps may have compensations,
    past it none."""
    kinds = draw(
        st.lists(st.sampled_from(["step", "group", "map"]), min_size=2, max_size=5).filter(
            lambda ks: any(k != "step" for k in ks)
        )
    )
    plain = [i for i, k in enumerate(kinds) if k == "step"]
    pivot = draw(st.none() | st.sampled_from(plain)) if plain else None
    saga = Saga(
        "prop",
        version=1,
        input=Payload,
        timeout=draw(timeouts),
        deadline=draw(deadlines),
        compensation_deadline=draw(deadlines),
    )

    def options(before_pivot: bool, undo: str, compensated: bool | None = None) -> dict[str, Any]:
        if compensated is None:
            compensated = draw(st.booleans())
        compensated = before_pivot and compensated
        return {
            "compensation": undo if compensated else None,
            "retry": draw(retries),
            "compensation_retry": draw(retries),
            **draw(limits()),
        }

    for i, kind in enumerate(kinds):
        before_pivot = pivot is None or i < pivot
        if kind == "step":
            saga.remote(
                f"s{i}",
                command=f"svc{i}.act",
                pivot=i == pivot,
                **options(before_pivot and i != pivot, f"svc{i}.undo"),
            )
        elif kind == "group":
            # Mostly every branch or none compensated, so stages are often undone together.
            undo = draw(st.sampled_from([True, False, None]))
            with saga.parallel():
                for branch in "abc"[: draw(st.integers(2, 3))]:
                    saga.remote(
                        f"p{i}{branch}",
                        command=f"par{i}{branch}.act",
                        **options(before_pivot, f"par{i}{branch}.undo", undo),
                    )
        else:
            saga.map(
                f"m{i}",
                command=f"map{i}.act",
                items=draw(st.sampled_from(ITEMS)),
                concurrency=draw(st.integers(1, 3)),
                **options(before_pivot, f"map{i}.undo"),
            )
    saga.validate()
    return saga


sagas = st.one_of(
    staged_sagas(), random_sagas(), staged_sagas(), st.sampled_from([order_saga, order_v1])
)


# -- the state machine under test -----------------------------------------------------------------


class SagaRun(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = T0
        self.state: SagaState | None = None
        self.model: Model | None = None
        # Which of the driver's successes (`answer`) to an action, and to a compensation,
        # is a refusal instead (counting from 0), if any: runs then also end parked past
        # their pivot with siblings still out, compensating stages, or parked compensating.
        self.faults: dict[str, int | None] = {"action": None, "compensation": None}
        self.answered = {"action": 0, "compensation": 0}
        self.fault = "fatal"  # or "failure": retryable, retried if the policy has room
        # A calm run's random replies are successes (or heartbeats): it gets far, and meets
        # its failures from the faults, timeouts, deadlines and cancels.
        self.calm = False

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
        if before.finished:
            # No operator acts here: a finished saga stays as it ended. (A parked one still
            # hears from the steps in flight when it parked, and nothing else happens.)
            after = decision.state
            assert (after.status, after.error, after.resume_status) == (
                before.status,
                before.error,
                before.resume_status,
            ), "a finished saga changed its outcome"
            assert not decision.commands
            assert {e.status for e in decision.events} <= {"cancel_refused"}
        self.absorb(decision)
        self.state = decision.state
        self.check_model_matches()
        self.check_maps()
        return decision

    def check_moves(self, before: SagaState, after: SagaState) -> None:
        assert reachable(SAGA_MOVES, before.status, after.status), (before.status, after.status)
        assert len(after.steps) >= len(before.steps)
        for old, new in zip(before.steps, after.steps[: len(before.steps)], strict=True):
            assert (old.name, old.index, old.item) == (new.name, new.index, new.item)
            assert reachable(STEP_MOVES, old.status, new.status), (old.name, old.status, new)
        for new in after.steps[len(before.steps) :]:
            # Only a map's items are added, as pending steps (perhaps dispatched at once).
            assert new.item is not None, f"step {new.name} appeared"
            assert reachable(STEP_MOVES, StepStatus.PENDING, new.status), new

    def absorb(self, decision: Decision) -> None:
        """Check what the decision dispatched and bring the model up to date."""
        m = self.m
        before = self.state
        after = decision.state
        events = [h.event for h in decision.history]
        m.history += events
        if "saga_cancel_accepted" in events:
            m.cancel_accepted = True
        for h in decision.history:
            if h.event == "step_compensated":
                unit = h.step or ""
                assert unit not in m.compensated, f"step {h.step} compensated twice"
                m.compensated.add(unit)
            elif h.event == "map_started":
                self.check_map_started(h.step or "", h.detail, after)
        self.check_failures(decision, before)
        acted_stages = {m.stage(s.command.step) for s in m.sent if s.command.kind == "action"}
        undone_stages = {
            m.stage(s.command.step) for s in m.sent if s.command.kind == "compensation"
        }
        opened: dict[int, list[str]] = {}
        undoing: dict[int, list[str]] = {}
        for cmd in decision.commands:
            stage = m.stage(cmd.step)
            self.check_command(cmd)
            if cmd.attempt == 1 and cmd.kind == "action" and stage not in acted_stages:
                opened.setdefault(stage, []).append(cmd.step)
            if cmd.attempt == 1 and cmd.kind == "compensation":
                m.first_compensations.append(cmd.step)
                if stage not in undone_stages:
                    undoing.setdefault(stage, []).append(cmd.step)
            m.sent.append(Sent(cmd, deadline=cmd.expires_at))
        for kind in m.peak:
            m.peak[kind] = max(m.peak[kind], len(m.in_flight_of(kind)))
        for stage, units in opened.items():
            assert units == m.opening(stage), f"stage {stage} began with {units}"
        for stage, units in undoing.items():
            expected = m.compensation_opening(stage)
            assert units == expected, f"stage {stage} undoing began with {units}, not {expected}"
        if decision.state.finished and not (before is not None and before.finished):
            assert [e.status for e in decision.events] == [decision.state.status.value]

    def check_command(self, cmd: Command) -> None:
        """One dispatched command, against what the model says may be sent now."""
        m, definition = self.m, self.m.definition
        spec = m.spec(cmd.step)
        stage = spec.stage
        previous = m.latest(cmd.step, cmd.kind)
        assert cmd.command_id not in {s.command.command_id for s in m.sent}
        assert cmd.attempt == (previous.command.attempt + 1 if previous else 1)
        assert cmd.idempotency_key == idempotency_key(m.saga_id, cmd.step, cmd.kind)
        assert cmd.payload == m.input
        if spec.map:
            # A map step sends nothing itself: its items do, each with its item.
            assert map_of(cmd.step) == spec.name, f"map step {cmd.step} dispatched"
            assert cmd.item == m.items[spec.name][item_number(cmd.step)]
        else:
            assert cmd.item is None
        if previous is not None:
            # A new attempt only after the previous one failed retryably or timed out.
            assert previous.resolution in ("failure", "timeout") and previous.retryable
        if cmd.kind == "action":
            assert not m.cancel_accepted, f"action {cmd.step} dispatched after cancel"
            assert cmd.command == spec.command
            assert spec.retry.max_attempts is not None
            assert cmd.attempt <= spec.retry.max_attempts
            waiting = [d.name for d in definition.steps if d.stage < stage and not m.done(d)]
            assert not waiting, f"{cmd.step} dispatched before {waiting} succeeded"
            timeout = spec.timeout
        else:
            must = m.must_compensate()
            assert spec.compensation is not None and cmd.command == spec.compensation
            assert spec.compensation_retry.max_attempts is not None
            assert cmd.attempt <= spec.compensation_retry.max_attempts
            assert cmd.step in must, f"compensation of {cmd.step} not called for"
            assert not m.past_pivot(cmd.step) and not spec.pivot, "compensated past the pivot"
            assert not m.in_flight_of("action"), "compensation while an action is out"
            later = {u for u in must if m.stage(u) > stage}
            assert later <= m.compensated, "compensations out of reverse order"
            timeout = spec.compensation_timeout
        assert cmd.expires_at == self.now + timedelta(seconds=timeout)

    def check_map_started(self, name: str, detail: dict[str, Any] | None, after: SagaState) -> None:
        """A map began: its items, as the model computes them, are appended as its steps."""
        m = self.m
        spec = m.definition.step(name)
        assert spec.map and name not in m.items, f"map {name} started twice"
        expected = m.expected_items(spec)
        m.items[name] = expected
        assert detail == {"items": len(expected), "concurrency": spec.concurrency}
        items = [s for s in after.steps if s.of == name]
        assert [(s.name, s.item, s.payload) for s in items] == [
            (f"{name}[{n}]", n, item) for n, item in enumerate(expected)
        ]
        assert all(s.index >= len(m.definition.steps) for s in items)

    def check_failures(self, decision: Decision, before: SagaState | None) -> None:
        """A step that fails for good while the saga runs parks it past the pivot (and at the
        pivot when its last attempt went unanswered), and has the saga compensate before."""
        failed = [h.step or "" for h in decision.history if h.event == "step_failed"]
        if not failed or before is None or phase_of(before) != SagaStatus.RUNNING:
            return
        after = decision.state
        pivot = self.m.definition.pivot_index
        step = next(s for s in after.steps if s.name == failed[0])
        if (
            pivot is not None
            and self.m.index(failed[0]) == pivot
            and (step.error or {}).get("type") == "timeout"
        ):
            # The pivot never answered: it may have acted, and it is never undone.
            assert after.status == SagaStatus.FAILED, "an unanswered pivot did not park"
            assert after.error is not None and after.error["type"] == "pivot_uncertain"
        elif self.m.past_pivot(failed[0]):
            assert after.status == SagaStatus.FAILED, "a failure past the pivot did not park"
            assert after.error is not None and after.error["step"] == failed[0]
            assert after.error["type"] in ("retries_exhausted", "step_failed")
        else:
            assert phase_of(after) in (SagaStatus.COMPENSATING, SagaStatus.COMPENSATED)

    def check_model_matches(self) -> None:
        machine = in_flight_ids(self.s)
        model = {s.command.command_id: s.deadline for s in self.m.in_flight()}
        assert machine == model

    def check_maps(self) -> None:
        """Per map: never more than `concurrency` items out; while the saga runs, free slots
        are filled; once succeeded, the result lists the items' results in order."""
        m, state = self.m, self.s
        assert [s.name for s in state.steps[: len(m.definition.steps)]] == [
            s.name for s in m.definition.steps
        ]
        assert all(s.index == i for i, s in enumerate(state.steps))
        for spec in m.definition.steps:
            if not spec.map:
                continue
            step = state.step(spec.name)
            assert step is not None
            assert step.status not in (StepStatus.COMPENSATING, StepStatus.COMPENSATED)
            items = [s for s in state.steps if s.of == spec.name]
            out = sum(1 for s in m.in_flight() if map_of(s.command.step) == spec.name)
            running = sum(1 for s in items if s.status == StepStatus.RUNNING)
            undoing = sum(1 for s in items if s.status == StepStatus.COMPENSATING)
            assert max(out, running, undoing) <= spec.concurrency, (
                f"map {spec.name}: {out} out, {running} running, {undoing} compensating, "
                f"concurrency {spec.concurrency}"
            )
            if state.status == SagaStatus.RUNNING and step.status == StepStatus.RUNNING:
                pending = sum(1 for s in items if s.status == StepStatus.PENDING)
                assert running == spec.concurrency or not pending, f"map {spec.name} starves"
            if step.status == StepStatus.SUCCEEDED:
                assert step.result == [s.result for s in items]

    # -- rules ------------------------------------------------------------------------------------

    @initialize(
        definition=sagas,
        cancel_first=st.booleans(),
        seed=st.integers(0, 2**32),
        n=st.sampled_from([2, 3, 1, 4, 0]),
        faults=st.tuples(st.none() | st.integers(0, 8), st.none() | st.integers(0, 3)),
        fault=st.sampled_from(["fatal", "failure"]),
        calm=st.booleans(),
    )
    def begin(
        self,
        *,
        definition: Saga,
        cancel_first: bool,
        seed: int,
        n: int,
        faults: tuple[int | None, int | None],
        fault: str,
        calm: bool,
    ) -> None:
        self.calm = calm
        self.fault = fault
        self.faults = dict(zip(("action", "compensation"), faults, strict=True))
        payload = ORDER_INPUT if definition.name == "order" else {"n": n}
        args: dict[str, Any] = {
            "saga_id": uuid.UUID(int=seed),
            "key": f"k-{seed}",
            "input": payload,
            "now": self.now,
            "cancel_reason": "before start" if cancel_first and seed % 4 == 3 else None,
        }
        self.model = Model(definition, args["saga_id"], args["key"], payload)
        kinds = {"map" if s.map else "group" if s.group else "step" for s in definition.steps}
        event(f"shape: {'+'.join(sorted(kinds))}")
        decision = start(definition, **args)
        assert decision == start(definition, **args)
        self.absorb(decision)
        self.state = decision.state
        self.check_model_matches()
        self.check_maps()
        if args["cancel_reason"] is not None:
            assert decision.state.status == SagaStatus.CANCELLED
            assert decision.commands == ()
        else:
            # The first stage begins (the absorb checked it is all of it); only a saga of
            # empty maps sends nothing and completes at once.
            assert decision.commands or decision.state.status == SagaStatus.COMPLETED
            assert all(c.kind == "action" for c in decision.commands)

    @precondition(lambda self: self.model is not None and self.m.in_flight())
    @rule(
        data=st.data(),
        outcome=st.sampled_from(
            ["success", "success", "success", "failure", "heartbeat", "fatal", "bare_failure"]
        ),
    )
    def reply_in_flight(self, data: st.DataObject, outcome: str) -> None:
        sent = data.draw(st.sampled_from(self.m.in_flight()))
        if self.calm and outcome != "heartbeat":
            self.answer(sent)
            return
        reply = make_reply(sent.command, outcome)
        before = self.s
        self.m.replies.append(reply)
        if outcome == "heartbeat":
            sent.heard(self.now)
        else:
            sent.resolution = "success" if outcome == "success" else "failure"
            sent.retryable = outcome != "fatal"
        decision = self.decide(ReplyReceived(reply))
        if outcome == "heartbeat":
            assert decision.state.status == before.status
            assert not decision.commands and not decision.events

    @precondition(lambda self: self.model is not None and self.m.in_flight())
    @rule()
    def oldest_succeeds(self) -> None:
        """The oldest command in flight succeeds: runs get far enough (past their pivot,
        into compensating several steps at once) for random failures to matter there."""
        self.answer(self.m.in_flight()[0])

    def answer(self, sent: Sent) -> None:
        """A success, or the drawn fault: a refusal."""
        kind = sent.command.kind
        self.answered[kind] += 1
        if self.answered[kind] - 1 != self.faults[kind]:
            sent.resolution = "success"
            reply = make_reply(sent.command, "success")
        else:
            sent.resolution, sent.retryable = "failure", self.fault != "fatal"
            reply = make_reply(sent.command, self.fault)
        self.m.replies.append(reply)
        self.decide(ReplyReceived(reply))

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
        if outcome == "success" and sent in self.late_successes():
            return  # the step's, not ignored: earlier_attempt_succeeds
        self.ignored(make_reply(sent.command, outcome))

    def late_successes(self) -> list[Sent]:
        """Earlier attempts of an action still retrying: a success of theirs is the step's."""
        if self.s.status not in (SagaStatus.RUNNING, SagaStatus.COMPENSATING):
            return []
        retrying = {
            step.name: step.command_id
            for step in self.s.steps
            if step.status == StepStatus.RUNNING and step.item is None
        }
        return [
            s
            for s in self.m.sent
            if s.resolution in ("timeout", "failure")  # answered for one delivery: another won
            and s.command.kind == "action"
            and s.command.step in retrying
            and retrying[s.command.step] != s.command.command_id
        ]

    @precondition(lambda self: self.model is not None and bool(self.late_successes()))
    @rule(data=st.data())
    def earlier_attempt_succeeds(self, data: st.DataObject) -> None:
        """A timed-out attempt's success comes in while its step retries: every attempt
        shares the idempotency key, so the step succeeds with it, whatever is in flight."""
        sent = data.draw(st.sampled_from(self.late_successes()))
        last = [s for s in self.m.sent if s.key == sent.key][-1]
        last.resolution = "success"  # the step's outcome is its last attempt's: success now
        reply = make_reply(sent.command, "success")
        self.m.replies.append(reply)
        decision = self.decide(ReplyReceived(reply))
        assert decision.history[0].event == "step_succeeded", decision.history

    @precondition(lambda self: self.model is not None)
    @rule(
        data=st.data(),
        command_id=st.uuids(),
        outcome=st.sampled_from(["success", "failure", "heartbeat"]),
    )
    def unknown_reply(self, data: st.DataObject, command_id: uuid.UUID, outcome: str) -> None:
        names = [s.name for s in self.s.steps] + ["no_such_step", "s0[9]"]
        step = data.draw(st.sampled_from(names))
        reply = Reply(
            command_id=command_id,
            saga_id=self.s.saga_id,
            step=step,
            outcome=outcome,
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
            # A retry wait that ran out dispatches the next attempt, unless the same timers
            # stopped the saga's phase (a parallel step failed for good, a compensation ran
            # out), which stops the wait too.
            kind = "action" if step.status == StepStatus.RUNNING else "compensation"
            if decision.state.status == phase:
                assert any(c.step == step.name and c.kind == kind for c in decision.commands)
        return decision

    def deadline_passed(self, event: TimersDue | ResumeRequested) -> Decision:
        before = self.s
        pivot_dispatched = self.m.pivot_dispatched()
        # The steps in flight are cut off (before the pivot) or dropped (past it): either way
        # the machine stops waiting for them, and their outcome is unknown.
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
    @rule(reason=st.sampled_from(["customer cancelled", "fraud", ""]), dice=st.integers(0, 11))
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
        if self.m.pivot_succeeded():
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
        assert firsts == sorted(firsts, key=self.m.order, reverse=True)
        assert len(set(firsts)) == len(firsts)

    # -- drain and final checks -------------------------------------------------------------------

    def teardown(self) -> None:
        if self.model is None:
            return
        # Replies first: they are taken while paused, and answering before the resume keeps
        # its timers from running anything out.
        self.answer_in_flight()
        if self.s.status == SagaStatus.PAUSED:
            self.with_timers(ResumeRequested("drain"))
        bound = 8 * self.m.unit_count() + 10
        for _ in range(bound):
            in_flight = self.m.in_flight()
            if self.s.finished and not in_flight:
                break
            if in_flight:
                # A parked saga still hears from what was in flight when it parked.
                self.answer(in_flight[0])
            else:
                due = self.s.next_due_at
                assert due is not None, f"stuck: {self.s.status}, nothing in flight or due"
                self.now = max(self.now, due)
                self.fire_timers()
        assert self.s.finished, f"not finished after {bound} drain steps: {self.s}"
        assert not self.m.in_flight()
        self.check_final()

    def answer_in_flight(self) -> None:
        while self.m.in_flight():
            self.answer(self.m.in_flight()[0])

    def check_final(self) -> None:
        m, state = self.m, self.s
        definition = m.definition
        must = m.must_compensate()
        compensations = [s for s in m.sent if s.command.kind == "compensation"]
        assert state.status in FINISHED
        event(f"final status: {state.status.value} {(state.error or {}).get('type', '')}")
        event(f"cancel accepted: {m.cancel_accepted}")
        event(f"timeouts: {sum(s.resolution == 'timeout' for s in m.sent) > 0}")
        event(f"paused: {'saga_paused' in m.history}")
        event(f"map items: {sum(len(i) for i in m.items.values())}")
        event(f"most actions out at once: {m.peak['action']}")
        event(f"most compensations out at once: {m.peak['compensation']}")
        if state.status == SagaStatus.COMPLETED:
            assert not compensations, "a completed saga compensated"
            assert not m.cancel_accepted
            assert all(m.done(s) for s in definition.steps)
            assert state.results() == m.results_before(float("inf"))
        elif state.status in (SagaStatus.COMPENSATED, SagaStatus.CANCELLED):
            assert m.cancel_accepted == (state.status == SagaStatus.CANCELLED)
            assert m.compensated == must, (m.compensated, must)
            assert m.first_compensations == sorted(must, key=m.order, reverse=True)
            assert not m.pivot_succeeded()
            event(f"compensated units: {len(m.compensated)}")
        else:
            self.check_parked(must, compensations)
        if m.cancel_accepted:
            assert state.status in (SagaStatus.CANCELLED, SagaStatus.FAILED)
        # Finished means finished: nothing more happens, whatever arrives.
        before = state
        for late in (TimersDue(), CancelRequested("late")):
            self.now += timedelta(hours=1)
            decision = self.decide(late)
            assert decision.state.steps == before.steps and not decision.commands

    def check_parked(self, must: set[str], compensations: list[Sent]) -> None:
        """A saga that ended parked (failed): why, and what it did before."""
        m, state = self.m, self.s
        definition = m.definition
        assert state.status == SagaStatus.FAILED and state.error is not None
        kind = state.error["type"]
        if kind == "compensation_failed":
            parked = state.error["step"]
            assert parked in must and parked not in m.compensated
            assert m.compensated <= must
            # Every later stage was undone; nothing earlier was begun. (Siblings of the
            # parked compensation, in its stage, may have finished or not.)
            assert {u for u in must if m.stage(u) > m.stage(parked)} <= m.compensated
            assert all(m.stage(s.command.step) >= m.stage(parked) for s in compensations)
        elif kind == "compensation_deadline_exceeded":
            assert definition.compensation_deadline is not None
            assert m.compensated <= must
            assert "compensation_deadline_exceeded" in m.history
        elif kind == "deadline_exceeded":
            assert definition.deadline is not None and m.pivot_dispatched()
            assert not compensations
        elif kind == "pivot_uncertain":
            # The pivot's last attempt went unanswered: nothing was undone.
            assert definition.pivot_index is not None
            assert m.index(state.error["step"]) == definition.pivot_index
            assert m.action_outcome(state.error["step"]) == "timeout"
            assert not compensations
        else:
            # A step past the pivot ran out of attempts, or was refused for good.
            assert kind in ("retries_exhausted", "step_failed"), state.error
            assert m.pivot_succeeded()
            assert m.past_pivot(state.error["step"])
            assert not compensations
            last = [
                s
                for s in m.sent
                if s.key == (state.error["step"], "action") and s.resolution != "success"
            ][-1]
            assert (kind == "retries_exhausted") == last.retryable


SagaRun.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestSagaRun = SagaRun.TestCase
