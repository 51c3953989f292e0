"""The pure saga state machine: `decide(definition, state, event, now) -> Decision`.

No I/O, no clock, no randomness: the shell loads the state, calls `decide`, and persists the
new state, history and outgoing messages in one transaction. Command ids are derived from
(saga, step, kind, attempt), so replaying a decision after a crash yields the same ids.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Literal
from uuid import UUID

from orchestrator.definition import Saga, StepDefinition
from orchestrator.messages import Command, OutcomeEvent, Reply
from orchestrator.state import (
    TIMEOUT_ERROR,
    SagaState,
    SagaStatus,
    StepState,
    StepStatus,
    check_saga_move,
)

COMMAND_NAMESPACE = uuid.UUID("6f1c3a52-2b0e-4c1e-9a4d-5b8e7f3d2a10")


@dataclass(frozen=True)
class CancelRequested:
    reason: str


@dataclass(frozen=True)
class ReplyReceived:
    reply: Reply


@dataclass(frozen=True)
class TimersDue:
    """The clock passed the saga's `next_due_at`: timeouts and retry waits are handled."""


Event = CancelRequested | ReplyReceived | TimersDue


@dataclass(frozen=True)
class HistoryEntry:
    event: str
    step: str | None = None
    detail: dict[str, Any] | None = None


@dataclass(frozen=True)
class Decision:
    state: SagaState
    commands: tuple[Command, ...] = ()
    events: tuple[OutcomeEvent, ...] = ()
    history: tuple[HistoryEntry, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.commands or self.events or self.history)


def command_id(saga_id: UUID, step: str, kind: str, attempt: int) -> UUID:
    return uuid.uuid5(COMMAND_NAMESPACE, f"{saga_id}:{step}:{kind}:{attempt}")


def idempotency_key(saga_id: UUID, step: str, kind: str) -> str:
    return f"{saga_id}:{step}:{kind}"


def start(
    definition: Saga,
    *,
    saga_id: UUID,
    key: str,
    input: dict[str, Any],
    now: datetime,
    cancel_reason: str | None = None,
) -> Decision:
    """A new saga. With `cancel_reason` (a cancel arrived before the start) it ends at once."""
    state = SagaState(
        saga_id=saga_id,
        name=definition.name,
        version=definition.version,
        key=key,
        status=SagaStatus.RUNNING,
        input=input,
        steps=tuple(StepState(name=s.name, index=i) for i, s in enumerate(definition.steps)),
        created_at=now,
        updated_at=now,
    )
    b = _Builder(definition, state, now)
    b.record("saga_started", detail={"version": definition.version})
    if cancel_reason is not None:
        b.cancel_reason = cancel_reason
        b.record("saga_cancel_accepted", detail={"reason": cancel_reason, "before_start": True})
        b.set_status(SagaStatus.COMPENSATING)
    b.advance()
    return b.build()


def decide(definition: Saga, state: SagaState, event: Event, now: datetime) -> Decision:
    b = _Builder(definition, state, now)
    if isinstance(event, ReplyReceived):
        b.on_reply(event.reply)
    elif isinstance(event, CancelRequested):
        b.on_cancel(event.reason)
    else:
        b.on_timers()
    return b.build()


