"""One contract for every SagaStore, written once: the in-memory fake and the Postgres adapter
run the same tests (StoreContract, subclassed at the bottom once per implementation)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, ClassVar
from uuid import uuid4

import pytest
from sqlalchemy import text

from adapters.memory import MemoryStore
from adapters.postgres.database import make_engine
from adapters.postgres.store import PostgresStore
from orchestrator import machine
from orchestrator.errors import ConcurrentUpdate, DefinitionConflict, SagaNotFound
from orchestrator.machine import HistoryEntry, ReplyReceived
from orchestrator.messages import Reply
from orchestrator.ports import DefinitionRecord, OutboxMessage, SagaQuery, SagaStore
from orchestrator.state import SagaState, SagaStatus, StepState, StepStatus
from sagas import order
from tests.fixtures.polling import eventually

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
ORDER = {
    "order_id": "o-1",
    "customer_id": "c-1",
    "amount": "12.50",
    "items": [{"sku": "SKU-Ä", "qty": 2}],
}
# Long enough for a slow CI machine, short enough that a deadlock fails the test quickly.
PATIENCE = 10.0

Blocked = Callable[[], Awaitable[None]]


def started(key: str = "order-1", *, at: datetime = NOW, name: str | None = None) -> SagaState:
    """A saga just started: its first step dispatched, due to time out 30 s after `at`."""
    state = machine.start(order.saga, saga_id=uuid4(), key=key, input=ORDER, now=at).state
    return state if name is None else replace(state, name=name)


def first_step_succeeded(state: SagaState, at: datetime = NOW + timedelta(seconds=1)) -> SagaState:
    """The next revision: step 0 succeeded (with a result), step 1 dispatched."""
    step = state.steps[0]
    assert step.command_id is not None
    reply = Reply(
        command_id=step.command_id,
        saga_id=state.saga_id,
        step=step.name,
        outcome="success",
        result={"reservation": "r-1", "amounts": [1, 2.5], "note": None},
    )
    decided = machine.decide(order.saga, state, ReplyReceived(reply), at).state
    return replace(decided, revision=state.revision + 1)


def timers_moved(state: SagaState, to: datetime) -> SagaState:
    """The next revision with every timer moved to `to`, as handling a timeout would."""
    steps = tuple(replace(s, due_at=to) if s.due_at is not None else s for s in state.steps)
    return replace(state, steps=steps, revision=state.revision + 1)


def message(n: int) -> OutboxMessage:
    return OutboxMessage(
        exchange="saga.commands",
        routing_key="payments.charge",
        body=b'{"n": %d}' % n,
        message_id=f"m-{n}",
        reply_to="saga.replies" if n % 2 else None,
    )


class StoreContract:
    # Postgres lets transactions overlap (row locks, SKIP LOCKED); the fake runs one at a time.
    overlapping: ClassVar[bool]

    @pytest.fixture
    def store(self) -> SagaStore:
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
            await tx.save(before, after)

    # -- insert, get, lock, save -------------------------------------------------------------

    async def test_insert_then_get_returns_the_same_state(self, store: SagaStore) -> None:
        state = started()
        await self.insert(store, state)
        assert await store.get(state.saga_id) == state
        assert await store.get(uuid4()) is None

    async def test_insert_refuses_a_second_saga_with_the_same_name_and_key(
        self, store: SagaStore
    ) -> None:
        first, again = started("k"), started("k")
        await self.insert(store, first)
        async with store.transaction() as tx:
            assert not await tx.insert(again)
        assert await store.get(again.saga_id) is None
        assert await store.find(SagaQuery(key="k")) == [first]
        other_saga = started("k", name="invoice")
        await self.insert(store, other_saga)
        assert {s.saga_id for s in await store.find(SagaQuery(key="k"))} == {
            first.saga_id,
            other_saga.saga_id,
        }

    async def test_a_transaction_that_raises_leaves_nothing_behind(self, store: SagaStore) -> None:
        state = started()
        with pytest.raises(RuntimeError):
            async with store.transaction() as tx:
                await tx.insert(state)
                await tx.append_history(state.saga_id, [HistoryEntry("saga_started")], "test")
                await tx.add_outbox([message(1)])
                await tx.hold_cancel("held", None, "why")
                raise RuntimeError("boom")
        assert await store.get(state.saga_id) is None
        assert await store.history(state.saga_id) == []
        async with store.transaction() as tx:
            assert await tx.claim_outbox(timedelta(hours=-1), 10) == []
            assert await tx.take_held_cancel("order", "held") is None

    async def test_lock_returns_the_saga_or_none(self, store: SagaStore) -> None:
        state = started()
        await self.insert(store, state)
        async with store.transaction() as tx:
            assert await tx.lock(state.saga_id) == state
            assert await tx.lock(uuid4()) is None

    async def test_save_round_trips_a_transition(self, store: SagaStore) -> None:
        before = started()
        await self.insert(store, before)
        after = first_step_succeeded(before)
        async with store.transaction() as tx:
            locked = await tx.lock(before.saga_id)
            assert locked == before
            await tx.save(locked, after)
        assert await store.get(before.saga_id) == after
        saved = await store.get(before.saga_id)
        assert saved is not None
        assert [s.status for s in saved.steps[:2]] == [StepStatus.SUCCEEDED, StepStatus.RUNNING]
        assert saved.steps[0].result == {"reservation": "r-1", "amounts": [1, 2.5], "note": None}
        assert saved.steps[1].command_id is not None
        assert saved.revision == 1

    async def test_save_writes_status_error_and_cancel_reason(self, store: SagaStore) -> None:
        before = started()
        await self.insert(store, before)
        error = {"type": "declined", "message": "card declined", "retryable": False}
        failed = before.steps[0].moved(StepStatus.FAILED, command_id=None, due_at=None, error=error)
        after = replace(
            before,
            status=SagaStatus.COMPENSATING,
            cancel_reason="customer asked",
            error=error,
            revision=1,
            updated_at=NOW + timedelta(minutes=1),
            steps=(failed, *before.steps[1:]),
        )
        await self.save(store, before, after)
        assert await store.get(before.saga_id) == after

    async def test_save_on_a_stale_revision_raises_concurrent_update(
        self, store: SagaStore
    ) -> None:
        before = started()
        await self.insert(store, before)
        winner = first_step_succeeded(before)
        await self.save(store, before, winner)
        with pytest.raises(ConcurrentUpdate):
            await self.save(store, before, timers_moved(before, NOW + timedelta(hours=1)))
        unknown = uuid4()  # a saga nobody has (deleted, say) is no better than a stale one
        with pytest.raises(ConcurrentUpdate):
            await self.save(
                store, replace(before, saga_id=unknown), replace(winner, saga_id=unknown)
            )
        assert await store.get(before.saga_id) == winner

    async def test_save_refuses_anything_but_the_next_revision(self, store: SagaStore) -> None:
        before = started()
        await self.insert(store, before)
        with pytest.raises(ValueError, match="revision"):
            await self.save(store, before, replace(first_step_succeeded(before), revision=2))
        assert await store.get(before.saga_id) == before

    async def test_datetimes_come_back_in_utc(self, store: SagaStore) -> None:
        plus_two = timezone(timedelta(hours=2))
        state = started(at=NOW.astimezone(plus_two))
        await self.insert(store, state)
        loaded = await store.get(state.saga_id)
        assert loaded is not None
        assert loaded.created_at == NOW
        for moment in (loaded.created_at, loaded.updated_at, loaded.steps[0].due_at):
            assert moment is not None
            assert moment.utcoffset() == timedelta(0)

    # -- timers -----------------------------------------------------------------------------

    async def test_claim_due_returns_only_due_sagas_soonest_first(self, store: SagaStore) -> None:
        soon = started("soon")  # due at NOW + 30 s
        later = started("later", at=NOW + timedelta(seconds=10))  # due at NOW + 40 s
        idle = replace(
            started("idle"), steps=tuple(StepState(s.name, s.index) for s in started().steps)
        )
        await self.insert(store, later, soon, idle)

        async def due(at: datetime, limit: int = 10) -> list[str]:
            async with store.transaction() as tx:
                return [s.key for s in await tx.claim_due(at, limit)]

        assert await due(NOW + timedelta(seconds=29)) == []
        assert await due(NOW + timedelta(seconds=30)) == ["soon"]
        assert await due(NOW + timedelta(hours=1)) == ["soon", "later"]
        assert await due(NOW + timedelta(hours=1), limit=1) == ["soon"]

    async def test_claim_due_follows_timers_moved_by_save(self, store: SagaStore) -> None:
        state = started()
        await self.insert(store, state)
        moved = timers_moved(state, NOW + timedelta(minutes=5))
        await self.save(store, state, moved)
        async with store.transaction() as tx:
            assert await tx.claim_due(NOW + timedelta(minutes=4), 10) == []
            assert await tx.claim_due(NOW + timedelta(minutes=5), 10) == [moved]

    async def test_concurrent_claims_never_share_a_saga(self, store: SagaStore) -> None:
        sagas = [started(f"k{i}", at=NOW + timedelta(seconds=i)) for i in range(4)]
        await self.insert(store, *sagas)
        at = NOW + timedelta(hours=1)
        first_claimed, second_done = asyncio.Event(), asyncio.Event()

        async def first() -> list[SagaState]:
            async with store.transaction() as tx:
                claimed = await tx.claim_due(at, 2)
                first_claimed.set()
                if self.overlapping:  # the second claim must not wait for us
                    await asyncio.wait_for(second_done.wait(), PATIENCE)
                for state in claimed:
                    await tx.save(state, timers_moved(state, at + timedelta(hours=1)))
                return claimed

        async def second() -> list[SagaState]:
            await first_claimed.wait()
            async with store.transaction() as tx:
                claimed = await tx.claim_due(at, 10)
            second_done.set()
            return claimed

        a, b = await asyncio.wait_for(asyncio.gather(first(), second()), PATIENCE)
        ids_a, ids_b = {s.saga_id for s in a}, {s.saga_id for s in b}
        assert len(ids_a) == 2
        assert not ids_a & ids_b
        assert ids_a | ids_b == {s.saga_id for s in sagas}

    # -- locks ------------------------------------------------------------------------------

    async def test_lock_waits_for_the_holder_and_sees_its_commit(
        self, store: SagaStore, until_blocked: Blocked
    ) -> None:
        state = started()
        await self.insert(store, state)
        after = first_step_succeeded(state)
        held = asyncio.Event()

        async def holder() -> None:
            async with store.transaction() as tx:
                locked = await tx.lock(state.saga_id)
                assert locked is not None
                held.set()
                await until_blocked()
                await tx.save(locked, after)

        async def waiter() -> SagaState | None:
            await held.wait()
            async with store.transaction() as tx:
                return await tx.lock(state.saga_id)

        _, seen = await asyncio.wait_for(asyncio.gather(holder(), waiter()), PATIENCE)
        assert seen == after

    async def test_lock_by_key_locks_every_saga_with_the_key(self, store: SagaStore) -> None:
        a = started("k", at=NOW)
        b = started("k", at=NOW + timedelta(seconds=1), name="invoice")
        await self.insert(store, b, a, started("other"))
        async with store.transaction() as tx:
            assert await tx.lock_by_key("k", None) == [a, b]
            assert await tx.lock_by_key("k", "invoice") == [b]
            assert await tx.lock_by_key("nobody", None) == []

    async def test_a_cancel_racing_a_start_by_key_is_never_lost(
        self, store: SagaStore, until_blocked: Blocked
    ) -> None:
        state = started("k")
        looked = asyncio.Event()

        async def start() -> str | None:
            async with store.transaction() as tx:
                held = await tx.take_held_cancel("order", "k")
                looked.set()
                await until_blocked()  # the cancel must wait for this start to commit
                assert await tx.insert(state)
                return held

        async def cancel() -> list[SagaState]:
            await looked.wait()
            async with store.transaction() as tx:
                found = await tx.lock_by_key("k", None)
                if not found:
                    await tx.hold_cancel("k", None, "customer cancelled")
                return found

        held, found = await asyncio.wait_for(asyncio.gather(start(), cancel()), PATIENCE)
        assert held is None
        assert [s.saga_id for s in found] == [state.saga_id]

    # -- history ----------------------------------------------------------------------------

    async def test_history_keeps_order_and_continues_its_sequence(self, store: SagaStore) -> None:
        state = started()
        await self.insert(store, state)
        async with store.transaction() as tx:
            await tx.append_history(
                state.saga_id,
                [
                    HistoryEntry("saga_started", detail={"version": 1}),
                    HistoryEntry("step_dispatched", "reserve_credit"),
                ],
                "broker",
            )
        async with store.transaction() as tx:
            assert await tx.lock(state.saga_id) is not None
            await tx.append_history(state.saga_id, [], "nobody")
            await tx.append_history(
                state.saga_id,
                [
                    HistoryEntry("step_succeeded", "reserve_credit", {"attempt": 1}),
                    HistoryEntry("cancel_refused", detail={"why": "past the pivot"}),
                ],
                "operator:ann",
            )
        records = await store.history(state.saga_id)
        assert [(r.seq, r.event, r.step, r.actor) for r in records] == [
            (1, "saga_started", None, "broker"),
            (2, "step_dispatched", "reserve_credit", "broker"),
            (3, "step_succeeded", "reserve_credit", "operator:ann"),
            (4, "cancel_refused", None, "operator:ann"),
        ]
        assert records[0].detail == {"version": 1}
        assert records[1].detail is None
        assert all(r.saga_id == state.saga_id for r in records)
        assert all(r.at.utcoffset() == timedelta(0) for r in records)
        assert await store.history(uuid4()) == []

    async def test_history_of_an_unknown_saga_is_refused(self, store: SagaStore) -> None:
        with pytest.raises(SagaNotFound):
            async with store.transaction() as tx:
                await tx.append_history(uuid4(), [HistoryEntry("saga_started")], "test")

    # -- outbox -----------------------------------------------------------------------------

    async def test_outbox_add_claim_delete(self, store: SagaStore) -> None:
        async with store.transaction() as tx:
            added = await tx.add_outbox([message(1), message(2), message(3)])
            assert await tx.add_outbox([]) == []
        ids = [m.id for m in added if m.id is not None]
        assert len(set(ids)) == 3
        assert ids == sorted(ids)
        assert [replace(m, id=None) for m in added] == [message(1), message(2), message(3)]

        future = timedelta(hours=-1)  # every row is older than an hour from now
        async with store.transaction() as tx:
            assert await tx.claim_outbox(timedelta(hours=1), 10) == []
            claimed = await tx.claim_outbox(future, 2)
            assert claimed == added[:2]
            await tx.delete_outbox([m.id for m in claimed if m.id is not None])
        async with store.transaction() as tx:
            assert await tx.claim_outbox(future, 10) == added[2:]
        await store.delete_outbox(ids)
        await store.delete_outbox([])
        async with store.transaction() as tx:
            assert await tx.claim_outbox(future, 10) == []

    async def test_concurrent_outbox_claims_never_share_a_message(self, store: SagaStore) -> None:
        async with store.transaction() as tx:
            added = await tx.add_outbox([message(n) for n in range(4)])
        future = timedelta(hours=-1)  # every row is older than an hour from now
        first_claimed, second_done = asyncio.Event(), asyncio.Event()

        async def first() -> list[OutboxMessage]:
            async with store.transaction() as tx:
                claimed = await tx.claim_outbox(future, 2)
                first_claimed.set()
                if self.overlapping:
                    await asyncio.wait_for(second_done.wait(), PATIENCE)
                await tx.delete_outbox([m.id for m in claimed if m.id is not None])
                return claimed

        async def second() -> list[OutboxMessage]:
            await first_claimed.wait()
            async with store.transaction() as tx:
                claimed = await tx.claim_outbox(future, 10)
            second_done.set()
            return claimed

        a, b = await asyncio.wait_for(asyncio.gather(first(), second()), PATIENCE)
        assert a == added[:2]
        assert b == added[2:]

    # -- held cancels -----------------------------------------------------------------------

    async def test_a_held_cancel_is_taken_once_by_the_matching_start(
        self, store: SagaStore
    ) -> None:
        async with store.transaction() as tx:
            await tx.hold_cancel("k", None, "first reason")
            await tx.hold_cancel("k", "order", "second reason")
            await tx.hold_cancel("k", "invoice", "for another saga")
        async with store.transaction() as tx:
            assert await tx.take_held_cancel("order", "other-key") is None
            assert await tx.take_held_cancel("order", "k") == "first reason"
        async with store.transaction() as tx:
            assert await tx.take_held_cancel("order", "k") is None
            assert await tx.take_held_cancel("invoice", "k") == "for another saga"
            assert await tx.take_held_cancel("invoice", "k") is None

    # -- definitions ------------------------------------------------------------------------

    async def test_register_is_idempotent_and_refuses_changed_steps(self, store: SagaStore) -> None:
        record = DefinitionRecord("order", 1, "abc123", {"steps": ["reserve_credit"]})
        assert await store.register(record)
        assert not await store.register(record)
        assert await store.register(replace(record, version=2, fingerprint="def456"))
        with pytest.raises(DefinitionConflict) as refused:
            await store.register(replace(record, fingerprint="def456"))
        text_ = str(refused.value)
        assert "'order'" in text_
        assert "version 1" in text_
        assert "bump the version" in text_

    # -- operator queries -------------------------------------------------------------------

    async def test_find_filters_and_lists_newest_activity_first(self, store: SagaStore) -> None:
        a = started("a", at=NOW)
        b = started("b", at=NOW + timedelta(seconds=1))
        done = replace(
            started("c", at=NOW + timedelta(seconds=2), name="invoice"),
            status=SagaStatus.COMPLETED,
        )
        await self.insert(store, a, b, done)

        async def keys(**query: Any) -> list[str]:
            return [s.key for s in await store.find(SagaQuery(**query))]

        assert await keys() == ["c", "b", "a"]
        assert await keys(limit=2) == ["c", "b"]
        assert await keys(status=SagaStatus.COMPLETED) == ["c"]
        assert await keys(status=SagaStatus.RUNNING, saga="order") == ["b", "a"]
        assert await keys(saga="invoice", key="a") == []
        assert await keys(key="a") == ["a"]
        await self.save(store, a, first_step_succeeded(a, at=NOW + timedelta(minutes=1)))
        assert await keys() == ["a", "c", "b"]
        found = await store.find(SagaQuery(key="a"))
        assert found == [await store.get(a.saga_id)]


class TestMemoryStore(StoreContract):
    overlapping = False

    @pytest.fixture
    def store(self) -> SagaStore:
        return MemoryStore()

    @pytest.fixture
    def until_blocked(self) -> Blocked:
        async def nothing_to_wait_for() -> None:
            """Transactions never overlap: the other one starts after this one ends."""

        return nothing_to_wait_for


class TestPostgresStore(StoreContract):
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
