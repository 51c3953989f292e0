"""The /api bulk actions: one operator action (retry, pause, resume, skip, mark-compensated,
cancel) on every saga a filter matches, in one request (`Engine.bulk`, orchestrator/bulk.py).
Each saga's action, or its refusal, is recorded in its history as `api:<caller>` (or
`api:<who>`), as the actions on one saga are; the answer counts the outcomes and lists the
refusals."""

from __future__ import annotations

from fastapi import Request

from adapters.http import models
from adapters.http.api.context import CALLER, actor_of, api_router, context_of, engine_of
from adapters.http.auth import Caller
from adapters.http.models import BulkRequest, BulkResult, BulkSkipRequest
from adapters.http.problems import problem_responses
from orchestrator.bulk import BulkAction
from orchestrator.machine import (
    CancelRequested,
    MarkCompensated,
    PauseRequested,
    ResumeRequested,
    RetryRequested,
    SkipRequested,
)

router = api_router()

_RESPONSES = problem_responses(400, 413, 503)
_HOW = (
    " The sagas are listed first (newest activity first, at most `limit`), then acted on in "
    "batches; a saga whose status or revision moved since it was listed is refused "
    "(`changed`), not forced. Each saga's action or refusal is recorded in its history. "
    "`dry_run` says what would happen and changes nothing. 422 without a filter."
)


async def _bulk(
    request: Request, body: BulkRequest, action: BulkAction, caller: Caller
) -> BulkResult:
    engine = engine_of(request)
    # The query's own limit is the bulk's business (it lists page by page up to body.limit).
    query = body.filter.query(context_of(request).registry, limit=body.limit)
    report = await engine.bulk(
        query, action, actor_of(caller, body.who), limit=body.limit, dry_run=body.dry_run
    )
    return models.bulk_result(report)


@router.post(
    "/bulk/retry",
    summary="Retry every parked saga a filter matches",
    description="Each continues from where it stopped, with a fresh retry budget." + _HOW,
    responses=_RESPONSES,
)
async def bulk_retry(request: Request, body: BulkRequest, caller: Caller = CALLER) -> BulkResult:
    return await _bulk(request, body, RetryRequested(body.reason), caller)


@router.post(
    "/bulk/pause",
    summary="Pause every saga a filter matches",
    description="Nothing new is dispatched and their timers hold until resumed." + _HOW,
    responses=_RESPONSES,
)
async def bulk_pause(request: Request, body: BulkRequest, caller: Caller = CALLER) -> BulkResult:
    return await _bulk(request, body, PauseRequested(body.reason), caller)


@router.post(
    "/bulk/resume",
    summary="Resume every paused saga a filter matches",
    description=_HOW.lstrip(),
    responses=_RESPONSES,
)
async def bulk_resume(request: Request, body: BulkRequest, caller: Caller = CALLER) -> BulkResult:
    return await _bulk(request, body, ResumeRequested(body.reason), caller)


@router.post(
    "/bulk/skip",
    summary="Treat a step as done in every saga a filter matches",
    description="The step parked past the pivot (the saga then carries on), or pending in a "
    "paused saga, is done with `result`." + _HOW,
    responses=_RESPONSES,
)
async def bulk_skip(request: Request, body: BulkSkipRequest, caller: Caller = CALLER) -> BulkResult:
    action = SkipRequested(step=body.step, result=body.result, reason=body.reason)
    return await _bulk(request, body, action, caller)


@router.post(
    "/bulk/mark-compensated",
    summary="Record the parked compensations of every saga a filter matches as done by hand",
    description="Each saga then undoes its remaining steps; `reason` is kept as the note." + _HOW,
    responses=_RESPONSES,
)
async def bulk_mark_compensated(
    request: Request, body: BulkRequest, caller: Caller = CALLER
) -> BulkResult:
    return await _bulk(request, body, MarkCompensated(body.reason), caller)


@router.post(
    "/bulk/cancel",
    summary="Cancel every saga a filter matches",
    description="Compensations run in reverse order; a saga past its pivot, or ended, is "
    "refused (`not_applicable`, recorded as `cancel_refused`)." + _HOW,
    responses=_RESPONSES,
)
async def bulk_cancel(request: Request, body: BulkRequest, caller: Caller = CALLER) -> BulkResult:
    return await _bulk(request, body, CancelRequested(body.reason), caller)
