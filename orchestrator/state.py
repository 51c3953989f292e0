"""Saga and step state: immutable values, with every allowed status move in one table."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID


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
        {SagaStatus.COMPENSATED, SagaStatus.CANCELLED, SagaStatus.FAILED}
    ),
    SagaStatus.PAUSED: frozenset({SagaStatus.RUNNING, SagaStatus.COMPENSATING}),
    SagaStatus.FAILED: frozenset({SagaStatus.RUNNING, SagaStatus.COMPENSATING}),
    SagaStatus.COMPLETED: frozenset(),
    SagaStatus.COMPENSATED: frozenset(),
    SagaStatus.CANCELLED: frozenset(),
}

STEP_MOVES: dict[StepStatus, frozenset[StepStatus]] = {
    StepStatus.PENDING: frozenset({StepStatus.RUNNING, StepStatus.SKIPPED}),
    # RUNNING -> RUNNING is the next attempt of a retried step.
    StepStatus.RUNNING: frozenset({StepStatus.RUNNING, StepStatus.SUCCEEDED, StepStatus.FAILED}),
    StepStatus.SUCCEEDED: frozenset({StepStatus.COMPENSATING}),
    # A step that timed out may have acted after all: it is compensated too.
    StepStatus.FAILED: frozenset({StepStatus.COMPENSATING}),
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

    @property
    def in_flight(self) -> bool:
        return self.command_id is not None and self.status in (
            StepStatus.RUNNING,
            StepStatus.COMPENSATING,
        )

    @property
    def outcome_uncertain(self) -> bool:
        """The last attempt timed out: the participant may have acted without telling us."""
        return self.error is not None and self.error.get("type") == TIMEOUT_ERROR

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

    @property
    def next_due_at(self) -> datetime | None:
        dues = [
            s.due_at
            for s in self.steps
            if s.due_at is not None and s.status in (StepStatus.RUNNING, StepStatus.COMPENSATING)
        ]
        return min(dues) if dues else None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def step(self, name: str) -> StepState | None:
        return next((s for s in self.steps if s.name == name), None)

    def results(self) -> dict[str, Any]:
        return {s.name: s.result for s in self.steps if s.status == StepStatus.SUCCEEDED}
