"""The HTTP API's body cap covers every route, not only the ones that read a body, and the
API reads JSON only: a pickle (or any other content type) is a 4xx, never unpickled."""

from __future__ import annotations

import json
import pickle  # noqa: TID251 (the test sends a pickle; nothing here loads one)
from collections.abc import AsyncIterator

import httpx
import pytest

from adapters.clock import utcnow
from adapters.http.app import create_app
from adapters.memory.publisher import MemoryPublisher
from adapters.postgres.database import single_use_engine
from adapters.postgres.store import PostgresStore
from adapters.settings import Settings
from orchestrator.engine import Engine
from orchestrator.ports import SagaQuery
from orchestrator.registry import Registry
from sagas import order

CAP = 512


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, PostgresStore]]:
    store = PostgresStore(single_use_engine(database_url))
    engine = Engine(store, MemoryPublisher(), Registry([order.saga]), clock=utcnow)
    app = create_app(Settings(http_max_body=CAP), store, engine)
    # Every operation of the API, then pages and endpoints outside it, and no route at all.
    routes = [
        (path, sorted(m.upper() for m in ops)) for path, ops in app.openapi()["paths"].items()
    ] + [(p, ["GET", "POST"]) for p in ("/", "/metrics", "/docs-assets/x", "/no-such-route")]
    assert len(routes) > 10
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://api.test"
    ) as http:
        http.routes = routes  # type: ignore[attr-defined]
        yield http, store
    await store.db_engine.dispose()


async def test_every_route_refuses_a_body_over_the_cap(
    client: tuple[httpx.AsyncClient, PostgresStore],
) -> None:
    http, _ = client
    body = json.dumps({"pad": "x" * CAP}).encode()
    tried = 0
    for path, methods in http.routes:  # type: ignore[attr-defined]
        url = path.replace("{saga_id}", "00000000-0000-0000-0000-000000000001")
        for method in methods:
            if method == "HEAD":
                continue
            answer = await http.request(
                method, url, content=body, headers={"Content-Type": "application/json"}
            )
            assert answer.status_code == 413, (method, path, answer.status_code)
            assert answer.json()["type"].endswith("body-too-large")
            tried += 1
    assert tried > 10


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/x-python-pickle", pickle.dumps({"saga": "order", "key": "p1"})),
        ("application/x-python-pickle", b'{"saga": "order", "key": "p1", "input": {}}'),
        ("text/plain", b'{"saga": "order", "key": "p1", "input": {}}'),
        ("application/x-www-form-urlencoded", b"saga=order&key=p1"),
    ],
)
async def test_the_api_reads_json_only(
    client: tuple[httpx.AsyncClient, PostgresStore], content_type: str, body: bytes
) -> None:
    http, store = client
    answer = await http.post("/api/sagas", content=body, headers={"Content-Type": content_type})
    assert 400 <= answer.status_code < 500, answer.text
    assert "Traceback" not in answer.text
    assert await store.find(SagaQuery(key="p1")) == []
