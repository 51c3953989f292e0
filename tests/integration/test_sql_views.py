"""The operator views of migration 0007 (docs/sql-views.md) answer the questions they are
documented for, on rows written the way the store writes them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters.postgres.database import make_engine

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(database_url, pool_size=1)
    yield engine
    await engine.dispose()


async def add_saga(
    db: AsyncEngine,
    key: str,
    status: str,
    *,
    in_status: timedelta = timedelta(0),
    age: timedelta = timedelta(hours=1),
    steps: dict[str, str] | None = None,
    error: dict[str, Any] | None = None,
    resume: str | None = None,
    trace: bool = False,
) -> UUID:
    """A saga of `order` whose steps (name -> status) are in the given statuses."""
    saga_id = uuid4()
    async with db.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO saga_instances (id, name, version, key, status, input, revision,"
                " created_at, updated_at, status_since, error, resume_status, trace)"
                " VALUES (:id, 'order', 2, :key, :status, '{}', 3, now() - :age, now(),"
                " now() - :in_status, CAST(:error AS jsonb), :resume, CAST(:trace AS jsonb))"
            ),
            {
                "id": saga_id,
                "key": key,
                "status": status,
                "age": age,
                "in_status": in_status,
                "error": None if error is None else json.dumps(error),
                "resume": resume,
                "trace": (
                    json.dumps({"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"})
                    if trace
                    else None
                ),
            },
        )
        for idx, (name, step_status) in enumerate((steps or {}).items()):
            await conn.execute(
                text(
                    "INSERT INTO saga_steps (saga_id, idx, name, status, attempt,"
                    " compensation_attempt, error) VALUES (:id, :idx, :name, :status, 1, 0,"
                    " CAST(:error AS jsonb))"
                ),
                {
                    "id": saga_id,
                    "idx": idx,
                    "name": name,
                    "status": step_status,
                    "error": json.dumps(error) if error and step_status == "failed" else None,
                },
            )
    return saga_id


async def rows(db: AsyncEngine, query: str) -> list[dict[str, Any]]:
    async with db.connect() as conn:
        return [dict(row._mapping) for row in await conn.execute(text(query))]


async def test_saga_overview_has_one_row_per_saga_with_its_current_steps(db: AsyncEngine) -> None:
    running = await add_saga(
        db,
        "o-1",
        "running",
        in_status=timedelta(minutes=5),
        steps={"reserve_credit": "succeeded", "reserve_stock": "running", "charge": "pending"},
        trace=True,
    )
    await add_saga(db, "o-2", "completed", steps={"reserve_credit": "succeeded"})
    found = await rows(db, "SELECT * FROM saga_overview ORDER BY key")
    assert [r["key"] for r in found] == ["o-1", "o-2"]
    first = found[0]
    assert first["saga_id"] == running
    assert (first["saga"], first["version"], first["status"]) == ("order", 2, "running")
    assert first["current_steps"] == ["reserve_stock"]
    assert 5 <= first["minutes_in_status"] < 6
    assert timedelta(minutes=5) <= first["time_in_status"] < timedelta(minutes=6)
    assert timedelta(hours=1) <= first["age"] < timedelta(hours=1, minutes=1)
    assert first["trace_id"] == TRACE_ID
    assert found[1]["current_steps"] == []
    assert found[1]["trace_id"] is None


async def test_saga_stuck_finds_sagas_compensating_for_more_than_ten_minutes(
    db: AsyncEngine,
) -> None:
    long = await add_saga(
        db,
        "slow",
        "compensating",
        in_status=timedelta(minutes=15),
        steps={"reserve_credit": "compensating", "reserve_stock": "compensated"},
        error={"type": "step_failed", "step": "charge", "message": "declined"},
    )
    await add_saga(db, "recent", "compensating", in_status=timedelta(minutes=2))
    await add_saga(db, "running", "running", in_status=timedelta(minutes=30))
    await add_saga(db, "done", "compensated", in_status=timedelta(hours=2))
    found = await rows(
        db,
        "SELECT * FROM saga_stuck WHERE status = 'compensating' AND minutes_in_status > 10",
    )
    assert [r["saga_id"] for r in found] == [long]
    [row] = found
    assert row["current_steps"] == ["reserve_credit"]
    assert row["error_type"] == "step_failed"
    assert row["timer_overdue"] is False
    everything = await rows(db, "SELECT key FROM saga_stuck ORDER BY key")
    assert [r["key"] for r in everything] == ["recent", "running", "slow"]


async def test_saga_parked_lists_failed_sagas_with_their_error_and_since_when(
    db: AsyncEngine,
) -> None:
    error = {"type": "retries_exhausted", "step": "notify", "message": "mail server down"}
    parked = await add_saga(
        db,
        "p-1",
        "failed",
        in_status=timedelta(minutes=42),
        steps={"charge": "succeeded", "notify": "failed"},
        error=error,
        resume="running",
    )
    await add_saga(db, "ok", "completed")
    [row] = await rows(db, "SELECT * FROM saga_parked")
    assert row["saga_id"] == parked
    assert (row["error_type"], row["error_step"], row["error_message"]) == (
        "retries_exhausted",
        "notify",
        "mail server down",
    )
    assert row["continues_as"] == "running"
    assert row["parked_steps"] == ["notify"]
    assert 42 <= row["minutes_parked"] < 43


async def test_step_latency_per_saga_and_step_from_the_history(db: AsyncEngine) -> None:
    saga_id = await add_saga(db, "l-1", "completed")
    entries: list[tuple[str, str, dict[str, float]]] = [
        ("step_succeeded", f"pack[{n}]", {"attempt": 1, "seconds": n}) for n in range(1, 11)
    ]
    entries += [
        ("step_compensated", "pack[1]", {"attempt": 1, "seconds": 0.5}),
        ("step_succeeded", "charge", {"attempt": 2}),  # sent before latency was recorded
        ("step_dispatched", "charge", {"attempt": 2, "seconds": 99}),  # not a settled step
    ]
    async with db.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO saga_history (saga_id, seq, event, step, detail, actor)"
                " VALUES (:id, :seq, :event, :step, CAST(:detail AS jsonb), 'engine')"
            ),
            [
                {"id": saga_id, "seq": seq, "event": e, "step": s, "detail": json.dumps(d)}
                for seq, (e, s, d) in enumerate(entries, start=1)
            ],
        )
    durations = await rows(db, "SELECT * FROM saga_step_durations ORDER BY at, step_instance")
    assert len(durations) == 11
    assert {(r["step"], r["kind"]) for r in durations} == {
        ("pack", "action"),
        ("pack", "compensation"),
    }
    latency = await rows(db, "SELECT * FROM saga_step_latency ORDER BY kind")
    assert [
        (
            r["saga"],
            r["step"],
            r["kind"],
            r["count"],
            float(r["avg_seconds"]),
            float(r["p50_seconds"]),
            float(r["p95_seconds"]),
            float(r["max_seconds"]),
        )
        for r in latency
    ] == [
        ("order", "pack", "action", 10, 5.5, 5.5, 9.55, 10.0),
        ("order", "pack", "compensation", 1, 0.5, 0.5, 0.5, 0.5),
    ]


async def test_saga_outbox_lag_is_the_age_of_the_oldest_unpublished_message(
    db: AsyncEngine,
) -> None:
    [empty] = await rows(db, "SELECT * FROM saga_outbox_lag")
    assert (empty["messages"], empty["oldest_at"], empty["lag_seconds"]) == (0, None, 0)
    async with db.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO outbox (exchange, routing_key, body, message_id, created_at) VALUES"
                " ('saga.commands', 'a.b', '\\x7b7d', 'm-1', now() - interval '2 minutes'),"
                " ('saga.events', 'order.completed', '\\x7b7d', 'm-2', now())"
            )
        )
    [row] = await rows(db, "SELECT * FROM saga_outbox_lag")
    assert row["messages"] == 2
    assert 120 <= row["lag_seconds"] < 180


async def search(db: AsyncEngine, saga_id: UUID, **values: str | int) -> None:
    """saga_search rows: text for a str, a number for an int."""
    async with db.begin() as conn:
        for name, value in values.items():
            column = "text_value" if isinstance(value, str) else "num_value"
            await conn.execute(
                text(f"INSERT INTO saga_search (saga_id, name, {column}) VALUES (:id, :n, :v)"),
                {"id": saga_id, "n": name, "v": value},
            )


async def test_search_fields_join_the_views_as_documented(db: AsyncEngine) -> None:
    """The two queries of docs/sql-views.md, "Search fields"."""
    big = await add_saga(db, "o-1", "failed", steps={"notify": "failed"})
    await search(db, big, customer_id="c-17", amount=2500)
    small = await add_saga(db, "o-2", "failed", steps={"notify": "failed"})
    await search(db, small, customer_id="c-17", amount=25)
    other = await add_saga(db, "o-3", "running", steps={"charge": "running"})
    await search(db, other, customer_id="c-18", amount=5000)
    found = await rows(
        db,
        """
        SELECT o.saga_id, o.key, o.status, o.current_steps
        FROM saga_overview o JOIN saga_search s ON s.saga_id = o.saga_id
        WHERE o.saga = 'order' AND s.name = 'customer_id' AND s.text_value = 'c-17'
        """,
    )
    assert sorted(r["key"] for r in found) == ["o-1", "o-2"]
    found = await rows(
        db,
        """
        SELECT c.text_value AS customer, count(*)
        FROM saga_parked p
        JOIN saga_search a ON a.saga_id = p.saga_id AND a.name = 'amount' AND a.num_value > 1000
        JOIN saga_search c ON c.saga_id = p.saga_id AND c.name = 'customer_id'
        WHERE p.saga = 'order' AND p.parked_since >= date_trunc('day', now())
        GROUP BY 1 ORDER BY 2 DESC
        """,
    )
    assert found == [{"customer": "c-17", "count": 1}]
