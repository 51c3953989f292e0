"""An operator command that acts on a saga (`saga start`, `cancel`, `retry`, ...) runs an
engine of its own for that one action: what it publishes must not stay in the outbox, or
the relay of every `saga run` would send it a second time."""

from __future__ import annotations

from aio_pika.abc import AbstractRobustChannel
from sqlalchemy import text

from adapters.cli import support as cli_support
from adapters.postgres.database import make_engine
from adapters.rabbitmq.topology import Topology
from adapters.settings import Settings
from orchestrator.messages import StartSaga
from tests.fixtures.rabbitmq import take

ORDER = {
    "order_id": "o-cli",
    "customer_id": "c-1",
    "amount": "10.50",
    "items": [{"sku": "SKU-BOOK", "qty": 1}],
}


async def test_what_a_cli_action_published_leaves_no_outbox_row(
    database_url: str, amqp_url: str, topology: Topology, amqp_channel: AbstractRobustChannel
) -> None:
    await topology.declare_core(amqp_channel)
    for service in ("customers", "inventory"):  # the order saga's first stage
        await topology.declare_service(amqp_channel, service)
    config = Settings(database_url=database_url, amqp_url=amqp_url, amqp_prefix=topology.prefix)

    outcome = await cli_support.with_engine(
        config, lambda engine: engine.start(StartSaga(saga="order", key="cli-1", input=ORDER))
    )

    assert outcome.created
    [command] = await take(amqp_channel, topology.name("commands.customers"))
    assert command.routing_key == "customers.reserve_credit"
    db = make_engine(database_url, pool_size=1)
    try:
        async with db.connect() as conn:
            assert await conn.scalar(text("SELECT count(*) FROM outbox")) == 0
    finally:
        await db.dispose()
