"""The pure saga state machine: `decide(definition, state, event, now) -> Decision`.

No I/O, no clock, no randomness: the shell loads the state, calls `decide`, and persists the
new state, history and outgoing messages in one transaction. The events and the Decision are
in events.py, one transition's working in transition.py, operators' actions in operators.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any
from uuid import UUID

from orchestrator.definition import Saga
from orchestrator.events import (
    CancelRequested,
    Decision,
    Event,
    HistoryEntry,
    MarkCompensated,
    OperatorEvent,
    PauseRequested,
    ReplyReceived,
    ResumeRequested,
    RetryRequested,
    SkipRequested,
    TimersDue,
    UndoRequested,
    child_key,
    command_id,
    idempotency_key,
)
from orchestrator.messages import ParentRef
from orchestrator.operators import operate
from orchestrator.state import SagaState, SagaStatus, StepState
from orchestrator.transition import Transition, after

__all__ = [
    "CancelRequested",
    "Decision",
    "Event",
    "HistoryEntry",
    "MarkCompensated",
    "OperatorEvent",
    "PauseRequested",
    "ReplyReceived",
    "ResumeRequested",
    "RetryRequested",
    "SkipRequested",
    "TimersDue",
    "UndoRequested",
    "child_key",
    "command_id",
    "decide",
    "idempotency_key",
    "start",
]


def start(
    definition: Saga,
    *,
    saga_id: UUID,
    key: str,
    input: dict[str, Any],
    now: datetime,
    cancel_reason: str | None = None,
    parent: ParentRef | None = None,
    trace: Mapping[str, str] | None = None,
) -> Decision:
    """A new saga. With `cancel_reason` (a cancel arrived before the start) it ends at once.
    `parent`: the parent step a child saga answers when it ends. `trace`: the W3C trace
    context of the start message, carried on by every message the saga sends."""
    state = SagaState(
        saga_id=saga_id,
        name=definition.name,
        version=definition.version,
        key=key,
        status=SagaStatus.RUNNING,
        input=input,
        steps=tuple(StepState(name=s.name, index=i) for i, s in enumerate(definition.steps)),
        created_at=now,
        updated_at=now,
        deadline_at=after(now, definition.deadline),
        parent=parent,
        status_since=now,
        trace=dict(trace) if trace else None,
    )
    b = Transition(definition, state, now)
    b.record("saga_started", detail={"version": definition.version})
    if cancel_reason is not None:
        b.cancel_reason = cancel_reason
        b.record("saga_cancel_accepted", detail={"reason": cancel_reason, "before_start": True})
        b.begin_compensation()
    b.advance()
    return b.build()


def decide(definition: Saga, state: SagaState, event: Event, now: datetime) -> Decision:
    b = Transition(definition, state, now)
    if isinstance(event, ReplyReceived):
        b.on_reply(event.reply)
    elif isinstance(event, CancelRequested):
        b.on_cancel(event.reason)
    elif isinstance(event, TimersDue):
        b.on_timers(event.unconsumed)
    elif isinstance(event, UndoRequested):
        b.on_undo(event)
    else:
        operate(b, event)
    if b.refused is not None:
        return Decision(state=state, refused=b.refused)
    return b.build()
