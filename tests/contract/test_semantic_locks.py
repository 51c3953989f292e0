"""The semantic locks of every SagaTransaction (orchestrator/locks.py), for the fake and the
Postgres adapter: resources taken all or none and given back, conflicts, the queue of
waiting starts, granting a freed resource to its oldest waiter, expiry."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import datetime, timedelta

import pytest

from orchestrator.locks import HeldLock, LockConflict, LocksView, LockWaiter
from orchestrator.ports import SagaStore
from orchestrator.state import SagaState, SagaStatus
from tests.contract.samples import NOW, PATIENCE, lock_owner, started, waiter
from tests.contract.stores import Blocked, InMemory, OnPostgres, StoreSuite


class SemanticLockContract(StoreSuite):
    """The lock methods of every SagaTransaction, and `SagaStore.locks`."""

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

    # -- take and release ------------------------------------------------------------------

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

    # -- the wait queue --------------------------------------------------------------------

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

    # -- grant -----------------------------------------------------------------------------

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

    # -- expiry ----------------------------------------------------------------------------

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

    async def test_concurrent_expiries_never_share_a_waiter(self, store: SagaStore) -> None:
        await self.enqueue(store, *(waiter(f"w{i}", "a", expires_at=NOW) for i in range(4)))
        first_expired, second_done = asyncio.Event(), asyncio.Event()

        async def first() -> list[str]:
            async with store.transaction() as tx:
                expired = await tx.expire_lock_waiters(NOW, 2)
                first_expired.set()
                if self.overlapping:  # the second sweep must not wait for us
                    await asyncio.wait_for(second_done.wait(), PATIENCE)
                return [w.key for w in expired]

        async def second() -> list[str]:
            await first_expired.wait()
            async with store.transaction() as tx:
                expired = await tx.expire_lock_waiters(NOW, 10)
            second_done.set()
            return [w.key for w in expired]

        a, b = await asyncio.wait_for(asyncio.gather(first(), second()), PATIENCE)
        assert a == ["w0", "w1"]
        assert b == ["w2", "w3"]
        assert (await store.locks()).waiting == ()


class TestMemorySemanticLocks(InMemory, SemanticLockContract):
    pass


class TestPostgresSemanticLocks(OnPostgres, SemanticLockContract):
    pass
