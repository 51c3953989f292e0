"""Property-based: schemathesis generates requests from the app's own OpenAPI document —
valid ones and malformed ones — for every /api operation, and no answer may be a 5xx.

Half of the generated saga ids are swapped for sagas that exist, in the states where the
actions mean something (running, past the pivot, parked, parked while compensating), so the
actions reach the engine instead of stopping at 404. Bounded: a fixed number of examples
per operation (seconds, not minutes).

schemathesis calls the app through Starlette's test client, which runs each request in an
event loop of its own: the store therefore uses connections that are not pooled across
requests (NullPool).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING
from uuid import UUID

import httpx
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from pydantic import SecretStr
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from adapters.clock import utcnow
from adapters.http.app import create_app, openapi_document
from adapters.memory.publisher import MemoryPublisher
from adapters.postgres.database import single_use_engine
from adapters.postgres.store import PostgresStore
from adapters.settings import Settings
from orchestrator.engine import Engine
from orchestrator.registry import Registry
from tests.http.conftest import OPERATOR, SAGAS, TOKENS, Api

if TYPE_CHECKING:  # the library declares its OpenAPI case type for type checkers only
    from schemathesis.specs.openapi.schemas import OpenApiCase

EXAMPLES = 40


@dataclass
class Seeded:
    app: FastAPI
    ids: list[UUID]  # sagas running, past the pivot, parked, parked while compensating


@pytest.fixture
async def seeded(database_url: str) -> AsyncIterator[Seeded]:
    store = PostgresStore(single_use_engine(database_url))
    publisher = MemoryPublisher()
    engine = Engine(store, publisher, Registry(SAGAS), clock=utcnow)
    app = create_app(Settings(api_tokens=SecretStr(TOKENS)), store, engine)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://api.test",
        headers={"Authorization": f"Bearer {OPERATOR}"},
    ) as client:
        api = Api(client, engine, publisher, store, app)
        ids = [
            await api.start("fuzz-running"),
            await api.past_pivot("fuzz-past-pivot"),
            await api.parked("fuzz-parked"),
            await api.parked_compensating("fuzz-undoing"),
        ]
    yield Seeded(app, ids)
    await store.db_engine.dispose()


# Every /api operation, from the committed-to-be document; the app itself serves the one
# each test runs against.
OPERATIONS = [
    (path, method.upper())
    for path, ops in openapi_document()["paths"].items()
    if path.startswith("/api/")
    for method in ops
]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize(("path", "method"), OPERATIONS)
def test_no_request_makes_the_api_fail(
    seeded: Seeded, path: str, method: str, mode: GenerationMode
) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", seeded.app)
    strategy = schema[path][method].as_strategy(generation_mode=mode)

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    @given(strategy)
    def no_server_error(case: OpenApiCase) -> None:
        params = case.path_parameters or {}
        if isinstance(params.get("saga_id"), str):
            try:
                pick = UUID(params["saga_id"]).int % (2 * len(seeded.ids))
            except ValueError:
                pick = len(seeded.ids)  # not a UUID: left alone, a 422 is the point
            if pick < len(seeded.ids):
                params["saga_id"] = str(seeded.ids[pick])
        case.call_and_validate(
            headers={"Authorization": f"Bearer {OPERATOR}"}, checks=[not_a_server_error]
        )

    no_server_error()
