"""A wait step's beginning, and the signal it holds or takes.

A wait step begins like any step (its guard may skip it) and then sits RUNNING with a due time
and no command: its timeout (a database timer, like a sleep's). The signal it holds or took is
kept in `StepState.payload` as `{"signal_id", "payload", "received_at"}`; once taken, the
payload is also the step's result. Signals arrive through signals.py.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from orchestrator.event_names import HistoryEvent
from orchestrator.events import SignalReceived
from orchestrator.state import StepState, StepStatus
from orchestrator.steps import StepDefinition
from orchestrator.transition.scratch import Transition


def begin_wait(t: Transition, step: StepState, spec: StepDefinition) -> None:
    """Take the signal held for the step, or wait for it until the timeout."""
    assert spec.wait_timeout is not None
    if signal_of(step) is not None:
        take(t, step.moved(StepStatus.RUNNING, started_at=t.now, error=None), held=True)
        return
    until = t.now + timedelta(seconds=spec.wait_timeout)
    # RUNNING with a due time and no command: a timer, like a sleep.
    t.steps[step.index] = step.moved(StepStatus.RUNNING, due_at=until, started_at=t.now, error=None)
    t.record(
        HistoryEvent.WAIT_STARTED,
        step.name,
        {"signal": step.name, "until": until.isoformat(), "timeout": spec.wait_timeout},
    )


def take(t: Transition, step: StepState, *, held: bool) -> None:
    """The running wait takes its signal: the payload is its result."""
    signal = signal_of(step)
    assert signal is not None
    t.steps[step.index] = step.moved(StepStatus.SUCCEEDED, result=signal["payload"], due_at=None)
    t.record(
        HistoryEvent.WAIT_FINISHED,
        step.name,
        {"signal_id": signal["signal_id"], "held": held, "seconds": waited(t, step)},
    )


def signal_of(step: StepState) -> dict[str, Any] | None:
    """The signal a wait step holds or took: `{"signal_id", "payload", "received_at"}`."""
    return step.payload if isinstance(step.payload, dict) else None


def received(t: Transition, event: SignalReceived) -> dict[str, Any]:
    return {
        "signal_id": event.signal_id,
        "payload": dict(event.payload),
        "received_at": t.now.isoformat(),
    }


def waited(t: Transition, step: StepState) -> float:
    if step.started_at is None:
        return 0.0
    return round((t.now - step.started_at).total_seconds(), 3)
