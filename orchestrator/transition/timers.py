"""The clock passed a due time: the saga's deadline (compensate, or park past the pivot),
its compensation deadline (park), and each step's timer: an attempt timed out, a sleep
ended, a wait for a signal timed out, a retry wait is over."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Literal

from orchestrator import time_limits
from orchestrator.error_info import ErrorInfo
from orchestrator.event_names import HistoryEvent
from orchestrator.events import TimersDue
from orchestrator.state import SagaStatus, StepState, StepStatus
from orchestrator.time_limits import Limits
from orchestrator.transition.advance import advance, stop_waiting_steps
from orchestrator.transition.dispatch import dispatch
from orchestrator.transition.retries import action_failed, compensation_failed, timeout_error
from orchestrator.transition.scratch import Transition, due
from orchestrator.transition.signals import wait_timed_out


def on_timers(t: Transition, event: TimersDue) -> None:
    """`event.unconsumed`: command -> queue, for the commands whose queue had no consumer
    at the shell's last look; their timeouts say so."""
    queues = event.unconsumed
    if t.status == SagaStatus.RUNNING and due(t.deadline_at, t.now):
        deadline_passed(t)
    elif t.status == SagaStatus.COMPENSATING and due(t.compensation_deadline_at, t.now):
        compensation_overdue(t)
    if t.status not in (SagaStatus.RUNNING, SagaStatus.COMPENSATING):
        return  # finished, parked, or paused: timers hold
    for index in range(len(t.steps)):
        step = t.steps[index]  # read afresh: an earlier iteration may have moved it
        if step.due_at is None or step.due_at > t.now:
            continue
        spec = t.spec(step)
        if step.status == StepStatus.RUNNING:
            if step.in_flight:
                action_failed(t, step, timed_out(t, step, "action", queues))
            elif spec.sleep:
                t.steps[index] = step.moved(StepStatus.SUCCEEDED, due_at=None)
                t.record(HistoryEvent.SLEEP_FINISHED, step.name)
                advance(t)
            elif spec.wait:
                wait_timed_out(t, step)
            elif t.status == SagaStatus.RUNNING:
                dispatch(t, step, "action")
        elif step.status == StepStatus.COMPENSATING:
            if step.in_flight:
                compensation_failed(t, step, timed_out(t, step, "compensation", queues))
            elif t.status == SagaStatus.COMPENSATING:
                dispatch(t, step, "compensation")


def timed_out(
    t: Transition,
    step: StepState,
    kind: Literal["action", "compensation"],
    unconsumed: Mapping[str, str],
) -> ErrorInfo:
    """Record which limit ended the attempt in flight; its timeout error, which says so
    when the command's queue had no consumer (`unconsumed`: command -> queue)."""
    spec = t.spec(step)
    limits = Limits.of(spec, kind)
    which = time_limits.expired(limits, step, t.now)
    if kind == "action":
        event, attempt, command = HistoryEvent.STEP_TIMED_OUT, step.attempt, spec.command
    else:
        event, attempt, command = (
            HistoryEvent.COMPENSATION_TIMED_OUT,
            step.compensation_attempt,
            spec.compensation,
        )
    detail: dict[str, Any] = {"attempt": attempt, "timeout": which}
    error = timeout_error(limits.seconds(which), which)
    queue = unconsumed.get(command) if command else None
    if queue is not None:
        detail["unconsumed"] = queue
        error = _no_consumer(error, queue, local=spec.local)
    t.record(event, step.name, detail)
    return error


def deadline_passed(t: Transition) -> None:
    assert t.deadline_at is not None
    message = f"the saga did not finish by its deadline {t.deadline_at.isoformat()}"
    t.record(HistoryEvent.SAGA_DEADLINE_EXCEEDED, detail={"deadline_at": t.deadline_at.isoformat()})
    if t.pivot_dispatched():
        # Nothing past the pivot is undone: an operator decides (retry, skip).
        for s in t.steps:
            # In flight: its late reply is then ignored. Waiting to retry: the wait ends.
            # Either way the step is parked: a retry sends a new attempt, or it is skipped.
            # A sleep or a wait for a signal goes on after an operator's retry.
            if s.status == StepStatus.RUNNING and not (t.spec(s).sleep or t.spec(s).wait):
                t.steps[s.index] = replace(s, command_id=None, due_at=None)
        t.finish(
            SagaStatus.FAILED,
            error=ErrorInfo(
                type="deadline_exceeded",
                message=f"{message}, past its pivot: retry or skip the step by hand",
            ),
        )
        return
    t.error = ErrorInfo(type="deadline_exceeded", message=message)
    # The saga's time is up: a step in flight is not waited for. It is cut off as timed
    # out (its outcome unknown, so it is compensated too) and its late reply is ignored.
    cut_off = replace(timeout_error(0, "deadline"), message=message).to_dict()
    for s in t.steps:
        if s.in_flight and s.status == StepStatus.RUNNING:
            t.steps[s.index] = s.moved(
                StepStatus.FAILED, command_id=None, due_at=None, error=cut_off
            )
            t.record(HistoryEvent.STEP_FAILED, s.name, {"attempt": s.attempt, "error": cut_off})
    stop_waiting_steps(t)
    t.begin_compensation()
    t.record(HistoryEvent.SAGA_COMPENSATING, detail={"reason": message})
    advance(t)


def compensation_overdue(t: Transition) -> None:
    assert t.compensation_deadline_at is not None
    at = t.compensation_deadline_at.isoformat()
    t.record(HistoryEvent.COMPENSATION_DEADLINE_EXCEEDED, detail={"deadline_at": at})
    for s in t.steps:
        if s.status == StepStatus.COMPENSATING:
            t.steps[s.index] = replace(s, command_id=None, due_at=None)
    t.finish(
        SagaStatus.FAILED,
        error=ErrorInfo(
            type="compensation_deadline_exceeded",
            message=f"compensation did not finish by {at}; retry it or mark it done",
            cause=t.error,
        ),
    )


def _no_consumer(error: ErrorInfo, queue: str, *, local: bool) -> ErrorInfo:
    """A timeout error that says its command's queue had nobody consuming it."""
    hint = (
        "is `saga worker` running with these SAGA_MODULES?"
        if local
        else "is its participant running, or is the service name misspelled?"
    )
    message = f"{error.message}; nobody consumes {queue}: {hint}"
    return replace(error, message=message, unconsumed=True)
