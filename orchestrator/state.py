"""Saga and step state: immutable values, with every allowed status move in one table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

from orchestrator.messages import ParentRef


class SagaStatus(StrEnum):
    RUNNING = "running"
    COMPENSATING = "compensating"
    COMPLETED = "completed"
    COMPENSATED = "compensated"
    CANCELLED = "cancelled"
    FAILED = "failed"  # parked: needs an operator
    PAUSED = "paused"


class StepStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    COMPENSATING = "compensating"
    COMPENSATED = "compensated"
    SKIPPED = "skipped"


# Statuses in which the engine does nothing more on its own.
FINISHED = frozenset(
    {SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.CANCELLED, SagaStatus.FAILED}
)

SAGA_MOVES: dict[SagaStatus, frozenset[SagaStatus]] = {
    SagaStatus.RUNNING: frozenset(
        {SagaStatus.COMPENSATING, SagaStatus.COMPLETED, SagaStatus.FAILED, SagaStatus.PAUSED}
    ),
    SagaStatus.COMPENSATING: frozenset(
        {SagaStatus.COMPENSATED, SagaStatus.CANCELLED, SagaStatus.FAILED, SagaStatus.PAUSED}
    ),
    # Resume goes back to where the pause began; a step that fails for good while paused
    # parks the saga at once (it needs an operator either way).
    SagaStatus.PAUSED: frozenset({SagaStatus.RUNNING, SagaStatus.COMPENSATING, SagaStatus.FAILED}),
    # An operator's retry, skip or mark-compensated resumes a parked saga.
    SagaStatus.FAILED: frozenset({SagaStatus.RUNNING, SagaStatus.COMPENSATING}),
    # Only a child saga, when its parent undoes the step that started it.
    SagaStatus.COMPLETED: frozenset({SagaStatus.COMPENSATING}),
    SagaStatus.COMPENSATED: frozenset(),
    SagaStatus.CANCELLED: frozenset(),
}

STEP_MOVES: dict[StepStatus, frozenset[StepStatus]] = {
    # PENDING -> SKIPPED/FAILED: a false guard (or an operator's skip); nothing was sent.
    StepStatus.PENDING: frozenset({StepStatus.RUNNING, StepStatus.SKIPPED, StepStatus.FAILED}),
    # RUNNING -> RUNNING is the next attempt of a retried step; -> SKIPPED an operator's skip.
    StepStatus.RUNNING: frozenset(
        {StepStatus.RUNNING, StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.SKIPPED}
    ),
    StepStatus.SUCCEEDED: frozenset({StepStatus.COMPENSATING}),
    # A step that timed out may have acted after all: it is compensated too. A failed step
    # past the pivot parks the saga; an operator retries it (RUNNING) or skips it.
    StepStatus.FAILED: frozenset({StepStatus.COMPENSATING, StepStatus.RUNNING, StepStatus.SKIPPED}),
    StepStatus.COMPENSATING: frozenset({StepStatus.COMPENSATING, StepStatus.COMPENSATED}),
    StepStatus.COMPENSATED: frozenset(),
    StepStatus.SKIPPED: frozenset(),
}


class IllegalTransition(RuntimeError):
    """A bug: code tried a status move the tables above do not allow."""


def check_saga_move(old: SagaStatus, new: SagaStatus) -> None:
    if old != new and new not in SAGA_MOVES[old]:
        raise IllegalTransition(f"saga status {old} -> {new} is not allowed")


def check_step_move(old: StepStatus, new: StepStatus) -> None:
    if new not in STEP_MOVES[old]:
        raise IllegalTransition(f"step status {old} -> {new} is not allowed")


TIMEOUT_ERROR = "timeout"
# A success reply whose result failed the step's `result=` model: the action took effect.
INVALID_RESULT_ERROR = "invalid_result"


@dataclass(frozen=True)
class StepState:
    name: str
    index: int
    status: StepStatus = StepStatus.PENDING
    attempt: int = 0
    compensation_attempt: int = 0
    # The command awaiting a reply; None while nothing is in flight (e.g. waiting to retry).
    command_id: UUID | None = None
    # When the in-flight command times out, or when the next attempt is due.
    due_at: datetime | None = None
    result: Any = None
    error: dict[str, Any] | None = None
    # When the participant was first heard from for the in-flight attempt (heartbeat or
    # reply): from then on the start-to-close timeout applies instead of schedule-to-start.
    started_at: datetime | None = None
    # The details of the latest heartbeat (a checkpoint): stored, and sent with the next
    # attempt so a retried long step resumes instead of starting over.
    progress: Any = None
    # Attempts made before an operator's retry: the retry policy counts from here again.
    retry_base: int = 0
    # When the in-flight (or last) command was sent: step latency is measured from here.
    dispatched_at: datetime | None = None
    # A map step's item: its number, and the item its commands carry. Item steps are added
    # when the map step begins, after the definition's steps, named `<map step>[<item>]`.
    item: int | None = None
    # An item step's item; a child step's input; for a step (or map step) with `payload=`
    # what its commands carry as `payload`. None otherwise: they carry the saga's input.
    # A wait step's: the signal it holds or took, `{"signal_id", "payload", "received_at"}`.
    payload: Any = None
    # The end of the step's schedule-to-close budget (its action's, or once it is being
    # undone its compensation's): no attempt runs and no retry is scheduled past it.
    close_at: datetime | None = None

    @property
    def of(self) -> str | None:
        """The map step an item belongs to."""
        return None if self.item is None else self.name.rpartition("[")[0]

    @property
    def in_flight(self) -> bool:
        return self.command_id is not None and self.status in (
            StepStatus.RUNNING,
            StepStatus.COMPENSATING,
        )

    @property
    def outcome_uncertain(self) -> bool:
        """The participant may have acted without telling us: the last attempt timed out, or
        its failure was retryable. A retryable failure speaks for one delivery only: another
        delivery of the same command (a redelivery after a crash, a relay's copy) may have
        committed the effect before it, so an undo must be sent; a participant whose action
        never happened answers it as a null compensation (the barrier does). A non-retryable
        failure is final: the barrier stores it, and any later delivery replays it."""
        if self.error is None:
            return False
        return self.error.get("type") == TIMEOUT_ERROR or self.error.get("retryable") is True

    @property
    def acted(self) -> bool:
        """The action replied success but its result failed the step's `result=` model: the
        step failed, yet its effect is there, so it is undone like a success."""
        return self.error is not None and self.error.get("type") == INVALID_RESULT_ERROR

    def moved(self, status: StepStatus, **changes: Any) -> StepState:
        check_step_move(self.status, status)
        return replace(self, status=status, **changes)


@dataclass(frozen=True)
class SagaState:
    saga_id: UUID
    name: str
    version: int
    key: str
    status: SagaStatus
    input: dict[str, Any]
    steps: tuple[StepState, ...]
    created_at: datetime
    updated_at: datetime
    cancel_reason: str | None = None
    error: dict[str, Any] | None = None
    # Bumped on every saved transition; adapters use it as an optimistic check.
    revision: int = 0
    # The whole saga's deadline (steps), and the compensation phase's, once it began.
    deadline_at: datetime | None = None
    compensation_deadline_at: datetime | None = None
    # Where a paused saga resumes, or a parked (failed) one continues on an operator's retry:
    # RUNNING or COMPENSATING.
    resume_status: SagaStatus | None = None
    # A child saga's parent step, answered when this saga ends.
    parent: ParentRef | None = None
    # When the saga entered its current status (operators ask "compensating for how long?").
    status_since: datetime | None = None
    # The W3C trace context its start message carried (`traceparent`, maybe `tracestate`):
    # every message the saga sends carries it on (orchestrator/trace.py). Set once, at start.
    trace: dict[str, str] | None = None
    # What the definition's `output=` made of the completed saga. None without `output=`,
    # before completion, or when the function raised (history: output_failed).
    output: dict[str, Any] | None = None

    @property
    def next_due_at(self) -> datetime | None:
        """The next timer: a step's timeout or retry wait, or a deadline. None while paused
        (timers hold) or finished."""
        if self.status not in (SagaStatus.RUNNING, SagaStatus.COMPENSATING):
            return None
        dues = [
            s.due_at
            for s in self.steps
            if s.due_at is not None and s.status in (StepStatus.RUNNING, StepStatus.COMPENSATING)
        ]
        deadline = (
            self.deadline_at if self.status == SagaStatus.RUNNING else self.compensation_deadline_at
        )
        if deadline is not None:
            dues.append(deadline)
        return min(dues) if dues else None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def step(self, name: str) -> StepState | None:
        return next((s for s in self.steps if s.name == name), None)

    def results(self) -> dict[str, Any]:
        return step_results(self.steps)


def step_results(steps: Sequence[StepState]) -> dict[str, Any]:
    """Results of the steps that succeeded, and of those an operator skipped with one. A map
    step's items are not listed: the map step's result gathers theirs."""
    return {
        s.name: s.result
        for s in steps
        if s.item is None
        and (
            s.status == StepStatus.SUCCEEDED
            or (s.status == StepStatus.SKIPPED and s.result is not None)
        )
    }
