"""How long an operator waits for a finished saga: the store's read path and the HTTP API,
timed one call at a time from a warm connection, on random finished sagas."""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any
from uuid import UUID

import httpx
import psycopg

from adapters.postgres.database import make_engine
from adapters.postgres.store import PostgresStore, find_statement
from bench.growth_deploy import dsn
from bench.sagas import saga
from bench.stats import percentiles
from orchestrator.ports import SagaQuery
from orchestrator.search_fields import SearchKind
from orchestrator.search_filters import Op, SearchCondition

# get: the saga and its steps (what `saga status` and GET /api/sagas/{id} read).
# find_key: by start key within the saga's name, the unique (name, key) index.
# find_key_any: by key alone, what GET /api/sagas/by-key/{key} does without ?saga=.
# history: every event of the saga, oldest first.
# http_get: GET /api/sagas/{id} of `saga run`, over a kept-alive connection.
# list: the first page of GET /api/sagas, newest activity first, with no filter: what an
# operator sees first. The same for every saga: it is timed as often as the others.
# Search fields (the bench saga indexes its number n), the first page of each as the list:
# search_eq: `n=<the saga's n>`, one saga (two with a saturation round's of that number):
# what finding an order by its id is. search_range: `n>=<n>` and `n<<n + 1000>`, a thousand
# sagas spread over the 30 days: one customer's. search_wide: `n>=0`, every saga: a condition
# that filters nothing must not cost more than the list without it.
SEARCH_KINDS = ("search_eq", "search_range", "search_wide")
KINDS = ("get", "find_key", "find_key_any", "history", "http_get", "list", *SEARCH_KINDS)
# The n whose plans are shown: any seeded saga's.
_PLAN_N = 500

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


def search_queries(n: int) -> dict[str, SagaQuery]:
    """Each search kind's query for a saga numbered n: the first page, as the list's."""
    return {
        "search_eq": SagaQuery(where=_n(("=", n)), limit=51),
        "search_range": SagaQuery(where=_n((">=", n), ("<", n + 1000)), limit=51),
        "search_wide": SagaQuery(where=_n((">=", 0)), limit=51),
    }


def search_lookups(store: PostgresStore) -> dict[str, Lookup]:
    """The search kinds as lookups: the one by n must list the saga itself."""

    def kind(name: str) -> Lookup:
        async def lookup(saga_id: UUID, key: str) -> object:
            found = await store.find(search_queries(number(key))[name])
            if name == "search_eq" and saga_id not in {s.saga_id for s in found}:
                raise RuntimeError(f"search by n of saga {saga_id} ({key}) did not list it")
            return _found(found, saga_id)

        return lookup

    return {name: kind(name) for name in SEARCH_KINDS}


def number(key: str) -> int:
    """A bench saga's n, which its key ends with: `seed-<n>` (seeded), `sat-<round>-<n>`."""
    return int(key.rsplit("-", 1)[1])


def _n(*conditions: tuple[Op, int]) -> tuple[SearchCondition, ...]:
    return tuple(SearchCondition("n", op, SearchKind.NUMBER, Decimal(v)) for op, v in conditions)


async def plans(url: str) -> dict[str, dict[str, Any]]:
    """How PostgreSQL runs each search kind's query (for a seeded saga's n): its plan as
    `EXPLAIN ANALYZE` gives it, summed up as the nodes in order with the index each scans,
    and the execution time. The point: the saga_search index answers the selective ones."""
    found: dict[str, dict[str, Any]] = {}
    engine = make_engine(url, pool_size=1)  # for its dialect: it never connects
    dialect = engine.dialect
    await engine.dispose()
    async with await psycopg.AsyncConnection.connect(dsn(url), autocommit=True) as conn:
        for name, query in search_queries(_PLAN_N).items():
            sql = find_statement(query).compile(
                dialect=dialect, compile_kwargs={"literal_binds": True}
            )
            cur = await conn.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}".encode())
            row = await cur.fetchone()
            assert row is not None
            (explained,) = row[0]
            found[name] = {
                "nodes": _nodes(explained["Plan"]),
                "execution_ms": explained["Execution Time"],
            }
    return found


def _nodes(plan: dict[str, Any]) -> list[str]:
    """The plan's nodes, depth first: `Index Only Scan (ix_...)`."""
    index = plan.get("Index Name")
    here = [plan["Node Type"] + (f" ({index})" if index else "")]
    return here + [n for child in plan.get("Plans", []) for n in _nodes(child)]


def _lookups(store: PostgresStore, client: httpx.AsyncClient) -> dict[str, Lookup]:
    async def http_get(saga_id: UUID, key: str) -> object:
        answer = await client.get(f"/api/sagas/{saga_id}")
        answer.raise_for_status()
        return answer

    return {**store_lookups(store), **search_lookups(store), "http_get": http_get}


def _found(value: object, saga_id: UUID) -> object:
    if not value:
        raise RuntimeError(f"lookup of finished saga {saga_id} found nothing")
    return value
