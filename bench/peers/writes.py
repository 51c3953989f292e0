"""What every peer writes and how the bench reads it back: one `peer_writes` row per step or
compensation, stamped by the database clock when the write happened.

A peer's saga is over when its last write is there: `c` for a completed saga, `undo_a` for a
compensated one. Reading outcomes from these rows (not from the peer's own bookkeeping) gives
every peer the same definition of "done" and of latency: start call -> last write.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import psycopg

from bench.floor import FloorResult

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS peer_writes (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    saga bigint NOT NULL,
    command text NOT NULL,
    -- clock_timestamp(), not now(): now() is the transaction's start, before the write.
    done_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS peer_writes_saga ON peer_writes (saga);
"""

INSERT_SQL = "INSERT INTO peer_writes (saga, command) VALUES (%s, %s)"

# The write that ends a saga, by how it ended.
LAST = {"c": "completed", "undo_a": "compensated"}


async def create(dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(SCHEMA_SQL)


async def start_all(
    numbers: list[int],
    start: Callable[[int], Awaitable[None]],
    rate: float | None,
    in_flight: int = 1,
) -> dict[int, float]:
    """Call `start` once per number, as fast as `in_flight` calls at a time allow (rate None)
    or `rate` per second; the wall clock of each call, taken just before it (the database
    clock is the same machine's)."""
    started: dict[int, float] = {}
    gate = asyncio.Semaphore(in_flight)

    async def one(n: int) -> None:
        try:
            started[n] = time.time()
            await start(n)
        finally:
            gate.release()

    calls = []
    began = time.perf_counter()
    for i, n in enumerate(numbers):
        if rate is not None:
            await asyncio.sleep(max(0.0, began + i / rate - time.perf_counter()))
        await gate.acquire()
        calls.append(asyncio.create_task(one(n)))
    await asyncio.gather(*calls)
    return started


async def wait_and_collect(dsn: str, started: dict[int, float], timeout: float) -> FloorResult:
    """Poll until every saga wrote its last row (or the deadline), then read outcomes back."""
    numbers = list(started)
    deadline = time.monotonic() + timeout
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            # DISTINCT: an at-least-once peer (Celery) may write a saga's last row twice.
            cur = await conn.execute(
                "SELECT count(DISTINCT saga) FROM peer_writes"
                " WHERE saga = ANY(%s) AND command = ANY(%s)",
                (numbers, list(LAST)),
            )
            row = await cur.fetchone()
            if row is not None and row[0] >= len(numbers):
                break
            await asyncio.sleep(0.2)
        cur = await conn.execute(
            "SELECT DISTINCT ON (saga) saga, command, extract(epoch FROM done_at)::float8"
            " FROM peer_writes WHERE saga = ANY(%s) AND command = ANY(%s)"
            " ORDER BY saga, done_at",
            (numbers, list(LAST)),
        )
        rows = await cur.fetchall()
    out = FloorResult()
    first = min(started.values(), default=0.0)
    last = first
    for saga, command, done_at in rows:
        status = LAST[command]
        out.statuses[status] = out.statuses.get(status, 0) + 1
        out.latencies_ms.append((done_at - started[saga]) * 1000)
        last = max(last, done_at)
    unfinished = len(numbers) - len(rows)
    if unfinished:
        out.statuses["unfinished"] = unfinished
    # As for the engine: first start call -> last saga's last write.
    out.seconds = last - first
    return out
