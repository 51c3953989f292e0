"""The SagaStore suites' common ground: `StoreSuite`, the base whose factory fixtures each
implementation fills (`InMemory`, `OnPostgres`), and the writes their tests set up with."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import ClassVar

import pytest
from sqlalchemy import text

from adapters.memory import MemoryStore
from adapters.postgres.database import make_engine
from adapters.postgres.store import PostgresStore
from orchestrator.ports import SagaStore, SagaTransaction
from orchestrator.state import SagaState
from tests.contract.samples import PATIENCE
from tests.fixtures.polling import eventually

Blocked = Callable[[], Awaitable[None]]


async def save(tx: SagaTransaction, before: SagaState, after: SagaState) -> None:
    """Persist one transition, as the engine does (a batch of one)."""
    await tx.save_batch([(before, after)], [], [])


class StoreSuite:
    """Tests written once for every SagaStore; a subclass per implementation fills the
    fixtures below."""

    # Postgres lets transactions overlap (row locks, SKIP LOCKED); the fake runs one at a time.
    overlapping: ClassVar[bool]

    @pytest.fixture
    def store(self) -> SagaStore:
        """A store of this test's own, empty."""
        raise NotImplementedError

    @pytest.fixture
    def until_blocked(self) -> Blocked:
        """Returns once another transaction waits for a lock this test holds."""
        raise NotImplementedError

    async def insert(self, store: SagaStore, *states: SagaState) -> None:
        async with store.transaction() as tx:
            for state in states:
                assert await tx.insert(state)

    async def save(self, store: SagaStore, before: SagaState, after: SagaState) -> None:
        async with store.transaction() as tx:
            await save(tx, before, after)


class InMemory(StoreSuite):
    overlapping = False

    @pytest.fixture
    def store(self) -> SagaStore:
        return MemoryStore()

    @pytest.fixture
    def until_blocked(self) -> Blocked:
        async def nothing_to_wait_for() -> None:
            """Transactions never overlap: the other one starts after this one ends."""

        return nothing_to_wait_for


class OnPostgres(StoreSuite):
    """A migrated database of the test's own (tests/fixtures/postgres.py)."""

    overlapping = True

    @pytest.fixture
    def store(self, pg_store: PostgresStore) -> SagaStore:
        return pg_store

    @pytest.fixture
    async def until_blocked(self, database_url: str) -> AsyncIterator[Blocked]:
        engine = make_engine(database_url, pool_size=1)

        async def someone_waits() -> bool:
            async with engine.connect() as conn:
                waiting = await conn.scalar(
                    text(
                        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
                        " WHERE NOT l.granted AND a.datname = current_database()"
                    )
                )
            return bool(waiting)

        async def until() -> None:
            await eventually(someone_waits, timeout=PATIENCE, message="no transaction waits")

        yield until
        await engine.dispose()
