"""The /api writes: start a saga, cancel one (by id or by start key), and the operator
actions (retry, pause, resume, skip a step, mark a compensation done). Each goes through the
engine and is recorded in the saga's history as `api:<caller>`, or `api:<who>` if given."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import Path, Query, Request, Response

from adapters.http.api.context import (
    CALLER,
    SagaId,
    actor_of,
    api_router,
    context_of,
    engine_of,
    retried,
    saga_of,
)
from adapters.http.auth import Caller
from adapters.http.models import (
    ActionRequest,
    KeyCancelResult,
    SagaDetail,
    SkipRequest,
    StartRequest,
    StartResponse,
)
from adapters.http.problems import ProblemError, problem_responses
from adapters.rabbitmq.storable import check_storable
from orchestrator import trace
from orchestrator.errors import InvalidInput, Poison, SagaNotFound
from orchestrator.machine import (
    MarkCompensated,
    OperatorEvent,
    PauseRequested,
    ResumeRequested,
    RetryRequested,
    SkipRequested,
)
from orchestrator.messages import MAX_KEY_LENGTH, CancelSaga, StartSaga
from orchestrator.state import SagaState

router = api_router()


@router.post(
    "/sagas",
    status_code=201,
    summary="Start a saga",
    description="201 when started; 200 when a saga with this key exists already (nothing "
    "new is started; `input_differs` says it was started with other input); 202 when the "
    "start waits for a semantic lock. A `traceparent` header joins the saga to the caller's "
    "trace.",
    responses={
        200: {"model": StartResponse, "description": "A saga with this key exists already"},
        202: {"model": StartResponse, "description": "Waiting for a semantic lock"},
        **problem_responses(409, 413, 503),
    },
)
async def start_saga(
    request: Request, response: Response, body: StartRequest, caller: Caller = CALLER
) -> StartResponse:
    engine = engine_of(request)
    try:
        # What validates as JSON but PostgreSQL cannot store (a NUL, a non-finite number)
        # would fail the start's transaction: say so as a 422, not a 500.
        check_storable(await request.body())
    except Poison as exc:
        raise InvalidInput(str(exc)) from exc
    start = StartSaga(saga=body.saga, key=body.key, input=body.input, version=body.version)
    context = trace.from_headers(request.headers)
    outcome = await retried(
        lambda: engine.start(start, actor=actor_of(caller, None), trace=context)
    )
    if outcome.rejected is not None:
        raise ProblemError(
            409,
            "resource-locked",
            "Resource locked",
            f"not started: {outcome.rejected}; start it again once that saga has finished",
        )
    if outcome.queued:
        response.status_code = 202
    elif not outcome.created:
        response.status_code = 200
    return StartResponse(
        saga_id=outcome.saga_id,
        created=outcome.created,
        status=outcome.status,
        queued=outcome.queued,
        input_differs=outcome.input_differs,
    )


_ACTION_RESPONSES = problem_responses(404, 409, 413, 503)


@router.post(
    "/sagas/{saga_id}/cancel",
    summary="Cancel a saga",
    description="Compensations run in reverse order. Refused (409) once the pivot step was "
    "dispatched (the detail names it) or when the saga has ended.",
    responses=_ACTION_RESPONSES,
)
async def cancel_saga(
    request: Request, saga_id: SagaId, body: ActionRequest, caller: Caller = CALLER
) -> SagaDetail:
    engine = engine_of(request)
    cancel = CancelSaga(saga_id=saga_id, reason=body.reason)
    outcome = await retried(lambda: engine.cancel(cancel, actor=actor_of(caller, body.who)))
    state = await saga_of(request, saga_id)
    if outcome.refused is not None:
        raise _cancel_refused(outcome.refused, [state])
    return context_of(request).detail(state)


@router.post(
    "/sagas/by-key/{key:path}/cancel",
    summary="Cancel by start key",
    description="Cancels every saga started with this key (one per saga name; `saga` "
    "narrows it), and a start with it that waits for a semantic lock. None: 404, unless "
    "`hold=true` asks to hold the cancel (202), which then applies when a start with this "
    "key arrives, as a cancel sent through the broker does. Refused (409) as a cancel by id.",
    responses={
        202: {"model": KeyCancelResult, "description": "Held for a start still to come"},
        **_ACTION_RESPONSES,
    },
)
async def cancel_by_key(
    request: Request,
    response: Response,
    *,
    key: Annotated[
        str, Path(min_length=1, max_length=MAX_KEY_LENGTH, description="The start's key.")
    ],
    body: ActionRequest,
    saga: Annotated[str | None, Query(max_length=100, description="Only this saga name.")] = None,
    hold: Annotated[
        bool,
        Query(description="No saga has the key yet: hold the cancel for its start (202)."),
    ] = False,
    caller: Caller = CALLER,
) -> KeyCancelResult:
    engine = engine_of(request)
    cancel = CancelSaga(key=key, saga=saga or None, reason=body.reason)
    try:
        outcome = await retried(
            lambda: engine.cancel(cancel, actor=actor_of(caller, body.who), hold=hold)
        )
    except SagaNotFound as exc:
        raise SagaNotFound(
            f"{exc}; check the key, or ask to hold the cancel for a start still to come "
            "(`hold=true`; `saga cancel --hold`)"
        ) from exc
    if outcome.held:
        response.status_code = 202
        return KeyCancelResult(held=True, items=[])
    states = [await saga_of(request, saga_id) for saga_id, _ in outcome.sagas]
    if outcome.refused is not None:
        raise _cancel_refused(outcome.refused, states)
    ctx = context_of(request)
    return KeyCancelResult(held=False, items=[ctx.detail(s) for s in states])


def _cancel_refused(why: str, states: list[SagaState]) -> ProblemError:
    advice = (
        "there is nothing left to cancel"
        if all(state.finished for state in states)
        else "the saga carries on to its end (or parks for an operator); undo its "
        "effects by other means, e.g. a refund"
    )
    return ProblemError(409, "cancel-refused", "Cancel refused", f"{why}; {advice}")


async def _operate(
    request: Request, saga_id: UUID, action: OperatorEvent, caller: Caller, who: str | None
) -> SagaDetail:
    engine = engine_of(request)
    state = await retried(lambda: engine.operate(saga_id, action, actor_of(caller, who)))
    return context_of(request).detail(state)


@router.post(
    "/sagas/{saga_id}/retry",
    summary="Retry a parked (failed) saga",
    description="Continues from where it stopped, with a fresh retry budget.",
    responses=_ACTION_RESPONSES,
)
async def retry_saga(
    request: Request, saga_id: SagaId, body: ActionRequest, caller: Caller = CALLER
) -> SagaDetail:
    return await _operate(request, saga_id, RetryRequested(body.reason), caller, body.who)


@router.post(
    "/sagas/{saga_id}/pause",
    summary="Pause a saga",
    description="Nothing new is dispatched and its timers hold until it is resumed.",
    responses=_ACTION_RESPONSES,
)
async def pause_saga(
    request: Request, saga_id: SagaId, body: ActionRequest, caller: Caller = CALLER
) -> SagaDetail:
    return await _operate(request, saga_id, PauseRequested(body.reason), caller, body.who)


@router.post(
    "/sagas/{saga_id}/resume",
    summary="Resume a paused saga",
    responses=_ACTION_RESPONSES,
)
async def resume_saga(
    request: Request, saga_id: SagaId, body: ActionRequest, caller: Caller = CALLER
) -> SagaDetail:
    return await _operate(request, saga_id, ResumeRequested(body.reason), caller, body.who)


@router.post(
    "/sagas/{saga_id}/skip",
    summary="Treat a step as done",
    description="A step parked past the pivot (the saga then carries on), or a pending step "
    "of a paused saga; `result` becomes its result.",
    responses=_ACTION_RESPONSES,
)
async def skip_step(
    request: Request, saga_id: SagaId, body: SkipRequest, caller: Caller = CALLER
) -> SagaDetail:
    action = SkipRequested(step=body.step, result=body.result, reason=body.reason)
    return await _operate(request, saga_id, action, caller, body.who)


@router.post(
    "/sagas/{saga_id}/mark-compensated",
    summary="Record a parked compensation as done by hand",
    description="The saga then undoes the remaining steps; `reason` is kept as the note.",
    responses=_ACTION_RESPONSES,
)
async def mark_compensated(
    request: Request, saga_id: SagaId, body: ActionRequest, caller: Caller = CALLER
) -> SagaDetail:
    return await _operate(request, saga_id, MarkCompensated(body.reason), caller, body.who)
