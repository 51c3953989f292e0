"""What every /api route shares: its router's settings, the process's store and engine
(`ApiContext`), and the saga a path names."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, Path, Request

from adapters.http.auth import authorize
from adapters.http.problems import ProblemError, problem_responses
from adapters.http.redact import Redactor
from orchestrator.engine import Engine
from orchestrator.errors import SagaNotFound
from orchestrator.ports import SagaStore
from orchestrator.state import SagaState


@dataclass(frozen=True)
class ApiContext:
    """What the routes use, on `app.state.saga_api`. `engine` None: a read-only process."""

    store: SagaStore
    engine: Engine | None
    redact: Redactor


def api_router() -> APIRouter:
    """A router of /api routes: authorized, tagged and with the error responses they share."""
    return APIRouter(
        prefix="/api",
        tags=["sagas"],
        dependencies=[Depends(authorize)],
        responses=problem_responses(401, 403, 422),
    )


SagaId = Annotated[UUID, Path(description="The saga's id.")]
CALLER = Depends(authorize)


def context_of(request: Request) -> ApiContext:
    context: ApiContext = request.app.state.saga_api
    return context


def engine_of(request: Request) -> Engine:
    engine = context_of(request).engine
    if engine is None:
        raise ProblemError(
            503,
            "read-only",
            "Read-only",
            "this process cannot act on sagas (it has no engine): send writes to the API "
            "of `saga run`",
        )
    return engine


async def saga_of(request: Request, saga_id: UUID) -> SagaState:
    state = await context_of(request).store.get(saga_id)
    if state is None:
        raise SagaNotFound(f"no saga with id {saga_id}")
    return state
