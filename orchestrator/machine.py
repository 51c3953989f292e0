"""The pure saga state machine: `decide(definition, state, event, now) -> Decision`.

No I/O, no clock, no randomness: the shell loads the state, calls `decide`, and persists the
new state, history and outgoing messages in one transaction. The events and the Decision are
in events.py, one transition's working in the transition package (its handlers of replies,
cancels and undos, timers, signals), operators' actions in operators.py.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any
from uuid import UUID

from orchestrator.event_names import HistoryEvent
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
    SignalReceived,
    SkipRequested,
    TimersDue,
    UndoRequested,
    child_key,
    command_id,
    idempotency_key,
)
from orchestrator.messages import ParentRef
from orchestrator.operators import operate
from orchestrator.saga import Saga
from orchestrator.state import SagaState, SagaStatus, StepState
from orchestrator.transition.advance import advance
from orchestrator.transition.cancels import on_cancel, on_undo
from orchestrator.transition.replies import on_reply
from orchestrator.transition.scratch import Transition, after
from orchestrator.transition.signals import on_signal
from orchestrator.transition.timers import on_timers

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
    "SignalReceived",
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
    t = Transition(definition, state, now)
    t.record(HistoryEvent.SAGA_STARTED, detail={"version": definition.version})
    if cancel_reason is not None:
        t.cancel_reason = cancel_reason
        t.record(
            HistoryEvent.SAGA_CANCEL_ACCEPTED,
            detail={"reason": cancel_reason, "before_start": True},
        )
        t.begin_compensation()
    advance(t)
    return replace(t.build(), search=(*definition.search_values("input", input), *t.search))


# Each event type and the handler that works it into the transition.
HANDLERS: Mapping[type[Event], Callable[[Transition, Any], None]] = {
    ReplyReceived: on_reply,
    CancelRequested: on_cancel,
    TimersDue: on_timers,
    UndoRequested: on_undo,
    SignalReceived: on_signal,
    PauseRequested: operate,
    ResumeRequested: operate,
    RetryRequested: operate,
    SkipRequested: operate,
    MarkCompensated: operate,
}


def decide(definition: Saga, state: SagaState, event: Event, now: datetime) -> Decision:
    t = Transition(definition, state, now)
    HANDLERS[type(event)](t, event)
    if t.refused is not None:
        return Decision(state=state, refused=t.refused)
    return t.build()
