"""What every /api route shares: its router's settings, the process's store and engine
(`ApiContext`), and the saga a path names."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, TypeVar
from uuid import UUID

from fastapi import APIRouter, Depends, Path, Request

from adapters.http import models
from adapters.http.auth import Caller, authorize
from adapters.http.models import SagaDetail, SagaSummary
from adapters.http.problems import ProblemError, problem_responses
from adapters.saga_redaction import Redactor
from orchestrator.engine import Engine
from orchestrator.errors import ConcurrentUpdate, SagaNotFound
from orchestrator.ports import SagaStore
from orchestrator.registry import Registry
from orchestrator.saga import Saga
from orchestrator.state import SagaState


@dataclass(frozen=True)
class ApiContext:
    """What the routes use, on `app.state.saga_api`. `engine` None: a read-only process.
    `registry`: the definitions this process loads, which tell a saga's wait steps (and
    the kind of each step) apart."""

    store: SagaStore
    engine: Engine | None
    redact: Redactor
    registry: Registry

    def summary(self, state: SagaState) -> SagaSummary:
        return models.summary(state, self.redact, self._definition(state))

    def detail(self, state: SagaState) -> SagaDetail:
        return models.detail(state, self.redact, self._definition(state))

    def _definition(self, state: SagaState) -> Saga | None:
        return self.registry.definition(state.name, state.version)


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
T = TypeVar("T")

# A lost race with another transaction on the same saga is retried at once; a few times is
# plenty (it needs another writer on the same row each time).
_RACE_RETRIES = 5


def actor_of(caller: Caller, who: str | None) -> str:
    """Who a write is recorded as in the saga's history: `api:<who>`, or the token's name."""
    return f"api:{who or caller.name}"


async def retried(call: Callable[[], Awaitable[T]]) -> T:
    """`call()`, again at once after a lost race (ConcurrentUpdate) with another writer."""
    for attempt in range(_RACE_RETRIES):
        try:
            return await call()
        except ConcurrentUpdate:
            if attempt == _RACE_RETRIES - 1:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


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
