"""`SagaTest`: one saga of a definition run in memory through the pure state machine, with
a virtual clock and scripted participants.

Every command the saga dispatches is answered as scripted for its name (default: success
with no result), a local step's by its real function; child sagas' starts and undos are
answered like commands, named after the child saga. `run()` delivers the answers and fires
the timers in virtual-time order until the saga rests, so a 1-hour timeout costs no wall time.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ValidationError

from orchestrator.events import (
    CancelRequested,
    Decision,
    Event,
    HistoryEntry,
    MarkCompensated,
    PauseRequested,
    ReplyReceived,
    ResumeRequested,
    RetryRequested,
    SignalReceived,
    SkipRequested,
    TimersDue,
)
from orchestrator.machine import decide, start
from orchestrator.messages import CancelSaga, Command, OutcomeEvent, Reply, StartSaga
from orchestrator.saga import Saga
from orchestrator.state import SagaState, SagaStatus, StepState, StepStatus
from orchestrator.testing.answers import Answer
from orchestrator.testing.scripts import Delivery, Kind, SagaTestError, Scripts

START = datetime(2026, 1, 1, 12, tzinfo=UTC)
SAGA_ID = UUID("00000000-0000-4000-8000-000000000007")
# run() gives up after this many events: a saga that never rests (a step retried forever
# against a script that always fails retryably) is a test's mistake, not a hang.
MAX_EVENTS = 10_000


@dataclass(order=True)
class _Pending:
    at: datetime
    seq: int
    reply: Reply = field(compare=False)


class SagaTest:
    """One saga of `definition`, started with `input` (validated by the definition's input
    model, as the engine does) at a fixed virtual time.

    `strict=True`: a command nobody scripted is an error instead of a success with no
    result. `auto=False`: nothing is answered on its own; the test answers with `reply()`.
    """

    def __init__(
        self,
        definition: Saga,
        input: dict[str, Any],
        *,
        key: str = "test-1",
        saga_id: UUID = SAGA_ID,
        now: datetime = START,
        strict: bool = False,
        auto: bool = True,
        cancel_reason: str | None = None,
    ) -> None:
        self.definition = definition
        self._now = now
        self._scripts = Scripts(definition, strict=strict, auto=auto)
        self._pending: list[_Pending] = []
        self._seq = 0
        self._signals = 0
        self.deliveries: list[Delivery] = []
        # Deliveries whose answer is not chosen yet: chosen when the clock next moves, so
        # scripts given after the start (or after a cancel) apply to what it dispatched.
        self._unanswered: list[Delivery] = []
        try:
            valid = definition.input.model_validate(input).model_dump(mode="json")
        except ValidationError as exc:
            raise SagaTestError(f"input for saga {definition.name!r} is invalid: {exc}") from exc
        first = start(
            definition, saga_id=saga_id, key=key, input=valid, now=now, cancel_reason=cancel_reason
        )
        self.state: SagaState = first.state
        self.decisions: list[Decision] = []
        self._took(first)

    # -- scripting ----------------------------------------------------------------------------

    def script(self, name: str, *answers: Answer, kind: Kind | None = None) -> SagaTest:
        """Answer the deliveries of `name` (a command name, a step name, or a child saga's
        name) with `answers`, one per delivery in the order they are sent (attempt 1, 2,
        ...); the last one answers every further delivery. `kind` limits it to actions or to
        compensations (needed for a step name, whose action and compensation share it)."""
        self._scripts.add(name, answers, kind)
        return self

    # -- the clock and events -----------------------------------------------------------------

    @property
    def now(self) -> datetime:
        return self._now

    def feed(self, event: Event, *, at: datetime | None = None) -> Decision:
        """Feed one event to the machine, at `at` (not before `now`; default: now), and
        nothing else: no scheduled answer is delivered, no timer fired on the way."""
        if at is not None:
            if at < self._now:
                raise SagaTestError(f"cannot go back in time: {at} is before now ({self._now})")
            self._now = at
        decision = decide(self.definition, self.state, event, self._now)
        self._took(decision)
        return decision

    def run(self, *, max_events: int = MAX_EVENTS) -> SagaTest:
        """Deliver the scripted answers and fire the timers, in virtual-time order, until the
        saga rests: it finished (completed, compensated, cancelled or parked as failed), is
        paused with nothing left in flight, or waits for a signal (`signal()` sends it,
        `advance()` lets its timeout pass). Raises SagaTestError after `max_events`."""
        self._until(None, max_events)
        return self

    def advance(self, seconds: float) -> SagaTest:
        """Move the clock `seconds` forward, delivering the answers and firing the timers
        due on the way, each at its own moment."""
        if seconds < 0:
            raise SagaTestError(f"advance({seconds}): the clock only goes forward")
        self._until(self._now + timedelta(seconds=seconds), MAX_EVENTS)
        return self

    def _until(self, limit: datetime | None, max_events: int) -> None:
        for _ in range(max_events):
            self._answer_deliveries()
            moments = [p.at for p in self._pending[:1]]
            due = self.state.next_due_at
            if due is not None:
                moments.append(due)
            if not moments or (limit is None and self.state.finished):
                break
            if limit is None and min(moments) in self._wait_timeouts():
                break  # waiting for a signal: t.signal() sends it, t.advance() times it out
            moment = max(min(moments), self._now)
            if limit is not None and moment > limit:
                break
            self._now = moment
            if self._pending and self._pending[0].at <= moment:
                self.feed(ReplyReceived(heapq.heappop(self._pending).reply))
            else:
                self.feed(TimersDue())
        else:
            raise SagaTestError(
                f"the saga did not rest after {max_events} events (status {self.status}, "
                f"now {self._now}): does a script fail retryably forever?"
            )
        if limit is not None:
            self._now = max(self._now, limit)

    def _took(self, decision: Decision) -> None:
        self.state = decision.state
        self.decisions.append(decision)
        for cmd in decision.commands:
            d = Delivery(cmd.command, cmd.step, cmd.kind, cmd.command_id, self._now, cmd)
            self._deliver(d)
        for _, request in decision.requests:
            parent = request.parent
            if parent is not None:
                child = request.saga or self.definition.step(parent.step).child or "child"
                self._deliver(
                    Delivery(child, parent.step, parent.kind, parent.command_id, self._now)
                )

    def _deliver(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)
        self._unanswered.append(delivery)

    def _answer_deliveries(self) -> None:
        while self._unanswered:
            delivery = self._unanswered.pop(0)
            answer = self._scripts.answer(delivery)
            if answer is not None:
                self._schedule_answer(delivery, answer)

    def _schedule_answer(self, delivery: Delivery, answer: Answer) -> None:
        for offset, details in answer.heartbeats:
            self._schedule(delivery, offset, "heartbeat", result=details)
        if answer.outcome != "none":
            self._schedule(
                delivery, answer.after, answer.outcome, result=answer.result, error=answer.error
            )

    def _schedule(self, delivery: Delivery, offset: float, outcome: Any, **fields: Any) -> None:
        reply = Reply(
            command_id=delivery.command_id,
            saga_id=self.state.saga_id,
            step=delivery.step,
            outcome=outcome,
            **fields,
        )
        self._seq += 1
        at = delivery.at + timedelta(seconds=offset)
        heapq.heappush(self._pending, _Pending(at, self._seq, reply))

    # -- answering by hand, cancels and operators ----------------------------------------------

    def reply(
        self, target: str | Command, answer: Answer, *, at: datetime | None = None
    ) -> Decision:
        """Answer the last delivery of `target` (a name as in `script`, or a command) now
        (or `at` that moment), whatever its script says: the answer's heartbeats, then its
        reply, all at once. Returns the last decision."""
        delivery = self._delivery(target)
        if delivery in self._unanswered:
            self._unanswered.remove(delivery)
        decision = Decision(state=self.state)
        for _, details in answer.heartbeats:
            reply = self._reply(delivery, "heartbeat", details)
            decision = self.feed(ReplyReceived(reply), at=at)
        if answer.outcome != "none":
            reply = self._reply(delivery, answer.outcome, answer.result, answer)
            decision = self.feed(ReplyReceived(reply), at=at)
        return decision

    def _reply(
        self, delivery: Delivery, outcome: Any, result: Any, answer: Answer | None = None
    ) -> Reply:
        return Reply(
            command_id=delivery.command_id,
            saga_id=self.state.saga_id,
            step=delivery.step,
            outcome=outcome,
            result=result,
            error=answer.error if answer is not None else None,
        )

    def _delivery(self, target: str | Command) -> Delivery:
        if isinstance(target, Command):
            found = [d for d in self.deliveries if d.command_id == target.command_id]
        else:
            found = [d for d in self.deliveries if target in (d.name, d.step)]
        if not found:
            raise SagaTestError(f"nothing was sent for {target!r}; sent: {self.sent()}")
        return found[-1]

    def cancel(self, reason: str = "cancelled by the test") -> Decision:
        return self.feed(CancelRequested(reason))

    def pause(self, reason: str = "paused by the test") -> Decision:
        return self.feed(PauseRequested(reason))

    def resume(self, reason: str = "resumed by the test") -> Decision:
        return self.feed(ResumeRequested(reason))

    def retry(self, reason: str = "retried by the test") -> Decision:
        return self.feed(RetryRequested(reason))

    def skip(self, step: str, result: Any = None, reason: str = "skipped by the test") -> Decision:
        return self.feed(SkipRequested(step=step, result=result, reason=reason))

    def mark_compensated(self, reason: str = "compensated by hand") -> Decision:
        return self.feed(MarkCompensated(reason))

    def signal(
        self,
        name: str,
        payload: dict[str, Any] | BaseModel | None = None,
        *,
        signal_id: str | None = None,
    ) -> Decision:
        """Send the signal `name` with `payload` (a dict or a model), as the engine delivers
        one from AMQP, HTTP or the CLI. `signal_id`: its idempotency key (default: a new one
        per call); send the same one twice to test a duplicate."""
        body = payload.model_dump(mode="json") if isinstance(payload, BaseModel) else payload
        self._signals += 1
        return self.feed(
            SignalReceived(name, signal_id or f"{name}-{self._signals}", dict(body or {}))
        )

    def _wait_timeouts(self) -> set[datetime]:
        return {
            s.due_at
            for s in self.state.steps
            if s.status == StepStatus.RUNNING and s.due_at is not None and self._is_wait(s)
        }

    def _is_wait(self, step: StepState) -> bool:
        return step.item is None and self.definition.steps[step.index].wait

    # -- what happened ------------------------------------------------------------------------

    @property
    def status(self) -> SagaStatus:
        """The saga's status; a `str` enum, so `t.status == "compensated"` works."""
        return self.state.status

    @property
    def output(self) -> dict[str, Any] | None:
        return self.state.output

    @property
    def waiting_for(self) -> list[str]:
        """The signals the saga waits for now: its running wait steps."""
        return [
            s.name
            for s in self.state.steps
            if s.status == StepStatus.RUNNING and s.due_at is not None and self._is_wait(s)
        ]

    @property
    def error(self) -> dict[str, Any] | None:
        return self.state.error

    @property
    def results(self) -> dict[str, Any]:
        """The results of the steps that succeeded, by step name."""
        return self.state.results()

    def step(self, name: str) -> StepState:
        found = self.state.step(name)
        if found is None:
            names = [s.name for s in self.state.steps]
            raise SagaTestError(f"saga {self.definition.name!r} has no step {name!r}: {names}")
        return found

    @property
    def commands(self) -> list[Command]:
        """Every command dispatched, in order (each attempt, each compensation)."""
        return [c for d in self.decisions for c in d.commands]

    def sent(self, kind: Kind | None = None) -> list[str]:
        """The names of the commands dispatched (of `kind` only, when given), in order."""
        return [c.command for c in self.commands if kind is None or c.kind == kind]

    def command(
        self, name: str, *, attempt: int | None = None, kind: Kind | None = None
    ) -> Command:
        """The last command dispatched named `name` (or for step `name`), of that attempt and
        kind when given."""
        found = [
            c
            for c in self.commands
            if name in (c.command, c.step)
            and (attempt is None or c.attempt == attempt)
            and (kind is None or c.kind == kind)
        ]
        if not found:
            wanted = (
                name + (f" attempt {attempt}" if attempt else "") + (f" {kind}" if kind else "")
            )
            sent = [f"{c.command} ({c.kind} #{c.attempt})" for c in self.commands]
            raise SagaTestError(f"no command {wanted} was sent; sent: {sent}")
        return found[-1]

    @property
    def history(self) -> list[HistoryEntry]:
        return [h for d in self.decisions for h in d.history]

    def entry(self, event: str, step: str | None = None) -> HistoryEntry:
        """The last history entry `event` (of `step`, when given)."""
        found = [h for h in self.history if h.event == event and step in (None, h.step)]
        if not found:
            seen = [(h.event.value, h.step) for h in self.history]
            raise SagaTestError(f"no {event!r} in the history: {seen}")
        return found[-1]

    @property
    def outcomes(self) -> list[OutcomeEvent]:
        """The outcome events published (`saga.events`)."""
        return [e for d in self.decisions for e in d.events]

    @property
    def requests(self) -> list[tuple[str, StartSaga | CancelSaga]]:
        """Child sagas' starts and cancels."""
        return [r for d in self.decisions for r in d.requests]
