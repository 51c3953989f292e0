"""One transition of one saga, worked out step by step: `Transition` holds the saga's state
while the machine changes it, collects the commands, events and history the change gives,
and `build()` freezes it into a Decision. Pure: no I/O, no clock, no randomness."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, Literal
from uuid import UUID

from orchestrator import time_limits
from orchestrator.definition import GuardContext, Saga, StepDefinition
from orchestrator.events import (
    Decision,
    HistoryEntry,
    SagaRequest,
    UndoRequested,
    child_key,
    command_id,
    idempotency_key,
)
from orchestrator.messages import (
    CancelSaga,
    Command,
    OutcomeEvent,
    ParentRef,
    Reply,
    ReplyError,
    StartSaga,
    aware_utc,
)
from orchestrator.retry import Retry
from orchestrator.state import (
    FINISHED,
    TIMEOUT_ERROR,
    SagaState,
    SagaStatus,
    StepState,
    StepStatus,
    check_saga_move,
    step_results,
)
from orchestrator.time_limits import Limits


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
        self.error = state.error
        self.deadline_at = state.deadline_at
        self.compensation_deadline_at = state.compensation_deadline_at
        self.resume_status = state.resume_status
        self.parent = state.parent
        self.requests: list[SagaRequest] = []
        self.replies: list[Reply] = []
        self.refused: str | None = None
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
            error=self.error,
            deadline_at=self.deadline_at,
            compensation_deadline_at=self.compensation_deadline_at,
            resume_status=self.resume_status,
            parent=self.parent,
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

    def finish(self, status: SagaStatus, *, error: dict[str, Any] | None = None) -> None:
        # A parked saga remembers the phase it stopped in: an operator's retry continues it.
        self.resume_status = self.phase if status == SagaStatus.FAILED else None
        self.set_status(status)
        self.error = error
        self.record(f"saga_{status.value}", detail=error)
        self.emit(status.value, error=error)
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
                f"{self.status.value}: {_message(self.error or {})}",
                retryable=False,
            )
        self.replies.append(
            Reply(
                command_id=self.parent.command_id,
                saga_id=self.parent.saga_id,
                step=self.parent.step,
                outcome=outcome,
                result=self.results() if completed and self.parent.kind == "action" else None,
                error=error,
            )
        )
        self.record(
            "parent_answered",
            detail={
                "parent": str(self.parent.saga_id),
                "step": self.parent.step,
                "outcome": outcome,
            },
        )

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
        return step_results(self.steps)

    def context(self) -> GuardContext:
        return GuardContext(
            saga_id=str(self.original.saga_id),
            key=self.original.key,
            input=dict(self.original.input),
            results=self.results(),
        )

    # -- dispatch ---------------------------------------------------------------------------

    def dispatch(
        self,
        step: StepState,
        kind: Literal["action", "compensation"],
        *,
        retry_base: int | None = None,
    ) -> None:
        """Send the step's next attempt. `retry_base`: an operator's retry starts the retry
        policy's count afresh from there."""
        spec = self.spec(step)
        limits = Limits.of(spec, kind)
        if kind == "action":
            assert spec.command is not None
            attempt = step.attempt + 1
            name, status = spec.command, StepStatus.RUNNING
        else:
            assert spec.compensation is not None
            attempt = step.compensation_attempt + 1
            name, status = spec.compensation, StepStatus.COMPENSATING
        cid = command_id(self.original.saga_id, step.name, kind, attempt)
        # The budget begins with the phase's first attempt, and afresh on an operator's retry.
        close = (
            time_limits.close_at(limits, self.now)
            if attempt == 1 or retry_base is not None
            else step.close_at
        )
        window = time_limits.dispatch_window(limits, self.now, close)
        counters = {"attempt": attempt} if kind == "action" else {"compensation_attempt": attempt}
        if retry_base is not None:
            counters["retry_base"] = retry_base
        self.steps[step.index] = step.moved(
            status,
            command_id=cid,
            due_at=window.due_at,
            started_at=None,
            dispatched_at=self.now,
            close_at=close,
            **counters,
        )
        self.record(
            "step_dispatched" if kind == "action" else "compensation_dispatched",
            step.name,
            {"attempt": attempt, "command": name, "command_id": str(cid)},
        )
        if spec.child is not None:
            self.request_child(step, spec.child, kind, cid)
            return
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
                expires_at=window.expires_at,
                timeout=window.timeout,
                heartbeat_timeout=limits.heartbeat,
                report_start=limits.report_start,
                progress=step.progress if kind == "action" else None,
                item=step.payload,
                version=self.original.version,
                command=name,
            )
        )

    def request_child(
        self, step: StepState, child: str, kind: Literal["action", "compensation"], cid: UUID
    ) -> None:
        """A child step's command is a start (or, to undo it, a cancel) of the child saga,
        which answers `cid` when it ends."""
        parent = ParentRef(saga_id=self.original.saga_id, step=step.name, command_id=cid, kind=kind)
        key = child_key(self.original.saga_id, step.name)
        if kind == "action":
            payload = step.payload if step.payload is not None else dict(self.original.input)
            self.requests.append(
                ("start", StartSaga(saga=child, key=key, input=payload, parent=parent))
            )
        else:
            reason = f"parent saga {self.original.name} {self.original.saga_id} undoes it"
            self.requests.append(
                ("cancel", CancelSaga(key=key, saga=child, reason=reason, parent=parent))
            )

    def advance(self) -> None:
        """Dispatch whatever the current status calls for, or finish the saga. Does nothing
        while paused: resuming calls it again."""
        if self.status == SagaStatus.RUNNING:
            self.advance_running()
        elif self.status == SagaStatus.COMPENSATING:
            if any(s.status == StepStatus.RUNNING for s in self.steps):
                return  # wait for the actions in flight: a success must be undone too
            busy = [s for s in self.steps if s.status == StepStatus.COMPENSATING]
            todo = [s for s in self.steps if self.needs_compensation(s)]
            if busy or todo:
                # Undo the latest stage first, its steps together (a map's items up to its
                # concurrency); an earlier stage waits until the later one is undone.
                stage = max(self.spec(s).stage for s in busy + todo)
                spec = self.spec(next(s for s in busy + todo if self.spec(s).stage == stage))
                room = (spec.concurrency if spec.map else len(self.steps)) - sum(
                    1 for s in busy if self.spec(s).stage == stage
                )
                ready = [s for s in todo if self.spec(s).stage == stage]
                for s in reversed(ready[-room:] if room > 0 else []):
                    self.dispatch(s, "compensation")
            elif self.cancel_reason is not None:
                self.finish(
                    SagaStatus.CANCELLED, error={"type": "cancelled", "message": self.cancel_reason}
                )
            else:
                self.finish(SagaStatus.COMPENSATED, error=self.error)

    def advance_running(self) -> None:
        """Move the running saga on: feed running map steps, then, once nothing runs,
        begin the next stage (one step, or a parallel group's steps together)."""
        while True:
            for step in self.steps:
                if step.status == StepStatus.RUNNING and self.is_map(step):
                    self.progress_map(step)
            if any(s.status == StepStatus.RUNNING for s in self.steps):
                return
            pending = [s for s in self.steps if s.status == StepStatus.PENDING and s.item is None]
            if not pending:
                self.finish(SagaStatus.COMPLETED)
                return
            stage = self.spec(pending[0]).stage
            for step in pending:
                if self.spec(step).stage != stage:
                    break
                self.begin_step(step)
                if self.status != SagaStatus.RUNNING:
                    return  # a guard failed the stage: the saga compensates or is parked

    def begin_step(self, step: StepState) -> bool:
        """Start a pending step: check its guard, then dispatch it or start its sleep.
        False when the guard skipped it (the caller moves on to the next step)."""
        spec = self.spec(step)
        if spec.guard is not None:
            try:
                allowed, why = bool(spec.guard(self.context())), None
            except Exception as exc:  # a broken guard fails its step; it never skips silently
                allowed, why = False, f"the guard raised {type(exc).__name__}: {exc}"
            if not allowed:
                if why is None and spec.on_guard_false == "skip":
                    self.steps[step.index] = step.moved(StepStatus.SKIPPED)
                    self.record("step_skipped", step.name, {"reason": "guard is false"})
                    return False
                error = {
                    "type": "guard_failed",
                    "message": why or f"the guard of step {step.name!r} is false",
                    "retryable": False,
                }
                self.fail_unsent(step, error)
                return True
        if spec.sleep:
            self.begin_sleep(step, spec)
        elif spec.child_input is not None:
            self.begin_child(step, spec)
        elif spec.map:
            self.begin_map(step, spec)
        else:
            self.dispatch(step, "action")
        return True

    def begin_child(self, step: StepState, spec: StepDefinition) -> None:
        """Compute the child's input (kept as the step's payload), then start the child."""
        assert spec.child_input is not None
        try:
            payload = spec.child_input(self.context())
            if not isinstance(payload, dict):
                raise TypeError(f"it returned {type(payload).__name__}, not a dict")
            payload = json.loads(json.dumps(payload))  # it travels in a message
        except Exception as exc:
            self.fail_unsent(
                step,
                {
                    "type": "child_input_failed",
                    "message": f"input= failed: {type(exc).__name__}: {exc}",
                    "retryable": False,
                },
            )
            return
        step = replace(step, payload=payload)
        self.steps[step.index] = step
        self.dispatch(step, "action")

    def begin_map(self, step: StepState, spec: StepDefinition) -> None:
        """Expand a map step into its items; progress_map dispatches them."""
        assert spec.items is not None
        try:
            items = spec.items(self.context())
            if not isinstance(items, list | tuple):
                raise TypeError(f"it returned {type(items).__name__}, not a list")
            # Items travel in commands and are stored in rows: JSON values only.
            items = json.loads(json.dumps(list(items)))
        except Exception as exc:
            self.fail_unsent(
                step,
                {
                    "type": "map_items_failed",
                    "message": f"items= failed: {type(exc).__name__}: {exc}",
                    "retryable": False,
                },
            )
            return
        if len(items) > spec.max_items:
            self.fail_unsent(
                step,
                {
                    "type": "map_items_failed",
                    "message": f"items= returned {len(items)} items, more than max_items="
                    f"{spec.max_items}: make each item a bigger chunk, or raise max_items",
                    "retryable": False,
                },
            )
            return
        self.steps[step.index] = step.moved(StepStatus.RUNNING, started_at=self.now, error=None)
        for n, item in enumerate(items):
            self.steps.append(
                StepState(name=f"{step.name}[{n}]", index=len(self.steps), item=n, payload=item)
            )
        self.record(
            "map_started", step.name, {"items": len(items), "concurrency": spec.concurrency}
        )

    def progress_map(self, step: StepState) -> None:
        """Dispatch a running map step's pending items up to its concurrency; succeed it
        when every item has."""
        items = [s for s in self.steps if s.of == step.name]
        if all(s.status in (StepStatus.SUCCEEDED, StepStatus.SKIPPED) for s in items):
            self.steps[step.index] = step.moved(
                StepStatus.SUCCEEDED, result=[s.result for s in items], due_at=None
            )
            self.record("map_finished", step.name, {"items": len(items)})
            return
        room = self.spec(step).concurrency - sum(1 for s in items if s.status == StepStatus.RUNNING)
        for item in items:
            if room <= 0:
                break
            if item.status == StepStatus.PENDING:
                self.dispatch(item, "action")
                room -= 1

    def fail_unsent(self, step: StepState, error: dict[str, Any]) -> None:
        """Fail a step that was never sent (its guard or `until=` said no): nothing to wait
        for, so the saga compensates or parks at once."""
        if step.status == StepStatus.FAILED:  # an operator's retry, and it said no again
            failed = replace(step, error=error)
        else:
            failed = step.moved(StepStatus.FAILED, error=error)
        self.steps[step.index] = failed
        self.record("step_failed", step.name, {"attempt": 0, "error": error})
        self.failed_for_good(failed, error)

    def begin_sleep(self, step: StepState, spec: StepDefinition) -> None:
        if spec.sleep_until is not None:
            try:
                wake = aware_utc(spec.sleep_until(self.context()))
            except Exception as exc:
                error = {
                    "type": "sleep_until_failed",
                    "message": f"until= raised {type(exc).__name__}: {exc}",
                    "retryable": False,
                }
                self.fail_unsent(step, error)
                return
        else:
            assert spec.sleep_seconds is not None
            wake = self.now + timedelta(seconds=spec.sleep_seconds)
        # RUNNING with a due time and no command: a timer, like a retry wait.
        self.steps[step.index] = step.moved(
            StepStatus.RUNNING, due_at=wake, started_at=self.now, error=None
        )
        self.record("sleep_started", step.name, {"until": wake.isoformat()})

    def needs_compensation(self, step: StepState) -> bool:
        if self.spec(step).compensation is None or self.is_map(step):
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
            self.heard(step, reply)
            return
        if step.status == StepStatus.RUNNING:
            if reply.outcome == "success":
                self.steps[step.index] = step.moved(
                    StepStatus.SUCCEEDED, result=reply.result, error=None, due_at=None
                )
                self.record(
                    "step_succeeded", step.name, {"attempt": step.attempt, **self.took(step)}
                )
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
            self.record(
                "step_compensated",
                step.name,
                {"attempt": step.compensation_attempt, **self.took(step)},
            )
            self.advance()
        else:
            err = (
                reply.error.model_dump()
                if reply.error
                else {"type": "error", "message": "", "retryable": True}
            )
            self.compensation_failed(step, err)

    def heard(self, step: StepState, reply: Reply) -> None:
        """A heartbeat: the participant has taken the command (the first one ends the start
        window) and is alive. It never extends the start-to-close timeout; with a heartbeat
        timeout it moves the next heartbeat's latest moment. An action's details are a
        checkpoint for its next attempt."""
        kind: Literal["action", "compensation"] = (
            "compensation" if step.status == StepStatus.COMPENSATING else "action"
        )
        heard = replace(step, started_at=step.started_at or self.now)
        if kind == "action" and reply.result is not None:
            heard = replace(heard, progress=reply.result)
        limits = Limits.of(self.spec(step), kind)
        self.steps[step.index] = replace(
            heard, due_at=time_limits.heard_due(limits, heard, self.now)
        )
        if step.started_at is None and kind == "action":
            self.record("step_started", step.name, {"attempt": step.attempt})

    def took(self, step: StepState) -> dict[str, float]:
        """How long the command took, dispatch to reply (the step latency operators watch)."""
        if step.dispatched_at is None:
            return {}
        return {"seconds": round((self.now - step.dispatched_at).total_seconds(), 3)}

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
        if self.phase == SagaStatus.RUNNING:
            final = self.retry_later(
                step, self.spec(step).retry, step.attempt, StepStatus.RUNNING, error
            )
            if final is None:
                return
            error = final
        self.steps[step.index] = step.moved(
            StepStatus.FAILED, command_id=None, due_at=None, error=error
        )
        self.record("step_failed", step.name, {"attempt": step.attempt, "error": error})
        self.failed_for_good(step, error)

    def retry_later(
        self,
        step: StepState,
        retry: Retry,
        attempt: int,
        status: StepStatus,
        error: dict[str, Any],
    ) -> dict[str, Any] | None:
        """Schedule the next attempt of an action (RUNNING) or compensation (COMPENSATING)
        if its policy allows one: None. Else the error it fails with: `error` when the policy
        has run out or the error is not retryable, a schedule-to-close timeout when the step's
        budget has no room for the next attempt."""
        if not retry.retries(error) or retry.exhausted(attempt - step.retry_base):
            return error
        assert step.command_id is not None
        due = self.now + retry.delay(attempt, str(step.command_id))
        if not time_limits.retry_fits(step, due):
            if error.get("timeout") == "schedule_to_close":
                return error
            kind: time_limits.Kind = "action" if status == StepStatus.RUNNING else "compensation"
            budget = Limits.of(self.spec(step), kind).seconds("schedule_to_close")
            return {
                **_timeout(budget, "schedule_to_close"),
                "message": f"the step's schedule-to-close budget of {budget:g}s leaves no room "
                f"for attempt {attempt + 1}; last attempt: {_message(error)}",
                "cause": error,
            }
        self.steps[step.index] = step.moved(status, command_id=None, due_at=due, error=error)
        event = "step" if status == StepStatus.RUNNING else "compensation"
        self.record(
            f"{event}_retry_scheduled",
            step.name,
            {"attempt": attempt, "error": error, "due_at": due.isoformat()},
        )
        return None

    def failed_for_good(self, step: StepState, error: dict[str, Any]) -> None:
        """A step's action will not be tried again: undo what came before, or park."""
        if self.phase != SagaStatus.RUNNING:
            self.advance()  # a cancel or deadline is compensating already; carry on with it
            return
        pivot = self.definition.pivot_index
        if pivot is not None and self.position(step) > pivot:
            # Past the pivot nothing is undone: an operator must finish this step. The type
            # says whether retrying could have helped (it ran out) or not (refused for good).
            kind = "retries_exhausted" if self.spec(step).retry.retries(error) else "step_failed"
            self.finish(
                SagaStatus.FAILED,
                error={"type": kind, "step": step.name, "message": _message(error)},
            )
            return
        self.error = {"type": "step_failed", "step": step.name, "message": _message(error)}
        self.stop_waiting_steps()  # parallel steps waiting to retry (or sleeping) stop here
        self.begin_compensation()
        self.record("saga_compensating", step.name, {"reason": self.error["message"]})
        self.advance()

    def compensation_failed(self, step: StepState, error: dict[str, Any]) -> None:
        final = self.retry_later(
            step,
            self.spec(step).compensation_retry,
            step.compensation_attempt,
            StepStatus.COMPENSATING,
            error,
        )
        if final is None:
            return
        error = final
        # Parked: the step stays `compensating` (it is not undone) and the saga waits for a human.
        self.steps[step.index] = replace(step, command_id=None, due_at=None, error=error)
        if self.status == SagaStatus.FAILED:
            # A compensation of the same stage ran out after another parked the saga: it is
            # parked beside it; the saga's park (its error, where it resumes) stays as it was.
            self.record(
                "compensation_parked",
                step.name,
                {"attempt": step.compensation_attempt, "error": error},
            )
            return
        self.finish(
            SagaStatus.FAILED,
            error={
                "type": "compensation_failed",
                "step": step.name,
                "message": (
                    f"compensation failed after {step.compensation_attempt} attempt(s): "
                    f"{_message(error)}"
                ),
                "cause": self.error,  # why it was compensating; restored when it carries on
            },
        )

    def on_cancel(self, reason: str) -> None:
        if self.status in FINISHED:
            self.refuse_cancel(reason, f"the saga is already {self.status.value}")
            return
        if self.phase == SagaStatus.COMPENSATING:
            self.record("cancel_ignored", detail={"reason": reason, "why": "already compensating"})
            return
        if self.pivot_dispatched():
            assert self.definition.pivot_index is not None
            name = self.steps[self.definition.pivot_index].name
            self.refuse_cancel(
                reason, f"past the pivot: step {name!r} has been dispatched and is never undone"
            )
            return
        self.cancel_reason = reason
        self.stop_waiting_steps()
        self.begin_compensation()
        self.record("saga_cancel_accepted", detail={"reason": reason})
        self.cancel_children(reason)
        self.advance()

    def cancel_children(self, reason: str) -> None:
        """Cancellation propagates down: a running child is cancelled, undoes itself, and
        answers the step's action with a failure, so there is nothing left to compensate."""
        for s in self.steps:
            child = self.spec(s).child
            if child is not None and s.status == StepStatus.RUNNING and s.in_flight:
                why = (
                    f"parent saga {self.original.name} {self.original.saga_id} cancelled: {reason}"
                )
                key = child_key(self.original.saga_id, s.name)
                self.requests.append(("cancel", CancelSaga(key=key, saga=child, reason=why)))
                self.record("child_cancel_requested", s.name, {"child_key": key})

    def on_undo(self, event: UndoRequested) -> None:
        """The parent undoes this child: answer at once if it is undone already, compensate
        it if it completed, cancel it if it runs; it answers the parent once undone."""
        self.parent = event.parent
        self.record(
            "undo_requested", detail={"reason": event.reason, "parent": str(event.parent.saga_id)}
        )
        if self.status in (SagaStatus.COMPENSATED, SagaStatus.CANCELLED):
            self.answer_parent()
        elif self.status == SagaStatus.COMPLETED:
            self.cancel_reason = event.reason
            self.begin_compensation()
            self.advance()
        elif self.status != SagaStatus.FAILED:  # a parked child answers once it is finished
            self.on_cancel(event.reason)

    def stop_waiting_steps(self) -> None:
        for s in self.steps:
            if s.status == StepStatus.RUNNING and not s.in_flight:
                # Waiting to retry (or sleeping): stop here. Its last attempt may still need
                # undoing (outcome_uncertain), which advance() takes care of.
                self.steps[s.index] = s.moved(StepStatus.FAILED, due_at=None)

    def pivot_dispatched(self) -> bool:
        pivot = self.definition.pivot_index
        return pivot is not None and self.steps[pivot].status != StepStatus.PENDING

    def refuse_cancel(self, reason: str, why: str) -> None:
        self.record("cancel_refused", detail={"reason": reason, "why": why})
        self.emit("cancel_refused", error={"type": "cancel_refused", "message": why})

    def on_timers(self, unconsumed: Mapping[str, str] | None = None) -> None:
        """`unconsumed`: command -> queue, for the commands whose queue had no consumer at
        the shell's last look (TimersDue); their timeouts say so."""
        queues = unconsumed or {}
        if self.status == SagaStatus.RUNNING and due(self.deadline_at, self.now):
            self.deadline_passed()
        elif self.status == SagaStatus.COMPENSATING and due(
            self.compensation_deadline_at, self.now
        ):
            self.compensation_overdue()
        if self.status not in (SagaStatus.RUNNING, SagaStatus.COMPENSATING):
            return  # finished, parked, or paused: timers hold
        for index in range(len(self.steps)):
            step = self.steps[index]  # read afresh: an earlier iteration may have moved it
            if step.due_at is None or step.due_at > self.now:
                continue
            spec = self.spec(step)
            if step.status == StepStatus.RUNNING:
                if step.in_flight:
                    self.action_failed(step, self.timed_out(step, "action", queues))
                elif spec.sleep:
                    self.steps[index] = step.moved(StepStatus.SUCCEEDED, due_at=None)
                    self.record("sleep_finished", step.name)
                    self.advance()
                elif self.status == SagaStatus.RUNNING:
                    self.dispatch(step, "action")
            elif step.status == StepStatus.COMPENSATING:
                if step.in_flight:
                    self.compensation_failed(step, self.timed_out(step, "compensation", queues))
                elif self.status == SagaStatus.COMPENSATING:
                    self.dispatch(step, "compensation")

    def timed_out(
        self,
        step: StepState,
        kind: Literal["action", "compensation"],
        unconsumed: Mapping[str, str],
    ) -> dict[str, Any]:
        """Record which limit ended the attempt in flight; its timeout error, which says so
        when the command's queue had no consumer (`unconsumed`: command -> queue)."""
        spec = self.spec(step)
        limits = Limits.of(spec, kind)
        which = time_limits.expired(limits, step, self.now)
        if kind == "action":
            event, attempt, command = "step_timed_out", step.attempt, spec.command
        else:
            event, attempt, command = (
                "compensation_timed_out",
                step.compensation_attempt,
                spec.compensation,
            )
        detail: dict[str, Any] = {"attempt": attempt, "timeout": which}
        error = _timeout(limits.seconds(which), which)
        queue = unconsumed.get(command) if command else None
        if queue is not None:
            detail["unconsumed"] = queue
            error = _no_consumer(error, queue, local=spec.local)
        self.record(event, step.name, detail)
        return error

    def deadline_passed(self) -> None:
        assert self.deadline_at is not None
        message = f"the saga did not finish by its deadline {self.deadline_at.isoformat()}"
        self.record("saga_deadline_exceeded", detail={"deadline_at": self.deadline_at.isoformat()})
        if self.pivot_dispatched():
            # Nothing past the pivot is undone: an operator decides (retry, skip).
            for s in self.steps:
                # In flight: its late reply is then ignored. Waiting to retry: the wait ends.
                # Either way the step is parked: a retry sends a new attempt, or it is skipped.
                if s.status == StepStatus.RUNNING and not self.spec(s).sleep:
                    self.steps[s.index] = replace(s, command_id=None, due_at=None)
            self.finish(
                SagaStatus.FAILED,
                error={
                    "type": "deadline_exceeded",
                    "message": f"{message}, past its pivot: retry or skip the step by hand",
                },
            )
            return
        self.error = {"type": "deadline_exceeded", "message": message}
        # The saga's time is up: a step in flight is not waited for. It is cut off as timed
        # out (its outcome unknown, so it is compensated too) and its late reply is ignored.
        cut_off = {**_timeout(0, "deadline"), "message": message}
        for s in self.steps:
            if s.in_flight and s.status == StepStatus.RUNNING:
                self.steps[s.index] = s.moved(
                    StepStatus.FAILED, command_id=None, due_at=None, error=cut_off
                )
                self.record("step_failed", s.name, {"attempt": s.attempt, "error": cut_off})
        self.stop_waiting_steps()
        self.begin_compensation()
        self.record("saga_compensating", detail={"reason": message})
        self.advance()

    def compensation_overdue(self) -> None:
        assert self.compensation_deadline_at is not None
        at = self.compensation_deadline_at.isoformat()
        self.record("compensation_deadline_exceeded", detail={"deadline_at": at})
        for s in self.steps:
            if s.status == StepStatus.COMPENSATING:
                self.steps[s.index] = replace(s, command_id=None, due_at=None)
        self.finish(
            SagaStatus.FAILED,
            error={
                "type": "compensation_deadline_exceeded",
                "message": f"compensation did not finish by {at}; retry it or mark it done",
                "cause": self.error,
            },
        )


