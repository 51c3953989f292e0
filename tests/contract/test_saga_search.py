"""Search fields in every SagaStore: the values `save_batch` writes (a start's from the input, a
completion's from the output) and the `where` conditions of `find` that match them, for each
kind and operator, with the other filters and pages."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import uuid4

import pytest

from orchestrator import machine
from orchestrator.errors import SagaNotFound
from orchestrator.ports import SagaQuery, SagaStore
from orchestrator.registry import Registry
from orchestrator.search_fields import SearchKind, SearchValue
from orchestrator.search_filters import conditions
from orchestrator.state import SagaState, SagaStatus
from sagas import order
from tests.contract.samples import NOW, ORDER
from tests.contract.stores import InMemory, OnPostgres, StoreSuite

REGISTRY = Registry([order.saga, order.order_v3])
# (key, customer, amount): three customers, amounts around the review threshold.
ORDERS = [
    ("o-1", "c-17", "25.00"),
    ("o-2", "c-17", "1000.00"),
    ("o-3", "c-17", "1000.01"),
    ("o-4", "c-18", "2500.00"),
    ("o-5", "C-17", "999.99"),
    ("o-6", "c-170", "12.50"),
]


def placed(key: str, customer: str, amount: str, *, at: datetime = NOW) -> machine.Decision:
    """An order saga v4 started with that customer and amount."""
    input = {**ORDER, "order_id": key, "customer_id": customer, "amount": amount}
    return machine.start(order.saga, saga_id=uuid4(), key=key, input=input, now=at)


class SearchContract(StoreSuite):
    async def start(self, store: SagaStore, *decisions: machine.Decision) -> list[SagaState]:
        """Insert the sagas and write their start's search values, as the engine does."""
        async with store.transaction() as tx:
            for d in decisions:
                assert await tx.insert(d.state)
            await tx.save_batch(
                [], [], [], [(d.state.saga_id, v) for d in decisions for v in d.search]
            )
        return [d.state for d in decisions]

    async def keys(self, store: SagaStore, *where: str, **query: Any) -> list[str]:
        conditions = REGISTRY.search_filter(where, query.get("saga"))
        found = await store.find(SagaQuery(where=conditions, **query))
        return sorted(s.key for s in found)

    async def test_filters_return_exactly_the_matching_sagas(self, store: SagaStore) -> None:
        await self.start(
            store,
            *(placed(k, c, a, at=NOW + timedelta(seconds=n)) for n, (k, c, a) in enumerate(ORDERS)),
        )
        assert await self.keys(store, "customer_id=c-17") == ["o-1", "o-2", "o-3"]
        assert await self.keys(store, "customer_id!=c-17") == ["o-4", "o-5", "o-6"]
        # Text compares by code point: "C-17" < "c-17" < "c-170" < "c-18".
        assert await self.keys(store, "customer_id>c-17") == ["o-4", "o-6"]
        assert await self.keys(store, "customer_id>=c-17") == ["o-1", "o-2", "o-3", "o-4", "o-6"]
        assert await self.keys(store, "customer_id<c-17") == ["o-5"]
        assert await self.keys(store, "customer_id<=c-17") == ["o-1", "o-2", "o-3", "o-5"]
        # Numbers compare as numbers, whatever their digits: 1000 = 1000.00 < 1000.01.
        assert await self.keys(store, "amount=1000") == ["o-2"]
        assert await self.keys(store, "amount>1000") == ["o-3", "o-4"]
        assert await self.keys(store, "amount>=1000") == ["o-2", "o-3", "o-4"]
        assert await self.keys(store, "amount<999.99") == ["o-1", "o-6"]
        assert await self.keys(store, "amount<=999.99") == ["o-1", "o-5", "o-6"]
        assert await self.keys(store, "amount!=25") == ["o-2", "o-3", "o-4", "o-5", "o-6"]
        # Every condition must hold, and the other filters too.
        assert await self.keys(store, "customer_id=c-17", "amount>1000") == ["o-3"]
        assert await self.keys(store, "amount>=1000", "amount<2000") == ["o-2", "o-3"]
        assert await self.keys(store, "customer_id=c-17", key="o-2") == ["o-2"]
        assert await self.keys(store, "customer_id=c-17", saga="order", version=3) == []
        assert await self.keys(store, "customer_id=c-17", status=SagaStatus.COMPLETED) == []
        assert await self.keys(store, "customer_id=nobody") == []
        # Newest activity first, and pages, as without conditions.
        where = REGISTRY.search_filter(["customer_id=c-17"])
        first = await store.find(SagaQuery(where=where, limit=2))
        assert [s.key for s in first] == ["o-3", "o-2"]
        last = first[-1]
        rest = await store.find(SagaQuery(where=where, after=(last.updated_at, last.saga_id)))
        assert [s.key for s in rest] == ["o-1"]

    async def test_a_saga_without_a_value_matches_no_condition(self, store: SagaStore) -> None:
        """Not even `!=`: a saga of a version without the field (v3 here) has none."""
        v3 = machine.start(order.order_v3, saga_id=uuid4(), key="v3", input=ORDER, now=NOW)
        await self.start(store, v3, placed("v4", "c-1", "12.50"))
        assert v3.search == ()
        assert await self.keys(store, "customer_id!=c-17") == ["v4"]
        assert await self.keys(store, "customer_id=c-1") == ["v4"]
        assert await self.keys(store, "charge_id>0") == []  # no output yet

    async def test_completion_adds_the_outputs_values(self, store: SagaStore) -> None:
        (state,) = await self.start(store, placed("o-1", "c-17", "25.00"))
        done = replace(
            state,
            status=SagaStatus.COMPLETED,
            output={"order_id": "o-1", "charge_id": 4711, "charged": "25.00"},
            revision=state.revision + 1,
            updated_at=NOW + timedelta(minutes=1),
        )
        values = order.saga.search_values("output", done.output)
        assert values == [SearchValue("charge_id", SearchKind.NUMBER, Decimal(4711))]
        async with store.transaction() as tx:
            await tx.save_batch([(state, done)], [], [], [(state.saga_id, v) for v in values])
        assert await self.keys(store, "charge_id=4711") == ["o-1"]
        assert await self.keys(store, "charge_id=4711", "customer_id=c-17") == ["o-1"]
        assert await self.keys(store, "charge_id=4711", status=SagaStatus.COMPLETED) == ["o-1"]

    async def test_a_value_written_again_replaces_the_earlier_one(self, store: SagaStore) -> None:
        (state,) = await self.start(store, placed("o-1", "c-17", "25.00"))
        again = SearchValue("customer_id", SearchKind.TEXT, "c-99")
        async with store.transaction() as tx:
            await tx.save_batch([], [], [], [(state.saga_id, again)])
        assert await self.keys(store, "customer_id=c-17") == []
        assert await self.keys(store, "customer_id=c-99") == ["o-1"]
        assert await self.keys(store, "amount=25") == ["o-1"]

    async def test_every_kind_of_value_round_trips(self, store: SagaStore) -> None:
        """Bool and time values, which the order saga has none of, stored and compared."""
        (state,) = await self.start(store, placed("o-1", "c-17", "25.00"))
        at = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
        written = [
            SearchValue("vip", SearchKind.BOOL, True),
            SearchValue("placed_at", SearchKind.TIME, at),
            SearchValue("note", SearchKind.TEXT, "Ä " + "x" * 198),
        ]
        async with store.transaction() as tx:
            await tx.save_batch([], [], [], [(state.saga_id, v) for v in written])
        fields = {
            "vip": {SearchKind.BOOL: ["t v1"]},
            "placed_at": {SearchKind.TIME: ["t v1"]},
            "note": {SearchKind.TEXT: ["t v1"]},
        }

        async def found(*texts: str) -> bool:
            return bool(await store.find(SagaQuery(where=conditions(texts, fields))))

        assert await found("vip=true")
        assert not await found("vip=false")
        assert await found("vip!=false")
        assert await found("placed_at=2026-12-01T10:00:00+01:00")  # the same moment
        assert await found("placed_at>2026-12-01T08:59:59", "placed_at<2026-12-01T09:00:01")
        assert not await found("placed_at>2026-12-01T09:00:00Z")
        assert await found("note=Ä " + "x" * 198)
        assert await found("note>Ä")

    async def test_values_of_a_saga_that_does_not_exist_are_refused(self, store: SagaStore) -> None:
        value = SearchValue("customer_id", SearchKind.TEXT, "c-17")
        with pytest.raises(SagaNotFound):
            async with store.transaction() as tx:
                await tx.save_batch([], [], [], [(uuid4(), value)])


class TestMemorySearch(InMemory, SearchContract):
    pass


class TestPostgresSearch(OnPostgres, SearchContract):
    pass
