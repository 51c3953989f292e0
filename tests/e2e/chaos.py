"""A chaos relay between the orchestrator and the participants, on the real broker: every
command and every reply is delivered several times, and replies are reordered.

RabbitMQ delivers a message once per queue it is routed to, so no binding can make one queue
hold three copies of a message: the relay republishes. The orchestrator and the participants
run under two topology prefixes (`upstream`, `downstream`), so they never share a queue and
everything between them goes through the relay:

    upstream commands.<service> ──▶ relay ──▶ downstream saga.commands, N copies (same
                                              routing key, message_id and body; reply_to:
                                              downstream saga.replies)
    downstream saga.replies ──▶ relay buffer ──▶ upstream saga.replies, N copies, each batch
                                                 shuffled

Nothing is lost on the way: an incoming message is acked only once every copy of it was
confirmed by the broker (a failure requeues it, which only adds duplicates). Every command and
reply crossing it is checked against the protocol files (docs/protocol/): `problems`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog
from aio_pika import DeliveryMode, Message
from aio_pika.abc import AbstractRobustConnection

from adapters.rabbitmq.connection import connect, open_channel
from adapters.rabbitmq.consumer import Consumer, consume
from adapters.rabbitmq.delivery import Delivery
from adapters.rabbitmq.publisher import RabbitPublisher
from adapters.rabbitmq.topology import REPLIES_QUEUE, Topology
from orchestrator.messages import Exchange
from tests.fixtures.wire_schemas import delivery_problems

log = structlog.get_logger(__name__)


@dataclass
class RelayCounts:
    commands_in: int = 0
    commands_out: int = 0
    replies_in: int = 0
    replies_out: int = 0
    # Batches that held replies to two commands or more: those were shuffled together.
    mixed_batches: int = 0
    largest_batch: int = 0


@dataclass
class _Pending:
    delivery: Delivery
    # Resolved once every copy is confirmed: only then may the consumer ack the original.
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class ChaosRelay:
    """The relay of the module docstring; `counts` says what it did."""

    def __init__(
        self,
        amqp_url: str,
        upstream: Topology,
        downstream: Topology,
        services: Sequence[str],
        *,
        copies: int = 3,
        batch_window: float = 0.005,
        seed: int | None = None,
    ) -> None:
        self.amqp_url = amqp_url
        self.upstream = upstream
        self.downstream = downstream
        self.services = list(services)
        self.copies = copies
        self.batch_window = batch_window
        self.counts = RelayCounts()
        # How each command and reply crossing the relay breaks docs/protocol/, if it does.
        self.problems: list[str] = []
        self._rng = random.Random(seed)
        self._connection: AbstractRobustConnection | None = None
        self._consumers: list[Consumer] = []
        self._pending: list[_Pending] = []
        self._arrived = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._connection = await connect(self.amqp_url, name="chaos-relay")
        setup = await open_channel(self._connection)
        # Both sides' queues exist before either process starts, so nothing published in
        # between is unroutable, and commands wait in the participants' queues while the
        # participant process is dead.
        for side in (self.upstream, self.downstream):
            await side.declare_core(setup)
            for service in self.services:
                await side.declare_service(setup, service)
        await setup.close()

        commands = await open_channel(self._connection)
        to_participants = RabbitPublisher(commands, self.downstream)

        async def on_command(delivery: Delivery) -> None:
            await self._forward_command(to_participants, delivery)

        for service in self.services:
            self._consumers.append(
                await consume(
                    commands,
                    Topology.command_queue(service),
                    on_command,
                    topology=self.upstream,
                    prefetch=200,
                )
            )
        replies = await open_channel(self._connection)
        self._flusher = asyncio.create_task(
            self._flush_replies(RabbitPublisher(replies, self.upstream)), name="chaos-flusher"
        )
        self._consumers.append(
            await consume(
                replies, REPLIES_QUEUE, self._buffer_reply, topology=self.downstream, prefetch=500
            )
        )
        log.info("chaos_relay_started", upstream=self.upstream.prefix, copies=self.copies)

    async def stop(self) -> None:
        for consumer in self._consumers:
            with contextlib.suppress(Exception):
                await consumer.stop(grace=5.0)
        self._consumers.clear()
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        if self._connection is not None:
            await self._connection.close()
        log.info("chaos_relay_stopped", **vars(self.counts))

    async def _forward_command(self, publisher: RabbitPublisher, delivery: Delivery) -> None:
        self.counts.commands_in += 1
        self.problems += delivery_problems(Exchange.COMMANDS, delivery)
        # Copies share the message_id: duplicates, as a redelivery or a republish makes them.
        # No headers: the broker's x-delivery-count of the upstream queue means nothing below.
        await asyncio.gather(
            *(
                publisher.publish_message(
                    Exchange.COMMANDS,
                    delivery.routing_key,
                    Message(
                        delivery.body,
                        content_type=delivery.content_type,
                        delivery_mode=DeliveryMode.PERSISTENT,
                        message_id=delivery.message_id,
                        correlation_id=delivery.correlation_id,
                        reply_to=self.downstream.name(REPLIES_QUEUE),
                    ),
                )
                for _ in range(self.copies)
            )
        )
        self.counts.commands_out += self.copies

    async def _buffer_reply(self, delivery: Delivery) -> None:
        self.counts.replies_in += 1
        self.problems += delivery_problems(Exchange.DEFAULT, delivery)
        pending = _Pending(delivery)
        self._pending.append(pending)
        self._arrived.set()
        await pending.done  # raises if a copy failed: the consumer then requeues the reply

    async def _flush_replies(self, publisher: RabbitPublisher) -> None:
        queue = self.upstream.name(REPLIES_QUEUE)
        while True:
            await self._arrived.wait()
            # Let replies of other sagas (and other copies) pile up for a moment, so a batch
            # has something to reorder.
            await asyncio.sleep(self.batch_window)
            self._arrived.clear()
            batch, self._pending = self._pending, []
            copies = [p for p in batch for _ in range(self.copies)]
            self._rng.shuffle(copies)
            results = await asyncio.gather(
                *(
                    publisher.publish_to_queue(
                        queue,
                        p.delivery.body,
                        message_id=p.delivery.message_id or "",
                        correlation_id=p.delivery.correlation_id,
                    )
                    for p in copies
                ),
                return_exceptions=True,
            )
            failed = {
                id(p): r for p, r in zip(copies, results, strict=True) if isinstance(r, Exception)
            }
            for p in batch:
                if p.done.done():  # its consumer task was cancelled (the relay is stopping)
                    continue
                if id(p) in failed:
                    p.done.set_exception(failed[id(p)])
                else:
                    p.done.set_result(None)
            self.counts.replies_out += sum(not isinstance(r, Exception) for r in results)
            self.counts.largest_batch = max(self.counts.largest_batch, len(batch))
            if len({p.delivery.correlation_id for p in batch}) > 1:
                self.counts.mixed_batches += 1
