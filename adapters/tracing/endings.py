"""What a committed transition ended: the attempts that were in flight before it and are not
after it, each with how it ended, and the saga itself. Read from the states before and after
and the history recorded (orchestrator/unit_of_work.py `Committed`), so an attempt cut off
without an entry of its own (a deadline, an operator) ends too. No OpenTelemetry here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal
from uuid import UUID

from orchestrator.event_names import HistoryEvent
from orchestrator.state import TIMEOUT_ERROR, SagaState, StepState, StepStatus
from orchestrator.unit_of_work import Committed

Kind = Literal["action", "compensation"]


class AttemptOutcome(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # its reply said so (retried or not), or its result was invalid
    TIMED_OUT = "timed_out"  # a time limit ended it (`saga.timeout` says which)
    CUT_OFF = "cut_off"  # ended without its reply: a deadline or an operator moved on


# The history entries that end an attempt of each kind, and the outcome each gives it.
_ENDS: dict[Kind, dict[HistoryEvent, AttemptOutcome]] = {
    "action": {
        HistoryEvent.STEP_SUCCEEDED: AttemptOutcome.SUCCEEDED,
        HistoryEvent.STEP_TIMED_OUT: AttemptOutcome.TIMED_OUT,
        HistoryEvent.STEP_RETRY_SCHEDULED: AttemptOutcome.FAILED,
        HistoryEvent.STEP_FAILED: AttemptOutcome.FAILED,
    },
    "compensation": {
        HistoryEvent.STEP_COMPENSATED: AttemptOutcome.SUCCEEDED,
        HistoryEvent.COMPENSATION_TIMED_OUT: AttemptOutcome.TIMED_OUT,
        HistoryEvent.COMPENSATION_RETRY_SCHEDULED: AttemptOutcome.FAILED,
        HistoryEvent.COMPENSATION_PARKED: AttemptOutcome.FAILED,
    },
}
# The entries of a saga's end (a parked saga, `saga_failed`, ends too: it may rest for days).
SAGA_ENDS = frozenset(
    {
        HistoryEvent.SAGA_COMPLETED,
        HistoryEvent.SAGA_COMPENSATED,
        HistoryEvent.SAGA_CANCELLED,
        HistoryEvent.SAGA_FAILED,
    }
)


@dataclass(frozen=True)
class Ended:
    """One attempt that ended: which, when it was sent, how it ended."""

    step: str
    kind: Kind
    attempt: int
    command_id: UUID
    dispatched_at: datetime | None
    outcome: AttemptOutcome
    error_type: str | None = None
    timeout: str | None = None  # the limit that ended it: start_to_close, heartbeat, ...


def attempts_ended(change: Committed) -> list[Ended]:
    if change.before is None:
        return []
    ended: list[Ended] = []
    for before in change.before.steps:
        if not before.in_flight:
            continue
        after = _same_step(change.after, before)
        if after is not None and after.in_flight and after.command_id == before.command_id:
            continue  # still in flight (a heartbeat, or another step's transition)
        ended.append(_ended(before, after, change))
    return ended


def saga_ended(change: Committed) -> bool:
    return any(entry.event in SAGA_ENDS for entry in change.history)


def _ended(before: StepState, after: StepState | None, change: Committed) -> Ended:
    assert before.command_id is not None
    kind: Kind = "action" if before.status == StepStatus.RUNNING else "compensation"
    attempt = before.attempt if kind == "action" else before.compensation_attempt
    found = _entry(change, before.name, kind, attempt)
    if found is not None:
        outcome, detail = found
        error = detail.get("error")
        error = error if isinstance(error, Mapping) else {}
        # Which limit ran out: on a timed-out entry, or on the error of one that failed so
        # (a saga's deadline cutting it off, the step's schedule-to-close budget); a
        # participant's handler cut off at its start-to-close limit answers type `timeout`.
        timeout = detail.get("timeout", error.get("timeout"))
        if isinstance(timeout, str) or error.get("type") == TIMEOUT_ERROR:
            outcome = AttemptOutcome.TIMED_OUT
        error_type = "timeout" if outcome == AttemptOutcome.TIMED_OUT else error.get("type")
        return Ended(
            before.name,
            kind,
            attempt,
            before.command_id,
            before.dispatched_at,
            outcome,
            error_type=None if error_type is None else str(error_type),
            timeout=timeout if isinstance(timeout, str) else None,
        )
    # No entry of its own: a compensation that failed for good parks the saga, naming the
    # step (its error is on the step); else the attempt was cut off without its reply.
    if kind == "compensation" and _parked_by(change, before.name):
        error = after.error if after is not None else None
        return Ended(
            before.name,
            kind,
            attempt,
            before.command_id,
            before.dispatched_at,
            AttemptOutcome.FAILED,
            error_type=None if error is None else str(error.get("type")),
        )
    return Ended(
        before.name, kind, attempt, before.command_id, before.dispatched_at, AttemptOutcome.CUT_OFF
    )


def _parked_by(change: Committed, step: str) -> bool:
    """Whether this transition parked the saga because the step's compensation failed."""
    return any(
        entry.event == HistoryEvent.SAGA_FAILED
        and (entry.detail or {}).get("type") == "compensation_failed"
        and (entry.detail or {}).get("step") == step
        for entry in change.history
    )


def _entry(
    change: Committed, step: str, kind: Kind, attempt: int
) -> tuple[AttemptOutcome, Mapping[str, Any]] | None:
    """The first history entry of this transition that ends the step's attempt."""
    for entry in change.history:
        outcome = _ENDS[kind].get(entry.event)
        detail = entry.detail or {}
        if outcome is not None and entry.step == step and detail.get("attempt") == attempt:
            return outcome, detail
    return None


def _same_step(state: SagaState, step: StepState) -> StepState | None:
    if step.index < len(state.steps) and state.steps[step.index].name == step.name:
        return state.steps[step.index]
    return state.step(step.name)
