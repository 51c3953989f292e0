"""How long an operator waits for a finished saga: the store's read path and the HTTP API,
timed one call at a time from a warm connection, on random finished sagas."""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from uuid import UUID

import httpx
import psycopg

from adapters.postgres.database import make_engine
from adapters.postgres.store import PostgresStore
from bench.growth_deploy import dsn
from bench.sagas import saga
from bench.stats import percentiles
from orchestrator.ports import SagaQuery

# get: the saga and its steps (what `saga status` and GET /api/sagas/{id} read).
# find_key: by start key within the saga's name, the unique (name, key) index.
# find_key_any: by key alone, what GET /api/sagas/by-key/{key} does without ?saga=.
# history: every event of the saga, oldest first.
# http_get: GET /api/sagas/{id} of `saga run`, over a kept-alive connection.
# list: the first page of GET /api/sagas, newest activity first, with no filter: what an
# operator sees first. The same for every saga: it is timed as often as the others.
KINDS = ("get", "find_key", "find_key_any", "history", "http_get", "list")

Lookup = Callable[[UUID, str], Awaitable[object]]


async def finished_sample(conninfo: str, count: int) -> list[tuple[UUID, str]]:
    """`count` random finished bench sagas (id, key); repeated when fewer exist."""
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT id, key FROM saga_instances WHERE name = %s"
            " AND status IN ('completed', 'compensated') ORDER BY random() LIMIT %s",
            (saga.name, count),
        )
        rows = [(UUID(str(i)), str(k)) for i, k in await cur.fetchall()]
    if not rows:
        raise RuntimeError("no finished bench saga to look up")
    return [rows[i % len(rows)] for i in range(count)]


async def measure(
    url: str, http_base: str, lookups: int, budget: float
) -> dict[str, dict[str, float | None]]:
    """p50/p95/p99 ms per kind, over `lookups` calls each (fewer when a kind would take
    more than `budget` seconds: a full table scan per call at 10^6 sagas adds up)."""
    # Each kind its own sagas, so that no kind reads pages another one warmed; and one
    # more each, looked up untimed to open the connection.
    sample = await finished_sample(dsn(url), (lookups + 1) * len(KINDS))
    random.shuffle(sample)
    engine = make_engine(url, pool_size=1)
    store = PostgresStore(engine)
    try:
        async with httpx.AsyncClient(base_url=http_base, timeout=60) as client:
            calls = _lookups(store, client)
            figures: dict[str, dict[str, float | None]] = {}
            for n, kind in enumerate(KINDS):
                call = calls[kind]
                mine = sample[n * (lookups + 1) : (n + 1) * (lookups + 1)]
                await call(*mine[0])
                figures[kind] = await _time(call, mine[1:], budget)
            return figures
    finally:
        await engine.dispose()


async def _time(
    call: Lookup, sample: list[tuple[UUID, str]], budget: float
) -> dict[str, float | None]:
    took: list[float] = []
    deadline = time.monotonic() + budget
    for saga_id, key in sample:
        began = time.perf_counter()
        await call(saga_id, key)
        took.append((time.perf_counter() - began) * 1000)
        if time.monotonic() > deadline:
            break
    return {"n": len(took), **percentiles(took)}


def store_lookups(store: PostgresStore) -> dict[str, Lookup]:
    """Each kind of status and list query as a call that fails when it finds nothing: a
    lookup that misses would be timed as fast and prove nothing. bench.retention uses them
    too."""

    async def get(saga_id: UUID, key: str) -> object:
        return _found(await store.get(saga_id), saga_id)

    async def find_key(saga_id: UUID, key: str) -> object:
        return _found(await store.find(SagaQuery(saga=saga.name, key=key)), saga_id)

    async def find_key_any(saga_id: UUID, key: str) -> object:
        # The API's by-key route asks for up to 500, one per saga name.
        return _found(await store.find(SagaQuery(key=key, limit=500)), saga_id)

    async def history(saga_id: UUID, key: str) -> object:
        return _found(await store.history(saga_id), saga_id)

    async def first_page(saga_id: UUID, key: str) -> object:
        return _found(await store.find(SagaQuery(limit=51)), saga_id)  # 50 and "more?"

    return {
        "list": first_page,
        "get": get,
        "find_key": find_key,
        "find_key_any": find_key_any,
        "history": history,
    }


def _lookups(store: PostgresStore, client: httpx.AsyncClient) -> dict[str, Lookup]:
    async def http_get(saga_id: UUID, key: str) -> object:
        answer = await client.get(f"/api/sagas/{saga_id}")
        answer.raise_for_status()
        return answer

    return {**store_lookups(store), "http_get": http_get}


def _found(value: object, saga_id: UUID) -> object:
    if not value:
        raise RuntimeError(f"lookup of finished saga {saga_id} found nothing")
    return value
