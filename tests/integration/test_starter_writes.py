"""Starts written into the starter outbox every way a service may write them, relayed to a
running orchestrator on the real PostgreSQL and RabbitMQ: the plain SQL docs/starter.md
documents for services in other languages, a plain psycopg connection (which must be in a
transaction), and a start the engine refuses, which the service hears of as
`<saga>.rejected`."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from adapters import starter
from adapters.rabbitmq.topology import Topology
from adapters.starter.relay import conninfo
from orchestrator.messages import Exchange
from tests.fixtures.polling import eventually
from tests.integration.harness import System, drain
from tests.integration.starter_harness import (
    Spy,
    order_system,
    outbox_rows,
    sagas_of,
    spy,
)

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
ORDER = {
    "order_id": "7",
    "customer_id": "cust-ok",
    "amount": "25.00",
    "items": [{"sku": "SKU-BOOK", "qty": 1}],
}


@pytest.fixture
async def system(database_url: str, topology: Topology, amqp_url: str) -> AsyncIterator[System]:
    async with order_system(database_url, topology, amqp_url) as system_:
        async with system_.shop.begin() as conn:
            await starter.install(conn)  # the default table, beside the shop's own
        yield system_


@pytest.fixture
async def sent(system: System) -> Spy:
    return await spy(system)


@pytest.fixture
async def relay(system: System) -> AsyncIterator[starter.Relay]:
    async with starter.relaying(
        system.shop, amqp_url=system.settings.amqp_url, prefix=system.topology.prefix
    ) as relay_:
        yield relay_


def documented_start() -> str:
    page = (ROOT / "docs" / "starter.md").read_text()
    blocks: list[str] = re.findall(r"```sql\n(.*?)```", page, flags=re.S)
    return next(b for b in blocks if b.startswith("-- a start, as a service in any language"))


async def test_a_start_written_with_the_documented_plain_sql_is_relayed(
    system: System, sent: Spy, relay: starter.Relay
) -> None:
    async with await psycopg.AsyncConnection.connect(conninfo(system.settings.database_url)) as db:
        await db.execute(documented_start())  # committed on leaving the block

    state = await system.wait_status("order-42", "running")
    assert state.name == "order" and state.input["order_id"] == "42"
    [message] = await sent.until(1)
    # The table's default gave the row a message id, which the message carries.
    assert message.routing_key == "start" and re.fullmatch(r"[0-9a-f-]{36}", message.message_id)
    assert relay.metrics.value("saga_starter_rows_published_total", kind="start") == 1


async def test_on_a_psycopg_connection_the_start_commits_or_rolls_back_with_the_callers_writes(
    system: System, sent: Spy, relay: starter.Relay
) -> None:
    url = conninfo(system.settings.database_url)
    async with await psycopg.AsyncConnection.connect(url) as db:
        await db.execute("CREATE TABLE invoices (id text PRIMARY KEY)")
        await db.commit()
        # Rolled back: the invoice and the start go together.
        await db.execute("INSERT INTO invoices VALUES ('inv-1')")
        await starter.start(db, "order", key="order-rolled-back", input=ORDER)
        await db.rollback()
        await db.execute("INSERT INTO invoices VALUES ('inv-2')")
        message_id = await starter.start(db, "order", key="order-7", input=ORDER)
        await db.commit()

    await system.wait_status("order-7", "running")
    assert [(m.key, m.message_id) for m in await sent.until(1)] == [("order-7", message_id)]
    assert await sagas_of(system.store, "order-rolled-back") == 0


async def test_an_autocommit_connection_outside_a_transaction_is_refused(system: System) -> None:
    url = conninfo(system.settings.database_url)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as db:
        with pytest.raises(RuntimeError, match=r"autocommit .*conn.transaction\(\)"):
            await starter.start(db, "order", key="order-7", input=ORDER)
        async with db.transaction():  # in a transaction block it is the caller's again
            await starter.cancel(db, key="order-7", reason="changed my mind")
    assert await outbox_rows(system, starter.OUTBOX) == 1


async def test_a_start_the_engine_refuses_is_announced_to_the_service_as_rejected(
    system: System, relay: starter.Relay
) -> None:
    rejected = await system.spy(Exchange.EVENTS, "*.rejected")
    async with system.shop.begin() as conn:  # no definitions given: the engine judges
        await starter.start(conn, "refund", key="refund-1", input={"order_id": "7"})
        await starter.start(conn, "order", key="order-8", input={"order_id": "8"})

    found: list[dict[str, Any]] = []

    async def events() -> list[dict[str, Any]] | None:
        found.extend(await drain(rejected))
        return found if len(found) >= 2 else None

    by_key = {e["key"]: e for e in await eventually(events, message="two rejections")}
    assert by_key["refund-1"]["saga"] == "refund"
    assert by_key["refund-1"]["error"]["type"] == "unknown_saga"
    assert by_key["order-8"]["error"]["type"] == "invalid_input"
