"""Operators' actions on a saga: pause, resume, retry, skip a step, mark a compensation
done. Each is refused (with the reason) when it does not apply to the saga as it stands."""

from __future__ import annotations

from orchestrator.event_names import HistoryEvent
from orchestrator.events import (
    MarkCompensated,
    OperatorEvent,
    PauseRequested,
    ResumeRequested,
    RetryRequested,
    SkipRequested,
    TimersDue,
)
from orchestrator.state import SagaStatus, StepState, StepStatus
from orchestrator.transition.advance import advance, begin_step
from orchestrator.transition.dispatch import dispatch
from orchestrator.transition.scratch import Transition, after, due
from orchestrator.transition.timers import on_timers


def operate(b: Transition, event: OperatorEvent) -> None:
    """An operator's action; refused (b.refuse) with the reason when it does not apply."""
    status = b.status
    if isinstance(event, PauseRequested):
        if status not in (SagaStatus.RUNNING, SagaStatus.COMPENSATING):
            b.refuse(f"only a running or compensating saga can be paused; it is {status.value}")
            return
        b.resume_status = status
        b.set_status(SagaStatus.PAUSED)
        b.record(HistoryEvent.SAGA_PAUSED, detail={"reason": event.reason})
    elif isinstance(event, ResumeRequested):
        if status != SagaStatus.PAUSED:
            b.refuse(f"only a paused saga can be resumed; it is {status.value}")
            return
        b.set_status(b.phase)
        b.resume_status = None
        b.record(HistoryEvent.SAGA_RESUMED, detail={"reason": event.reason})
        on_timers(b, TimersDue())  # what came due while paused
        advance(b)
    elif isinstance(event, RetryRequested):
        if status != SagaStatus.FAILED:
            b.refuse(f"only a failed (parked) saga can be retried; it is {status.value}")
            return
        b.record(HistoryEvent.SAGA_RETRIED, detail={"reason": event.reason})
        if parked_phase(b) == SagaStatus.COMPENSATING:
            _resume_compensating(b)
            for s in b.steps:
                if s.status == StepStatus.COMPENSATING and not s.in_flight:
                    dispatch(b, s, "compensation", retry_base=s.compensation_attempt)
        else:
            _resume_running(b)
            for s in parked_actions(b):
                if s.status == StepStatus.FAILED and s.attempt == 0:
                    # Never sent (its guard, until= or items= said no): begin it afresh, so
                    # the guard is checked again against the fixed world.
                    begin_step(b, s)
                else:
                    dispatch(b, s, "action", retry_base=s.attempt)
        advance(b)
    elif isinstance(event, SkipRequested):
        skip(b, event)
    else:
        mark_compensated(b, event)


def parked_phase(b: Transition) -> SagaStatus:
    if b.resume_status is not None:
        return b.resume_status
    compensating = b.cancel_reason is not None or any(
        s.status in (StepStatus.COMPENSATING, StepStatus.COMPENSATED) for s in b.steps
    )
    return SagaStatus.COMPENSATING if compensating else SagaStatus.RUNNING


def parked_actions(b: Transition) -> list[StepState]:
    """Steps whose action stopped for good past the pivot (or at it, unanswered), or was cut
    off by the deadline."""
    pivot = b.definition.pivot_index
    return [
        s
        for s in b.steps
        if (
            s.status == StepStatus.FAILED
            and pivot is not None
            and (b.position(s) > pivot or b.unanswered_pivot(s, (s.error or {}).get("type")))
        )
        or (
            s.status == StepStatus.RUNNING
            and not s.in_flight
            and s.due_at is None
            and not b.is_map(s)  # a map step waits on its items, it is not parked itself
        )
    ]


def _resume_running(b: Transition) -> None:
    b.resume_status = None
    b.set_status(SagaStatus.RUNNING)
    if due(b.deadline_at, b.now):  # a fresh budget, or the deadline would park it again
        b.deadline_at = after(b.now, b.definition.deadline)


def _resume_compensating(b: Transition) -> None:
    b.resume_status = None
    b.set_status(SagaStatus.COMPENSATING)
    # The saga ends with the reason it was compensating for, not the park it got past.
    b.error = None if b.error is None else b.error.cause
    b.compensation_deadline_at = after(b.now, b.definition.compensation_deadline)


def skip(b: Transition, event: SkipRequested) -> None:
    step = next((s for s in b.steps if s.name == event.step), None)
    if step is None:
        b.refuse(f"no step named {event.step!r}; steps: {', '.join(s.name for s in b.steps)}")
        return
    parked = b.status == SagaStatus.FAILED and parked_phase(b) == SagaStatus.RUNNING
    ahead = b.status == SagaStatus.PAUSED and step.status == StepStatus.PENDING
    if not (parked and step in parked_actions(b)) and not ahead:
        b.refuse(
            f"step {step.name!r} is {step.status.value} and the saga {b.status.value}: only a "
            "step parked at or past the pivot, or a pending step of a paused saga, can be skipped"
        )
        return
    b.steps[step.index] = step.moved(
        StepStatus.SKIPPED, result=event.result, command_id=None, due_at=None
    )
    b.record(
        HistoryEvent.STEP_SKIPPED,
        step.name,
        {"reason": event.reason, "by": "operator", "result": event.result},
    )
    if parked:
        _resume_running(b)
        advance(b)


def mark_compensated(b: Transition, event: MarkCompensated) -> None:
    if b.status != SagaStatus.FAILED or parked_phase(b) != SagaStatus.COMPENSATING:
        b.refuse(
            f"the saga is {b.status.value}, not parked while compensating: nothing to mark "
            "(past the pivot, use retry or skip)"
        )
        return
    parked = [s for s in b.steps if s.status == StepStatus.COMPENSATING and not s.in_flight]
    if not parked:
        b.refuse("no compensation is parked; use retry to carry on compensating")
        return
    for s in parked:
        b.steps[s.index] = s.moved(StepStatus.COMPENSATED, command_id=None, due_at=None)
        b.record(HistoryEvent.STEP_MARKED_COMPENSATED, s.name, {"note": event.reason})
    _resume_compensating(b)
    advance(b)
