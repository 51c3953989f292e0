"""An order and its saga's start written in one transaction while the relay cannot reach the
broker: no saga while it is away, exactly one once it is back; an order rolled back never
gets one. And the same for the relay's database. "The broker" and "the database" are TCP
proxies in front of the shared servers, closed and opened again (tests/chaos/proxy.py), so
the orchestrator, the service's own connections and the other tests keep theirs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa
from sqlalchemy import make_url

from adapters import starter
from adapters.rabbitmq.topology import Topology
from examples.shop.orders import place_order
from examples.shop.schema import OUTBOX, orders
from tests.chaos.proxy import FaultyProxy
from tests.fixtures.polling import eventually
from tests.integration.harness import System, order_input
from tests.integration.starter_harness import (
    Spy,
    none_started_for,
    order_system,
    outbox_rows,
    sagas_of,
    spy,
    with_port,
)

pytestmark = pytest.mark.timeout(60)


class Rollback(Exception):
    """Raised inside a transaction to roll it back."""


@pytest.fixture
async def system(database_url: str, topology: Topology, amqp_url: str) -> AsyncIterator[System]:
    async with order_system(database_url, topology, amqp_url) as system_:
        yield system_


@pytest.fixture
async def broker(amqp_url: str) -> AsyncIterator[FaultyProxy]:
    proxy = FaultyProxy("broker", target_port=urlsplit(amqp_url).port or 5672)
    await proxy.start()
    yield proxy
    await proxy.stop()


async def test_a_start_committed_while_the_broker_is_away_starts_one_saga_once_it_is_back(
    system: System, broker: FaultyProxy, amqp_url: str
) -> None:
    sent: Spy = await spy(system)
    await broker.stop()  # closed: connections to it are refused, like a stopped broker
    async with starter.relaying(
        system.shop,
        amqp_url=with_port(amqp_url, broker.listen_port),
        prefix=system.topology.prefix,
        table=OUTBOX,
        max_backoff=0.5,
    ) as relay:
        async with system.shop.begin() as conn:
            committed = await place_order(conn, order_input("o-1"))
        with pytest.raises(Rollback):
            async with system.shop.begin() as conn:
                rolled_back = await place_order(conn, order_input("o-2"))
                raise Rollback

        async def tried_and_failed() -> bool:
            # The gauges are read from the table at most once a second.
            return (
                relay.metrics.value("saga_starter_publish_failures_total") >= 2
                and relay.metrics.value("saga_starter_rows_waiting") == 1
            )

        await eventually(tried_and_failed, message="the relay to try the broker and fail")
        assert await sagas_of(system.store, committed) == 0
        assert await outbox_rows(system) == 1
        assert relay.metrics.value("saga_starter_oldest_row_age_seconds") > 0

        await broker.start()  # the same port again
        await system.wait_status(committed, "running")
        assert await outbox_rows(system) == 0
        assert relay.metrics.value("saga_starter_rows_published_total", kind="start") == 1

    # The relay has drained everything: the rolled-back start never went anywhere.
    assert [(m.routing_key, m.key) for m in await sent.take()] == [("start", committed)]
    await none_started_for(system.store, [rolled_back], seconds=1.0)
    assert await sagas_of(system.store, committed) == 1
    async with system.shop.connect() as conn:
        placed = (await conn.execute(sa.select(orders.c.id))).scalars().all()
    assert placed == ["o-1"]


async def test_the_relay_reconnects_to_its_database_and_relays_what_was_written_meanwhile(
    system: System, database_url: str, amqp_url: str
) -> None:
    port = make_url(database_url).port or 5432
    database = FaultyProxy("database", target_port=port)
    await database.start()
    through_proxy = make_url(database_url).set(port=database.listen_port)
    try:
        async with starter.relaying(
            through_proxy.render_as_string(hide_password=False),
            amqp_url=amqp_url,
            prefix=system.topology.prefix,
            table=OUTBOX,
            max_backoff=0.5,
        ) as relay:
            async with system.shop.begin() as conn:
                first = await place_order(conn, order_input("o-1"))
            await system.wait_status(first, "running")

            await database.stop()  # both of its connections cut, new ones refused
            async with system.shop.begin() as conn:  # the service's own connection is fine
                second = await place_order(conn, order_input("o-2"))

            async def failing() -> bool:
                return relay.metrics.value("saga_starter_database_failures_total") >= 2

            await eventually(failing, message="the relay to fail on its database")
            assert await sagas_of(system.store, second) == 0

            await database.start()
            await system.wait_status(second, "running")
            # Its LISTEN is back too, on a connection of its own.
            async with system.shop.connect() as conn:
                listening = await conn.scalar(
                    sa.text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND application_name = 'saga-starter-relay' AND query LIKE 'LISTEN %'"
                    )
                )
            assert listening == 1
    finally:
        await database.stop()
