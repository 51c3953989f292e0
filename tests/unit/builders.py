"""Small sagas and a driver for the pure state machine, shared by the machine's unit tests.

`Run` holds a fake clock (explicit `now` datetimes), the current state and every decision
made so far; its methods feed `decide` one event each and return that decision.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict

from pydantic import BaseModel

from orchestrator.definition import Saga
from orchestrator.machine import (
    CancelRequested,
    Decision,
    Event,
    MarkCompensated,
    PauseRequested,
    ReplyReceived,
    ResumeRequested,
    RetryRequested,
    SkipRequested,
    TimersDue,
    decide,
    start,
)
from orchestrator.messages import Command, Reply, ReplyError
from orchestrator.retry import Retry
from orchestrator.state import SagaStatus, StepState, StepStatus

T0 = datetime(2026, 1, 1, 12, tzinfo=UTC)
SAGA_ID = uuid.UUID("00000000-0000-4000-8000-000000000007")

# Quick, predictable retry policies: no jitter, so waits are exact.
ONCE = Retry(max_attempts=1)
TWICE = Retry(max_attempts=2, initial_interval=1, jitter=0)


class Limits(TypedDict, total=False):
    """A remote step's time limits in seconds, as keyword arguments of `Saga.remote`."""

    timeout: float | None
    heartbeat_timeout: float | None
    schedule_to_start: float | None
    schedule_to_close: float | None
    compensation_timeout: float | None
    compensation_heartbeat_timeout: float | None
    compensation_schedule_to_close: float | None


class Input(BaseModel):
    n: int = 0
    flag: bool = True


def shop(**saga_options: Any) -> Saga:
    """An empty saga named "shop" (steps are added by the test), timeout 10 s by default."""
    options: dict[str, Any] = {"timeout": 10, **saga_options}
    return Saga("shop", version=1, input=Input, **options)


def three_steps(**saga_options: Any) -> Saga:
    """reserve (compensatable) -> charge (pivot) -> notify (retriable, 3 attempts)."""
    s = shop(**saga_options)
    s.remote("reserve", command="stock.reserve", compensation="stock.release", retry=ONCE)
    s.remote("charge", command="payments.charge", pivot=True, retry=ONCE)
    s.remote("notify", command="mail.send", retry=Retry(max_attempts=3, jitter=0))
    return s


class Run:
    """Drives one saga of `definition` through `decide`."""

    def __init__(
        self,
        definition: Saga,
        input: dict[str, Any] | None = None,
        *,
        key: str = "k-1",
        cancel_reason: str | None = None,
    ) -> None:
        self.definition = definition
        self.now = T0
        first = start(
            definition,
            saga_id=SAGA_ID,
            key=key,
            input=input if input is not None else {"n": 1, "flag": True},
            now=self.now,
            cancel_reason=cancel_reason,
        )
        self.state = first.state
        self.decisions = [first]

    def feed(self, event: Event) -> Decision:
        decision = decide(self.definition, self.state, event, self.now)
        self.state = decision.state
        self.decisions.append(decision)
        return decision

    # -- what happened ------------------------------------------------------------------------

    @property
    def commands(self) -> list[Command]:
        return [c for d in self.decisions for c in d.commands]

    @property
    def sent(self) -> list[tuple[str, str]]:
        """(kind, step) of every command, in dispatch order."""
        return [(c.kind, c.step) for c in self.commands]

    @property
    def history(self) -> list[tuple[str, str | None]]:
        return [(h.event, h.step) for d in self.decisions for h in d.history]

    def detail(self, event: str, step: str | None = None) -> dict[str, Any]:
        """The detail of the last history entry `event` (of `step`, when given)."""
        found = [
            h
            for d in self.decisions
            for h in d.history
            if h.event == event and (step is None or h.step == step)
        ]
        assert found, f"no {event} in history: {self.history}"
        return found[-1].detail or {}

    @property
    def outcomes(self) -> list[str]:
        return [e.status for d in self.decisions for e in d.events]

    def status(self) -> SagaStatus:
        """A method, not a property: each event fed changes it, and mypy would keep a
        property's value narrowed by one assert across the calls that feed the next events."""
        return self.state.status

    def step(self, name: str) -> StepState:
        found = self.state.step(name)
        assert found is not None
        return found

    def due_at(self, name: str) -> datetime:
        """When step `name`'s timer fires; the step must have one."""
        due = self.step(name).due_at
        assert due is not None, f"{name} has no timer: {self.step(name)}"
        return due

    def statuses(self) -> dict[str, StepStatus]:
        return {s.name: s.status for s in self.state.steps}

    @property
    def last(self) -> Command:
        return self.commands[-1]

    def last_for(self, step: str) -> Command:
        return [c for c in self.commands if c.step == step][-1]

    # -- what arrives -------------------------------------------------------------------------

    def succeed(self, result: Any = None, command: Command | None = None) -> Decision:
        cmd = command or self.last
        result = {"done": cmd.step} if result is None else result
        return self.feed(ReplyReceived(reply(cmd, "success", result=result)))

    def fail(
        self,
        message: str = "boom",
        *,
        type: str = "business",
        retryable: bool = True,
        command: Command | None = None,
    ) -> Decision:
        cmd = command or self.last
        error = ReplyError(type=type, message=message, retryable=retryable)
        return self.feed(ReplyReceived(reply(cmd, "failure", error=error)))

    def heartbeat(self, details: Any = None, command: Command | None = None) -> Decision:
        return self.feed(ReplyReceived(reply(command or self.last, "heartbeat", result=details)))

    def at(self, when: datetime) -> Decision:
        assert when >= self.now
        self.now = when
        return self.feed(TimersDue())

    def later(self, seconds: float) -> Decision:
        return self.at(self.now + timedelta(seconds=seconds))

    def when_due(self) -> Decision:
        """Move the clock to the next timer and fire it."""
        due = self.state.next_due_at
        assert due is not None, f"nothing due: {self.state}"
        return self.at(max(due, self.now))

    def cancel(self, reason: str = "changed my mind") -> Decision:
        return self.feed(CancelRequested(reason))

    def pause(self, reason: str = "investigating") -> Decision:
        return self.feed(PauseRequested(reason))

    def resume(self, reason: str = "all clear") -> Decision:
        return self.feed(ResumeRequested(reason))

    def retry(self, reason: str = "fixed the service") -> Decision:
        return self.feed(RetryRequested(reason))

    def skip(self, step: str, result: Any = None, reason: str = "done by hand") -> Decision:
        return self.feed(SkipRequested(step=step, result=result, reason=reason))

    def mark_compensated(self, reason: str = "refunded by hand") -> Decision:
        return self.feed(MarkCompensated(reason))


def reply(cmd: Command, outcome: Any, **fields: Any) -> Reply:
    return Reply(
        command_id=cmd.command_id, saga_id=cmd.saga_id, step=cmd.step, outcome=outcome, **fields
    )


def events(decision: Decision) -> list[str]:
    """The history events of one decision, in order."""
    return [h.event for h in decision.history]