def after(now: datetime, seconds: float | None) -> datetime | None:
    return None if seconds is None else now + timedelta(seconds=seconds)


def due(moment: datetime | None, now: datetime) -> bool:
    return moment is not None and moment <= now


def _timeout(seconds: float, kind: str = "start_to_close") -> dict[str, Any]:
    what = {"heartbeat": "no heartbeat", "schedule_to_close": "not finished"}
    return {
        "type": TIMEOUT_ERROR,
        "timeout": kind,
        "message": f"{what.get(kind, 'no reply')} within {seconds:g}s ({kind.replace('_', '-')})",
        "retryable": True,
    }


def _no_consumer(error: dict[str, Any], queue: str, *, local: bool) -> dict[str, Any]:
    """A timeout error that says its command's queue had nobody consuming it."""
    hint = (
        "is `saga worker` running with these SAGA_MODULES?"
        if local
        else "is its participant running, or is the service name misspelled?"
    )
    message = f"{error['message']}; nobody consumes {queue}: {hint}"
    return {**error, "message": message, "unconsumed": True}


def _message(error: dict[str, Any]) -> str:
    return str(error.get("message") or error.get("type") or "error")


def _ids(reply: Reply) -> dict[str, Any]:
    return {"command_id": str(reply.command_id), "outcome": reply.outcome}
