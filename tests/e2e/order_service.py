"""An order service process for the starter's crash test: `python -m tests.e2e.order_service`.

It runs the starter's relay as a background task and places orders through the example
shop's order service (the order row and its saga's start in one transaction), one after the
other; every tenth order's transaction is rolled back after both writes. Orders a previous
life of the process committed are skipped, so a restarted process carries on where its
predecessor died. Once every order is placed and the outbox is empty it exits 0.

Environment: SHOP_DATABASE_URL, ORDERS (how many), the usual SAGA_AMQP_URL and
SAGA_AMQP_PREFIX, and SAGA_FAULT (a crash point of the relay, adapters/faults.py).
"""

from __future__ import annotations

import os

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters import eventloop, starter
from adapters.logging import configure_logging
from adapters.postgres.database import make_engine
from adapters.settings import Settings
from examples.shop.orders import place_order
from examples.shop.schema import OUTBOX, orders
from tests.fixtures.polling import eventually


class Rollback(Exception):
    """Raised inside a transaction to roll it back."""


def order_id(i: int) -> str:
    return f"c-{i:03d}"


def rolled_back(i: int) -> bool:
    return i % 10 == 7


async def main() -> None:
    settings = Settings()
    configure_logging(settings.log_format, settings.log_level)
    engine = make_engine(os.environ["SHOP_DATABASE_URL"], pool_size=2)
    count = int(os.environ["ORDERS"])
    try:
        async with starter.relaying(
            engine, amqp_url=settings.amqp_url, prefix=settings.amqp_prefix, table=OUTBOX
        ):
            async with engine.connect() as conn:
                placed = set((await conn.execute(sa.select(orders.c.id))).scalars())
            for i in range(count):
                if order_id(i) in placed:
                    continue
                try:
                    async with engine.begin() as conn:
                        await place_order(conn, _order(i))
                        if rolled_back(i):
                            raise Rollback
                except Rollback:
                    pass
            await eventually(lambda: _drained(engine), timeout=60, message="the outbox drained")
    finally:
        await engine.dispose()


def _order(i: int) -> dict[str, object]:
    return {
        "order_id": order_id(i),
        "customer_id": "cust-ok",
        "amount": f"{10 + i % 90}.50",
        "items": [{"sku": "SKU-BOOK", "qty": 1}],
    }


async def _drained(engine: AsyncEngine) -> bool:
    async with engine.connect() as conn:
        return not await conn.scalar(sa.text(f"SELECT count(*) FROM {OUTBOX.qualified}"))


if __name__ == "__main__":
    eventloop.run(main())
