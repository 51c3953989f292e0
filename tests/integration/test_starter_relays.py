"""Two relays on one outbox table while twenty writers place orders and cancel some: every row
is published exactly once (SKIP LOCKED: never by both relays), each order starts one saga,
and a key's cancel never leaves before its start, whether the two were written in one
transaction or in two."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from adapters import starter
from adapters.rabbitmq.topology import Topology
from examples.shop.orders import cancel_order, place_order
from examples.shop.schema import OUTBOX
from tests.integration.harness import System, order_input
from tests.integration.starter_harness import (
    Spy,
    every_key_started,
    order_system,
    outbox_rows,
    sagas_of,
    spy,
)

pytestmark = pytest.mark.timeout(90)

ORDERS = 300
WRITERS = 20


@pytest.fixture
async def system(database_url: str, topology: Topology, amqp_url: str) -> AsyncIterator[System]:
    async with order_system(database_url, topology, amqp_url) as system_:
        yield system_


async def write(system: System, i: int) -> None:
    """Order i; every third is cancelled in the same transaction, every third but one in a
    transaction of its own right after."""
    order_id = f"o-{i:03d}"
    async with system.shop.begin() as conn:
        await place_order(conn, order_input(order_id))
        if i % 3 == 0:
            await cancel_order(conn, order_id, "changed my mind")
    if i % 3 == 1:
        async with system.shop.begin() as conn:
            await cancel_order(conn, order_id, "changed my mind later")


async def test_two_relays_publish_every_row_once_and_each_key_in_order(
    system: System, amqp_url: str
) -> None:
    sent: Spy = await spy(system)
    relays = [
        starter.relaying(
            system.shop,
            amqp_url=amqp_url,
            prefix=system.topology.prefix,
            table=OUTBOX,
            batch=10,  # small batches: the two relays take turns at the table
        )
        for _ in range(2)
    ]
    async with relays[0] as first, relays[1] as second:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(ORDERS):
            queue.put_nowait(i)

        async def writer() -> None:
            while not queue.empty():
                await write(system, queue.get_nowait())

        await asyncio.gather(*(writer() for _ in range(WRITERS)))
        cancels = sum(1 for i in range(ORDERS) if i % 3 != 2)
        messages = await sent.until(ORDERS + cancels)
        assert await outbox_rows(system) == 0

    # Exactly once: no message id twice, none left out.
    assert len(messages) == ORDERS + cancels
    assert Counter(m.message_id for m in messages).most_common(1)[0][1] == 1
    assert Counter(m.routing_key for m in messages) == {"start": ORDERS, "cancel": cancels}
    # Both relays took part, and between them published everything.
    published = [
        r.metrics.value("saga_starter_rows_published_total", kind=kind)
        for r in (first, second)
        for kind in ("start", "cancel")
    ]
    assert sum(published) == ORDERS + cancels
    assert published[0] + published[1] > 0 and published[2] + published[3] > 0
    # Per key: the start left first.
    firsts: dict[str, str] = {}
    for m in messages:
        firsts.setdefault(m.key, m.routing_key)
    assert set(firsts.values()) == {"start"}
    # One saga per order.
    keys = [f"order-o-{i:03d}" for i in range(ORDERS)]
    await every_key_started(system.store, keys)
    assert {k: n for k in keys if (n := await sagas_of(system.store, k)) != 1} == {}
