"""Driving the real engine: publish bench sagas to `saga run` and read back how they ended."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aio_pika
import psycopg

from adapters.rabbitmq.connection import connect, open_channel
from adapters.rabbitmq.topology import Topology
from adapters.settings import Settings
from bench.stats import CpuMeter, percentiles
from orchestrator.messages import Exchange, StartSaga

TERMINAL = ("completed", "compensated", "cancelled", "failed")
PIPELINE = 200  # publishes awaiting their confirms at once


@dataclass
class EngineResult:
    published_at: dict[str, float] = field(default_factory=dict)  # key -> wall clock
    statuses: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)  # publish -> terminal status
    engine_latencies_ms: list[float] = field(default_factory=list)  # created_at -> terminal
    seconds: float = 0.0  # first publish -> last terminal status
    terminal: int = 0
    # step -> dispatch committed -> its reply applied (history times, the database's clock)
    step_latencies_ms: dict[str, list[float]] = field(default_factory=dict)
    commands: int = 0  # actions and compensations dispatched


class Publisher:
    """Start messages on one connection with publisher confirms, pipelined."""

    def __init__(
        self,
        settings: Settings,
        saga: str = "bench",
        input_of: Callable[[int], dict[str, Any]] = lambda n: {"n": n},
    ) -> None:
        self.settings = settings
        self.saga = saga
        self.input_of = input_of
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None
        self._exchange: aio_pika.abc.AbstractExchange | None = None

    async def open(self) -> None:
        self._connection = await connect(self.settings.amqp_url)
        channel = await open_channel(self._connection)
        topology = Topology(self.settings.amqp_prefix)
        self._exchange = await channel.get_exchange(topology.name(Exchange.SAGAS), ensure=False)

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()

    async def start(self, key: str, n: int) -> None:
        assert self._exchange is not None, "open() first"
        body = StartSaga(saga=self.saga, key=key, input=self.input_of(n))
        await self._exchange.publish(
            aio_pika.Message(
                body.model_dump_json(exclude_none=True).encode(),
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key="start",
            mandatory=True,
        )


async def publish_all(publisher: Publisher, keys: list[tuple[str, int]], out: EngineResult) -> None:
    """As fast as the broker confirms: PIPELINE publishes in flight at a time."""
    for i in range(0, len(keys), PIPELINE):
        chunk = keys[i : i + PIPELINE]
        now = time.time()
        for key, _ in chunk:
            out.published_at[key] = now
        await asyncio.gather(*(publisher.start(key, n) for key, n in chunk))


async def publish_at_rate(
    publisher: Publisher, keys: list[tuple[str, int]], rate: float, out: EngineResult
) -> None:
    started = time.perf_counter()
    pending = []
    for i, (key, n) in enumerate(keys):
        await asyncio.sleep(max(0.0, started + i / rate - time.perf_counter()))
        out.published_at[key] = time.time()
        pending.append(asyncio.create_task(publisher.start(key, n)))
    await asyncio.gather(*pending)


class EngineDb:
    """The bench's own queries on the engine's database; it counts them, so that its
    transactions can be taken out of the engine's (pg_stat_database counts every one)."""

    def __init__(self, dsn: str, saga: str = "bench") -> None:
        self.dsn = dsn
        self.saga = saga
        self.queries = 0
        self._conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None

    async def open(self) -> None:
        self._conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()

    async def fetch(self, sql: str, params: tuple[object, ...]) -> list[tuple[object, ...]]:
        assert self._conn is not None, "open() first"
        self.queries += 1
        cur = await self._conn.execute(sql, params)
        return await cur.fetchall()

    async def wait_terminal(self, keys: list[str], timeout: float) -> int:
        """Poll until every key's saga is terminal or the deadline passes; the count reached."""
        deadline = time.monotonic() + timeout
        done = 0
        while time.monotonic() < deadline:
            rows = await self.fetch(
                "SELECT count(*) FROM saga_instances WHERE name = %s AND key = ANY(%s)"
                " AND status = ANY(%s)",
                (self.saga, keys, list(TERMINAL)),
            )
            done = int(rows[0][0])  # type: ignore[call-overload]
            if done == len(keys):
                break
            await asyncio.sleep(0.2)
        return done

    async def collect(self, out: EngineResult) -> None:
        rows = await self.fetch(
            "SELECT key, status, created_at, coalesce(status_since, updated_at)"
            " FROM saga_instances WHERE name = %s AND key = ANY(%s)",
            (self.saga, list(out.published_at)),
        )
        first = min(out.published_at.values())
        last = first
        for key, status, created, ended in rows:
            assert isinstance(key, str) and isinstance(status, str)
            assert isinstance(created, datetime) and isinstance(ended, datetime)
            out.statuses[status] = out.statuses.get(status, 0) + 1
            if status not in TERMINAL:
                continue
            out.terminal += 1
            end = ended.timestamp()
            last = max(last, end)
            out.latencies_ms.append((end - out.published_at[key]) * 1000)
            out.engine_latencies_ms.append((ended - created).total_seconds() * 1000)
        out.seconds = last - first
        await self._collect_steps(out)

    async def _collect_steps(self, out: EngineResult) -> None:
        """Per step: from the transaction that dispatched its (first) command to the one
        that applied its reply (success or failure), as saga_history timestamps them."""
        rows = await self.fetch(
            "SELECT d.step, extract(epoch FROM r.at - d.at) * 1000"
            " FROM saga_instances i"
            " JOIN saga_history d ON d.saga_id = i.id AND d.event = 'step_dispatched'"
            " JOIN saga_history r ON r.saga_id = i.id AND r.step = d.step"
            "  AND r.event IN ('step_succeeded', 'step_failed')"
            " WHERE i.name = %s AND i.key = ANY(%s)",
            (self.saga, list(out.published_at)),
        )
        for step, ms in rows:
            assert isinstance(step, str)
            out.step_latencies_ms.setdefault(step, []).append(float(ms))  # type: ignore[arg-type]
        sent = await self.fetch(
            "SELECT count(*) FROM saga_instances i JOIN saga_history h ON h.saga_id = i.id"
            " WHERE h.event IN ('step_dispatched', 'compensation_dispatched')"
            " AND i.name = %s AND i.key = ANY(%s)",
            (self.saga, list(out.published_at)),
        )
        out.commands = int(sent[0][0])  # type: ignore[call-overload]


