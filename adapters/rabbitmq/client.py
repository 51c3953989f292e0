"""What a service (or the CLI) does to start or cancel sagas: publish to the `sagas` exchange."""

from __future__ import annotations

from collections.abc import Sequence

import aio_pika
from pydantic import BaseModel

from adapters.rabbitmq.connection import connect, open_channel
from adapters.rabbitmq.topology import Topology
from adapters.settings import Settings
from orchestrator.messages import Exchange


async def send_requests(settings: Settings, requests: Sequence[tuple[str, BaseModel]]) -> None:
    """Publish (routing key, body) pairs — `start` or `cancel` — and wait for every confirm."""
    topology = Topology(settings.amqp_prefix)
    connection = await connect(settings.amqp_url)
    try:
        channel = await open_channel(connection)
        exchange = await channel.get_exchange(topology.name(Exchange.SAGAS), ensure=False)
        for routing_key, body in requests:
            await exchange.publish(
                aio_pika.Message(
                    body.model_dump_json(exclude_none=True).encode(),
                    content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                routing_key=routing_key,
                mandatory=True,
            )
    finally:
        await connection.close()


async def send_request(settings: Settings, routing_key: str, body: BaseModel) -> None:
    await send_requests(settings, [(routing_key, body)])
