"""What the engine sends, as outbox rows: written in the transaction that decided them, so
they leave only if it commits, and published after its commit (orchestrator/unit_of_work.py)."""

from __future__ import annotations

from collections.abc import Mapping
from uuid import UUID

from orchestrator import trace
from orchestrator.error_info import ErrorInfo
from orchestrator.event_names import Outcome
from orchestrator.machine import Decision
from orchestrator.messages import (
    REPLY_QUEUE,
    CancelSaga,
    Exchange,
    OutboxMessage,
    OutcomeEvent,
    ParentRef,
    Reply,
    ReplyError,
    StartSaga,
)
from orchestrator.state import SagaState


def decision_messages(
    decision: Decision, state: SagaState, *, name_spans: bool = False
) -> list[OutboxMessage]:
    """What a decision sends: commands, outcome events, a child saga's start or cancel, a
    child's answer to its parent; every one carries the trace context the saga started with.

    `name_spans` (spans are made, adapters/tracing): each message names one of the saga's
    spans as its parent instead of the starter's span: a command its attempt's span (so the
    participant's handler span nests under it), a child's start or undo the span of the
    parent step's attempt that sent it, anything else the saga's span."""
    headers: Mapping[str, str] | None = state.trace or None

    def attempt(command_id: UUID) -> Mapping[str, str] | None:
        if not name_spans:
            return headers
        return trace.span_headers(state.trace, state.saga_id, trace.attempt_span_id(command_id))

    def request(body: StartSaga | CancelSaga) -> Mapping[str, str] | None:
        return headers if body.parent is None else attempt(body.parent.command_id)

    if name_spans:
        headers = trace.span_headers(state.trace, state.saga_id, trace.saga_span_id(state.saga_id))
    return (
        [
            OutboxMessage(
                exchange=Exchange.COMMANDS,
                routing_key=c.command,
                body=c.model_dump_json().encode(),
                message_id=str(c.command_id),
                reply_to=REPLY_QUEUE,
                headers=attempt(c.command_id),
            )
            for c in decision.commands
        ]
        + [
            OutboxMessage(
                exchange=Exchange.EVENTS,
                routing_key=e.routing_key,
                body=e.model_dump_json().encode(),
                message_id=f"{e.saga_id}:{e.status}:{state.revision}",
                headers=headers,
            )
            for e in decision.events
        ]
        + [
            OutboxMessage(
                exchange=Exchange.SAGAS,
                routing_key=routing_key,
                body=body.model_dump_json().encode(),
                message_id=f"{state.saga_id}:{state.revision}:{routing_key}:{n}",
                headers=request(body),
            )
            for n, (routing_key, body) in enumerate(decision.requests)
        ]
        + [
            OutboxMessage(
                exchange=Exchange.DEFAULT,
                routing_key=REPLY_QUEUE,
                body=r.model_dump_json().encode(),
                message_id=f"{r.command_id}:{state.revision}",
                headers=headers,
            )
            for r in decision.replies
        ]
    )


def rejection_messages(
    saga: str | None,
    key: str | None,
    error: ErrorInfo,
    *,
    parent: ParentRef | None,
    message_id: str,
) -> list[OutboxMessage]:
    """What a start that started nothing sends: a `<saga>.rejected` outcome event with
    `error`, and for a child saga a failure reply to its parent's step."""
    outcome = OutcomeEvent(
        saga_id=None, saga=saga, key=key, status=Outcome.REJECTED, error=error.to_dict()
    )
    messages = [
        OutboxMessage(
            exchange=Exchange.EVENTS,
            routing_key=outcome.routing_key,
            body=outcome.model_dump_json().encode(),
            message_id=message_id,
        )
    ]
    if parent is not None:
        answer = Reply(
            command_id=parent.command_id,
            saga_id=parent.saga_id,
            step=parent.step,
            outcome="failure",
            error=ReplyError(type=error.type, message=error.message, retryable=False),
        )
        messages.append(
            OutboxMessage(
                exchange=Exchange.DEFAULT,
                routing_key=REPLY_QUEUE,
                body=answer.model_dump_json().encode(),
                message_id=f"{parent.command_id}:rejected",
            )
        )
    return messages
