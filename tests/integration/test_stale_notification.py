"""The stale-notification problem, end to end on real PostgreSQL and RabbitMQ with the shop.

With chained async tasks, "notify the customer" runs from a task queued before the order was
cancelled and tells the customer about an order that no longer exists. Here every dispatch is
decided from the saga's current state under its row lock, so a cancel accepted before the
pivot means the notification is never sent; and a cancel after the pivot is refused, so the
notification that follows is true.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
import sqlalchemy as sa

from adapters.rabbitmq.topology import Topology
from examples.demo import CUSTOMERS, STOCK
from examples.shop.schema import customers, notifications, payments, stock
from orchestrator.messages import CancelSaga, Exchange
from sagas.order import order_v1 as order_saga  # sequential: these tests follow it step by step
from tests.fixtures.polling import eventually
from tests.integration.harness import System, drain, order_input, running_system
from tests.integration.hosted import events


@pytest.fixture
async def system(database_url: str, topology: Topology, amqp_url: str) -> AsyncIterator[System]:
    async with running_system(database_url, topology, amqp_url, [order_saga]) as sys_:
        yield sys_


async def shop_row_count(system: System, table: sa.Table, order_or_saga: object) -> int:
    column = table.c.order_id if "order_id" in table.c else table.c.saga_id
    async with system.shop.connect() as conn:
        count = await conn.scalar(
            sa.select(sa.func.count()).select_from(table).where(column == order_or_saga)
        )
    return int(count or 0)


async def balances(system: System) -> tuple[Decimal, int]:
    async with system.shop.connect() as conn:
        credit = await conn.scalar(sa.select(customers.c.credit).where(customers.c.id == "cust-ok"))
        qty = await conn.scalar(sa.select(stock.c.qty).where(stock.c.sku == "SKU-BOOK"))
    return Decimal(str(credit)), int(qty or 0)


async def test_stale_notification_cancel_before_the_pivot_sends_no_notification(
    system: System,
) -> None:
    # Every command published for notifications, whoever would consume it.
    notify_commands = await system.spy(Exchange.COMMANDS, "notifications.#")
    await system.start_participants()
    # `slow-` orders stall in inventory.reserve: the step before the pivot is in flight.
    await system.start_order("stale-1", order_input("slow-stale-1", qty=3))
    saga = await system.wait_status("stale-1", "running")

    async def stock_in_flight() -> bool:
        return ("step_dispatched", "reserve_stock") in events(await system.history(saga.saga_id))

    await eventually(stock_in_flight, message="reserve_stock in flight")
    await system.send("cancel", CancelSaga(key="stale-1", reason="customer cancelled"))

    final = await system.wait_status("stale-1", "cancelled")
    history = events(await system.history(final.saga_id))
    # The stock reservation that was in flight succeeded after the cancel, and was undone.
    assert history.index(("saga_cancel_accepted", None)) < history.index(
        ("step_succeeded", "reserve_stock")
    )
    assert [s for e, s in history if e == "step_compensated"] == ["reserve_stock", "reserve_credit"]
    assert ("step_dispatched", "charge_payment") not in history
    assert ("step_dispatched", "notify_customer") not in history
    # Measured where it would have happened: no notification, no charge, all released.
    assert await drain(notify_commands) == []
    assert await shop_row_count(system, notifications, "slow-stale-1") == 0
    assert await shop_row_count(system, payments, final.saga_id) == 0
    assert await balances(system) == (CUSTOMERS["cust-ok"][0], STOCK["SKU-BOOK"])


async def test_stale_notification_twin_cancel_after_the_pivot_is_refused_and_the_notice_is_true(
    system: System,
) -> None:
    events_queue = await system.spy(Exchange.EVENTS, "order.*")
    # No notifications service yet: the saga waits at notify_customer, past its pivot.
    await system.start_participants(["customers", "inventory", "payments"])
    await system.start_order("twin-1", order_input("twin-1", qty=2))
    saga = await system.wait_status("twin-1", "running")

    async def charged() -> bool:
        return ("step_succeeded", "charge_payment") in events(await system.history(saga.saga_id))

    await eventually(charged, message="the payment (pivot) to go through")
    await system.send("cancel", CancelSaga(key="twin-1", reason="customer cancelled too late"))

    async def refused() -> list[dict[str, object]] | None:
        found = [
            h.detail
            for h in await system.history(saga.saga_id)
            if h.event == "cancel_refused" and h.detail
        ]
        return found or None

    [detail] = await eventually(refused, message="the cancel to be refused")
    assert detail["reason"] == "customer cancelled too late"
    assert "pivot" in str(detail["why"])

    await system.start_participants(["notifications"])
    final = await system.wait_status("twin-1", "completed")
    # The notification that follows is true: the order was charged and stays charged.
    assert await shop_row_count(system, notifications, "twin-1") == 1
    assert await shop_row_count(system, payments, final.saga_id) == 1
    assert await balances(system) == (
        CUSTOMERS["cust-ok"][0] - Decimal("25.00"),
        STOCK["SKU-BOOK"] - 2,
    )
    # Outcome events are published right after the commit that decided them: poll for both.
    published: dict[str, dict[str, object]] = {}

    async def both_published() -> bool:
        published.update({str(e["status"]): e for e in await drain(events_queue)})
        return {"cancel_refused", "completed"} <= set(published)

    await eventually(both_published, message="cancel_refused and completed events")
    assert "pivot" in str(published["cancel_refused"]["error"])
