"""A participant's reply to a command: a success moves the saga on (unless its result fails
the step's `result=` model), a failure is retried or fails the step, a heartbeat keeps the
attempt alive; a reply to no attempt in flight is ignored (and recorded, unless it is a
heartbeat)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from orchestrator import time_limits
from orchestrator.error_info import ErrorInfo
from orchestrator.event_names import HistoryEvent
from orchestrator.events import ReplyReceived, command_id
from orchestrator.messages import Reply
from orchestrator.state import INVALID_RESULT_ERROR, SagaStatus, StepState, StepStatus
from orchestrator.time_limits import Limits
from orchestrator.transition.advance import advance
from orchestrator.transition.retries import action_failed, compensation_failed
from orchestrator.transition.scratch import Transition


def on_reply(t: Transition, event: ReplyReceived) -> None:
    reply = event.reply
    step = next((s for s in t.steps if s.name == reply.step), None)
    if step is None:
        t.record(HistoryEvent.REPLY_IGNORED, reply.step, {"reason": "unknown step", **_ids(reply)})
        return
    answered = earlier_success(t, step, reply)
    if answered is not None:
        # Every attempt shares the step's idempotency key: the participant answers the
        # newer attempt with this same success (its barrier replays it), so it is the step's.
        succeeded(t, replace(step, command_id=reply.command_id), reply, answered)
        return
    if not step.in_flight or step.command_id != reply.command_id:
        ignore(t, step, reply)
        return
    if reply.outcome == "heartbeat":
        heard(t, step, reply)
        return
    if step.status == StepStatus.RUNNING:
        if reply.outcome != "success":
            action_failed(t, step, _error(reply))
        elif (refused := invalid_result(t.spec(step).result, reply)) is not None:
            # The action took effect: the step keeps the result (its compensation gets it).
            action_failed(t, replace(step, result=reply.result), refused)
        else:
            succeeded(t, step, reply)
    elif reply.outcome == "success":
        t.steps[step.index] = step.moved(StepStatus.COMPENSATED, due_at=None)
        t.record(
            HistoryEvent.STEP_COMPENSATED,
            step.name,
            {"attempt": step.compensation_attempt, **took(t, step)},
        )
        advance(t)
    else:
        compensation_failed(t, step, _error(reply))


# How much of a validation error a step's error keeps (it is stored, shown and logged).
MAX_INVALID_RESULT_MESSAGE = 1000


def invalid_result(model: type[BaseModel] | None, reply: Reply) -> ErrorInfo | None:
    """Why a success reply's result fails the step's `result=` model, or None when it
    passes. Not retryable: the participant answered; asking again gets the same answer."""
    if model is None:
        return None
    problems = mismatch(model, reply.result, "the result")
    if problems is None:
        return None
    return ErrorInfo(type=INVALID_RESULT_ERROR, message=problems, retryable=False)


def mismatch(model: type[BaseModel], value: Any, what: str) -> str | None:
    """Why `value` (`what`: "the result") fails `model`, or None when it passes. The
    message names the fields and what is wrong with them, never their values (which may be
    secrets)."""
    whole = what.removeprefix("the ")
    try:
        model.model_validate(value)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in e['loc']) or f'({whole})'}: {e['msg']}"
            for e in exc.errors(include_url=False, include_input=False)
        )
        message = f"{what} does not match {model.__name__}: {problems}"
        if len(message) > MAX_INVALID_RESULT_MESSAGE:
            message = message[: MAX_INVALID_RESULT_MESSAGE - 1] + "…"
        return message
    return None


def heard(t: Transition, step: StepState, reply: Reply) -> None:
    """A heartbeat: the participant has taken the command (the first one ends the start
    window) and is alive. It never extends the start-to-close timeout; with a heartbeat
    timeout it moves the next heartbeat's latest moment. An action's details are a
    checkpoint for its next attempt."""
    kind: Literal["action", "compensation"] = (
        "compensation" if step.status == StepStatus.COMPENSATING else "action"
    )
    heard = replace(step, started_at=step.started_at or t.now)
    if kind == "action" and reply.result is not None:
        heard = replace(heard, progress=reply.result)
    limits = Limits.of(t.spec(step), kind)
    t.steps[step.index] = replace(heard, due_at=time_limits.heard_due(limits, heard, t.now))
    if step.started_at is None and kind == "action":
        t.record(HistoryEvent.STEP_STARTED, step.name, {"attempt": step.attempt})


def took(t: Transition, step: StepState) -> dict[str, float]:
    """How long the command took, dispatch to reply (the step latency operators watch)."""
    if step.dispatched_at is None:
        return {}
    return {"seconds": round((t.now - step.dispatched_at).total_seconds(), 3)}


def succeeded(t: Transition, step: StepState, reply: Reply, answered: int | None = None) -> None:
    t.steps[step.index] = step.moved(
        StepStatus.SUCCEEDED, result=reply.result, error=None, due_at=None
    )
    detail: dict[str, Any] = {"attempt": step.attempt, **took(t, step)}
    if answered is not None:
        detail["answered_by_attempt"] = answered
    t.record(HistoryEvent.STEP_SUCCEEDED, step.name, detail)
    advance(t)


def earlier_success(t: Transition, step: StepState, reply: Reply) -> int | None:
    """The attempt, if `reply` is a success of an earlier attempt of this step's action that
    came after it timed out, while the step still retries (its next attempt waiting or in
    flight). A result that fails the step's `result=` model is left to the attempt in flight."""
    if reply.outcome != "success" or step.status != StepStatus.RUNNING:
        return None
    if t.status not in (SagaStatus.RUNNING, SagaStatus.COMPENSATING):
        return None  # parked or paused: an operator's, not a late answer's, to move on
    if step.item is not None:
        return None  # a map's item: its map counts its items' answers as they come
    if step.command_id == reply.command_id:
        return None
    if invalid_result(t.spec(step).result, reply) is not None:
        return None
    for attempt in range(1, step.attempt + 1):
        if command_id(t.original.saga_id, step.name, "action", attempt) == reply.command_id:
            return attempt
    return None


def ignore(t: Transition, step: StepState, reply: Reply) -> None:
    if step.command_id == reply.command_id:
        reason = "duplicate"
    elif step.in_flight or step.status in (StepStatus.RUNNING, StepStatus.COMPENSATING):
        reason = "stale attempt"
    else:
        reason = "late"
    if reply.outcome != "heartbeat":
        t.record(HistoryEvent.REPLY_IGNORED, step.name, {"reason": reason, **_ids(reply)})


def _error(reply: Reply) -> ErrorInfo:
    """A failure reply's error; one that gives none counts as retryable."""
    if reply.error:
        e = reply.error
        return ErrorInfo(type=e.type, message=e.message, retryable=e.retryable)
    return ErrorInfo(type="error", message="", retryable=True)


def _ids(reply: Reply) -> dict[str, Any]:
    return {"command_id": str(reply.command_id), "outcome": reply.outcome}
