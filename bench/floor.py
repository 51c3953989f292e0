"""The hand-written floor: the bench saga in asyncio + psycopg 3 with no broker and no engine.

Four commits per saga -- the start row; step a; step b; step c with the final status (a failing
c writes its two compensations and `compensated` in that last commit) -- on a small pool.
Same failure rule as the engine's bench participant (`bench.sagas.fails`).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import psycopg
from psycopg_pool import AsyncConnectionPool

from bench.sagas import fails

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS floor_sagas (
    id bigint PRIMARY KEY,
    status text NOT NULL,
    step text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS floor_writes (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    saga_id bigint NOT NULL,
    command text NOT NULL
);
"""


@dataclass
class FloorResult:
    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


async def create(dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(SCHEMA_SQL)


async def _step(pool: AsyncConnectionPool, saga: int, command: str, status: str) -> None:
    async with pool.connection() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO floor_writes (saga_id, command) VALUES (%s, %s)", (saga, command)
        )
        await conn.execute(
            "UPDATE floor_sagas SET step = %s, status = %s, updated_at = now() WHERE id = %s",
            (command, status, saga),
        )


async def _saga(pool: AsyncConnectionPool, saga: int, arrived: float, out: FloorResult) -> None:
    async with pool.connection() as conn, conn.transaction():
        await conn.execute("INSERT INTO floor_sagas (id, status) VALUES (%s, 'running')", (saga,))
    await _step(pool, saga, "a", "running")
    await _step(pool, saga, "b", "running")
    if fails(saga):
        status = "compensated"
        async with pool.connection() as conn, conn.transaction():
            for undo in ("undo_b", "undo_a"):
                await conn.execute(
                    "INSERT INTO floor_writes (saga_id, command) VALUES (%s, %s)", (saga, undo)
                )
            await conn.execute(
                "UPDATE floor_sagas SET status = %s, updated_at = now() WHERE id = %s",
                (status, saga),
            )
    else:
        status = "completed"
        await _step(pool, saga, "c", status)
    out.latencies_ms.append((time.perf_counter() - arrived) * 1000)
    out.statuses[status] = out.statuses.get(status, 0) + 1


async def run(
    dsn: str, numbers: list[int], *, rate: float | None = None, pool_size: int = 16
) -> FloorResult:
    """Run one saga per number: all at once (rate None: saturation) or `rate` per second."""
    out = FloorResult()
    async with AsyncConnectionPool(dsn, min_size=pool_size, max_size=pool_size, open=False) as pool:
        await pool.wait()
        started = time.perf_counter()
        tasks = []
        for i, n in enumerate(numbers):
            if rate is not None:
                await asyncio.sleep(max(0.0, started + i / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(_saga(pool, n, time.perf_counter(), out)))
        await asyncio.gather(*tasks)
        out.seconds = time.perf_counter() - started
    return out
