"""The Publisher contract, for the fake and the RabbitMQ adapter: a publish returns once the
broker holds every message; one the broker cannot confirm raises PublishFailed naming each
message of the batch it failed."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace

import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel, AbstractRobustConnection

from adapters.memory.publisher import MemoryPublisher
from adapters.rabbitmq.connection import open_channel
from adapters.rabbitmq.publisher import RabbitPublisher
from adapters.rabbitmq.topology import Topology
from orchestrator.errors import PublishFailed
from orchestrator.messages import REPLY_QUEUE, Exchange, OutboxMessage
from orchestrator.ports import Publisher
from tests.contract.samples import TRACEPARENT
from tests.fixtures.rabbitmq import leftovers

# What the broker holds now, as the messages were published (without their outbox ids).
Delivered = Callable[[], Awaitable[list[OutboxMessage]]]
# From then on, nothing the publisher sends is confirmed.
BrokerDown = Callable[[], Awaitable[None]]


def batch() -> list[OutboxMessage]:
    """One message of each kind the engine sends: a command, a reply, an outcome event."""
    return [
        OutboxMessage(
            exchange=Exchange.COMMANDS,
            routing_key="payments.charge",
            body=b'{"n": 1}',
            message_id="command-1",
            reply_to=REPLY_QUEUE,
            id=1,
            headers={"traceparent": TRACEPARENT},
        ),
        OutboxMessage(
            exchange=Exchange.DEFAULT,
            routing_key=REPLY_QUEUE,
            body=b'{"n": 2}',
            message_id="reply-1",
            id=2,
        ),
        OutboxMessage(
            exchange=Exchange.EVENTS,
            routing_key="order.completed",
            body=b'{"n": 3}',
            message_id="event-1",
            id=3,
        ),
    ]


def by_id(messages: list[OutboxMessage]) -> list[OutboxMessage]:
    return sorted(messages, key=lambda m: m.message_id)


class PublisherContract:
    """Tests written once for every Publisher; a subclass per implementation fills the
    fixtures below."""

    @pytest.fixture
    def publisher(self) -> Publisher:
        """A publisher of this test's own, its broker up."""
        raise NotImplementedError

    @pytest.fixture
    def delivered(self) -> Delivered:
        raise NotImplementedError

    @pytest.fixture
    def broker_down(self) -> BrokerDown:
        raise NotImplementedError

    async def test_a_publish_returns_once_the_broker_holds_every_message(
        self, publisher: Publisher, delivered: Delivered
    ) -> None:
        sent = batch()
        await publisher.publish(sent)
        assert await delivered() == by_id([replace(m, id=None) for m in sent])

    async def test_publishing_nothing_sends_nothing_and_never_fails(
        self, publisher: Publisher, delivered: Delivered, broker_down: BrokerDown
    ) -> None:
        await publisher.publish([])
        await broker_down()
        await publisher.publish([])
        assert await delivered() == []

    async def test_a_publish_the_broker_does_not_confirm_raises_publish_failed(
        self, publisher: Publisher, delivered: Delivered, broker_down: BrokerDown
    ) -> None:
        await broker_down()
        sent = batch()
        with pytest.raises(PublishFailed) as failed:
            await publisher.publish(sent)
        assert sorted(mid for mid, _ in failed.value.failures) == [
            m.message_id for m in by_id(sent)
        ]
        assert all(why for _, why in failed.value.failures)
        assert "3 message(s) not confirmed" in str(failed.value)
        assert await delivered() == []


class TestMemoryPublisher(PublisherContract):
    @pytest.fixture
    def memory(self) -> MemoryPublisher:
        return MemoryPublisher()

    @pytest.fixture
    def publisher(self, memory: MemoryPublisher) -> Publisher:
        return memory

    @pytest.fixture
    def delivered(self, memory: MemoryPublisher) -> Delivered:
        async def held() -> list[OutboxMessage]:
            return by_id([replace(m, id=None) for m in memory.published])

        return held

    @pytest.fixture
    def broker_down(self, memory: MemoryPublisher) -> BrokerDown:
        async def down() -> None:
            memory.down = True

        return down


# A queue of the test's own that every outcome event reaches: nobody else subscribes.
EVENTS_TAP = "contract.events"


class TestRabbitPublisher(PublisherContract):
    """A topology of the test's own (tests/fixtures/rabbitmq.py) with the payments service's
    command queue; the publisher has a confirming channel of its own, closed to take the
    broker away (a closed channel confirms nothing)."""

    @pytest.fixture
    async def declared(self, amqp_channel: AbstractRobustChannel, topology: Topology) -> Topology:
        await topology.declare_core(amqp_channel)
        await topology.declare_service(amqp_channel, "payments")
        events = await topology.declare_queue(amqp_channel, EVENTS_TAP)
        await events.bind(topology.name(Exchange.EVENTS), routing_key="#")
        return topology

    @pytest.fixture
    async def publish_channel(
        self, amqp_connection: AbstractRobustConnection
    ) -> AsyncIterator[AbstractRobustChannel]:
        channel = await open_channel(amqp_connection)
        yield channel
        if not channel.is_closed:
            await channel.close()

    @pytest.fixture
    def publisher(self, publish_channel: AbstractRobustChannel, declared: Topology) -> Publisher:
        return RabbitPublisher(publish_channel, declared)

    @pytest.fixture
    def delivered(self, amqp_channel: AbstractRobustChannel, declared: Topology) -> Delivered:
        async def held() -> list[OutboxMessage]:
            found: list[OutboxMessage] = []
            for queue in (declared.command_queue("payments"), REPLY_QUEUE, EVENTS_TAP):
                taken = await leftovers(amqp_channel, declared.name(queue))
                found += [as_published(m, declared) for m in taken]
            return by_id(found)

        return held

    @pytest.fixture
    def broker_down(self, publish_channel: AbstractRobustChannel) -> BrokerDown:
        async def down() -> None:
            await publish_channel.close()

        return down


def as_published(message: AbstractIncomingMessage, topology: Topology) -> OutboxMessage:
    """The OutboxMessage a delivered message was published from: logical names again."""
    exchange = message.exchange or ""
    routing_key = message.routing_key or ""
    return OutboxMessage(
        exchange=exchange.removeprefix(topology.prefix),
        # Through the default exchange the routing key is a (prefixed) queue name.
        routing_key=routing_key if exchange else routing_key.removeprefix(topology.prefix),
        body=message.body,
        message_id=message.message_id or "",
        reply_to=message.reply_to.removeprefix(topology.prefix) if message.reply_to else None,
        # Less what the broker adds (x-delivery-count: quorum queues count deliveries).
        headers={k: _text(v) for k, v in message.headers.items() if not k.startswith("x-")} or None,
    )


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
