"""Statements sent straight through psycopg (adapters/postgres/driver.py) must fail the way
SQLAlchemy's own do: as `DBAPIError`s, with no parameter in the message, and a connection
lost under them must not come back out of the pool."""

from __future__ import annotations

from collections.abc import AsyncIterator
from uuid import uuid4

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters.postgres import driver
from adapters.postgres.database import make_engine
from adapters.postgres.store import PostgresStore


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(database_url, pool_size=1, max_overflow=0)
    try:
        yield engine
    finally:
        await engine.dispose()


async def test_a_failed_statement_is_sqlalchemys_error_without_its_parameters(
    engine: AsyncEngine,
) -> None:
    secret = "card-4111-1111"
    with pytest.raises(IntegrityError) as raised:
        async with engine.begin() as conn:
            # No saga with that id: the foreign key refuses the history row.
            await driver.fetch(
                conn,
                "INSERT INTO saga_history (saga_id, seq, event, detail, actor)"
                " VALUES (%(id)s, 1, 'x', CAST(%(detail)s AS jsonb), 'test')",
                {"id": uuid4(), "detail": f'{{"card": "{secret}"}}'},
            )
    assert "fk_saga_history_saga_id_saga_instances" in str(raised.value)
    assert secret not in str(raised.value)
    async with engine.connect() as conn:  # the transaction rolled back; the connection is fine
        assert await conn.scalar(sa.text("SELECT count(*) FROM saga_history")) == 0


async def test_a_connection_killed_under_a_statement_is_not_pooled_again(
    engine: AsyncEngine, database_url: str
) -> None:
    store = PostgresStore(engine)
    killer = make_engine(database_url, pool_size=1)
    try:
        with pytest.raises(DBAPIError) as raised:
            async with store.transaction() as tx:
                pid = await driver.fetch(tx._conn, "SELECT pg_backend_pid() AS pid", {})
                async with killer.connect() as other:
                    await other.execute(
                        sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid[0].pid}
                    )
                await tx.lock_all([uuid4()])
        assert raised.value.connection_invalidated or isinstance(raised.value, OperationalError)
        # The pool's only connection was the dead one: a new transaction gets a new one.
        async with store.transaction() as tx:
            assert await tx.lock_all([uuid4()]) == []
    finally:
        await killer.dispose()
