"""Retention (adapters/postgres/retention.py) on the real database: only sagas that finished
for good long ago go, with everything keyed by their id; parked, paused and running sagas
stay whatever their age; batches are bounded and skip what another transaction holds; the
engine keeps working while a prune runs; `saga prune` and SAGA_RETENTION drive it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters.durations import parse_duration
from adapters.postgres.database import make_engine
from adapters.postgres.retention import prunable, prune, prune_batch, prune_inbox_batch
from adapters.postgres.tables import (
    inbox,
    saga_history,
    saga_instances,
    saga_locks,
    saga_search,
    saga_steps,
)
from adapters.rabbitmq.topology import Topology
from adapters.runtime import Orchestrator
from adapters.settings import Settings
from bench import retention as bench_retention
from bench.growth_deploy import dsn
from bench.growth_seed import seed
from examples.shop.verify import check_effects
from orchestrator.state import SagaStatus
from sagas.order import saga as order_saga
from tests.fixtures.polling import eventually
from tests.integration.harness import order_input, running_system

NOW = datetime.now(UTC)
OLD = timedelta(days=40)
YOUNG = timedelta(days=1)
KEEP = timedelta(days=30)
FOR_GOOD = {SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.CANCELLED}


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(database_url, pool_size=3)
    yield engine
    await engine.dispose()


async def add_saga(
    db: AsyncEngine,
    status: SagaStatus,
    ended_ago: timedelta,
    *,
    parent_id: uuid.UUID | None = None,
    lock: bool = False,
) -> uuid.UUID:
    """A saga whose last transition was `ended_ago`: two steps, three history entries, a
    search field value, and a semantic-lock row when asked."""
    saga_id = uuid.uuid4()
    at = NOW - ended_ago
    async with db.begin() as conn:
        await conn.execute(
            sa.insert(saga_instances).values(
                id=saga_id,
                name="order",
                version=2,
                key=f"k-{saga_id}",
                status=status.value,
                input={},
                revision=2,
                created_at=at - timedelta(seconds=5),
                updated_at=at,
                status_since=at,
                resume_status="running" if status == SagaStatus.PAUSED else None,
                parent_id=parent_id,
            )
        )
        for idx in range(2):
            await conn.execute(
                sa.insert(saga_steps).values(
                    saga_id=saga_id,
                    idx=idx,
                    name=f"s{idx}",
                    status="succeeded",
                    attempt=1,
                    compensation_attempt=0,
                )
            )
        for seq in range(1, 4):
            await conn.execute(
                sa.insert(saga_history).values(
                    saga_id=saga_id, seq=seq, at=at, event=f"e{seq}", actor="test"
                )
            )
        await conn.execute(
            sa.insert(saga_search).values(saga_id=saga_id, name="customer_id", text_value="c-1")
        )
        if lock:
            await conn.execute(
                sa.insert(saga_locks).values(
                    resource=f"order:{saga_id}",
                    saga_id=saga_id,
                    saga="order",
                    key=f"k-{saga_id}",
                    acquired_at=at,
                )
            )
    return saga_id


async def ids(db: AsyncEngine) -> set[uuid.UUID]:
    async with db.connect() as conn:
        return set((await conn.execute(sa.select(saga_instances.c.id))).scalars())


async def orphans(db: AsyncEngine) -> dict[str, int]:
    """Rows keyed by a saga id no saga has: what a prune must never leave behind."""
    found: dict[str, int] = {}
    async with db.connect() as conn:
        for table in (saga_steps, saga_history, saga_locks, saga_search):
            found[table.name] = (
                await conn.scalar(
                    sa.select(sa.func.count())
                    .select_from(table)
                    .where(table.c.saga_id.not_in(sa.select(saga_instances.c.id)))
                )
                or 0
            )
        found["children"] = (
            await conn.scalar(
                sa.select(sa.func.count())
                .select_from(saga_instances)
                .where(
                    saga_instances.c.parent_id.is_not(None),
                    saga_instances.c.parent_id.not_in(sa.select(saga_instances.c.id)),
                )
            )
            or 0
        )
    return found


async def rows_of(db: AsyncEngine, saga_id: uuid.UUID) -> int:
    async with db.connect() as conn:
        total = 0
        for table in (saga_steps, saga_history, saga_locks, saga_search):
            total += (
                await conn.scalar(
                    sa.select(sa.func.count()).select_from(table).where(table.c.saga_id == saga_id)
                )
                or 0
            )
        return total


async def test_only_sagas_finished_for_good_and_older_than_the_cutoff_go(db: AsyncEngine) -> None:
    sagas = {
        (status, age): await add_saga(db, status, age, lock=status == SagaStatus.FAILED)
        for status in SagaStatus
        for age in (OLD, YOUNG)
    }
    gone = {sid for (status, age), sid in sagas.items() if status in FOR_GOOD and age == OLD}
    assert len(gone) == 3
    assert all([await rows_of(db, sid) == 6 for sid in gone])

    done = await prune(db, KEEP, now=NOW)

    assert done.sagas == 3
    assert await ids(db) == set(sagas.values()) - gone
    assert all([await rows_of(db, sid) == 0 for sid in gone])
    # Parked, paused and running sagas stay, their steps, history and locks with them.
    kept_old = {status for (status, age), sid in sagas.items() if age == OLD and sid not in gone}
    assert kept_old == {
        SagaStatus.RUNNING,
        SagaStatus.COMPENSATING,
        SagaStatus.FAILED,
        SagaStatus.PAUSED,
    }
    assert await rows_of(db, sagas[(SagaStatus.FAILED, OLD)]) == 7  # its lock row too
    assert await orphans(db) == {
        "saga_steps": 0,
        "saga_history": 0,
        "saga_locks": 0,
        "saga_search": 0,
        "children": 0,
    }
    assert (await prune(db, KEEP, now=NOW)).sagas == 0


async def test_batches_are_bounded_and_a_prune_ends_with_a_short_one(db: AsyncEngine) -> None:
    for _ in range(25):
        await add_saga(db, SagaStatus.COMPLETED, OLD)
    young = await add_saga(db, SagaStatus.COMPLETED, YOUNG)
    cutoff = NOW - KEEP
    assert await prune_batch(db, cutoff, 10) == 10
    sizes: list[int] = []
    done = await prune(db, KEEP, batch=10, now=NOW, on_batch=sizes.append)
    assert sizes == [10, 5]
    assert (done.sagas, done.batches) == (15, 2)
    assert await ids(db) == {young}


async def test_a_saga_another_transaction_holds_is_skipped_not_waited_for(
    db: AsyncEngine,
) -> None:
    held = await add_saga(db, SagaStatus.COMPLETED, OLD)
    free = await add_saga(db, SagaStatus.COMPLETED, OLD)
    async with db.connect() as holder:
        await holder.execute(
            sa.select(saga_instances.c.id).where(saga_instances.c.id == held).with_for_update()
        )
        # Were it to wait for the row, this would hang until the holder lets go.
        deleted = await asyncio.wait_for(prune_batch(db, NOW - KEEP, 10), timeout=5)
        await holder.rollback()
    assert deleted == 1
    assert await ids(db) == {held}
    assert await prune_batch(db, NOW - KEEP, 10) == 1  # the next sweep takes it
    assert free not in await ids(db)


async def test_a_parent_waits_for_its_unfinished_children(db: AsyncEngine) -> None:
    parent = await add_saga(db, SagaStatus.CANCELLED, OLD)
    child = await add_saga(db, SagaStatus.FAILED, OLD, parent_id=parent)  # parked: waits
    assert (await prune(db, KEEP, now=NOW)).sagas == 0
    async with db.begin() as conn:  # an operator finishes the child, long ago
        await conn.execute(
            sa.update(saga_instances)
            .where(saga_instances.c.id == child)
            .values(status="compensated")
        )
    assert (await prune(db, KEEP, now=NOW)).sagas == 2
    assert await ids(db) == set()


async def test_held_cancels_older_than_the_cutoff_go(db: AsyncEngine) -> None:
    async with db.begin() as conn:
        for key, age in (("k-old-1", OLD), ("k-old-2", OLD), ("k-new", YOUNG)):
            await conn.execute(
                sa.insert(inbox).values(kind="cancel", key=key, reason="r", received_at=NOW - age)
            )
    assert await prunable(db, KEEP, now=NOW) == (0, 2)
    assert await prune_inbox_batch(db, NOW - KEEP, 1) == 1
    assert (await prune(db, KEEP, now=NOW)).inbox == 1
    async with db.connect() as conn:
        assert list((await conn.execute(sa.select(inbox.c.key))).scalars()) == ["k-new"]


async def test_history_stays_append_only_outside_a_prune(db: AsyncEngine) -> None:
    kept = await add_saga(db, SagaStatus.FAILED, OLD)
    await add_saga(db, SagaStatus.COMPLETED, OLD)
    assert (await prune(db, KEEP, now=NOW)).sagas == 1
    # The prune's permission was local to its transactions, on the same pooled connections.
    with pytest.raises(DBAPIError, match="append-only"):
        async with db.begin() as conn:
            await conn.execute(sa.delete(saga_history).where(saga_history.c.saga_id == kept))


def test_saga_prune_command(database_url: str) -> None:
    async def setup() -> None:
        db = make_engine(database_url, pool_size=1)
        try:
            for status in (SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.FAILED):
                await add_saga(db, status, OLD)
            await add_saga(db, SagaStatus.COMPLETED, YOUNG)
        finally:
            await db.dispose()

    asyncio.run(setup())  # a loop of its own: the test is sync, for the subprocesses
    env = {**os.environ, "SAGA_DATABASE_URL": database_url, "SAGA_LOG_FORMAT": "console"}

    def saga(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "adapters.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    dry = saga("prune", "--older-than", "30d", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would delete 2 sagas and 0 held cancels" in dry.stdout
    real = saga("prune", "--older-than", "30d", "--batch", "1")
    assert real.returncode == 0, real.stderr
    assert "deleted 2 sagas and 0 held cancels in 3 batches" in real.stdout
    assert "would delete 0 sagas" in saga("prune", "--older-than", "30d", "--dry-run").stdout
    bad = saga("prune", "--older-than", "soon")
    assert bad.returncode == 2
    assert "not a duration" in bad.stderr


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("30d", timedelta(days=30)), ("12h", timedelta(hours=12)), ("90", timedelta(seconds=90))],
)
def test_retention_setting_takes_durations(raw: str, expected: timedelta) -> None:
    assert Settings(retention=raw).retention == expected
    assert parse_duration(raw) == expected


@pytest.mark.parametrize("raw", ["0", "0d", "30 days", "-1d", "d"])
def test_retention_setting_refuses_what_is_not_a_positive_duration(raw: str) -> None:
    with pytest.raises(ValueError):
        Settings(retention=raw)


def test_retention_is_off_unless_set() -> None:
    assert Settings().retention is None
    assert Settings(retention="").retention is None


async def test_saga_run_prunes_by_itself_when_retention_is_set(
    database_url: str, db: AsyncEngine, topology: Topology, amqp_url: str
) -> None:
    old = await add_saga(db, SagaStatus.COMPLETED, OLD)
    young = await add_saga(db, SagaStatus.COMPLETED, YOUNG)
    settings = Settings(
        database_url=database_url,
        amqp_url=amqp_url,
        amqp_prefix=topology.prefix,
        retention=KEEP,
    )
    async with Orchestrator(settings):
        await eventually(
            lambda: _without(db, old), timeout=10, message="the sweep deleted the old saga"
        )
    assert await ids(db) == {young}


async def _without(db: AsyncEngine, saga_id: uuid.UUID) -> bool:
    return saga_id not in await ids(db)


async def test_the_engine_keeps_working_during_a_prune(
    database_url: str, db: AsyncEngine, topology: Topology, amqp_url: str
) -> None:
    """Orders run through the real orchestrator and shop while 2,500 seeded finished sagas
    are pruned in batches of 10; then the orders, aged, are pruned too, to the last row."""
    seeded = await seed(dsn(database_url), 2500)  # spread over 30 days: most older than 1d
    now = datetime.now(UTC)
    old = await prunable(db, YOUNG, now=now)
    assert old[0] > 2000
    async with running_system(database_url, topology, amqp_url, [order_saga]) as system:
        await system.start_participants()
        first_batch = asyncio.Event()
        sizes: list[int] = []

        def on_batch(n: int) -> None:
            sizes.append(n)
            first_batch.set()

        pruning = asyncio.create_task(prune(db, YOUNG, batch=10, now=now, on_batch=on_batch))
        await first_batch.wait()
        keys = [f"ret-{i}" for i in range(20)]
        for i, key in enumerate(keys):
            await system.start_order(key, order_input(f"ret-order-{i}"))
        await system.wait_status(keys[0], "completed", timeout=60)
        assert not pruning.done(), "the prune ended before an order completed: prune more"
        states = {key: await system.wait_status(key, "completed", timeout=60) for key in keys}
        done = await pruning
        assert done.sagas == old[0]
        assert max(sizes) == 10
        assert await check_effects(system.shop, states) == []

        # The engine's own rows, aged: the same prune takes them, steps, history and all.
        async with db.begin() as conn:
            await conn.execute(
                sa.update(saga_instances)
                .where(saga_instances.c.key.in_(keys))
                .values(updated_at=NOW - OLD)
            )
        assert (await prune(db, KEEP)).sagas == len(keys)
    assert len(await ids(db)) == seeded.sagas - old[0]
    assert await orphans(db) == {
        "saga_steps": 0,
        "saga_history": 0,
        "saga_locks": 0,
        "saga_search": 0,
        "children": 0,
    }


async def test_the_retention_bench_runs_on_a_small_database() -> None:
    """`python -m bench.retention` end to end on 2,000 sagas: every phase finds its sagas.
    Timings are the bench's business, not asserted."""
    args = bench_retention.parse(["--sagas", "2000", "--lookups", "5", "--batch", "200"])
    figures: dict[str, Any] = await bench_retention.main(args)
    assert figures["prune"]["sagas"] + figures["sagas_left"] == 2000
    assert figures["prune"]["sagas"] > 1500
    assert set(figures["queries_ms"]) == set(bench_retention.PHASES)
    for phase in bench_retention.PHASES:
        assert set(figures["queries_ms"][phase]) == set(bench_retention.KINDS)
    assert "| list_status |" in bench_retention.report(figures)
