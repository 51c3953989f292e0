"""The SagaStore's reads, for the fake and the Postgres adapter: what the HTTP API and the CLI
list (filters, newest activity first, pages), count, and show of one saga."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import uuid4

from orchestrator import machine
from orchestrator.event_names import HistoryEvent
from orchestrator.machine import HistoryEntry, ReplyReceived
from orchestrator.messages import Reply
from orchestrator.ports import SagaQuery, SagaStore, WaitingFor
from orchestrator.registry import Registry
from orchestrator.state import SagaState, SagaStatus, StepStatus
from sagas import order
from tests.contract.samples import NOW, ORDER, first_step_succeeded, started
from tests.contract.stores import InMemory, OnPostgres, StoreSuite


class QueryContract(StoreSuite):
    """`get`, `history`, `find` and `count_by_status` of every SagaStore."""

    async def test_a_sagas_detail_is_its_state_and_history(self, store: SagaStore) -> None:
        """What the detail of one saga shows: its state as last saved, what happened to it."""
        state = started()
        await self.insert(store, state)
        after = first_step_succeeded(state)
        entries = [
            HistoryEntry(HistoryEvent.SAGA_STARTED, detail={"version": 1}),
            HistoryEntry(HistoryEvent.STEP_SUCCEEDED, "reserve_credit", {"attempt": 1}),
        ]
        async with store.transaction() as tx:
            await tx.save_batch([(state, after)], [(state.saga_id, entries, "broker")], [])
        assert await store.get(state.saga_id) == after
        records = await store.history(state.saga_id)
        assert [(r.saga_id, r.seq, r.event, r.step, r.detail, r.actor) for r in records] == [
            (state.saga_id, 1, "saga_started", None, {"version": 1}, "broker"),
            (state.saga_id, 2, "step_succeeded", "reserve_credit", {"attempt": 1}, "broker"),
        ]
        assert await store.get(uuid4()) is None
        assert await store.history(uuid4()) == []

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

        v = order.order_v2.version
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

    async def test_find_waiting_for_a_signal_lists_sagas_waiting_now(
        self, store: SagaStore
    ) -> None:
        """A wait step's row looks like a sleep's (running, no command): the filter names
        the definitions where the step is a wait, as the registry knows them."""
        waiting = at_review("waiting")
        elsewhere = replace(at_review("elsewhere"), version=3)  # no wait in v3
        in_flight = at_review("in-flight")
        in_flight = replace(
            in_flight,
            steps=tuple(
                replace(s, command_id=uuid4()) if s.name == "fraud_review" else s
                for s in in_flight.steps
            ),
        )
        not_yet = started_v4("not-yet")  # fraud_review pending: the reservations run
        await self.insert(store, waiting, elsewhere, in_flight, not_yet, started("v2"))
        registry = Registry([order.saga, order.order_v3, order.order_v2])
        review = registry.waiting_for("fraud_review")
        assert review == WaitingFor("fraud_review", frozenset({("order", 4)}))

        async def keys(**query: Any) -> set[str]:
            return {s.key for s in await store.find(SagaQuery(**query))}

        assert await keys(waiting_for=review) == {"waiting"}
        assert await keys(waiting_for=review, status=SagaStatus.COMPLETED) == set()
        assert await keys(waiting_for=registry.waiting_for("charge_payment")) == set()
        assert await keys(waiting_for=WaitingFor("fraud_review", frozenset())) == set()

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


def started_v4(key: str) -> SagaState:
    """An order saga v4 above the review amount: its reservations dispatched."""
    big = {**ORDER, "amount": "2500.00"}
    return machine.start(order.saga, saga_id=uuid4(), key=key, input=big, now=NOW).state


def at_review(key: str) -> SagaState:
    """An order saga v4 waiting for the signal `fraud_review`: both reservations answered."""
    state = started_v4(key)
    for step in ("reserve_credit", "reserve_stock"):
        sent = state.step(step)
        assert sent is not None and sent.command_id is not None
        reply = Reply(
            command_id=sent.command_id,
            saga_id=state.saga_id,
            step=step,
            outcome="success",
            result={"reservation_id": 1},
        )
        state = machine.decide(order.saga, state, ReplyReceived(reply), NOW).state
    review = state.step("fraud_review")
    assert review is not None and review.status == StepStatus.RUNNING
    return state


class TestMemoryQueries(InMemory, QueryContract):
    pass


class TestPostgresQueries(OnPostgres, QueryContract):
    pass
