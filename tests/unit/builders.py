"""Small sagas and a driver for the pure state machine, shared by the machine's unit tests.

`Run` drives a saga event by event on the public test kit (`orchestrator.testing`): the test
sets the clock (explicit `now` datetimes) and feeds one event per call, the decision of which
each method returns.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, TypedDict

from pydantic import BaseModel

from orchestrator.definition import Saga
from orchestrator.machine import (
    CancelRequested,
    Decision,
    Event,
    MarkCompensated,
    PauseRequested,
    ResumeRequested,
    RetryRequested,
    SkipRequested,
    TimersDue,
)
from orchestrator.messages import Command, Reply
from orchestrator.retry import Retry
from orchestrator.state import SagaState, SagaStatus, StepState, StepStatus
from orchestrator.testing import SAGA_ID, START, Answer, SagaTest, fail, heartbeat, succeed

T0 = START

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
    """Drives one saga of `definition` event by event, on the public test kit
    (`orchestrator.testing.SagaTest`) with nothing answered on its own: each method feeds
    one event at `now` (a datetime the test may set) and returns that decision."""

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
        self.kit = SagaTest(
            definition,
            input if input is not None else {"n": 1, "flag": True},
            key=key,
            saga_id=SAGA_ID,
            now=T0,
            auto=False,
            cancel_reason=cancel_reason,
        )

    @property
    def state(self) -> SagaState:
        return self.kit.state

    @state.setter
    def state(self, state: SagaState) -> None:
        self.kit.state = state

    @property
    def decisions(self) -> list[Decision]:
        return self.kit.decisions

    def feed(self, event: Event) -> Decision:
        return self.kit.feed(event, at=self.now)

    # -- what happened ------------------------------------------------------------------------

    @property
    def commands(self) -> list[Command]:
        return self.kit.commands

    @property
    def sent(self) -> list[tuple[str, str]]:
        """(kind, step) of every command, in dispatch order."""
        return [(c.kind, c.step) for c in self.commands]

    @property
    def history(self) -> list[tuple[str, str | None]]:
        return [(h.event, h.step) for h in self.kit.history]

    def detail(self, event: str, step: str | None = None) -> dict[str, Any]:
        """The detail of the last history entry `event` (of `step`, when given)."""
        return self.kit.entry(event, step).detail or {}

    @property
    def outcomes(self) -> list[str]:
        return [e.status for e in self.kit.outcomes]

    def status(self) -> SagaStatus:
        """A method, not a property: each event fed changes it, and mypy would keep a
        property's value narrowed by one assert across the calls that feed the next events."""
        return self.kit.status

    def step(self, name: str) -> StepState:
        return self.kit.step(name)

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

    def _reply(self, command: Command, answer: Answer) -> Decision:
        return self.kit.reply(command, answer, at=self.now)

    def succeed(self, result: Any = None, command: Command | None = None) -> Decision:
        cmd = command or self.last
        return self._reply(cmd, succeed({"done": cmd.step} if result is None else result))

    def fail(
        self,
        message: str = "boom",
        *,
        type: str = "business",
        retryable: bool = True,
        command: Command | None = None,
    ) -> Decision:
        return self._reply(command or self.last, fail(type, message, retryable=retryable))

    def heartbeat(self, details: Any = None, command: Command | None = None) -> Decision:
        return self._reply(command or self.last, heartbeat(0, details=details))

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
