"""Moving the saga on: `advance` dispatches what its status calls for (the next stage while
running, the latest stage's compensations while compensating) or finishes it; beginning a
step checks its guard, builds its payload and starts its command, sleep, wait, child saga
or map.
A step that fails for good turns the saga to compensation, or parks it past the pivot."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta

from orchestrator.error_info import ErrorInfo
from orchestrator.event_names import HistoryEvent
from orchestrator.messages import aware_utc
from orchestrator.state import SagaStatus, StepState, StepStatus
from orchestrator.steps import StepDefinition
from orchestrator.transition.dispatch import dispatch
from orchestrator.transition.scratch import Transition
from orchestrator.transition.waits import begin_wait


def advance(t: Transition) -> None:
    """Dispatch whatever the current status calls for, or finish the saga. Does nothing
    while paused: resuming calls it again."""
    if t.status == SagaStatus.RUNNING:
        advance_running(t)
    elif t.status == SagaStatus.COMPENSATING:
        if any(s.status == StepStatus.RUNNING for s in t.steps):
            return  # wait for the actions in flight: a success must be undone too
        busy = [s for s in t.steps if s.status == StepStatus.COMPENSATING]
        todo = [s for s in t.steps if needs_compensation(t, s)]
        if busy or todo:
            # Undo the latest stage first, its steps together (a map's items up to its
            # concurrency); an earlier stage waits until the later one is undone.
            stage = max(t.spec(s).stage for s in busy + todo)
            spec = t.spec(next(s for s in busy + todo if t.spec(s).stage == stage))
            room = (spec.concurrency if spec.map else len(t.steps)) - sum(
                1 for s in busy if t.spec(s).stage == stage
            )
            ready = [s for s in todo if t.spec(s).stage == stage]
            for s in reversed(ready[-room:] if room > 0 else []):
                dispatch(t, s, "compensation")
        elif t.cancel_reason is not None:
            t.finish(
                SagaStatus.CANCELLED, error=ErrorInfo(type="cancelled", message=t.cancel_reason)
            )
        else:
            t.finish(SagaStatus.COMPENSATED, error=t.error)


def advance_running(t: Transition) -> None:
    """Move the running saga on: feed running map steps, then, once nothing runs,
    begin the next stage (one step, or a parallel group's steps together)."""
    while True:
        for step in t.steps:
            if step.status == StepStatus.RUNNING and t.is_map(step):
                progress_map(t, step)
        if any(s.status == StepStatus.RUNNING for s in t.steps):
            return
        pending = [s for s in t.steps if s.status == StepStatus.PENDING and s.item is None]
        if not pending:
            t.finish(SagaStatus.COMPLETED)
            return
        stage = t.spec(pending[0]).stage
        for step in pending:
            if t.spec(step).stage != stage:
                break
            begin_step(t, step)
            if t.status != SagaStatus.RUNNING:
                return  # a guard failed the stage: the saga compensates or is parked


def begin_step(t: Transition, step: StepState) -> bool:
    """Start a pending step: check its guard, build its payload, then dispatch it or start
    its sleep or wait. False when the guard skipped it (the caller moves on to the next step)."""
    spec = t.spec(step)
    if spec.guard is not None:
        try:
            allowed, why = bool(spec.guard(t.context())), None
        except Exception as exc:  # a broken guard fails its step; it never skips silently
            allowed, why = False, f"the guard raised {type(exc).__name__}: {exc}"
        if not allowed:
            if why is None and spec.on_guard_false == "skip":
                t.steps[step.index] = step.moved(StepStatus.SKIPPED)
                t.record(HistoryEvent.STEP_SKIPPED, step.name, {"reason": "guard is false"})
                return False
            error = ErrorInfo(
                type="guard_failed",
                message=why or f"the guard {guard_name(spec)}of step {step.name!r} is false",
                retryable=False,
            )
            fail_unsent(t, step, error)
            return True
    if spec.payload is not None:
        built = build_payload(t, step, spec)
        if built is None:
            return True
        step = built
    if spec.sleep:
        begin_sleep(t, step, spec)
    elif spec.wait:
        begin_wait(t, step, spec)
    elif spec.child_input is not None:
        begin_child(t, step, spec)
    elif spec.map:
        begin_map(t, step, spec)
    else:
        dispatch(t, step, "action")
    return True


def guard_name(spec: StepDefinition) -> str:
    """A named guard function's name and a space, so its failure reads as its reason
    (`the guard review_approved of step 'charge' is false`); nothing for a lambda."""
    name = getattr(spec.guard, "__name__", "<lambda>")
    return "" if name.startswith("<") else f"{name} "


def build_payload(t: Transition, step: StepState, spec: StepDefinition) -> StepState | None:
    """Compute the step's `payload=` from the saga as it stands and keep it with the step:
    every attempt and the compensation send it. None when the function failed: a bug in the
    definition, not a passing fault, so the step fails for good without being sent."""
    assert spec.payload is not None
    try:
        payload = spec.payload(t.context())
        if not isinstance(payload, dict):
            raise TypeError(f"it returned {type(payload).__name__}, not a dict")
        # It travels in commands and is stored in a row: JSON only (no NaN, which
        # PostgreSQL's jsonb refuses).
        payload = json.loads(json.dumps(payload, allow_nan=False))
    except Exception as exc:
        fail_unsent(
            t,
            step,
            ErrorInfo(
                type="payload_failed",
                message=f"payload= of step {step.name!r} failed: {type(exc).__name__}: {exc}",
                retryable=False,
            ),
        )
        return None
    step = replace(step, payload=payload)
    t.steps[step.index] = step
    return step


def begin_child(t: Transition, step: StepState, spec: StepDefinition) -> None:
    """Compute the child's input (kept as the step's payload), then start the child."""
    assert spec.child_input is not None
    try:
        payload = spec.child_input(t.context())
        if not isinstance(payload, dict):
            raise TypeError(f"it returned {type(payload).__name__}, not a dict")
        payload = json.loads(json.dumps(payload))  # it travels in a message
    except Exception as exc:
        fail_unsent(
            t,
            step,
            ErrorInfo(
                type="child_input_failed",
                message=f"input= failed: {type(exc).__name__}: {exc}",
                retryable=False,
            ),
        )
        return
    step = replace(step, payload=payload)
    t.steps[step.index] = step
    dispatch(t, step, "action")


def begin_map(t: Transition, step: StepState, spec: StepDefinition) -> None:
    """Expand a map step into its items; progress_map dispatches them."""
    assert spec.items is not None
    try:
        items = spec.items(t.context())
        if not isinstance(items, list | tuple):
            raise TypeError(f"it returned {type(items).__name__}, not a list")
        # Items travel in commands and are stored in rows: JSON values only.
        items = json.loads(json.dumps(list(items)))
    except Exception as exc:
        fail_unsent(
            t,
            step,
            ErrorInfo(
                type="map_items_failed",
                message=f"items= failed: {type(exc).__name__}: {exc}",
                retryable=False,
            ),
        )
        return
    if len(items) > spec.max_items:
        fail_unsent(
            t,
            step,
            ErrorInfo(
                type="map_items_failed",
                message=f"items= returned {len(items)} items, more than max_items="
                f"{spec.max_items}: make each item a bigger chunk, or raise max_items",
                retryable=False,
            ),
        )
        return
    t.steps[step.index] = step.moved(StepStatus.RUNNING, started_at=t.now, error=None)
    for n, item in enumerate(items):
        t.steps.append(
            StepState(name=f"{step.name}[{n}]", index=len(t.steps), item=n, payload=item)
        )
    t.record(
        HistoryEvent.MAP_STARTED, step.name, {"items": len(items), "concurrency": spec.concurrency}
    )


def progress_map(t: Transition, step: StepState) -> None:
    """Dispatch a running map step's pending items up to its concurrency; succeed it
    when every item has."""
    items = [s for s in t.steps if s.of == step.name]
    if all(s.status in (StepStatus.SUCCEEDED, StepStatus.SKIPPED) for s in items):
        t.steps[step.index] = step.moved(
            StepStatus.SUCCEEDED, result=[s.result for s in items], due_at=None
        )
        t.record(HistoryEvent.MAP_FINISHED, step.name, {"items": len(items)})
        return
    room = t.spec(step).concurrency - sum(1 for s in items if s.status == StepStatus.RUNNING)
    for item in items:
        if room <= 0:
            break
        if item.status == StepStatus.PENDING:
            dispatch(t, item, "action")
            room -= 1


def begin_sleep(t: Transition, step: StepState, spec: StepDefinition) -> None:
    if spec.sleep_until is not None:
        try:
            wake = aware_utc(spec.sleep_until(t.context()))
        except Exception as exc:
            error = ErrorInfo(
                type="sleep_until_failed",
                message=f"until= raised {type(exc).__name__}: {exc}",
                retryable=False,
            )
            fail_unsent(t, step, error)
            return
    else:
        assert spec.sleep_seconds is not None
        wake = t.now + timedelta(seconds=spec.sleep_seconds)
    # RUNNING with a due time and no command: a timer, like a retry wait.
    t.steps[step.index] = step.moved(StepStatus.RUNNING, due_at=wake, started_at=t.now, error=None)
    t.record(HistoryEvent.SLEEP_STARTED, step.name, {"until": wake.isoformat()})


def needs_compensation(t: Transition, step: StepState) -> bool:
    if t.spec(step).compensation is None or t.is_map(step):
        return False
    return step.status == StepStatus.SUCCEEDED or (
        step.status == StepStatus.FAILED and (step.outcome_uncertain or step.acted)
    )


def fail_unsent(t: Transition, step: StepState, error: ErrorInfo) -> None:
    """Fail a step that was never sent (its guard, `until=`, `items=`, `payload=` or a child's
    `input=` said no): nothing to wait for, so the saga compensates or parks at once."""
    if step.status == StepStatus.FAILED:  # an operator's retry, and it said no again
        failed = replace(step, error=error.to_dict())
    else:
        failed = step.moved(StepStatus.FAILED, error=error.to_dict())
    t.steps[step.index] = failed
    t.record(HistoryEvent.STEP_FAILED, step.name, {"attempt": 0, "error": error.to_dict()})
    failed_for_good(t, failed, error)


def failed_for_good(t: Transition, step: StepState, error: ErrorInfo) -> None:
    """A step's action will not be tried again: undo what came before, or park."""
    if t.phase != SagaStatus.RUNNING:
        advance(t)  # a cancel or deadline is compensating already; carry on with it
        return
    pivot = t.definition.pivot_index
    if t.unanswered_pivot(step, error.type):
        # Undoing what came before it could leave its effect alone (an order released, its
        # card charged). An operator checks, then retries or skips it.
        t.finish(
            SagaStatus.FAILED,
            error=ErrorInfo(
                type="pivot_uncertain",
                step=step.name,
                message=f"the pivot {step.name!r} may have taken effect: {error.summary}; "
                "check it, then retry the saga (the participant answers a retry from its "
                "idempotency key) or skip the step if it took effect",
            ),
        )
        return
    if pivot is not None and t.position(step) > pivot:
        # Past the pivot nothing is undone: an operator must finish this step. The type
        # says whether retrying could have helped (it ran out) or not (refused for good).
        kind = "retries_exhausted" if t.spec(step).retry.retries(error) else "step_failed"
        t.finish(
            SagaStatus.FAILED,
            error=ErrorInfo(type=kind, step=step.name, message=error.summary),
        )
        return
    t.error = ErrorInfo(type="step_failed", step=step.name, message=error.summary)
    stop_waiting_steps(t)  # parallel steps waiting to retry (or sleeping) stop here
    t.begin_compensation()
    t.record(HistoryEvent.SAGA_COMPENSATING, step.name, {"reason": t.error.message})
    advance(t)


def stop_waiting_steps(t: Transition) -> None:
    for s in t.steps:
        if s.status == StepStatus.RUNNING and not s.in_flight:
            # Waiting to retry (or sleeping): stop here. Its last attempt may still need
            # undoing (outcome_uncertain), which advance() takes care of.
            t.steps[s.index] = s.moved(StepStatus.FAILED, due_at=None)
