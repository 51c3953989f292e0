"""The JSON API under /api: list, read, start, cancel and every operator action
(docs/http-api.md). Reads go to the store; writes go through the engine like any other
transition (row lock, history with who and why, outbox), so an action taken here is the
same as one taken with the CLI or sent through the broker."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, TypeVar
from uuid import UUID

from fastapi import APIRouter, Depends, Path, Query, Request, Response

from adapters.http import cursor, models
from adapters.http.auth import Caller, authorize
from adapters.http.models import (
    ActionRequest,
    HistoryPage,
    KeyCancelResult,
    SagaDetail,
    SagaFilters,
    SagaList,
    SagaPage,
    SkipRequest,
    StartRequest,
    StartResponse,
    StatusCounts,
)
from adapters.http.problems import ProblemError, problem_responses
from adapters.http.redact import Redactor
from adapters.rabbitmq.storable import check_storable
from orchestrator import trace
from orchestrator.engine import Engine
from orchestrator.errors import ConcurrentUpdate, InvalidInput, Poison, SagaNotFound
from orchestrator.machine import (
    MarkCompensated,
    OperatorEvent,
    PauseRequested,
    ResumeRequested,
    RetryRequested,
    SkipRequested,
)
from orchestrator.messages import MAX_KEY_LENGTH, CancelSaga, StartSaga, aware_utc
from orchestrator.ports import SagaQuery, SagaStore
from orchestrator.state import SagaState

T = TypeVar("T")

# A lost race with another transaction on the same saga is retried at once; a few times is
# plenty (it needs another writer on the same row each time).
_RACE_RETRIES = 5


@dataclass(frozen=True)
class ApiContext:
    """What the routes use, on `app.state.saga_api`. `engine` None: a read-only process."""

    store: SagaStore
    engine: Engine | None
    redact: Redactor


router = APIRouter(
    prefix="/api",
    tags=["sagas"],
    dependencies=[Depends(authorize)],
    responses=problem_responses(401, 403, 422),
)

SagaId = Annotated[UUID, Path(description="The saga's id.")]
_CALLER = Depends(authorize)


def _ctx(request: Request) -> ApiContext:
    context: ApiContext = request.app.state.saga_api
    return context


def _engine(request: Request) -> Engine:
    engine = _ctx(request).engine
    if engine is None:
        raise ProblemError(
            503,
            "read-only",
            "Read-only",
            "this process cannot act on sagas (it has no engine): send writes to the API "
            "of `saga run`",
        )
    return engine


def _actor(caller: Caller, who: str | None) -> str:
    return f"api:{who or caller.name}"


async def _retried(call: Callable[[], Awaitable[T]]) -> T:
    for attempt in range(_RACE_RETRIES):
        try:
            return await call()
        except ConcurrentUpdate:
            if attempt == _RACE_RETRIES - 1:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


async def _get(request: Request, saga_id: UUID) -> SagaState:
    state = await _ctx(request).store.get(saga_id)
    if state is None:
        raise SagaNotFound(f"no saga with id {saga_id}")
    return state


# -- reads --------------------------------------------------------------------------------


@router.get(
    "/sagas",
    summary="List sagas",
    description="Newest activity first (updated_at, then id, descending); every filter given "
    "must hold. Page with `next_cursor`: a saga that changes while you page moves to the "
    "front, so it is never listed twice.",
    responses=problem_responses(400),
)
async def list_sagas(request: Request, filters: Annotated[SagaFilters, Query()]) -> SagaPage:
    ctx = _ctx(request)
    try:
        after = None if filters.cursor is None else cursor.decode(filters.cursor)
    except cursor.BadCursor as exc:
        raise ProblemError(
            400,
            "bad-cursor",
            "Bad cursor",
            "`cursor` is not one this API issued: pass `next_cursor` from the previous page "
            "unchanged, or leave it out to start from the first page",
        ) from exc
    f = filters
    query = SagaQuery(
        status=f.status,
        saga=f.saga,
        key=f.key,
        version=f.version,
        step=f.step,
        created_after=None if f.created_after is None else aware_utc(f.created_after),
        created_before=None if f.created_before is None else aware_utc(f.created_before),
        in_status_for=(
            None if f.in_status_for_minutes is None else timedelta(minutes=f.in_status_for_minutes)
        ),
        after=after,
        limit=f.limit + 1,  # one more tells whether there is a next page
    )
    found = await ctx.store.find(query)
    page = found[: f.limit]
    more = len(found) > f.limit
    return SagaPage(
        items=[models.summary(s, ctx.redact) for s in page],
        next_cursor=cursor.encode(page[-1].updated_at, page[-1].saga_id) if more else None,
    )


@router.get("/sagas/counts", summary="How many sagas are in each status")
async def count_sagas(
    request: Request,
    saga: Annotated[str | None, Query(max_length=100, description="Only this saga name.")] = None,
) -> StatusCounts:
    return StatusCounts(counts=await _ctx(request).store.count_by_status(saga))


@router.get(
    "/sagas/by-key/{key:path}",
    summary="Find sagas by start key",
    description="Every saga started with this key (one per saga name), newest activity first.",
    responses=problem_responses(404),
)
async def find_by_key(
    request: Request,
    key: Annotated[str, Path(max_length=MAX_KEY_LENGTH, description="The start's key.")],
    saga: Annotated[str | None, Query(max_length=100, description="Only this saga name.")] = None,
) -> SagaList:
    ctx = _ctx(request)
    found = await ctx.store.find(SagaQuery(key=key, saga=saga, limit=500))
    if not found:
        where = "" if saga is None else f" for saga {saga!r}"
        raise SagaNotFound(f"no saga has key {key!r}{where}")
    return SagaList(items=[models.detail(s, ctx.redact) for s in found])


@router.get(
    "/sagas/{saga_id}",
    summary="A saga with its steps",
    responses=problem_responses(404),
)
async def get_saga(request: Request, saga_id: SagaId) -> SagaDetail:
    return models.detail(await _get(request, saga_id), _ctx(request).redact)


@router.get(
    "/sagas/{saga_id}/history",
    summary="A saga's history",
    description="Every transition and operator action, oldest first, with who and why "
    "(refused actions included).",
    responses=problem_responses(404),
)
async def saga_history(request: Request, saga_id: SagaId) -> HistoryPage:
    ctx = _ctx(request)
    await _get(request, saga_id)
    records = await ctx.store.history(saga_id)
    return HistoryPage(items=[models.history_item(r, ctx.redact) for r in records])


# -- writes -------------------------------------------------------------------------------


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
    request: Request, response: Response, body: StartRequest, caller: Caller = _CALLER
) -> StartResponse:
    engine = _engine(request)
    try:
        # What validates as JSON but PostgreSQL cannot store (a NUL, a non-finite number)
        # would fail the start's transaction: say so as a 422, not a 500.
        check_storable(await request.body())
    except Poison as exc:
        raise InvalidInput(str(exc)) from exc
    start = StartSaga(saga=body.saga, key=body.key, input=body.input, version=body.version)
    context = trace.from_headers(request.headers)
    outcome = await _retried(lambda: engine.start(start, actor=_actor(caller, None), trace=context))
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
    request: Request, saga_id: SagaId, body: ActionRequest, caller: Caller = _CALLER
) -> SagaDetail:
    engine = _engine(request)
    cancel = CancelSaga(saga_id=saga_id, reason=body.reason)
    outcome = await _retried(lambda: engine.cancel(cancel, actor=_actor(caller, body.who)))
    state = await _get(request, saga_id)
    if outcome.refused is not None:
        raise _cancel_refused(outcome.refused, [state])
    return models.detail(state, _ctx(request).redact)


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
    caller: Caller = _CALLER,
) -> KeyCancelResult:
    engine = _engine(request)
    cancel = CancelSaga(key=key, saga=saga or None, reason=body.reason)
    try:
        outcome = await _retried(
            lambda: engine.cancel(cancel, actor=_actor(caller, body.who), hold=hold)
        )
    except SagaNotFound as exc:
        raise SagaNotFound(
            f"{exc}; check the key, or ask to hold the cancel for a start still to come "
            "(`hold=true`; `saga cancel --hold`)"
        ) from exc
    if outcome.held:
        response.status_code = 202
        return KeyCancelResult(held=True, items=[])
    states = [await _get(request, saga_id) for saga_id, _ in outcome.sagas]
    if outcome.refused is not None:
        raise _cancel_refused(outcome.refused, states)
    redact = _ctx(request).redact
    return KeyCancelResult(held=False, items=[models.detail(s, redact) for s in states])


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
    engine = _engine(request)
    state = await _retried(lambda: engine.operate(saga_id, action, _actor(caller, who)))
    return models.detail(state, _ctx(request).redact)


@router.post(
    "/sagas/{saga_id}/retry",
    summary="Retry a parked (failed) saga",
    description="Continues from where it stopped, with a fresh retry budget.",
    responses=_ACTION_RESPONSES,
)
async def retry_saga(
    request: Request, saga_id: SagaId, body: ActionRequest, caller: Caller = _CALLER
) -> SagaDetail:
    return await _operate(request, saga_id, RetryRequested(body.reason), caller, body.who)


@router.post(
    "/sagas/{saga_id}/pause",
    summary="Pause a saga",
    description="Nothing new is dispatched and its timers hold until it is resumed.",
    responses=_ACTION_RESPONSES,
)
async def pause_saga(
    request: Request, saga_id: SagaId, body: ActionRequest, caller: Caller = _CALLER
) -> SagaDetail:
    return await _operate(request, saga_id, PauseRequested(body.reason), caller, body.who)


@router.post(
    "/sagas/{saga_id}/resume",
    summary="Resume a paused saga",
    responses=_ACTION_RESPONSES,
)
async def resume_saga(
    request: Request, saga_id: SagaId, body: ActionRequest, caller: Caller = _CALLER
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
    request: Request, saga_id: SagaId, body: SkipRequest, caller: Caller = _CALLER
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
    request: Request, saga_id: SagaId, body: ActionRequest, caller: Caller = _CALLER
) -> SagaDetail:
    return await _operate(request, saga_id, MarkCompensated(body.reason), caller, body.who)
