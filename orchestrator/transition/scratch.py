"""`Transition`: the scratch space of one transition. It holds the saga's state while the
machine changes it, collects the commands, events and history the change gives, and
`build()` freezes it into a Decision. The rules that change it are functions of it, in the
other modules of this package."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, Literal

from orchestrator.error_info import ErrorInfo
from orchestrator.event_names import HistoryEvent, Outcome
from orchestrator.events import Decision, HistoryEntry, SagaRequest
from orchestrator.messages import Command, OutcomeEvent, Reply, ReplyError
from orchestrator.saga import Saga
from orchestrator.search_fields import SearchValue
from orchestrator.state import (
    TIMEOUT_ERROR,
    SagaState,
    SagaStatus,
    StepState,
    StepStatus,
    check_saga_move,
    step_results,
)
from orchestrator.steps import GuardContext, StepDefinition

# How a saga that finishes in a status records it, and announces it on `saga.events`.
FINISHES: dict[SagaStatus, tuple[HistoryEvent, Outcome]] = {
    SagaStatus.COMPLETED: (HistoryEvent.SAGA_COMPLETED, Outcome.COMPLETED),
    SagaStatus.COMPENSATED: (HistoryEvent.SAGA_COMPENSATED, Outcome.COMPENSATED),
    SagaStatus.CANCELLED: (HistoryEvent.SAGA_CANCELLED, Outcome.CANCELLED),
    SagaStatus.FAILED: (HistoryEvent.SAGA_FAILED, Outcome.FAILED),
}


class Transition:
    """Mutable scratch space for one transition; `build()` freezes it into a Decision."""

    def __init__(self, definition: Saga, state: SagaState, now: datetime) -> None:
        if definition.name != state.name or definition.version != state.version:
            raise ValueError(
                f"definition {definition.name} v{definition.version} does not match saga "
                f"{state.name} v{state.version}"
            )
        self.definition = definition
        self.original = state
        self.now = now
        self.status = state.status
        self.steps = list(state.steps)
        self.cancel_reason = state.cancel_reason
        # The saga's error as the transition works with it; a dict again in `build()`.
        self.error = None if state.error is None else ErrorInfo.from_dict(state.error)
        self.deadline_at = state.deadline_at
        self.compensation_deadline_at = state.compensation_deadline_at
        self.resume_status = state.resume_status
        self.parent = state.parent
        self.output = state.output
        # Search field values to store: the output's, once it is made.
        self.search: list[SearchValue] = []
        self.requests: list[SagaRequest] = []
        self.replies: list[Reply] = []
        self.refused: str | None = None
        self.commands: list[Command] = []
        self.events: list[OutcomeEvent] = []
        self.history: list[HistoryEntry] = []

    def record(
        self, event: HistoryEvent, step: str | None = None, detail: dict[str, Any] | None = None
    ) -> None:
        self.history.append(HistoryEntry(event=event, step=step, detail=detail))

    def set_status(self, status: SagaStatus) -> None:
        check_saga_move(self.status, status)
        self.status = status

    @property
    def phase(self) -> SagaStatus:
        """What the saga is doing: its status, or while paused the status it resumes to."""
        if self.status == SagaStatus.PAUSED and self.resume_status is not None:
            return self.resume_status
        return self.status

    def set_phase(self, status: SagaStatus) -> None:
        """Move the saga on; while paused, move where it will resume to instead."""
        if self.status == SagaStatus.PAUSED:
            assert self.resume_status is not None
            check_saga_move(self.resume_status, status)
            self.resume_status = status
        else:
            self.set_status(status)

    def begin_compensation(self) -> None:
        self.set_phase(SagaStatus.COMPENSATING)
        self.compensation_deadline_at = after(self.now, self.definition.compensation_deadline)

    def refuse(self, why: str) -> None:
        self.refused = why

    def build(self) -> Decision:
        changed = bool(
            self.commands or self.events or self.history or self.requests or self.replies
        )
        state = replace(
            self.original,
            status=self.status,
            steps=tuple(self.steps),
            cancel_reason=self.cancel_reason,
            error=None if self.error is None else self.error.to_dict(),
            deadline_at=self.deadline_at,
            compensation_deadline_at=self.compensation_deadline_at,
            resume_status=self.resume_status,
            parent=self.parent,
            output=self.output,
            updated_at=self.now if changed else self.original.updated_at,
            status_since=(
                self.now if self.status != self.original.status else self.original.status_since
            ),
        )
        return Decision(
            state=state,
            commands=tuple(self.commands),
            events=tuple(self.events),
            history=tuple(self.history),
            requests=tuple(self.requests),
            replies=tuple(self.replies),
            search=tuple(self.search),
        )

    def spec(self, step: StepState) -> StepDefinition:
        if step.of is None:
            return self.definition.steps[step.index]
        return self.definition.step(step.of)

    def position(self, step: StepState) -> int:
        """Where the step stands in the definition; a map item stands where its map step does."""
        return step.index if step.of is None else self.definition.position(step.of)

    def is_map(self, step: StepState) -> bool:
        """The map step itself (it sends nothing; its items do)."""
        return step.item is None and self.spec(step).map

    def unanswered_pivot(self, step: StepState, error_type: str | None) -> bool:
        """`step` is the pivot and its last attempt ended in `error_type` "timeout": it may
        have taken effect, and it is never undone, so the saga parks there instead of undoing
        what came before."""
        pivot = self.definition.pivot_index
        return pivot is not None and self.position(step) == pivot and error_type == TIMEOUT_ERROR

    def pivot_dispatched(self) -> bool:
        pivot = self.definition.pivot_index
        return pivot is not None and self.steps[pivot].status != StepStatus.PENDING

    def finish(self, status: SagaStatus, *, error: ErrorInfo | None = None) -> None:
        # A parked saga remembers the phase it stopped in: an operator's retry continues it.
        self.resume_status = self.phase if status == SagaStatus.FAILED else None
        self.set_status(status)
        self.error = error
        if status == SagaStatus.COMPLETED and self.definition.output is not None:
            self.output = self.make_output()
            self.search = self.definition.search_values("output", self.output)
        event, outcome = FINISHES[status]
        self.record(event, detail=None if error is None else error.to_dict())
        self.emit(outcome, error=error)
        self.answer_parent()

    def answer_parent(self) -> None:
        """A child saga that has ended tells its parent's step: completed is the action's
        success, undone (compensated or cancelled) its failure, or the undo's success. A
        parked child says nothing yet: the parent waits until an operator finishes it."""
        if self.parent is None or self.status == SagaStatus.FAILED:
            return
        completed = self.status == SagaStatus.COMPLETED
        wanted = completed if self.parent.kind == "action" else not completed
        outcome: Literal["success", "failure"] = "success" if wanted else "failure"
        error = None
        if outcome == "failure":
            error = ReplyError(
                type=f"child_{self.status.value}",
                message=f"child saga {self.original.name} {self.original.saga_id} ended "
                f"{self.status.value}: {self.error.summary if self.error else 'error'}",
                retryable=False,
            )
        self.replies.append(
            Reply(
                command_id=self.parent.command_id,
                saga_id=self.parent.saga_id,
                step=self.parent.step,
                outcome=outcome,
                result=self.saga_result() if completed and self.parent.kind == "action" else None,
                error=error,
            )
        )
        self.record(
            HistoryEvent.PARENT_ANSWERED,
            detail={
                "parent": str(self.parent.saga_id),
                "step": self.parent.step,
                "outcome": outcome,
            },
        )

    def emit(self, outcome: Outcome, *, error: ErrorInfo | None = None) -> None:
        self.events.append(
            OutcomeEvent(
                saga_id=self.original.saga_id,
                saga=self.original.name,
                key=self.original.key,
                status=outcome,
                result=self.saga_result() if outcome == Outcome.COMPLETED else None,
                error=None if error is None else error.to_dict(),
            )
        )

    def results(self) -> dict[str, Any]:
        return step_results(self.steps)

    def make_output(self) -> dict[str, Any] | None:
        """The definition's `output=` of the saga as it completes. Every step succeeded and
        there is nothing to undo, so a function that fails leaves the saga completed without
        an output, and history says why."""
        assert self.definition.output is not None
        try:
            output = self.definition.output(self.context())
            if not isinstance(output, dict):
                raise TypeError(f"it returned {type(output).__name__}, not a dict")
            # Stored in a row and sent in events: JSON only (no NaN, which jsonb refuses).
            return dict(json.loads(json.dumps(output, allow_nan=False)))
        except Exception as exc:
            error = ErrorInfo(
                type="output_failed",
                message=f"output= failed: {type(exc).__name__}: {exc}",
                retryable=False,
            )
            self.record(HistoryEvent.OUTPUT_FAILED, detail={"error": error.to_dict()})
            return None

    def saga_result(self) -> Any:
        """What a completed saga gives its `completed` event and its parent's step: its
        output with `output=` (null when that failed), else every step's result."""
        return self.output if self.definition.output is not None else self.results()

    def context(self) -> GuardContext:
        return GuardContext(
            saga_id=str(self.original.saga_id),
            key=self.original.key,
            input=dict(self.original.input),
            results=self.results(),
        )


def after(now: datetime, seconds: float | None) -> datetime | None:
    return None if seconds is None else now + timedelta(seconds=seconds)


def due(moment: datetime | None, now: datetime) -> bool:
    return moment is not None and moment <= now
