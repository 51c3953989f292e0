"""The SagaTransaction contract, for the fake and the Postgres adapter: sagas created,
locked and moved on by transitions (the revision guard), their history appended, the outbox
written, claimed and deleted, cancels held for starts to come, timers claimed."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from uuid import uuid4

import pytest

from orchestrator.errors import ConcurrentUpdate, SagaNotFound
from orchestrator.event_names import HistoryEvent
from orchestrator.machine import HistoryEntry
from orchestrator.messages import OutboxMessage
from orchestrator.ports import SagaQuery, SagaStore
from orchestrator.state import SagaState, SagaStatus, StepState, StepStatus
from tests.contract.samples import (
    NOW,
    PATIENCE,
    TRACEPARENT,
    first_step_succeeded,
    message,
    started,
    timers_moved,
)
from tests.contract.stores import Blocked, InMemory, OnPostgres, StoreSuite, save


class TransactionContract(StoreSuite):
    """Every SagaTransaction, through the store that opens it."""

    # -- insert, get, lock -----------------------------------------------------------------

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

    async def test_insert_all_leaves_out_keys_taken_before_or_twice(self, store: SagaStore) -> None:
        old = started("old")
        await self.insert(store, old)
        new, again, twice, twice_more = started("new"), started("old"), started("2"), started("2")
        async with store.transaction() as tx:
            inserted = await tx.insert_all([new, again, twice, twice_more])
            assert await tx.insert_all([]) == set()
        assert inserted == {new.saga_id, twice.saga_id}
        assert await store.get(new.saga_id) == new
        assert await store.get(twice.saga_id) == twice
        assert await store.get(again.saga_id) is None
        assert await store.get(twice_more.saga_id) is None

    async def test_a_transaction_that_raises_leaves_nothing_behind(self, store: SagaStore) -> None:
        state = started()
        with pytest.raises(RuntimeError):
            async with store.transaction() as tx:
                await tx.insert(state)
                await tx.append_history(
                    state.saga_id, [HistoryEntry(HistoryEvent.SAGA_STARTED)], "test"
                )
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

    # -- transitions -----------------------------------------------------------------------

    async def test_save_round_trips_a_transition(self, store: SagaStore) -> None:
        before = started()
        await self.insert(store, before)
        after = first_step_succeeded(before)
        async with store.transaction() as tx:
            locked = await tx.lock(before.saga_id)
            assert locked == before
            await save(tx, locked, after)
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

    async def test_a_payload_built_when_a_step_begins_and_the_output_are_kept(
        self, store: SagaStore
    ) -> None:
        before = started()
        await self.insert(store, before)
        built = {"reservation": "r-1", "amount": "12.50", "lines": [1, 2.5]}
        step = replace(before.steps[2], payload=built)
        done = replace(
            before,
            steps=(*before.steps[:2], step, *before.steps[3:]),
            status=SagaStatus.COMPLETED,
            output={"charge": "c-1", "amounts": [1, 2.5]},
            revision=1,
        )
        await self.save(store, before, done)
        saved = await store.get(before.saga_id)
        assert saved is not None and saved == done
        assert saved.steps[2].payload == built
        assert saved.output == {"charge": "c-1", "amounts": [1, 2.5]}

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

    async def test_save_refuses_anything_but_the_next_revision(self, store: SagaStore) -> None:
        before = started()
        await self.insert(store, before)
        with pytest.raises(ValueError, match="revision"):
            await self.save(store, before, replace(first_step_succeeded(before), revision=2))
        assert await store.get(before.saga_id) == before

    async def test_save_refuses_another_saga_or_fewer_steps(self, store: SagaStore) -> None:
        before = started()
        await self.insert(store, before)
        after = first_step_succeeded(before)
        with pytest.raises(ValueError, match="saga"):
            await self.save(store, before, replace(after, saga_id=uuid4()))
        with pytest.raises(ValueError, match="steps"):
            await self.save(store, before, replace(after, steps=after.steps[:-1]))
        assert await store.get(before.saga_id) == before

    async def test_a_transition_adds_a_map_steps_items_and_moves_them_on(
        self, store: SagaStore
    ) -> None:
        before = started()
        await self.insert(store, before)
        moved = first_step_succeeded(before)
        n = len(moved.steps)
        items = tuple(
            StepState(f"ship[{i}]", n + i, item=i, payload={"parcel": i, "weight": 1.5})
            for i in range(2)
        )
        begun = replace(moved, steps=(*moved.steps, *items))
        await self.save(store, before, begun)
        assert await store.get(before.saga_id) == begun
        running = replace(items[1], status=StepStatus.RUNNING, attempt=1, command_id=uuid4())
        later = replace(begun, steps=(*begun.steps[:-1], running), revision=begun.revision + 1)
        await self.save(store, begun, later)
        saved = await store.get(before.saga_id)
        assert saved == later
        assert saved is not None and [s.of for s in saved.steps[n:]] == ["ship", "ship"]

    async def test_many_sagas_lock_save_and_record_history_together(self, store: SagaStore) -> None:
        a, b, c = started("a"), started("b"), started("c")
        await self.insert(store, a, b, c)
        async with store.transaction() as tx:
            locked = await tx.lock_all([c.saga_id, uuid4(), a.saga_id, b.saga_id])
            # In id order, unknown ids left out: lockers of overlapping sets cannot deadlock.
            assert locked == sorted([a, b, c], key=lambda s: s.saga_id)
            assert await tx.lock_all([]) == []
            await tx.save_batch(
                [(a, first_step_succeeded(a)), (c, first_step_succeeded(c))],
                [
                    (
                        a.saga_id,
                        [
                            HistoryEntry(HistoryEvent.SAGA_STARTED),
                            HistoryEntry(HistoryEvent.STEP_DISPATCHED, "s", {"n": 2}),
                        ],
                        "x",
                    ),
                    (c.saga_id, [HistoryEntry(HistoryEvent.SAGA_STARTED)], "y"),
                    (a.saga_id, [HistoryEntry(HistoryEvent.STEP_SUCCEEDED)], "z"),
                    (b.saga_id, [], "nobody"),
                ],
                [],
            )
        assert await store.get(a.saga_id) == first_step_succeeded(a)
        assert await store.get(b.saga_id) == b
        assert await store.get(c.saga_id) == first_step_succeeded(c)
        history = [
            (r.seq, r.event, r.step, r.detail, r.actor) for r in await store.history(a.saga_id)
        ]
        assert history == [
            (1, "saga_started", None, None, "x"),
            (2, "step_dispatched", "s", {"n": 2}, "x"),
            (3, "step_succeeded", None, None, "z"),
        ]
        assert [(r.seq, r.actor) for r in await store.history(c.saga_id)] == [(1, "y")]
        assert await store.history(b.saga_id) == []
        async with store.transaction() as tx:  # and the sequence goes on from there
            await tx.save_batch(
                [], [(a.saga_id, [HistoryEntry(HistoryEvent.SAGA_COMPLETED)], "x")], []
            )
        assert [r.seq for r in await store.history(a.saga_id)] == [1, 2, 3, 4]

    async def test_save_batch_writes_transitions_history_and_outbox_together(
        self, store: SagaStore
    ) -> None:
        a, b = started("a"), started("b")
        await self.insert(store, a, b)
        async with store.transaction() as tx:
            added = await tx.save_batch(
                [(b, first_step_succeeded(b)), (a, first_step_succeeded(a))],
                [
                    (
                        a.saga_id,
                        [
                            HistoryEntry(HistoryEvent.SAGA_STARTED),
                            HistoryEntry(HistoryEvent.STEP_DISPATCHED, "s", {"n": 2}),
                        ],
                        "x",
                    )
                ],
                [message(1), message(2)],
            )
            assert await tx.save_batch([], [], []) == []
        assert await store.get(a.saga_id) == first_step_succeeded(a)
        assert await store.get(b.saga_id) == first_step_succeeded(b)
        assert [(r.seq, r.event, r.detail) for r in await store.history(a.saga_id)] == [
            (1, "saga_started", None),
            (2, "step_dispatched", {"n": 2}),
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
                    [(a.saga_id, [HistoryEntry(HistoryEvent.SAGA_STARTED)], "x")],
                    [message(1)],
                )
        assert await store.get(a.saga_id) == a
        assert await store.get(b.saga_id) == first_step_succeeded(b)
        assert await store.history(a.saga_id) == []
        async with store.transaction() as tx:
            assert await tx.claim_outbox(timedelta(hours=-1), 10) == []

    # -- timers ----------------------------------------------------------------------------

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
                    await save(tx, state, timers_moved(state, at + timedelta(hours=1)))
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

    # -- row locks -------------------------------------------------------------------------

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
                await save(tx, locked, after)

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

    # -- history ---------------------------------------------------------------------------

    async def test_history_keeps_order_and_continues_its_sequence(self, store: SagaStore) -> None:
        state = started()
        await self.insert(store, state)
        async with store.transaction() as tx:
            await tx.append_history(
                state.saga_id,
                [
                    HistoryEntry(HistoryEvent.SAGA_STARTED, detail={"version": 1}),
                    HistoryEntry(HistoryEvent.STEP_DISPATCHED, "reserve_credit"),
                ],
                "broker",
            )
        async with store.transaction() as tx:
            assert await tx.lock(state.saga_id) is not None
            await tx.append_history(state.saga_id, [], "nobody")
            await tx.append_history(
                state.saga_id,
                [
                    HistoryEntry(HistoryEvent.STEP_SUCCEEDED, "reserve_credit", {"attempt": 1}),
                    HistoryEntry(HistoryEvent.CANCEL_REFUSED, detail={"why": "past the pivot"}),
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
                await tx.append_history(uuid4(), [HistoryEntry(HistoryEvent.SAGA_STARTED)], "test")
        with pytest.raises(SagaNotFound):
            async with store.transaction() as tx:
                await tx.save_batch(
                    [], [(uuid4(), [HistoryEntry(HistoryEvent.SAGA_STARTED)], "test")], []
                )

    # -- outbox ----------------------------------------------------------------------------

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

    # -- held cancels ----------------------------------------------------------------------

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
            assert await tx.take_held_cancels([]) == {}
            assert await tx.take_held_cancel("order", "k1") is None
            assert await tx.take_held_cancel("invoice", "k2") == "not for order"
            assert await tx.take_held_cancel("order", "k3") == "third"


class TestMemoryTransactions(InMemory, TransactionContract):
    pass


class TestPostgresTransactions(OnPostgres, TransactionContract):
    pass
