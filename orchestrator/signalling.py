"""Delivering a signal to a saga (Engine.signal): find the saga by id or key, let the machine
take, hold or refuse it, and announce a refusal as `<saga>.signal_refused`. One unit of work;
the same from AMQP, HTTP and the CLI."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal
from uuid import UUID

from orchestrator import machine
from orchestrator.event_names import HistoryEvent, Outcome
from orchestrator.events import SignalReceived
from orchestrator.messages import Exchange, OutboxMessage, OutcomeEvent, SignalSaga
from orchestrator.registry import Registry
from orchestrator.state import SagaState, SagaStatus
from orchestrator.transition.signals import Refusal, refusal_error
from orchestrator.unit_of_work import UnitOfWork

SignalResult = Literal["taken", "held", "duplicate", "refused"]


@dataclass(frozen=True)
class SignalOutcome:
    """What became of a signal: `taken` (the waiting step has it as its result), `held`
    (its wait has not begun: taken when it does), `duplicate` (this signal_id was held or
    taken already: nothing changed) or `refused` (`reason`, a Refusal, and `why`)."""

    result: SignalResult
    saga_id: UUID | None = None
    saga: str | None = None
    status: SagaStatus | None = None
    reason: str | None = None
    why: str | None = None


async def deliver(
    uow: UnitOfWork, registry: Registry, request: SignalSaga, now: datetime, actor: str
) -> SignalOutcome:
    states = await _targets(uow, request)
    if len(states) != 1:
        return await _refuse_unfound(uow, request, states)
    state = states[0]
    event = SignalReceived(request.signal, request.signal_id, request.payload)
    decision = machine.decide(registry.get(state.name, state.version), state, event, now)
    if decision.changed:
        await uow.write(decision, actor, before=state)
    result: SignalResult = "duplicate"
    reason: str | None = None
    why: str | None = None
    for entry in decision.history:
        detail = entry.detail or {}
        if entry.event == HistoryEvent.SIGNAL_REFUSED:
            result, reason, why = "refused", str(detail["reason"]), str(detail["why"])
        elif entry.event == HistoryEvent.SIGNAL_HELD:
            result = "held"
        elif entry.event == HistoryEvent.WAIT_FINISHED:
            result = "taken"
    return SignalOutcome(
        result,
        saga_id=state.saga_id,
        saga=state.name,
        status=decision.state.status,
        reason=reason,
        why=why,
    )


async def _refuse_unfound(
    uow: UnitOfWork, request: SignalSaga, states: list[SagaState]
) -> SignalOutcome:
    """No saga, or sagas of several names, have the key: refuse and announce it. There is
    no saga to record it in, so a warning and the observer are its only trace here."""
    if states:
        names = ", ".join(sorted(s.name for s in states))
        reason = Refusal.AMBIGUOUS_KEY
        why = f"key {request.key!r} belongs to sagas {names}: name the saga"
    else:
        reason, why = Refusal.UNKNOWN_SAGA, _not_found(request)
    await uow.send([_refusal_message(request, reason, why)])
    detail = {"signal": request.signal, "signal_id": request.signal_id, "reason": reason}
    uow.warn(HistoryEvent.SIGNAL_REFUSED, {"saga": request.saga, **detail, "why": why})
    return SignalOutcome("refused", saga=request.saga, reason=reason, why=why)


async def _targets(uow: UnitOfWork, request: SignalSaga) -> list[SagaState]:
    if request.saga_id is not None:
        found = await uow.tx.lock(request.saga_id)
        if found is None or (request.saga is not None and found.name != request.saga):
            return []
        return [found]
    assert request.key is not None
    return await uow.tx.lock_by_key(request.key, request.saga)


def _not_found(request: SignalSaga) -> str:
    of = "" if request.saga is None else f" named {request.saga!r}"
    if request.saga_id is not None:
        return f"no saga{of} has id {request.saga_id}"
    return f"no saga{of} has key {request.key!r}"


def _refusal_message(request: SignalSaga, reason: str, why: str) -> OutboxMessage:
    """The `<saga>.signal_refused` event of a signal no single saga could be found for. Its
    message id comes from the signal, so a redelivered signal announces the same event."""
    error = refusal_error(request.signal, request.signal_id, reason, why)
    event = OutcomeEvent(
        saga_id=request.saga_id,
        saga=request.saga,
        key=request.key,
        status=Outcome.SIGNAL_REFUSED,
        error=error.to_dict(),
    )
    target = request.saga_id or request.key
    return OutboxMessage(
        exchange=Exchange.EVENTS,
        routing_key=event.routing_key,
        body=event.model_dump_json().encode(),
        message_id=f"signal-refused:{target}:{request.signal_id}",
    )