class _Builder:
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
        self.error = state.error
        self.commands: list[Command] = []
        self.events: list[OutcomeEvent] = []
        self.history: list[HistoryEntry] = []

    # -- bookkeeping ------------------------------------------------------------------------

    def record(
        self, event: str, step: str | None = None, detail: dict[str, Any] | None = None
    ) -> None:
        self.history.append(HistoryEntry(event=event, step=step, detail=detail))

    def set_status(self, status: SagaStatus) -> None:
        check_saga_move(self.status, status)
        self.status = status

    def build(self) -> Decision:
        changed = bool(self.commands or self.events or self.history)
        state = replace(
            self.original,
            status=self.status,
            steps=tuple(self.steps),
            cancel_reason=self.cancel_reason,
            error=self.error,
            updated_at=self.now if changed else self.original.updated_at,
        )
        return Decision(
            state=state,
            commands=tuple(self.commands),
            events=tuple(self.events),
            history=tuple(self.history),
        )

    def spec(self, step: StepState) -> StepDefinition:
        return self.definition.steps[step.index]

    def finish(self, status: SagaStatus, *, error: dict[str, Any] | None = None) -> None:
        self.set_status(status)
        self.error = error
        self.record(f"saga_{status.value}", detail=error)
        self.emit(status.value, error=error)

    def emit(self, status: str, *, error: dict[str, Any] | None = None) -> None:
        self.events.append(
            OutcomeEvent(
                saga_id=self.original.saga_id,
                saga=self.original.name,
                key=self.original.key,
                status=status,
                result=self.results() if status == SagaStatus.COMPLETED else None,
                error=error,
            )
        )

    def results(self) -> dict[str, Any]:
        return {s.name: s.result for s in self.steps if s.status == StepStatus.SUCCEEDED}

    # -- dispatch ---------------------------------------------------------------------------

    def dispatch(self, step: StepState, kind: Literal["action", "compensation"]) -> None:
        spec = self.spec(step)
        if kind == "action":
            attempt = step.attempt + 1
            name, timeout, status = spec.command, spec.timeout, StepStatus.RUNNING
        else:
            assert spec.compensation is not None
            attempt = step.compensation_attempt + 1
            name, timeout, status = (
                spec.compensation,
                spec.compensation_timeout,
                StepStatus.COMPENSATING,
            )
        cid = command_id(self.original.saga_id, step.name, kind, attempt)
        expires = self.now + timedelta(seconds=timeout)
        counters = {"attempt": attempt} if kind == "action" else {"compensation_attempt": attempt}
        self.steps[step.index] = step.moved(status, command_id=cid, due_at=expires, **counters)
        self.commands.append(
            Command(
                command_id=cid,
                saga_id=self.original.saga_id,
                saga=self.original.name,
                step=step.name,
                kind=kind,
                attempt=attempt,
                idempotency_key=idempotency_key(self.original.saga_id, step.name, kind),
                payload=dict(self.original.input),
                expires_at=expires,
                command=name,
            )
        )
        self.record(
            "step_dispatched" if kind == "action" else "compensation_dispatched",
            step.name,
            {"attempt": attempt, "command": name, "command_id": str(cid)},
        )

    def advance(self) -> None:
        """Dispatch whatever the current status calls for, or finish the saga."""
        if self.status == SagaStatus.RUNNING:
            if any(s.status == StepStatus.RUNNING for s in self.steps):
                return
            nxt = next((s for s in self.steps if s.status == StepStatus.PENDING), None)
            if nxt is None:
                self.finish(SagaStatus.COMPLETED)
            else:
                self.dispatch(nxt, "action")
        elif self.status == SagaStatus.COMPENSATING:
            if any(s.status in (StepStatus.RUNNING, StepStatus.COMPENSATING) for s in self.steps):
                return  # wait for the in-flight reply (or the retry timer)
            todo = [s for s in self.steps if self.needs_compensation(s)]
            if todo:
                self.dispatch(todo[-1], "compensation")
            elif self.cancel_reason is not None:
                self.finish(
                    SagaStatus.CANCELLED, error={"type": "cancelled", "message": self.cancel_reason}
                )
            else:
                self.finish(SagaStatus.COMPENSATED, error=self.error)

    def needs_compensation(self, step: StepState) -> bool:
        if self.spec(step).compensation is None:
            return False
        return step.status == StepStatus.SUCCEEDED or (
            step.status == StepStatus.FAILED and step.outcome_uncertain
        )

    # -- events -----------------------------------------------------------------------------

    def on_reply(self, reply: Reply) -> None:
        step = next((s for s in self.steps if s.name == reply.step), None)
        if step is None:
            self.record("reply_ignored", reply.step, {"reason": "unknown step", **_ids(reply)})
            return
        if not step.in_flight or step.command_id != reply.command_id:
            self.ignore(step, reply)
            return
        if reply.outcome == "heartbeat":
            spec = self.spec(step)
            timeout = (
                spec.timeout if step.status == StepStatus.RUNNING else spec.compensation_timeout
            )
            self.steps[step.index] = replace(step, due_at=self.now + timedelta(seconds=timeout))
            return
        if step.status == StepStatus.RUNNING:
            if reply.outcome == "success":
                self.steps[step.index] = step.moved(
                    StepStatus.SUCCEEDED, result=reply.result, error=None, due_at=None
                )
                self.record("step_succeeded", step.name, {"attempt": step.attempt})
                self.advance()
            else:
                err = (
                    reply.error.model_dump()
                    if reply.error
                    else {"type": "error", "message": "", "retryable": True}
                )
                self.action_failed(step, err)
        elif reply.outcome == "success":
            self.steps[step.index] = step.moved(StepStatus.COMPENSATED, due_at=None)
            self.record("step_compensated", step.name, {"attempt": step.compensation_attempt})
            self.advance()
        else:
            err = (
                reply.error.model_dump()
                if reply.error
                else {"type": "error", "message": "", "retryable": True}
            )
            self.compensation_failed(step, err)

    def ignore(self, step: StepState, reply: Reply) -> None:
        if step.command_id == reply.command_id:
            reason = "duplicate"
        elif step.in_flight or step.status in (StepStatus.RUNNING, StepStatus.COMPENSATING):
            reason = "stale attempt"
        else:
            reason = "late"
        if reply.outcome != "heartbeat":
            self.record("reply_ignored", step.name, {"reason": reason, **_ids(reply)})

    def action_failed(self, step: StepState, error: dict[str, Any]) -> None:
        spec = self.spec(step)
        retry = spec.retry
        if (
            self.status == SagaStatus.RUNNING
            and error.get("retryable", True)
            and not retry.exhausted(step.attempt)
        ):
            assert step.command_id is not None
            due = self.now + retry.delay(step.attempt, str(step.command_id))
            self.steps[step.index] = step.moved(
                StepStatus.RUNNING, command_id=None, due_at=due, error=error
            )
            self.record(
                "step_retry_scheduled",
                step.name,
                {"attempt": step.attempt, "error": error, "due_at": due.isoformat()},
            )
            return
        self.steps[step.index] = step.moved(
            StepStatus.FAILED, command_id=None, due_at=None, error=error
        )
        self.record("step_failed", step.name, {"attempt": step.attempt, "error": error})
        if self.status != SagaStatus.RUNNING:
            self.advance()  # a cancel is compensating already; carry on with it
            return
        pivot = self.definition.pivot_index
        if pivot is not None and step.index > pivot:
            # Past the pivot nothing is undone: an operator must finish this step.
            self.finish(
                SagaStatus.FAILED,
                error={"type": "retries_exhausted", "step": step.name, "message": _message(error)},
            )
            return
        self.error = {"type": "step_failed", "step": step.name, "message": _message(error)}
        self.set_status(SagaStatus.COMPENSATING)
        self.record("saga_compensating", step.name, {"reason": self.error["message"]})
        self.advance()

    def compensation_failed(self, step: StepState, error: dict[str, Any]) -> None:
        retry = self.spec(step).compensation_retry
        if error.get("retryable", True) and not retry.exhausted(step.compensation_attempt):
            assert step.command_id is not None
            due = self.now + retry.delay(step.compensation_attempt, str(step.command_id))
            self.steps[step.index] = step.moved(
                StepStatus.COMPENSATING, command_id=None, due_at=due, error=error
            )
            self.record(
                "compensation_retry_scheduled",
                step.name,
                {"attempt": step.compensation_attempt, "error": error, "due_at": due.isoformat()},
            )
            return
        # Parked: the step stays `compensating` (it is not undone) and the saga waits for a human.
        self.steps[step.index] = replace(step, command_id=None, due_at=None, error=error)
        self.finish(
            SagaStatus.FAILED,
            error={
                "type": "compensation_failed",
                "step": step.name,
                "message": (
                    f"compensation failed after {step.compensation_attempt} attempt(s): "
                    f"{_message(error)}"
                ),
            },
        )

    def on_cancel(self, reason: str) -> None:
        if self.status in (
            SagaStatus.COMPLETED,
            SagaStatus.COMPENSATED,
            SagaStatus.CANCELLED,
            SagaStatus.FAILED,
        ):
            self.refuse_cancel(reason, f"the saga is already {self.status.value}")
            return
        if self.status == SagaStatus.COMPENSATING:
            self.record("cancel_ignored", detail={"reason": reason, "why": "already compensating"})
            return
        pivot = self.definition.pivot_index
        if pivot is not None and self.steps[pivot].status != StepStatus.PENDING:
            name = self.steps[pivot].name
            self.refuse_cancel(
                reason, f"past the pivot: step {name!r} has been dispatched and is never undone"
            )
            return
        self.cancel_reason = reason
        for s in self.steps:
            if s.status == StepStatus.RUNNING and not s.in_flight:
                # Waiting to retry: stop here. Its last attempt may still need undoing
                # (outcome_uncertain), which advance() takes care of.
                self.steps[s.index] = s.moved(StepStatus.FAILED, due_at=None)
        self.set_status(SagaStatus.COMPENSATING)
        self.record("saga_cancel_accepted", detail={"reason": reason})
        self.advance()

    def refuse_cancel(self, reason: str, why: str) -> None:
        self.record("cancel_refused", detail={"reason": reason, "why": why})
        self.emit("cancel_refused", error={"type": "cancel_refused", "message": why})

    def on_timers(self) -> None:
        for index in range(len(self.steps)):
            step = self.steps[index]  # read afresh: an earlier iteration may have moved it
            if step.due_at is None or step.due_at > self.now:
                continue
            if step.status == StepStatus.RUNNING:
                if step.in_flight:
                    self.record("step_timed_out", step.name, {"attempt": step.attempt})
                    self.action_failed(step, _timeout(self.spec(step).timeout))
                elif self.status == SagaStatus.RUNNING:
                    self.dispatch(step, "action")
            elif step.status == StepStatus.COMPENSATING:
                if step.in_flight:
                    self.record(
                        "compensation_timed_out", step.name, {"attempt": step.compensation_attempt}
                    )
                    self.compensation_failed(step, _timeout(self.spec(step).compensation_timeout))
                elif self.status == SagaStatus.COMPENSATING:
                    self.dispatch(step, "compensation")


def _timeout(seconds: float) -> dict[str, Any]:
    return {"type": TIMEOUT_ERROR, "message": f"no reply within {seconds:g}s", "retryable": True}


def _message(error: dict[str, Any]) -> str:
    return str(error.get("message") or error.get("type") or "error")


def _ids(reply: Reply) -> dict[str, Any]:
    return {"command_id": str(reply.command_id), "outcome": reply.outcome}
