"""A failed attempt: tried again later while its retry policy and its step's
schedule-to-close budget allow, else an action fails for good and a compensation parks the
saga."""

from __future__ import annotations

from dataclasses import replace

from orchestrator import time_limits
from orchestrator.error_info import ErrorInfo
from orchestrator.event_names import HistoryEvent
from orchestrator.state import TIMEOUT_ERROR, SagaStatus, StepState, StepStatus
from orchestrator.time_limits import Limits
from orchestrator.transition.advance import failed_for_good
from orchestrator.transition.scratch import Transition


def action_failed(t: Transition, step: StepState, error: ErrorInfo) -> None:
    if t.phase == SagaStatus.RUNNING:
        final = retry_later(t, step, error, "action")
        if final is None:
            return
        error = final
    stored = error.to_dict()
    t.steps[step.index] = step.moved(StepStatus.FAILED, command_id=None, due_at=None, error=stored)
    t.record(HistoryEvent.STEP_FAILED, step.name, {"attempt": step.attempt, "error": stored})
    failed_for_good(t, step, error)


def compensation_failed(t: Transition, step: StepState, error: ErrorInfo) -> None:
    final = retry_later(t, step, error, "compensation")
    if final is None:
        return
    error = final
    # Parked: the step stays `compensating` (it is not undone) and the saga waits for a human.
    t.steps[step.index] = replace(step, command_id=None, due_at=None, error=error.to_dict())
    if t.status == SagaStatus.FAILED:
        # A compensation of the same stage ran out after another parked the saga: it is
        # parked beside it; the saga's park (its error, where it resumes) stays as it was.
        t.record(
            HistoryEvent.COMPENSATION_PARKED,
            step.name,
            {"attempt": step.compensation_attempt, "error": error.to_dict()},
        )
        return
    t.finish(
        SagaStatus.FAILED,
        error=ErrorInfo(
            type="compensation_failed",
            step=step.name,
            message=(
                f"compensation failed after {step.compensation_attempt} attempt(s): {error.summary}"
            ),
            cause=t.error,  # why it was compensating; restored when it carries on
        ),
    )


def retry_later(
    t: Transition, step: StepState, error: ErrorInfo, kind: time_limits.Kind
) -> ErrorInfo | None:
    """Schedule the next attempt of the step's action or compensation (`kind`) if its policy
    allows one: None. Else the error it fails with: `error` when the policy has run out or
    the error is not retryable, a schedule-to-close timeout when the step's budget has no
    room for the next attempt."""
    spec = t.spec(step)
    if kind == "action":
        retry, attempt, status = spec.retry, step.attempt, StepStatus.RUNNING
    else:
        retry, attempt = spec.compensation_retry, step.compensation_attempt
        status = StepStatus.COMPENSATING
    if not retry.retries(error) or retry.exhausted(attempt - step.retry_base):
        return error
    assert step.command_id is not None
    due = t.now + retry.delay(attempt, str(step.command_id))
    if not time_limits.retry_fits(step, due):
        if error.timeout == "schedule_to_close":
            return error
        budget = Limits.of(spec, kind).seconds("schedule_to_close")
        return replace(
            timeout_error(budget, "schedule_to_close"),
            message=f"the step's schedule-to-close budget of {budget:g}s leaves no room "
            f"for attempt {attempt + 1}; last attempt: {error.summary}",
            cause=error,
        )
    stored = error.to_dict()
    t.steps[step.index] = step.moved(status, command_id=None, due_at=due, error=stored)
    t.record(
        HistoryEvent.STEP_RETRY_SCHEDULED
        if kind == "action"
        else HistoryEvent.COMPENSATION_RETRY_SCHEDULED,
        step.name,
        {"attempt": attempt, "error": stored, "due_at": due.isoformat()},
    )
    return None


def timeout_error(seconds: float, kind: str = "start_to_close") -> ErrorInfo:
    """The error of an attempt (or a saga) that ran out of time; `kind` names the limit."""
    what = {"heartbeat": "no heartbeat", "schedule_to_close": "not finished"}
    return ErrorInfo(
        type=TIMEOUT_ERROR,
        timeout=kind,
        message=f"{what.get(kind, 'no reply')} within {seconds:g}s ({kind.replace('_', '-')})",
        retryable=True,
    )
