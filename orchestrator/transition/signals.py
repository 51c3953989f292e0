"""A signal for a wait step, and a wait's timeout (how a wait begins is in waits.py).

A signal named as a running wait step ends it: the payload is the step's result. A signal
that comes before the step begins is held in the step and taken when it begins. The same
`signal_id` again changes nothing; anything the saga cannot take is refused, recorded and
announced as `<saga>.signal_refused`.
"""

from __future__ import annotations

from dataclasses import replace

from orchestrator.error_info import ErrorInfo
from orchestrator.event_names import HistoryEvent, Outcome
from orchestrator.events import SignalReceived
from orchestrator.state import FINISHED, SagaStatus, StepState, StepStatus
from orchestrator.transition.advance import advance, failed_for_good
from orchestrator.transition.replies import mismatch
from orchestrator.transition.scratch import Transition
from orchestrator.transition.waits import received, signal_of, take, waited

# A wait that timed out with on_timeout="fail": no signal came; asking again will not help.
WAIT_TIMEOUT_ERROR = "wait_timeout"


class Refusal:
    """Why a signal is refused, as the `reason` of its history entry and outcome event."""

    UNKNOWN_SAGA = "unknown_saga"  # no saga has that id or key (Engine.signal)
    AMBIGUOUS_KEY = "ambiguous_key"  # sagas of several names have the key; name one
    NOT_WAITED_FOR = "not_waited_for"  # the definition has no wait step of that name
    FINISHED = "finished"  # the saga is completed, compensated, cancelled or parked
    INVALID_PAYLOAD = "invalid_payload"  # the payload fails the wait's result= model
    WAIT_OVER = "wait_over"  # the wait took another signal, timed out, was skipped or ended
    COMPENSATING = "compensating"  # the saga is undoing its steps: it waits for nothing


def on_signal(t: Transition, event: SignalReceived) -> None:
    spec = next((s for s in t.definition.steps if s.name == event.signal and s.wait), None)
    if spec is None:
        waits = ", ".join(t.definition.waits()) or "no signal at all"
        refuse(
            t,
            event,
            Refusal.NOT_WAITED_FOR,
            f"saga {t.original.name} v{t.original.version} never waits for signal "
            f"{event.signal!r}; it waits for: {waits}",
        )
        return
    step = t.steps[t.definition.position(spec.name)]
    held = signal_of(step)
    if held is not None and held["signal_id"] == event.signal_id:
        return  # a duplicate: the signal was held or taken already
    if t.status in FINISHED:
        refuse(t, event, Refusal.FINISHED, f"the saga is {t.status.value}: it waits for nothing")
        return
    if spec.result is not None:
        problems = mismatch(spec.result, dict(event.payload), "the payload")
        if problems is not None:
            refuse(t, event, Refusal.INVALID_PAYLOAD, problems)
            return
    if held is not None:
        refuse(
            t,
            event,
            Refusal.WAIT_OVER,
            f"step {step.name!r} has signal {held['signal_id']!r} already "
            f"(received {held['received_at']})",
        )
    elif t.phase == SagaStatus.COMPENSATING:
        refuse(t, event, Refusal.COMPENSATING, "the saga is compensating: it waits for nothing")
    elif step.status == StepStatus.PENDING:
        t.steps[step.index] = replace(step, payload=received(t, event))
        t.record(HistoryEvent.SIGNAL_HELD, step.name, {"signal_id": event.signal_id})
    elif step.status == StepStatus.RUNNING:
        take(t, replace(step, payload=received(t, event)), held=False)
        advance(t)
    else:
        why = f"step {step.name!r} is {step.status.value}"
        if step.error is not None:
            why += f": {ErrorInfo.from_dict(step.error).summary}"
        refuse(t, event, Refusal.WAIT_OVER, why)


def wait_timed_out(t: Transition, step: StepState) -> None:
    """No signal came in time: skip the step, or fail it (the saga compensates, or parks)."""
    spec = t.spec(step)
    t.record(
        HistoryEvent.WAIT_TIMED_OUT,
        step.name,
        {"on_timeout": spec.on_timeout, "seconds": waited(t, step)},
    )
    if spec.on_timeout == "skip":
        t.steps[step.index] = step.moved(StepStatus.SKIPPED, due_at=None)
        t.record(HistoryEvent.STEP_SKIPPED, step.name, {"reason": "the wait timed out"})
        advance(t)
        return
    error = ErrorInfo(
        type=WAIT_TIMEOUT_ERROR,
        message=f"no signal {step.name!r} came within {spec.wait_timeout:g} s",
        retryable=False,
    )
    failed = step.moved(StepStatus.FAILED, due_at=None, error=error.to_dict())
    t.steps[step.index] = failed
    t.record(HistoryEvent.STEP_FAILED, step.name, {"attempt": 0, "error": error.to_dict()})
    failed_for_good(t, failed, error)


def refuse(t: Transition, event: SignalReceived, reason: str, why: str) -> None:
    step = event.signal if any(s.name == event.signal for s in t.steps) else None
    detail = {"signal": event.signal, "signal_id": event.signal_id, "reason": reason, "why": why}
    t.record(HistoryEvent.SIGNAL_REFUSED, step, detail)
    t.emit(Outcome.SIGNAL_REFUSED, error=refusal_error(event.signal, event.signal_id, reason, why))


def refusal_error(signal: str, signal_id: str, reason: str, why: str) -> ErrorInfo:
    """The error of a `signal_refused` event: the message says why, `reason` names it."""
    return ErrorInfo(
        type="signal_refused",
        message=why,
        extra={"reason": reason, "signal": signal, "signal_id": signal_id},
    )
