"""Where a saga's wait steps stand, for those who look at sagas: `saga status` and `saga list`,
the HTTP API's list and detail, the dashboard. Read from the saga's state and its definition
only (a running wait step and a sleep look alike without the definition); what a signal does
to a saga is in transition/signals.py."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Literal

from orchestrator.saga import Saga
from orchestrator.state import SagaState, StepState, StepStatus
from orchestrator.steps import OnTimeout
from orchestrator.transition.waits import signal_of

# pending: not begun, no signal yet; held: not begun, a signal kept for it; waiting: begun,
# waiting for its signal now; taken: its signal is its result; ended: skipped, timed out,
# failed or undone without one.
WaitStage = Literal["pending", "held", "waiting", "taken", "ended"]


@dataclass(frozen=True)
class WaitView:
    """A wait step as an operator sees it."""

    signal: str
    stage: WaitStage
    timeout: float
    on_timeout: OnTimeout
    # While waiting: since when, and when the wait times out.
    since: datetime | None = None
    until: datetime | None = None
    # Held or taken: the signal's id (the sender's idempotency key) and when it came.
    signal_id: str | None = None
    received_at: datetime | None = None

    def describe(self) -> str:
        """One line for a person: `waiting for signal X since T, until T'` and the like."""
        if self.stage == "waiting":
            return (
                f"waiting for signal {self.signal} since {_moment(self.since)}, "
                f"until {_moment(self.until)}"
            )
        if self.stage == "held":
            return (
                f"signal {self.signal} held (id {self.signal_id}, received "
                f"{_moment(self.received_at)}): taken when the step begins"
            )
        if self.stage == "taken":
            return f"signal {self.signal} taken (id {self.signal_id})"
        if self.stage == "pending":
            return f"will wait for signal {self.signal} (at most {self.timeout:g} s)"
        return ""


def wait_view(definition: Saga, step: StepState) -> WaitView | None:
    """The step's wait, or None when the definition has no wait step of its name."""
    if step.item is not None or step.name not in definition.waits():
        return None
    spec = definition.step(step.name)
    assert spec.wait_timeout is not None
    view = WaitView(step.name, "ended", spec.wait_timeout, spec.on_timeout)
    signal = signal_of(step)
    if signal is not None:
        view = replace(
            view,
            signal_id=str(signal["signal_id"]),
            received_at=_parse(signal.get("received_at")),
        )
    if step.status == StepStatus.PENDING:
        return replace(view, stage="pending" if signal is None else "held")
    if step.status == StepStatus.RUNNING and step.command_id is None:
        return replace(view, stage="waiting", since=step.started_at, until=step.due_at)
    if step.status == StepStatus.SUCCEEDED and signal is not None:
        return replace(view, stage="taken")
    return view


def waits(definition: Saga | None, state: SagaState) -> dict[str, WaitView]:
    """The saga's wait steps by name (none when its definition is not known here)."""
    if definition is None:
        return {}
    views = ((step.name, wait_view(definition, step)) for step in state.steps)
    return {name: view for name, view in views if view is not None}


def waiting_for(views: dict[str, WaitView]) -> list[str]:
    """The signals the saga waits for now."""
    return [name for name, view in views.items() if view.stage == "waiting"]


def _parse(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _moment(value: datetime | None) -> str:
    return "?" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
