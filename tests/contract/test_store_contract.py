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
from orchestrator.locks import HeldLock, LockConflict, LocksView, LockWaiter
from orchestrator.machine import HistoryEntry, ReplyReceived
from orchestrator.messages import OutboxMessage, ParentRef, Reply
from orchestrator.ports import DefinitionRecord, Registration, SagaQuery, SagaStore, VersionInUse
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
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

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


def lock_owner(state: SagaState) -> dict[str, Any]:
    """acquire_locks' keyword arguments for `state`."""
    return {"saga_id": state.saga_id, "saga": state.name, "key": state.key, "now": NOW}


def waiter(
    key: str,
    *resources: str,
    saga: str = "order",
    version: int = 1,
    expires_at: datetime | None = None,
) -> LockWaiter:
    return LockWaiter(
        saga=saga,
        version=version,
        key=key,
        input={"order_id": key, "lines": [1, 2.5]},
        resources=resources,
        enqueued_at=NOW,
        expires_at=expires_at,
    )


def message(n: int) -> OutboxMessage:
    return OutboxMessage(
        exchange="saga.commands",
        routing_key="payments.charge",
        body=b'{"n": %d}' % n,
        message_id=f"m-{n}",
        reply_to="saga.replies" if n % 2 else None,
        # A saga's trace context travels as headers; most messages have none.
        headers={"traceparent": TRACEPARENT} if n == 2 else None,
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

    async def test_a_steps_budget_end_is_kept_and_changed(self, store: SagaStore) -> None:
        before = started()
        await self.insert(store, before)
        close = NOW + timedelta(minutes=10)
        step = replace(before.steps[0], close_at=close)
        budgeted = replace(before, steps=(step, *before.steps[1:]), revision=1)
        await self.save(store, before, budgeted)
        saved = await store.get(before.saga_id)
        assert saved is not None and saved.steps[0].close_at == close
        cleared = replace(saved, steps=(replace(step, close_at=None), *saved.steps[1:]))
        await self.save(store, saved, replace(cleared, revision=2))
        again = await store.get(before.saga_id)
        assert again is not None and again.steps[0].close_at is None

    async def test_a_saga_keeps_the_trace_context_it_started_with(self, store: SagaStore) -> None:
        trace = {"traceparent": TRACEPARENT, "tracestate": "vendor=1"}
        before = replace(started(), trace=trace)
        await self.insert(store, before)
        assert await store.get(before.saga_id) == before
        await self.save(store, before, first_step_succeeded(before))
        saved = await store.get(before.saga_id)
        assert saved is not None and saved.trace == trace

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

    async def test_many_sagas_lock_save_and_record_history_together(self, store: SagaStore) -> None:
        a, b, c = started("a"), started("b"), started("c")
        await self.insert(store, a, b, c)
        async with store.transaction() as tx:
            locked = await tx.lock_all([c.saga_id, uuid4(), a.saga_id, b.saga_id])
            # In id order, unknown ids left out: lockers of overlapping sets cannot deadlock.
            assert locked == sorted([a, b, c], key=lambda s: s.saga_id)
            await tx.save_all([(a, first_step_succeeded(a)), (c, first_step_succeeded(c))])
            await tx.append_histories(
                [
                    (a.saga_id, [HistoryEntry("one"), HistoryEntry("two", "s", {"n": 2})], "x"),
                    (c.saga_id, [HistoryEntry("one")], "y"),
                    (a.saga_id, [HistoryEntry("three")], "z"),
                    (b.saga_id, [], "nobody"),
                ]
            )
        assert await store.get(a.saga_id) == first_step_succeeded(a)
        assert await store.get(b.saga_id) == b
        assert await store.get(c.saga_id) == first_step_succeeded(c)
        history = [
            (r.seq, r.event, r.step, r.detail, r.actor) for r in await store.history(a.saga_id)
        ]
        assert history == [
            (1, "one", None, None, "x"),
            (2, "two", "s", {"n": 2}, "x"),
            (3, "three", None, None, "z"),
        ]
        assert [(r.seq, r.actor) for r in await store.history(c.saga_id)] == [(1, "y")]
        assert await store.history(b.saga_id) == []
        async with store.transaction() as tx:  # and the sequence goes on from there
            await tx.append_histories([(a.saga_id, [HistoryEntry("four")], "x")])
        assert [r.seq for r in await store.history(a.saga_id)] == [1, 2, 3, 4]

    async def test_insert_all_leaves_out_keys_taken_before_or_twice(self, store: SagaStore) -> None:
        old = started("old")
        await self.insert(store, old)
        new, again, twice, twice_more = started("new"), started("old"), started("2"), started("2")
        async with store.transaction() as tx:
            inserted = await tx.insert_all([new, again, twice, twice_more])
        assert inserted == {new.saga_id, twice.saga_id}
        assert await store.get(new.saga_id) == new
        assert await store.get(twice.saga_id) == twice
        assert await store.get(again.saga_id) is None
        assert await store.get(twice_more.saga_id) is None

    async def test_held_cancels_are_taken_for_many_starts_as_one_by_one(
        self, store: SagaStore
    ) -> None:
        async with store.transaction() as tx:
            await tx.hold_cancel("k1", None, "first")
            await tx.hold_cancel("k1", "order", "second")
            await tx.hold_cancel("k2", "invoice", "not for order")
            await tx.hold_cancel("k3", "order", "third")
        async with store.transaction() as tx:
            taken = await tx.take_held_cancels(
                [("order", "k1"), ("order", "k2"), ("invoice", "k1"), ("order", "k4")]
            )
        # k1: the oldest wins and takes both; the invoice start of k1 finds none left.
        assert taken == {("order", "k1"): "first"}
        async with store.transaction() as tx:
            assert await tx.take_held_cancel("order", "k1") is None
            assert await tx.take_held_cancel("invoice", "k2") == "not for order"
            assert await tx.take_held_cancel("order", "k3") == "third"

    async def test_save_all_writes_nothing_when_one_saga_moved_on(self, store: SagaStore) -> None:
        a, b = started("a"), started("b")
        await self.insert(store, a, b)
        await self.save(store, b, first_step_succeeded(b))
        with pytest.raises(ConcurrentUpdate):
            async with store.transaction() as tx:
                await tx.save_all(
                    [(a, first_step_succeeded(a)), (b, timers_moved(b, NOW + timedelta(hours=1)))]
                )
        assert await store.get(a.saga_id) == a
        assert await store.get(b.saga_id) == first_step_succeeded(b)

    async def test_save_batch_writes_transitions_history_and_outbox_together(
        self, store: SagaStore
    ) -> None:
        a, b = started("a"), started("b")
        await self.insert(store, a, b)
        async with store.transaction() as tx:
            added = await tx.save_batch(
                [(b, first_step_succeeded(b)), (a, first_step_succeeded(a))],
                [(a.saga_id, [HistoryEntry("one"), HistoryEntry("two", "s", {"n": 2})], "x")],
                [message(1), message(2)],
            )
            assert await tx.save_batch([], [], []) == []
        assert await store.get(a.saga_id) == first_step_succeeded(a)
        assert await store.get(b.saga_id) == first_step_succeeded(b)
        assert [(r.seq, r.event, r.detail) for r in await store.history(a.saga_id)] == [
            (1, "one", None),
            (2, "two", {"n": 2}),
        ]
        assert [replace(m, id=None) for m in added] == [message(1), message(2)]
        ids = [m.id for m in added if m.id is not None]
        assert len(ids) == 2 and ids == sorted(ids)
        async with store.transaction() as tx:
            assert await tx.claim_outbox(timedelta(hours=-1), 10) == added

    async def test_save_batch_writes_nothing_when_one_saga_moved_on(self, store: SagaStore) -> None:
        a, b = started("a"), started("b")
        await self.insert(store, a, b)
        await self.save(store, b, first_step_succeeded(b))
        with pytest.raises(ConcurrentUpdate):
            async with store.transaction() as tx:
                await tx.save_batch(
                    [(a, first_step_succeeded(a)), (b, timers_moved(b, NOW + timedelta(hours=1)))],
                    [(a.saga_id, [HistoryEntry("one")], "x")],
                    [message(1)],
                )
        assert await store.get(a.saga_id) == a
        assert await store.history(a.saga_id) == []
        async with store.transaction() as tx:
            assert await tx.claim_outbox(timedelta(hours=-1), 10) == []

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
        async with store.transaction() as tx:
            await tx.delete_outbox(ids)
            await tx.delete_outbox([])
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

    # -- semantic locks ---------------------------------------------------------------------

    async def holding(self, store: SagaStore, key: str, *resources: str) -> SagaState:
        """A saga (inserted after its locks, as a start does) holding `resources`."""
        state = started(key)
        async with store.transaction() as tx:
            assert await tx.acquire_locks(resources, **lock_owner(state)) is None
            assert await tx.insert(state)
        return state

    async def enqueue(self, store: SagaStore, *waiters: LockWaiter) -> None:
        async with store.transaction() as tx:
            for w in waiters:
                assert await tx.enqueue_lock_waiter(w)

    async def claim(
        self,
        store: SagaStore,
        *,
        freed: list[str] | None = None,
        at: datetime = NOW,
        sagas: frozenset[tuple[str, int]] = frozenset({("order", 1)}),
        limit: int = 10,
    ) -> list[str]:
        async with store.transaction() as tx:
            claimed = await tx.claim_lock_waiters(at, freed=freed, sagas=sagas, limit=limit)
        return [w.key for w in claimed]

    async def test_locks_are_taken_all_or_none(self, store: SagaStore) -> None:
        first = await self.holding(store, "first", "order:2", "order:1")
        second = started("second")
        async with store.transaction() as tx:
            conflict = await tx.acquire_locks(["order:3", "order:2"], **lock_owner(second))
        assert conflict == LockConflict("order:2", held_by=first.saga_id, held_by_key="first")
        assert "order:2 is held by saga" in conflict.describe()
        # order:3 was not taken by the refused attempt: another saga gets it.
        await self.holding(store, "third", "order:3")
        view = await store.locks()
        assert [(h.resource, h.key) for h in view.held] == [
            ("order:1", "first"),
            ("order:2", "first"),
            ("order:3", "third"),
        ]
        assert view.held[0] == HeldLock(
            "order:1", first.saga_id, "order", "first", NOW, status=SagaStatus.RUNNING
        )

    async def test_release_gives_back_every_resource_of_the_saga(self, store: SagaStore) -> None:
        holder = await self.holding(store, "holder", "b", "a")
        other = await self.holding(store, "other", "c")
        async with store.transaction() as tx:
            assert await tx.release_locks(holder.saga_id) == ("a", "b")
            assert await tx.release_locks(holder.saga_id) == ()
        assert [h.resource for h in (await store.locks()).held] == ["c"]
        await self.holding(store, "next", "a", "b")
        async with store.transaction() as tx:
            assert await tx.release_locks(other.saga_id) == ("c",)

    async def test_a_transaction_that_raises_takes_and_queues_nothing(
        self, store: SagaStore
    ) -> None:
        with pytest.raises(RuntimeError):
            async with store.transaction() as tx:
                state = started("k")
                assert await tx.acquire_locks(["a"], **lock_owner(state)) is None
                assert await tx.insert(state)
                assert await tx.enqueue_lock_waiter(waiter("w", "b"))
                raise RuntimeError("boom")
        assert await store.locks() == LocksView(held=(), waiting=())

    async def test_a_start_key_waits_once_and_the_queue_keeps_its_order(
        self, store: SagaStore
    ) -> None:
        await self.enqueue(store, waiter("w1", "a", "b"), waiter("w2", "a"))
        async with store.transaction() as tx:
            assert not await tx.enqueue_lock_waiter(waiter("w1", "c"))
            assert await tx.enqueue_lock_waiter(waiter("w1", "c", saga="invoice"))
        waiting = (await store.locks()).waiting
        assert [(w.saga, w.key, w.resources) for w in waiting] == [
            ("order", "w1", ("a", "b")),
            ("order", "w2", ("a",)),
            ("invoice", "w1", ("c",)),
        ]
        ids = [w.id for w in waiting if w.id is not None]
        assert len(ids) == len(waiting) and ids == sorted(ids)
        assert waiting[0] == replace(waiter("w1", "a", "b"), id=waiting[0].id)

    async def test_a_new_start_never_overtakes_live_waiters(self, store: SagaStore) -> None:
        await self.enqueue(
            store,
            waiter("queued", "a"),
            waiter("expired", "b", expires_at=NOW - timedelta(seconds=1)),
        )
        async with store.transaction() as tx:
            conflict = await tx.acquire_locks(["b", "a"], **lock_owner(started("new")))
            assert conflict == LockConflict("a", held_by=None)
            assert "queued" in conflict.describe()
            # A waiter whose wait ran out bars nobody, even before the sweep removes it.
            free = started("free")
            assert await tx.acquire_locks(["b"], **lock_owner(free)) is None
            assert await tx.insert(free)

    async def test_claim_serves_each_resource_oldest_waiter_first(self, store: SagaStore) -> None:
        holder = await self.holding(store, "holder", "a")
        await self.enqueue(
            store,
            waiter("w1", "a"),
            waiter("w2", "a"),
            waiter("w3", "b"),
            waiter("w4", "a", "c"),
            waiter("w5", "c"),
        )
        # a is held: only w3 may start; w5 waits behind w4, which waits for a.
        assert await self.claim(store) == ["w3"]
        assert await self.claim(store) == []
        async with store.transaction() as tx:
            freed = await tx.release_locks(holder.saga_id)
        assert await self.claim(store, freed=list(freed)) == ["w1"]
        assert [w.key for w in (await store.locks()).waiting] == ["w2", "w4", "w5"]

    async def test_a_claimed_start_is_barred_only_by_older_waiters(self, store: SagaStore) -> None:
        await self.enqueue(store, waiter("w1", "a"), waiter("w2", "a"))
        async with store.transaction() as tx:
            [claimed] = await tx.claim_lock_waiters(NOW, freed=None, sagas={("order", 1)}, limit=10)
            state = started(claimed.key)
            assert await tx.acquire_locks(["a"], **lock_owner(state)) == LockConflict(
                "a", held_by=None
            )
            assert await tx.acquire_locks(["a"], **lock_owner(state), waited_as=claimed.id) is None
            assert await tx.insert(state)
        assert [h.key for h in (await store.locks()).held] == ["w1"]
        assert [w.key for w in (await store.locks()).waiting] == ["w2"]

    async def test_claim_takes_only_what_is_asked_for(self, store: SagaStore) -> None:
        await self.enqueue(
            store,
            waiter("other_version", "a", version=2),
            waiter("w1", "a"),
            waiter("w2", "b"),
            waiter("w3", "c"),
            waiter("late", "d", expires_at=NOW),
        )
        # A version this process cannot start is not claimed, yet bars younger waiters of a.
        assert await self.claim(store, freed=["a"]) == []
        assert await self.claim(store, freed=["b", "d"]) == ["w2"]
        assert await self.claim(store, freed=[]) == []
        assert await self.claim(store, limit=0) == []
        assert await self.claim(store, sagas=frozenset()) == []
        assert await self.claim(store, sagas=frozenset({("order", 2)})) == ["other_version"]
        assert await self.claim(store, limit=1) == ["w1"]
        # `late` expired at NOW: never started, whatever is freed.
        assert await self.claim(store) == ["w3"]
        assert [w.key for w in (await store.locks()).waiting] == ["late"]

    async def test_expire_removes_waiters_whose_wait_ran_out(self, store: SagaStore) -> None:
        soon, later = NOW + timedelta(seconds=5), NOW + timedelta(seconds=10)
        await self.enqueue(
            store,
            waiter("later", "a", expires_at=later),
            waiter("forever", "a"),
            waiter("soon", "b", expires_at=soon),
        )

        async def expire(at: datetime, limit: int = 10) -> list[str]:
            async with store.transaction() as tx:
                return [w.key for w in await tx.expire_lock_waiters(at, limit)]

        assert await expire(soon - timedelta(seconds=1)) == []
        assert await expire(later, limit=1) == ["later"]
        assert await expire(later) == ["soon"]
        assert [w.key for w in (await store.locks()).waiting] == ["forever"]

    async def test_remove_takes_the_waiters_of_a_cancelled_key(self, store: SagaStore) -> None:
        await self.enqueue(
            store, waiter("k", "a"), waiter("k", "b", saga="invoice"), waiter("other", "a")
        )
        async with store.transaction() as tx:
            assert [w.saga for w in await tx.remove_lock_waiters("k", "invoice")] == ["invoice"]
            assert await tx.remove_lock_waiters("k", "invoice") == []
            removed = await tx.remove_lock_waiters("k", None)
        assert [(w.saga, w.resources) for w in removed] == [("order", ("a",))]
        assert [w.key for w in (await store.locks()).waiting] == ["other"]

    async def test_a_taker_waits_for_a_release_and_sees_it(
        self, store: SagaStore, until_blocked: Blocked
    ) -> None:
        """The release and the take of one resource are serialised: the taker never finds
        the resource held by a saga whose release is about to commit."""
        holder = await self.holding(store, "holder", "order:1")
        released = asyncio.Event()

        async def release() -> None:
            async with store.transaction() as tx:
                await tx.release_locks(holder.saga_id)
                released.set()
                await until_blocked()  # the taker must wait for this commit

        async def take() -> LockConflict | None:
            await released.wait()
            taker = started("taker")
            async with store.transaction() as tx:
                conflict = await tx.acquire_locks(["order:1"], **lock_owner(taker))
                await tx.insert(taker)
            return conflict

        _, conflict = await asyncio.wait_for(asyncio.gather(release(), take()), PATIENCE)
        assert conflict is None
        assert [h.key for h in (await store.locks()).held] == ["taker"]

    async def test_concurrent_claims_never_share_a_waiter(self, store: SagaStore) -> None:
        await self.enqueue(store, *(waiter(f"w{i}", f"r{i}") for i in range(4)))
        first_claimed, second_done = asyncio.Event(), asyncio.Event()
        sagas = frozenset({("order", 1)})

        async def first() -> list[str]:
            async with store.transaction() as tx:
                claimed = await tx.claim_lock_waiters(NOW, freed=None, sagas=sagas, limit=2)
                first_claimed.set()
                if self.overlapping:  # the second claim must not wait for us
                    await asyncio.wait_for(second_done.wait(), PATIENCE)
                return [w.key for w in claimed]

        async def second() -> list[str]:
            await first_claimed.wait()
            async with store.transaction() as tx:
                claimed = await tx.claim_lock_waiters(NOW, freed=None, sagas=sagas, limit=10)
            second_done.set()
            return [w.key for w in claimed]

        a, b = await asyncio.wait_for(asyncio.gather(first(), second()), PATIENCE)
        assert a == ["w0", "w1"]
        assert b == ["w2", "w3"]
        assert (await store.locks()).waiting == ()

    # -- definitions ------------------------------------------------------------------------

    async def test_register_is_idempotent_and_refuses_changed_steps(self, store: SagaStore) -> None:
        record = DefinitionRecord("order", 1, "abc123", {"steps": [{"name": "reserve"}]})
        assert await store.register(record) == Registration.NEW
        assert await store.register(record) == Registration.UNCHANGED
        other = replace(record, version=2, fingerprint="def456")
        assert await store.register(other) == Registration.NEW
        changed = replace(
            record,
            fingerprint="def456",
            document={"steps": [{"name": "reserve", "timeout": 5}, {"name": "ship"}]},
        )
        with pytest.raises(DefinitionConflict) as refused:
            await store.register(changed)
        text_ = str(refused.value)
        assert "'order'" in text_
        assert "version 1" in text_
        assert "bump the version" in text_
        # What changed, not two fingerprints.
        assert refused.value.changes == ["step 'ship' added", "step 'reserve': timeout unset -> 5"]
        assert "SAGA_DEV_REDEFINE" in text_

    async def test_a_changed_version_nothing_runs_on_is_replaced_when_asked(
        self, store: SagaStore
    ) -> None:
        state = started()
        record = DefinitionRecord(state.name, state.version, "abc123", {"steps": []})
        assert await store.register(record) == Registration.NEW
        changed = replace(record, fingerprint="def456", document={"steps": [{"name": "a"}]})
        # An unfinished instance runs on it: refused even when asked.
        await self.insert(store, state)
        with pytest.raises(DefinitionConflict):
            await store.register(changed, replace_unused=True)
        done = replace(state, status=SagaStatus.COMPLETED, revision=1)
        await self.save(store, state, done)
        with pytest.raises(DefinitionConflict):
            await store.register(changed)  # not asked
        assert await store.register(changed, replace_unused=True) == Registration.REPLACED
        assert await store.register(changed) == Registration.UNCHANGED
        [listed] = await store.definitions()
        assert listed.fingerprint == "def456"

    async def test_definitions_lists_every_registration_by_name_then_version(
        self, store: SagaStore
    ) -> None:
        assert await store.definitions() == []
        for name, version in (("order", 2), ("invoice", 1), ("order", 1)):
            await store.register(DefinitionRecord(name, version, f"fp-{name}-{version}", {}))
        listed = await store.definitions()
        assert [(d.name, d.version, d.fingerprint) for d in listed] == [
            ("invoice", 1, "fp-invoice-1"),
            ("order", 1, "fp-order-1"),
            ("order", 2, "fp-order-2"),
        ]
        assert all(d.registered_at.utcoffset() == timedelta(0) for d in listed)

    async def test_versions_in_use_counts_every_instance_that_can_still_move(
        self, store: SagaStore
    ) -> None:
        assert await store.versions_in_use() == []
        # One order v1 instance in each status; only completed, compensated and cancelled
        # ones are over. Paused and parked (failed) ones still count: an operator moves them on.
        v1 = [
            replace(
                started(f"v1-{status}"),
                version=1,
                status=status,
                resume_status=SagaStatus.RUNNING if status == SagaStatus.PAUSED else None,
            )
            for status in SagaStatus
        ]
        v2 = [replace(started(f"v2-{n}"), version=2) for n in range(3)]
        over = replace(started("i", name="invoice"), version=1, status=SagaStatus.CANCELLED)
        await self.insert(store, *v1, *v2, over)
        assert await store.versions_in_use() == [
            VersionInUse("order", 1, 4),
            VersionInUse("order", 2, 3),
        ]
        done = replace(v2[0], status=SagaStatus.COMPLETED, revision=v2[0].revision + 1)
        await self.save(store, v2[0], done)
        assert await store.versions_in_use() == [
            VersionInUse("order", 1, 4),
            VersionInUse("order", 2, 2),
        ]

    async def test_a_completed_child_counts_while_its_parent_may_undo_it(
        self, store: SagaStore
    ) -> None:
        parent = started("p")
        ref = ParentRef(saga_id=parent.saga_id, step="ship", command_id=uuid4())
        child = replace(started("c", name="shipment"), status=SagaStatus.COMPLETED, parent=ref)
        await self.insert(store, parent, child)
        assert VersionInUse("shipment", child.version, 1) in await store.versions_in_use()
        loaded = await store.get(child.saga_id)
        assert loaded is not None and loaded.parent == ref
        done = replace(parent, status=SagaStatus.COMPLETED, revision=parent.revision + 1)
        await self.save(store, parent, done)
        assert await store.versions_in_use() == []

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

    async def test_find_filters_by_version_and_creation_time(self, store: SagaStore) -> None:
        a = started("a", at=NOW)
        b = replace(started("b", at=NOW + timedelta(minutes=1)), version=7)
        c = started("c", at=NOW + timedelta(minutes=2))
        await self.insert(store, a, b, c)

        async def keys(**query: Any) -> list[str]:
            return [s.key for s in await store.find(SagaQuery(**query))]

        v = order.saga.version
        assert await keys(version=7) == ["b"]
        assert await keys(version=v) == ["c", "a"]
        assert await keys(version=v + 1) == []
        # [created_after, created_before): the lower bound is in, the upper bound is out.
        assert await keys(created_after=NOW + timedelta(minutes=1)) == ["c", "b"]
        assert await keys(created_before=NOW + timedelta(minutes=1)) == ["a"]
        window = {"created_after": NOW, "created_before": NOW + timedelta(minutes=2)}
        assert await keys(**window) == ["b", "a"]
        assert await keys(**window, version=v) == ["a"]
        # Another offset is the same moment.
        plus_one = timezone(timedelta(hours=1))
        assert await keys(created_after=c.created_at.astimezone(plus_one)) == ["c"]

    async def test_find_by_step_lists_sagas_at_that_step_now(self, store: SagaStore) -> None:
        def at(key: str, status: SagaStatus, **steps: StepStatus) -> SagaState:
            state = started(key)
            return replace(
                state,
                status=status,
                steps=tuple(replace(s, status=steps.get(s.name, s.status)) for s in state.steps),
            )

        done, failed = StepStatus.SUCCEEDED, StepStatus.FAILED
        await self.insert(
            store,
            at("at-credit", SagaStatus.RUNNING, reserve_stock=done),
            at(
                "charging",
                SagaStatus.RUNNING,
                reserve_credit=done,
                reserve_stock=done,
                charge_payment=StepStatus.RUNNING,
            ),
            at(
                "parked",
                SagaStatus.FAILED,
                reserve_credit=done,
                reserve_stock=done,
                charge_payment=failed,
            ),
            at(
                "undoing",
                SagaStatus.COMPENSATING,
                reserve_credit=failed,
                reserve_stock=StepStatus.COMPENSATING,
            ),
            at(
                "undone",
                SagaStatus.COMPENSATED,
                reserve_credit=failed,
                reserve_stock=StepStatus.COMPENSATED,
            ),
        )

        async def keys(**query: Any) -> set[str]:
            return {s.key for s in await store.find(SagaQuery(**query))}

        # A failed step is "at" its saga only while it parks it (not once it is undone).
        assert await keys(step="reserve_credit") == {"at-credit"}
        assert await keys(step="reserve_stock") == {"undoing"}
        assert await keys(step="charge_payment") == {"charging", "parked"}
        assert await keys(step="charge_payment", status=SagaStatus.FAILED) == {"parked"}
        assert await keys(step="notify_customer") == set()
        assert await keys(step="no_such_step") == set()

    async def test_find_by_time_in_status(self, store: SagaStore) -> None:
        # Measured on the store's own clock (the database's, for Postgres): real time here.
        now = datetime.now(UTC)
        stuck = started("stuck", at=now - timedelta(hours=2))
        fresh = started("fresh", at=now - timedelta(minutes=1))
        done = replace(started("done", at=now - timedelta(hours=3)), status=SagaStatus.COMPLETED)
        unknown = replace(started("unknown", at=now - timedelta(hours=5)), status_since=None)
        await self.insert(store, stuck, fresh, done, unknown)

        async def keys(**query: Any) -> list[str]:
            return [s.key for s in await store.find(SagaQuery(**query))]

        assert await keys(in_status_for=timedelta(minutes=30)) == ["stuck", "done"]
        assert await keys(in_status_for=timedelta(0)) == ["fresh", "stuck", "done"]
        assert await keys(in_status_for=timedelta(minutes=30), status=SagaStatus.RUNNING) == [
            "stuck"
        ]
        assert await keys(in_status_for=timedelta(hours=4)) == []

    async def test_pages_list_every_saga_once(self, store: SagaStore) -> None:
        # Equal update times on purpose: the id breaks the tie, so no page boundary can
        # split a group of them into a gap or a repeat.
        states = [started(f"k{n:02}", at=NOW + timedelta(seconds=n // 3)) for n in range(20)]
        await self.insert(store, *states)
        seen: list[str] = []
        after = None
        while True:
            page = await store.find(SagaQuery(limit=6, after=after))
            seen += [s.key for s in page]
            if len(page) < 6:
                break
            after = (page[-1].updated_at, page[-1].saga_id)
        assert len(seen) == len(set(seen)) == 20
        assert seen == [s.key for s in await store.find(SagaQuery(limit=100))]

    async def test_pages_stay_whole_while_sagas_change(self, store: SagaStore) -> None:
        """Sagas that change while pages are read move to the front: none is listed twice,
        and every saga that did not change is listed exactly once."""
        states = {
            s.key: s
            for s in (started(f"k{n:02}", at=NOW + timedelta(seconds=n)) for n in range(18))
        }
        await self.insert(store, *states.values())
        seen: list[str] = []
        changed: set[str] = set()
        after = None
        later = NOW + timedelta(hours=1)
        for round_ in range(20):
            page = await store.find(SagaQuery(limit=5, after=after))
            seen += [s.key for s in page]
            if len(page) < 5:
                break
            after = (page[-1].updated_at, page[-1].saga_id)
            # Between pages: one saga already listed and one not listed yet make progress.
            unseen = sorted(set(states) - set(seen) - changed)
            for key in (seen[0], unseen[0]) if unseen else (seen[0],):
                before = states[key]
                moved = replace(
                    before,
                    updated_at=later + timedelta(seconds=round_),
                    revision=before.revision + 1,
                )
                await self.save(store, before, moved)
                states[key] = moved
                changed.add(key)
        assert len(seen) == len(set(seen))
        assert set(states) - changed <= set(seen)
        # Starting over finds what moved to the front.
        first = await store.find(SagaQuery(limit=len(changed)))
        assert {s.key for s in first} == changed

    async def test_count_by_status_counts_every_status(self, store: SagaStore) -> None:
        assert await store.count_by_status() == dict.fromkeys(SagaStatus, 0)
        await self.insert(
            store,
            started("a"),
            started("b"),
            replace(started("c"), status=SagaStatus.COMPLETED),
            replace(started("d", name="invoice"), status=SagaStatus.FAILED),
        )
        expected = dict.fromkeys(SagaStatus, 0)
        assert await store.count_by_status() == {
            **expected,
            SagaStatus.RUNNING: 2,
            SagaStatus.COMPLETED: 1,
            SagaStatus.FAILED: 1,
        }
        assert await store.count_by_status("invoice") == {**expected, SagaStatus.FAILED: 1}
        assert await store.count_by_status("nothing") == expected


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
