"""The example shop's fraud desk (examples/shop/fraud_desk.py) with the order saga v4 on real
PostgreSQL and RabbitMQ: an order above 1000 waits for the desk's verdict, sent as the signal
`fraud_review`; approved it is charged, rejected its reservations are released. A verdict
sent before the order's saga exists is refused as `unknown_saga`, and the desk, hearing it,
sends it again until the saga takes it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from adapters.rabbitmq.topology import Topology
from examples.shop import fraud_desk
from examples.shop.orders import saga_key
from examples.shop.schema import fraud_reviews, orders
from examples.shop.verify import check_effects, order_effects
from orchestrator.messages import Exchange
from sagas.order import saga as order_v4
from tests.fixtures.polling import eventually
from tests.integration.harness import System, order_input, running_system

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def system(database_url: str, topology: Topology, amqp_url: str) -> AsyncIterator[System]:
    async with running_system(database_url, topology, amqp_url, [order_v4]) as s:
        await s.start_participants()
        yield s


def large(order_id: str) -> dict[str, Any]:
    return {**order_input(order_id, sku="SKU-LAMP"), "amount": "1500.00"}


async def place(system: System, order: dict[str, Any], *, start: bool = True) -> None:
    """The order service's row, and (unless told not to) the order saga's start."""
    async with system.shop.begin() as conn:
        await conn.execute(
            sa.insert(orders).values(
                id=order["order_id"],
                customer_id=order["customer_id"],
                amount=order["amount"],
                items=order["items"],
            )
        )
    if start:
        await system.start_order(saga_key(order["order_id"]), order)


async def review_row(system: System, order_id: str) -> Any:
    async with system.shop.connect() as conn:
        return (
            await conn.execute(sa.select(fraud_reviews).where(fraud_reviews.c.order_id == order_id))
        ).first()


async def test_the_desk_approves_and_rejects_large_orders_and_leaves_small_ones(
    system: System,
) -> None:
    url, prefix = system.settings.amqp_url, system.topology.prefix
    async with fraud_desk.running(system.shop, amqp_url=url, prefix=prefix, think=0.3):
        for order in (large("big-1"), large("suspect-big-2"), order_input("small-3")):
            await place(system, order)
        states = {
            key: await system.wait_status(key, *status)
            for key, status in (
                ("order-big-1", ("completed",)),
                ("order-suspect-big-2", ("compensated",)),
                ("order-small-3", ("completed",)),
            )
        }
    approved, rejected, small = states.values()
    assert approved.results()["fraud_review"] == {
        "approved": True,
        "reviewer": "desk-ana",
        "note": "",
    }
    assert await order_effects(system.shop, approved.saga_id) == (Decimal("1500.00"), False)
    review = rejected.step("fraud_review")
    assert review is not None and review.result is not None and not review.result["approved"]
    assert rejected.error is not None and rejected.error["step"] == "charge_payment"
    assert "review_approved" in rejected.error["message"]
    assert await order_effects(system.shop, rejected.saga_id) == (None, True)
    skipped = small.step("fraud_review")
    assert skipped is not None and skipped.status == "skipped"
    assert await review_row(system, "small-3") is None, "a small order is not reviewed"
    for order_id in ("big-1", "suspect-big-2"):
        row = await review_row(system, order_id)
        assert row.sent_at is not None and row.refused is None
    assert await check_effects(system.shop, states) == []


async def test_a_verdict_for_a_saga_not_started_yet_is_sent_again(system: System) -> None:
    refused = await system.spy(Exchange.EVENTS, "order.signal_refused")
    url, prefix = system.settings.amqp_url, system.topology.prefix
    async with fraud_desk.running(system.shop, amqp_url=url, prefix=prefix, think=0):
        order = large("early-1")
        await place(system, order, start=False)  # the start is still on its way

        async def heard() -> list[dict[str, Any]] | None:
            found = []
            while (message := await refused.get(no_ack=True, fail=False)) is not None:
                found.append(json.loads(message.body))
            return found or None

        [first, *_] = await eventually(heard, message="the verdict refused: no saga yet")
        assert first["key"] == "order-early-1" and first["error"]["reason"] == "unknown_saga"
        await system.start_order("order-early-1", order)
        state = await system.wait_status("order-early-1", "completed")
    assert state.results()["fraud_review"]["approved"] is True
    row = await review_row(system, "early-1")
    assert row.sent_at is not None and row.refused is None
