"""`with_db_retries` (adapters/postgres/retries.py) on a real PostgreSQL: a transaction whose
connection another session terminates half-way (`pg_terminate_backend`, what a failover or
an administrator does) is run again and its effect lands once; an error that retrying cannot
help is raised at once, not retried."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.testing import capture_logs

from adapters.postgres.database import make_engine
from adapters.postgres.retries import with_db_retries
from tests.fixtures.polling import eventually

pytestmark = pytest.mark.timeout(60)

# Long enough that only the kill ends the first attempt inside the test's timeout.
STALL = "SELECT pg_sleep(300)"


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(database_url, pool_size=2)
    async with engine.begin() as conn:
        await conn.execute(sa.text("CREATE TABLE effect (id int PRIMARY KEY, note text)"))
    yield engine
    await engine.dispose()


async def effects(db: AsyncEngine) -> list[tuple[int, str]]:
    async with db.connect() as conn:
        rows = await conn.execute(sa.text("SELECT id, note FROM effect ORDER BY id"))
        return [(r.id, r.note) for r in rows]


async def stalled_backend(db: AsyncEngine, pid: int) -> bool:
    """The backend `pid` is inside its transaction, waiting in the stall."""
    async with db.connect() as conn:
        query = await conn.scalar(
            sa.text("SELECT query FROM pg_stat_activity WHERE pid = :pid AND state = 'active'"),
            {"pid": pid},
        )
    return bool(query == STALL)


async def test_a_transaction_terminated_half_way_is_run_again_and_lands_once(
    db: AsyncEngine,
) -> None:
    pids: list[int] = []

    async def transition() -> str:
        async with db.begin() as conn:
            pid = await conn.scalar(sa.text("SELECT pg_backend_pid()"))
            assert isinstance(pid, int)
            pids.append(pid)
            await conn.execute(sa.text("INSERT INTO effect VALUES (1, 'charged')"))
            if len(pids) == 1:  # the first attempt stalls until it is terminated
                await conn.execute(sa.text(STALL))
        return "done"

    async def began() -> bool:
        return bool(pids)

    async def terminate_first() -> None:
        await eventually(began, message="the first attempt began")
        await eventually(
            lambda: stalled_backend(db, pids[0]), message="the first attempt inside its stall"
        )
        async with db.connect() as conn:
            assert await conn.scalar(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pids[0]})

    with capture_logs() as logs:
        done, _ = await asyncio.gather(with_db_retries(transition), terminate_first())

    assert done == "done"
    assert len(pids) == 2 and pids[0] != pids[1], pids
    assert await effects(db) == [(1, "charged")]
    retried = [e for e in logs if e["event"] == "database_unavailable_retrying"]
    assert len(retried) == 1, logs
    assert "terminat" in retried[0]["error"], retried


async def test_an_error_retrying_cannot_help_is_raised_at_once(db: AsyncEngine) -> None:
    calls = 0

    async def duplicate() -> None:
        nonlocal calls
        calls += 1
        async with db.begin() as conn:
            await conn.execute(sa.text("INSERT INTO effect VALUES (2, 'second')"))
            await conn.execute(sa.text("INSERT INTO effect VALUES (2, 'again')"))

    with capture_logs() as logs, pytest.raises(IntegrityError) as raised:
        await with_db_retries(duplicate)

    assert calls == 1
    assert getattr(raised.value.orig, "sqlstate", None) == "23505"
    assert [e for e in logs if e["event"] == "database_unavailable_retrying"] == []
    assert await effects(db) == []


async def test_a_lost_connection_outlasting_its_patience_is_raised(db: AsyncEngine) -> None:
    calls = 0

    async def terminated() -> None:
        nonlocal calls
        calls += 1
        async with db.begin() as conn:
            pid = await conn.scalar(sa.text("SELECT pg_backend_pid()"))
            await conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})

    with pytest.raises(DBAPIError):
        await with_db_retries(terminated, patience=0.1)
    assert calls > 1  # retried while patience lasted, then raised
