"""The /api reads: list sagas, count them, find them by key, read one and its history.
They go to the store only, so a read-only process (no engine) serves them too."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query, Request

from adapters.http import cursor, models
from adapters.http.api.context import SagaId, api_router, context_of, saga_of
from adapters.http.models import (
    HistoryPage,
    SagaDetail,
    SagaFilters,
    SagaList,
    SagaPage,
    StatusCounts,
)
from adapters.http.problems import ProblemError, problem_responses
from orchestrator.errors import SagaNotFound
from orchestrator.messages import MAX_KEY_LENGTH
from orchestrator.ports import SagaQuery

router = api_router()


@router.get(
    "/sagas",
    summary="List sagas",
    description="Newest activity first (updated_at, then id, descending); every filter given "
    "must hold. Page with `next_cursor`: a saga that changes while you page moves to the "
    "front, so it is never listed twice.",
    responses=problem_responses(400),
)
async def list_sagas(request: Request, filters: Annotated[SagaFilters, Query()]) -> SagaPage:
    ctx = context_of(request)
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
    # One more than the page tells whether there is a next page.
    query = filters.query(ctx.registry, limit=filters.limit + 1, after=after)
    found = await ctx.store.find(query)
    page = found[: filters.limit]
    more = len(found) > filters.limit
    return SagaPage(
        items=[ctx.summary(s) for s in page],
        next_cursor=cursor.encode(page[-1].updated_at, page[-1].saga_id) if more else None,
    )


@router.get("/sagas/counts", summary="How many sagas are in each status")
async def count_sagas(
    request: Request,
    saga: Annotated[str | None, Query(max_length=100, description="Only this saga name.")] = None,
) -> StatusCounts:
    return StatusCounts(counts=await context_of(request).store.count_by_status(saga))


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
    ctx = context_of(request)
    found = await ctx.store.find(SagaQuery(key=key, saga=saga, limit=500))
    if not found:
        where = "" if saga is None else f" for saga {saga!r}"
        raise SagaNotFound(f"no saga has key {key!r}{where}")
    return SagaList(items=[ctx.detail(s) for s in found])


@router.get(
    "/sagas/{saga_id}",
    summary="A saga with its steps",
    responses=problem_responses(404),
)
async def get_saga(request: Request, saga_id: SagaId) -> SagaDetail:
    return context_of(request).detail(await saga_of(request, saga_id))


@router.get(
    "/sagas/{saga_id}/history",
    summary="A saga's history",
    description="Every transition and operator action, oldest first, with who and why "
    "(refused actions included).",
    responses=problem_responses(404),
)
async def saga_history(request: Request, saga_id: SagaId) -> HistoryPage:
    ctx = context_of(request)
    await saga_of(request, saga_id)
    records = await ctx.store.history(saga_id)
    return HistoryPage(items=[models.history_item(r, ctx.redact) for r in records])
