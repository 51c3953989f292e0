"""What the state machine takes in and gives out: events (a reply, a cancel, timers, an
operator's action, a parent's undo), and the Decision a transition produces (the new state,
commands, outcome events, history, child-saga requests and replies to a parent).

Command ids are derived from (saga, step, kind, attempt), so replaying a decision after a
crash yields the same ids.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from uuid import UUID

from orchestrator.event_names import HistoryEvent
from orchestrator.messages import CancelSaga, Command, OutcomeEvent, ParentRef, Reply, StartSaga
from orchestrator.search_fields import SearchValue
from orchestrator.state import SagaState

COMMAND_NAMESPACE = uuid.UUID("6f1c3a52-2b0e-4c1e-9a4d-5b8e7f3d2a10")


@dataclass(frozen=True)
class CancelRequested:
    reason: str


@dataclass(frozen=True)
class ReplyReceived:
    reply: Reply


@dataclass(frozen=True)
class TimersDue:
    """The clock passed the saga's `next_due_at`: timeouts and retry waits are handled.

    `unconsumed`: command name -> the queue it is sent to, for the commands whose queue had
    no consumer when the shell last looked. A timeout of such a command says so: waiting
    longer will not help while nobody takes the command (a participant not running, or a
    misspelled service in the command's name)."""

    unconsumed: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SignalReceived:
    """A signal from outside for the wait step named `signal`: its payload becomes the
    step's result. `signal_id` is the sender's idempotency key: the same id again changes
    nothing."""

    signal: str
    signal_id: str
    payload: Mapping[str, Any]


@dataclass(frozen=True)
class PauseRequested:
    """Operator: dispatch nothing new and hold the timers until resumed."""

    reason: str


@dataclass(frozen=True)
class ResumeRequested:
    reason: str


@dataclass(frozen=True)
class RetryRequested:
    """Operator: continue a parked (failed) saga from where it stopped, with a fresh retry
    budget for the step (or compensation) that ran out."""

    reason: str


@dataclass(frozen=True)
class SkipRequested:
    """Operator: treat `step` as done, with `result` as its result (a parked step past the
    pivot, or a pending step of a paused saga)."""

    step: str
    result: Any
    reason: str


@dataclass(frozen=True)
class MarkCompensated:
    """Operator: the parked compensation was done by hand; carry on undoing the rest."""

    reason: str


@dataclass(frozen=True)
class UndoRequested:
    """A parent saga undoes the child step that started this saga: cancel it if it runs,
    compensate it if it completed, and answer `parent` once it is undone."""

    reason: str
    parent: ParentRef


OperatorEvent = PauseRequested | ResumeRequested | RetryRequested | SkipRequested | MarkCompensated
# Operator actions by the name operators know them by (the CLI's commands, the API's paths).
ACTION_NAMES: dict[type[OperatorEvent], str] = {
    PauseRequested: "pause",
    ResumeRequested: "resume",
    RetryRequested: "retry",
    SkipRequested: "skip",
    MarkCompensated: "mark-compensated",
}
Event = CancelRequested | ReplyReceived | TimersDue | UndoRequested | SignalReceived | OperatorEvent
# A message to the `sagas` exchange: a child saga's start, or its cancel.
SagaRequest = tuple[Literal["start", "cancel"], StartSaga | CancelSaga]


@dataclass(frozen=True)
class HistoryEntry:
    event: HistoryEvent
    step: str | None = None
    detail: dict[str, Any] | None = None


@dataclass(frozen=True)
class Decision:
    state: SagaState
    commands: tuple[Command, ...] = ()
    events: tuple[OutcomeEvent, ...] = ()
    history: tuple[HistoryEntry, ...] = ()
    # Why an operator's action was refused; nothing else in the decision changed then.
    refused: str | None = None
    # Starts and cancels of child sagas, and a child's answer to its parent.
    requests: tuple[SagaRequest, ...] = ()
    replies: tuple[Reply, ...] = ()
    # Search field values to store with the saga: its input's when it starts, its output's
    # when it completes (orchestrator/search_fields.py).
    search: tuple[SearchValue, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.commands or self.events or self.history or self.requests or self.replies)


def command_id(saga_id: UUID, step: str, kind: str, attempt: int) -> UUID:
    return uuid.uuid5(COMMAND_NAMESPACE, f"{saga_id}:{step}:{kind}:{attempt}")


def idempotency_key(saga_id: UUID, step: str, kind: str) -> str:
    return f"{saga_id}:{step}:{kind}"


def child_key(saga_id: UUID, step: str) -> str:
    """The start key of the child saga a step starts: one child per parent step."""
    return f"{saga_id}:{step}"
