"""Group commit in the consumer against a real broker: waiting messages reach the batch
handler together and are acked after it returned; a batch that fails is handled one by one,
each message settled by its own fate."""

from __future__ import annotations

from collections.abc import Sequence

import aio_pika
import structlog
from aio_pika import Message
from aio_pika.abc import AbstractRobustConnection

from adapters.rabbitmq.connection import open_channel
from adapters.rabbitmq.consumer import DEAD_REASON_HEADER, consume
from adapters.rabbitmq.delivery import Delivery, parse
from adapters.rabbitmq.publisher import RabbitPublisher
from adapters.rabbitmq.topology import DEAD_QUEUE, REQUESTS_QUEUE, Topology
from orchestrator.messages import Exchange, StartSaga
from tests.fixtures.polling import eventually
from tests.fixtures.rabbitmq import leftovers, take

Channel = aio_pika.abc.AbstractRobustChannel


async def _publish(publisher: RabbitPublisher, keys: Sequence[str]) -> None:
    for key in keys:
        await publisher.publish_json(
            Exchange.SAGAS, "start", StartSaga(saga="order", key=key, input={})
        )


async def test_waiting_messages_are_handled_in_batches_and_acked_after(
    amqp_connection: AbstractRobustConnection, amqp_channel: Channel, topology: Topology
) -> None:
    await topology.declare_core(amqp_channel)
    await _publish(RabbitPublisher(amqp_channel, topology), [f"k{n}" for n in range(30)])
    batches: list[list[str]] = []
    singles: list[str] = []

    async def one(delivery: Delivery) -> None:
        singles.append(parse(StartSaga, delivery).key)

    async def many(deliveries: Sequence[Delivery]) -> None:
        batches.append([parse(StartSaga, d).key for d in deliveries])

    channel = await open_channel(amqp_connection)
    consumer = await consume(
        channel, REQUESTS_QUEUE, one, topology=topology, prefetch=50, batch=many, max_batch=8
    )
    await eventually(
        lambda: _true(sum(map(len, batches)) == 30), message="every message in a batch"
    )
    await consumer.stop()
    await channel.close()
    assert singles == []
    assert sorted(k for b in batches for k in b) == sorted(f"k{n}" for n in range(30))
    assert max(map(len, batches)) > 1, batches  # they were waiting together
    assert max(map(len, batches)) <= 8
    # Acked: nothing came back when the consumer's channel closed.
    assert await leftovers(amqp_channel, topology.name(REQUESTS_QUEUE)) == []


async def test_a_failed_batch_is_handled_one_by_one(
    amqp_connection: AbstractRobustConnection, amqp_channel: Channel, topology: Topology
) -> None:
    await topology.declare_core(amqp_channel)
    publisher = RabbitPublisher(amqp_channel, topology)
    await _publish(publisher, ["a", "b"])
    await publisher.publish_message(
        Exchange.SAGAS, "start", Message(b"{not json", content_type="application/json")
    )
    await _publish(publisher, ["c"])
    batches: list[int] = []
    singles: list[str] = []

    async def one(delivery: Delivery) -> None:
        singles.append(parse(StartSaga, delivery).key)

    async def many(deliveries: Sequence[Delivery]) -> None:
        batches.append(len(deliveries))
        for d in deliveries:  # the poison message makes the whole batch raise
            parse(StartSaga, d)

    channel = await open_channel(amqp_connection)
    consumer = await consume(
        channel, REQUESTS_QUEUE, one, topology=topology, prefetch=50, batch=many
    )
    await eventually(lambda: _true(len(singles) == 3), message="the good ones, one by one")
    dead: list[aio_pika.abc.AbstractIncomingMessage] = []

    async def dead_lettered() -> bool:
        dead.extend(await take(amqp_channel, topology.name(DEAD_QUEUE)))
        return bool(dead)

    await eventually(dead_lettered, message="the poison message dead-lettered")
    await consumer.stop()
    await channel.close()
    assert sorted(singles) == ["a", "b", "c"]
    assert sum(batches) >= 4  # the batch handler saw them all first
    assert len(dead) == 1
    assert str((dead[0].headers or {})[DEAD_REASON_HEADER]).startswith("invalid JSON")
    assert await leftovers(amqp_channel, topology.name(REQUESTS_QUEUE)) == []


async def _true(value: bool) -> bool:
    return value


async def test_what_a_batch_binds_for_its_log_lines_ends_with_it(
    amqp_connection: AbstractRobustConnection, amqp_channel: Channel, topology: Topology
) -> None:
    """Batches run in a long-lived task: a saga id bound for one batch's log lines must not
    name the lines of the next."""
    await topology.declare_core(amqp_channel)
    publisher = RabbitPublisher(amqp_channel, topology)
    seen: list[dict[str, object]] = []

    async def one(delivery: Delivery) -> None:
        raise AssertionError("no batch fails here")

    async def many(deliveries: Sequence[Delivery]) -> None:
        seen.append(structlog.contextvars.get_contextvars())
        structlog.contextvars.bind_contextvars(saga_id=parse(StartSaga, deliveries[0]).key)

    await _publish(publisher, ["first", "second"])
    channel = await open_channel(amqp_connection)
    # Both waiting, one per batch, one drain: it takes the second after the first.
    consumer = await consume(
        channel,
        REQUESTS_QUEUE,
        one,
        topology=topology,
        prefetch=2,
        batch=many,
        max_batch=1,
        batch_workers=1,
    )
    await eventually(lambda: _true(len(seen) == 2), message="two batches")
    await consumer.stop()
    await channel.close()
    assert all("saga_id" not in bound for bound in seen), seen
