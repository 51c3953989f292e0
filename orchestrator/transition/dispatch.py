"""Sending a step's next attempt: a command to its participant, or for a child step the
start (or, to undo it, the cancel) of the child saga."""

from __future__ import annotations

from typing import Any, Literal
from uuid import UUID

from orchestrator import time_limits
from orchestrator.event_names import HistoryEvent
from orchestrator.events import child_key, command_id, idempotency_key
from orchestrator.messages import CancelSaga, Command, ParentRef, StartSaga
from orchestrator.state import StepState, StepStatus
from orchestrator.steps import StepDefinition
from orchestrator.time_limits import Limits
from orchestrator.transition.scratch import Transition


def dispatch(
    t: Transition,
    step: StepState,
    kind: Literal["action", "compensation"],
    *,
    retry_base: int | None = None,
) -> None:
    """Send the step's next attempt. `retry_base`: an operator's retry starts the retry
    policy's count afresh from there."""
    spec = t.spec(step)
    limits = Limits.of(spec, kind)
    if kind == "action":
        assert spec.command is not None
        attempt = step.attempt + 1
        name, status = spec.command, StepStatus.RUNNING
    else:
        assert spec.compensation is not None
        attempt = step.compensation_attempt + 1
        name, status = spec.compensation, StepStatus.COMPENSATING
    cid = command_id(t.original.saga_id, step.name, kind, attempt)
    # The budget begins with the phase's first attempt, and afresh on an operator's retry.
    close = (
        time_limits.close_at(limits, t.now)
        if attempt == 1 or retry_base is not None
        else step.close_at
    )
    window = time_limits.dispatch_window(limits, t.now, close)
    counters = {"attempt": attempt} if kind == "action" else {"compensation_attempt": attempt}
    if retry_base is not None:
        counters["retry_base"] = retry_base
    t.steps[step.index] = step.moved(
        status,
        command_id=cid,
        due_at=window.expires_at,
        started_at=None,
        dispatched_at=t.now,
        close_at=close,
        **counters,
    )
    t.record(
        HistoryEvent.STEP_DISPATCHED if kind == "action" else HistoryEvent.COMPENSATION_DISPATCHED,
        step.name,
        {"attempt": attempt, "command": name, "command_id": str(cid)},
    )
    if spec.child is not None:
        request_child(t, step, spec.child, kind, cid)
        return
    payload, item = carried(t, step)
    t.commands.append(
        Command(
            command_id=cid,
            saga_id=t.original.saga_id,
            saga=t.original.name,
            step=step.name,
            kind=kind,
            attempt=attempt,
            idempotency_key=idempotency_key(t.original.saga_id, step.name, kind),
            payload=payload,
            expires_at=window.expires_at,
            timeout=window.timeout,
            heartbeat_timeout=limits.heartbeat,
            report_start=limits.report_start,
            progress=step.progress if kind == "action" else None,
            item=item,
            action_result=action_result(step, spec, kind),
            version=t.original.version,
            command=name,
        )
    )


def action_result(
    step: StepState, spec: StepDefinition, kind: Literal["action", "compensation"]
) -> Any:
    """What a compensation is told its action answered: for a step that declares `result=`
    (its result is part of what it and its participant agree on), the result its action
    replied, if any. Other steps' commands never carry the field, so participants on an SDK
    that refuses unknown fields keep taking them."""
    if kind != "compensation" or spec.result is None:
        return None
    return step.result


def carried(t: Transition, step: StepState) -> tuple[dict[str, Any], Any]:
    """A command's `payload` and `item`: what the step's `payload=` built (for a map item,
    its map step's), else the saga's input; a map item's item."""
    if step.of is None:
        built, item = step.payload, None
    else:
        built, item = t.steps[t.position(step)].payload, step.payload
    return (dict(t.original.input) if built is None else built), item


def request_child(
    t: Transition,
    step: StepState,
    child: str,
    kind: Literal["action", "compensation"],
    cid: UUID,
) -> None:
    """A child step's command is a start (or, to undo it, a cancel) of the child saga,
    which answers `cid` when it ends."""
    parent = ParentRef(saga_id=t.original.saga_id, step=step.name, command_id=cid, kind=kind)
    key = child_key(t.original.saga_id, step.name)
    if kind == "action":
        payload = step.payload if step.payload is not None else dict(t.original.input)
        t.requests.append(("start", StartSaga(saga=child, key=key, input=payload, parent=parent)))
    else:
        reason = f"parent saga {t.original.name} {t.original.saga_id} undoes it"
        t.requests.append(("cancel", CancelSaga(key=key, saga=child, reason=reason, parent=parent)))
