"""The shop's order service: a service that starts sagas.

Placing an order inserts its row and writes the order saga's start in one transaction
(adapters.starter), so there is never an order without its saga, nor a saga for an order
that was rolled back; cancelling one marks it and writes the saga's cancel the same way. The
starts are checked against the order saga's definitions at the call: a wrong input fails
here, in the caller's transaction, not later in the orchestrator.

Whoever places orders runs the relay that publishes them (`starter.relaying`, as `saga demo`
does), or `saga relay --database ... --schema shop` runs beside it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from adapters import starter
from examples.shop.schema import OUTBOX, orders
from sagas.order import order_v1, order_v2, order_v3
from sagas.order import saga as order_v4

DEFINITIONS = (order_v4, order_v3, order_v2, order_v1)


def saga_key(order_id: str) -> str:
    """The order saga's start key: one saga per order, however often it is asked for."""
    return f"order-{order_id}"


async def place_order(conn: AsyncConnection, order: Mapping[str, Any]) -> str:
    """Insert the order (the order saga's input: order_id, customer_id, amount, items) and
    write its saga's start, in `conn`'s transaction; return the saga's key."""
    key = saga_key(str(order["order_id"]))
    await conn.execute(
        sa.insert(orders).values(
            id=order["order_id"],
            customer_id=order["customer_id"],
            amount=order["amount"],
            items=order["items"],
        )
    )
    await starter.start(conn, "order", key=key, input=order, definitions=DEFINITIONS, table=OUTBOX)
    return key


async def cancel_order(conn: AsyncConnection, order_id: str, reason: str) -> None:
    """Mark the order as cancelled by the customer and write its saga's cancel, in `conn`'s
    transaction. The saga decides: before its pivot it is undone, after it the cancel is
    refused (and announced as `order.cancel_refused`)."""
    await conn.execute(
        sa.update(orders).where(orders.c.id == order_id).values(cancel_requested_at=sa.func.now())
    )
    await starter.cancel(conn, key=saga_key(order_id), saga="order", reason=reason, table=OUTBOX)
