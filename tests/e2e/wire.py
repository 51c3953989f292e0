"""Test doubles on the real broker for tests/e2e/test_many_orchestrators.py: a spy that counts
every copy of every command the orchestrators publish, and the courier participant of the
`order_express` saga (tests/e2e/express_order.py), which never answers a first attempt."""

from __future__ import annotations

import uuid
from collections import Counter

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel

from adapters.rabbitmq.consumer import Consumer, consume
from adapters.rabbitmq.delivery import Delivery, parse
from adapters.rabbitmq.publisher import RabbitPublisher
from adapters.rabbitmq.topology import Topology
from orchestrator.messages import Command, Exchange, Reply
from tests.fixtures.polling import eventually

COURIERS = "couriers"


class CommandSpy:
    """A queue of its own bound to the commands exchange with `#`: it gets one copy of each
    command publish, so a command the orchestrators published twice is counted twice here.
    At-least-once publishing does that: the relay republishes an outbox row whose publisher
    died after publishing it and before deleting it, or was slower than SAGA_RELAY_AGE to
    do both. A participant gets the same copies: each publish is routed once to the spy and
    once to the service's queue."""

    MARKER_KEY = "spy.marker"

    def __init__(self, channel: AbstractRobustChannel, topology: Topology) -> None:
        self.channel = channel
        self.topology = topology
        self.copies: Counter[str] = Counter()
        self._markers: set[str] = set()

    async def start(self) -> None:
        await self.topology.declare_exchange(self.channel, Exchange.COMMANDS)
        # Classic and exclusive: it dies with the test's connection.
        queue = await self.channel.declare_queue(
            self.topology.name("spy.commands"), exclusive=True, auto_delete=True
        )
        await queue.bind(self.topology.name(Exchange.COMMANDS), routing_key="#")
        await queue.consume(self._on_message, no_ack=True)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        if message.routing_key == self.MARKER_KEY:
            self._markers.add(message.message_id or "")
        else:
            self.copies[message.message_id or "?"] += 1

    async def drain(self, timeout: float = 20.0) -> None:
        """Return once every command published so far has been counted: a marker published
        now comes out of the queue behind them."""
        marker = uuid.uuid4().hex
        exchange = await self.channel.get_exchange(
            self.topology.name(Exchange.COMMANDS), ensure=False
        )
        await exchange.publish(
            aio_pika.Message(b"", message_id=marker), routing_key=self.MARKER_KEY
        )

        async def came_back() -> bool:
            return marker in self._markers

        await eventually(came_back, timeout=timeout, message="the spy's marker came back")

    def duplicated(self) -> dict[str, int]:
        """command_id -> copies, for the commands published more than once."""
        return {cid: n for cid, n in self.copies.items() if n > 1}


class Courier:
    """The `couriers` participant. A first attempt of `couriers.book` is taken and dropped,
    as if the courier's system lost it: the step times out, and its retry is answered. Every
    other command is answered at once with a success. No effects, so no barrier: the shop's
    participants are where exactly-once effects are checked."""

    def __init__(self, channel: AbstractRobustChannel, topology: Topology) -> None:
        self.channel = channel
        self.topology = topology
        self.publisher = RabbitPublisher(channel, topology)
        self.dropped = 0
        self._consumer: Consumer | None = None

    async def start(self) -> None:
        await self.topology.declare_core(self.channel)
        await self.topology.declare_service(self.channel, COURIERS)
        self._consumer = await consume(
            self.channel,
            Topology.command_queue(COURIERS),
            self._handle,
            topology=self.topology,
            prefetch=100,
        )

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop(grace=5.0)

    async def _handle(self, delivery: Delivery) -> None:
        command = parse(Command, delivery, fields={"command": delivery.routing_key})
        if command.kind == "action" and command.attempt == 1:
            self.dropped += 1
            return
        reply = Reply(
            command_id=command.command_id,
            saga_id=command.saga_id,
            step=command.step,
            outcome="success",
            result={"courier": "booked" if command.kind == "action" else "released"},
        )
        assert delivery.reply_to, "commands carry reply_to"
        await self.publisher.publish_to_queue(
            delivery.reply_to,
            reply.model_dump_json().encode(),
            message_id=uuid.uuid4().hex,
            correlation_id=str(command.command_id),
        )
