"""A cancel, and a parent's undo of its child saga. A cancel is accepted until the pivot is
dispatched: the saga compensates and its running children are cancelled too. An undo
compensates a completed child, cancels a running one, and answers the parent once it is
undone."""

from __future__ import annotations

from orchestrator.error_info import ErrorInfo
from orchestrator.event_names import HistoryEvent, Outcome
from orchestrator.events import CancelRequested, UndoRequested, child_key
from orchestrator.messages import CancelSaga
from orchestrator.state import FINISHED, SagaStatus, StepStatus
from orchestrator.transition.advance import advance, stop_waiting_steps
from orchestrator.transition.scratch import Transition


def on_cancel(t: Transition, event: CancelRequested) -> None:
    reason = event.reason
    if t.status in FINISHED:
        refuse_cancel(t, reason, f"the saga is already {t.status.value}")
        return
    if t.phase == SagaStatus.COMPENSATING:
        t.record(
            HistoryEvent.CANCEL_IGNORED, detail={"reason": reason, "why": "already compensating"}
        )
        return
    if t.pivot_dispatched():
        assert t.definition.pivot_index is not None
        name = t.steps[t.definition.pivot_index].name
        refuse_cancel(
            t, reason, f"past the pivot: step {name!r} has been dispatched and is never undone"
        )
        return
    t.cancel_reason = reason
    stop_waiting_steps(t)
    t.begin_compensation()
    t.record(HistoryEvent.SAGA_CANCEL_ACCEPTED, detail={"reason": reason})
    cancel_children(t, reason)
    advance(t)


def cancel_children(t: Transition, reason: str) -> None:
    """Cancellation propagates down: a running child is cancelled, undoes itself, and
    answers the step's action with a failure, so there is nothing left to compensate."""
    for s in t.steps:
        child = t.spec(s).child
        if child is not None and s.status == StepStatus.RUNNING and s.in_flight:
            why = f"parent saga {t.original.name} {t.original.saga_id} cancelled: {reason}"
            key = child_key(t.original.saga_id, s.name)
            t.requests.append(("cancel", CancelSaga(key=key, saga=child, reason=why)))
            t.record(HistoryEvent.CHILD_CANCEL_REQUESTED, s.name, {"child_key": key})


def on_undo(t: Transition, event: UndoRequested) -> None:
    """The parent undoes this child: answer at once if it is undone already, compensate
    it if it completed, cancel it if it runs; it answers the parent once undone."""
    t.parent = event.parent
    t.record(
        HistoryEvent.UNDO_REQUESTED,
        detail={"reason": event.reason, "parent": str(event.parent.saga_id)},
    )
    if t.status in (SagaStatus.COMPENSATED, SagaStatus.CANCELLED):
        t.answer_parent()
    elif t.status == SagaStatus.COMPLETED:
        t.cancel_reason = event.reason
        t.begin_compensation()
        advance(t)
    elif t.status != SagaStatus.FAILED:  # a parked child answers once it is finished
        on_cancel(t, CancelRequested(event.reason))


def refuse_cancel(t: Transition, reason: str, why: str) -> None:
    t.record(HistoryEvent.CANCEL_REFUSED, detail={"reason": reason, "why": why})
    t.emit(Outcome.CANCEL_REFUSED, error=ErrorInfo(type="cancel_refused", message=why))
