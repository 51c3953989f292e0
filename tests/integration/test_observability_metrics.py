"""Metrics on real Postgres: step latency histograms, retries and compensations from real
transitions, and the gauges read from the database at scrape time."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import pytest
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters import metrics
from adapters.memory.publisher import MemoryPublisher
from adapters.postgres.database import make_engine
from adapters.postgres.store import PostgresStore
from orchestrator import Retry, Saga
from orchestrator.definition import GuardContext
from orchestrator.engine import Engine
from orchestrator.messages import Command, Exchange, Reply, ReplyError, StartSaga
from orchestrator.registry import Registry

T0 = datetime(2030, 1, 1, tzinfo=UTC)


class Order(BaseModel):
    parcels: list[str]


def parcels(ctx: GuardContext) -> list[str]:
    return list(ctx.input["parcels"])


metered = Saga("metered", version=1, input=Order, timeout=60)
metered.map("pack", command="depot.pack", compensation="depot.unpack", items=parcels)
metered.remote(
    "charge",
    command="till.charge",
    retry=Retry(max_attempts=2, initial_interval=1, jitter=0),
    compensation=None,
)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def sent(publisher: MemoryPublisher) -> list[Command]:
    """The commands published so far, oldest first, and forgets them."""
    found = [
        Command.model_validate({**json.loads(m.body), "command": m.routing_key})
        for m in publisher.published
        if m.exchange == Exchange.COMMANDS
    ]
    publisher.published.clear()
    return found


def answer(cmd: Command, *, error: ReplyError | None = None) -> Reply:
    return Reply(
        command_id=cmd.command_id,
        saga_id=cmd.saga_id,
        step=cmd.step,
        outcome="success" if error is None else "failure",
        error=error,
    )


def read_counts() -> dict[str, float]:
    action = {"saga": "metered", "step": "pack", "kind": "action"}
    undo = {"saga": "metered", "step": "pack", "kind": "compensation"}
    return {
        "pack_count": metrics.value("saga_step_seconds_count", **action),
        "pack_sum": metrics.value("saga_step_seconds_sum", **action),
        "unpack_count": metrics.value("saga_step_seconds_count", **undo),
        "unpack_sum": metrics.value("saga_step_seconds_sum", **undo),
        "retries": metrics.value("saga_retries_scheduled_total", saga="metered", kind="action"),
        "compensated": metrics.value("saga_steps_compensated_total", saga="metered"),
        "outcome": metrics.value(
            "saga_instances_finished_total", saga="metered", status="compensated"
        ),
    }


async def test_real_transitions_feed_the_step_histogram_retries_and_compensations(
    pg_store: PostgresStore,
) -> None:
    clock, publisher = Clock(), MemoryPublisher()
    engine = Engine(pg_store, publisher, Registry([metered]), clock=clock, observe=metrics.observe)
    before = read_counts()

    await engine.start(StartSaga(saga="metered", key="m-1", input={"parcels": ["a", "b"]}))
    packs = sent(publisher)
    assert [c.step for c in packs] == ["pack[0]", "pack[1]"]
    clock.advance(1.5)
    for cmd in packs:
        await engine.reply(answer(cmd))
    [charge] = sent(publisher)
    clock.advance(0.5)
    await engine.reply(answer(charge, error=ReplyError(type="till_down", retryable=True)))
    clock.advance(1)
    assert await engine.fire_timers() == 1
    [charge_again] = sent(publisher)
    await engine.reply(answer(charge_again, error=ReplyError(type="declined", retryable=False)))
    unpacks = sent(publisher)
    assert sorted(c.step for c in unpacks) == ["pack[0]", "pack[1]"]
    assert {c.kind for c in unpacks} == {"compensation"}
    clock.advance(0.25)
    for cmd in unpacks:
        await engine.reply(answer(cmd))

    after = read_counts()
    assert {k: round(after[k] - before[k], 6) for k in before} == {
        "pack_count": 2,
        "pack_sum": 3.0,  # two items, 1.5 s each: under the map step's name
        "unpack_count": 2,
        "unpack_sum": 0.5,
        "retries": 1,
        "compensated": 2,
        "outcome": 1,
    }


# -- gauges read from the database ---------------------------------------------------------


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(database_url, pool_size=2)
    yield engine
    await engine.dispose()


async def add_saga(
    db: AsyncEngine,
    status: str,
    *,
    name: str = "gauged",
    age: timedelta = timedelta(0),
    due_in: timedelta | None = None,
) -> UUID:
    saga_id = uuid4()
    async with db.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO saga_instances (id, name, version, key, status, input, revision,"
                " created_at, updated_at, status_since, next_due_at, resume_status)"
                " VALUES (:id, :name, 1, :key, :status, '{}', 0, now() - :age, now(),"
                " now() - :age, now() + :due_in, :resume)"
            ),
            {
                "id": saga_id,
                "name": name,
                "key": str(saga_id),
                "status": status,
                "age": age,
                "due_in": due_in,
                "resume": "running" if status == "paused" else None,
            },
        )
    return saga_id


def gauge(name: str, **labels: str) -> float | None:
    return metrics.REGISTRY.get_sample_value(name, labels)


async def test_gauges_report_what_the_database_holds_now(db: AsyncEngine) -> None:
    oldest = await add_saga(db, "running", age=timedelta(hours=1), due_in=timedelta(minutes=-1))
    await add_saga(db, "running", age=timedelta(minutes=1), due_in=timedelta(minutes=5))
    await add_saga(db, "compensating", age=timedelta(minutes=20))
    await add_saga(db, "failed", age=timedelta(days=2))
    await add_saga(db, "paused")
    await add_saga(db, "completed", age=timedelta(days=3))  # finished: not a gauge
    async with db.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO outbox (exchange, routing_key, body, message_id, created_at)"
                " VALUES ('saga.commands', 'depot.pack', '\\x7b7d', 'm-1',"
                " now() - interval '90 seconds'), ('saga.commands', 'depot.pack', '\\x7b7d',"
                " 'm-2', now())"
            )
        )
        await conn.execute(
            text(
                "INSERT INTO saga_locks (resource, saga_id, saga, key, acquired_at)"
                " VALUES ('parcel:1', :id, 'gauged', 'k', now())"
            ),
            {"id": oldest},
        )
        await conn.execute(
            text(
                "INSERT INTO saga_lock_waiters (saga, version, key, input, resources,"
                " enqueued_at) VALUES ('gauged', 1, 'w', '{}', ARRAY['parcel:1'], now())"
            )
        )

    assert await metrics.refresh_gauges(db) is True
    statuses = {
        status: gauge("saga_instances", saga="gauged", status=status)
        for status in ("running", "compensating", "paused", "failed", "completed")
    }
    assert statuses == {
        "running": 2,
        "compensating": 1,
        "paused": 1,
        "failed": 1,
        "completed": None,
    }
    assert gauge("saga_database_up") == 1
    assert gauge("saga_outbox_messages") == 2
    lag = gauge("saga_outbox_lag_seconds")
    assert lag is not None and 89 < lag < 150
    assert gauge("saga_timers_due") == 1
    age = gauge("saga_oldest_running_age_seconds")
    assert age is not None and 3599 < age < 3700
    assert gauge("saga_semantic_locks_held") == 1
    assert gauge("saga_semantic_lock_waiters") == 1

    # The next scrape reads again: a saga that left a status shows 0 there, not its old count.
    async with db.begin() as conn:
        await conn.execute(text("DELETE FROM outbox"))
        await conn.execute(
            text("UPDATE saga_instances SET status = 'completed', next_due_at = NULL")
        )
        await conn.execute(text("DELETE FROM saga_lock_waiters"))
    assert await metrics.refresh_gauges(db) is True
    assert gauge("saga_instances", saga="gauged", status="running") == 0
    assert gauge("saga_outbox_messages") == 0
    assert gauge("saga_outbox_lag_seconds") == 0
    assert gauge("saga_oldest_running_age_seconds") == 0
    assert gauge("saga_timers_due") == 0
    assert gauge("saga_semantic_lock_waiters") == 0


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_an_unreachable_database_reports_down_and_no_stale_gauges(db: AsyncEngine) -> None:
    assert await metrics.refresh_gauges(db) is True
    assert gauge("saga_outbox_lag_seconds") == 0
    gone = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{closed_port()}/x", pool_size=1)
    try:
        assert await metrics.refresh_gauges(gone, timeout=5) is False
    finally:
        await gone.dispose()
    assert gauge("saga_database_up") == 0
    assert gauge("saga_outbox_lag_seconds") is None
    text_format = metrics.render().decode()
    assert "saga_database_up 0.0" in text_format
    assert "saga_transitions_total" in text_format  # the counters are still there