async def saturate(
    publisher: Publisher,
    db: EngineDb,
    keys: list[tuple[str, int]],
    meter: CpuMeter,
    timeout: float,
) -> tuple[EngineResult, dict[str, float]]:
    """The starts as fast as the broker confirms them, until every saga is terminal (or the
    deadline passes); the result read back, and the CPU seconds each process spent."""
    result = EngineResult()
    meter.start()
    await publish_all(publisher, keys, result)
    await db.wait_terminal([k for k, _ in keys], timeout=timeout)
    cpu = meter.stop()
    await db.collect(result)
    return result, cpu


def summary(result: EngineResult, n: int) -> dict[str, Any]:
    """The figures every saturation phase reports."""
    per_s = (lambda count: count / result.seconds) if result.seconds > 0 else (lambda _: None)
    return {
        "sagas": n,
        "statuses": result.statuses,
        "terminal": result.terminal,
        "seconds": result.seconds,
        "sagas_per_s": per_s(n),
        "steps_per_s": per_s(result.commands),
        "latency_ms": percentiles(result.latencies_ms),
        "engine_latency_ms": percentiles(result.engine_latencies_ms),
        "step_latency_ms": {
            step: percentiles(ms) for step, ms in sorted(result.step_latencies_ms.items())
        },
    }


async def delete_topology(settings: Settings, services: list[str]) -> None:
    """The run's queues and exchanges (its own prefix), with whatever is left in them."""
    connection = await connect(settings.amqp_url)
    try:
        channel = await open_channel(connection)
        await Topology(settings.amqp_prefix).delete_all(channel, services=services)
    finally:
        await connection.close()


async def next_xid(dsn: str) -> int:
    """The cluster's next transaction id: the difference of two readings is how many writing
    transactions began in between, in every database (reading it assigns none)."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint")
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def xact_commits(dsn: str, database: str) -> int:
    """Committed transactions of `database` so far. An idle backend reports its counts up to
    10 s late (PGSTAT_IDLE_INTERVAL), so callers wait before the last reading."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (database,)
        )
        row = await cur.fetchone()
    return int(row[0]) if row else 0
