"""A real orchestrator and a real participant worker, in-process, on a database and a broker
namespace of the test's own, plus the queues the fuzz test reads what became of its
messages from: the dead queue, and a spy queue where the participant answers commands."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import pytest
import structlog
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
)
from pydantic import BaseModel, ConfigDict
from structlog.typing import EventDict

from adapters.clock import utcnow
from adapters.participant.core import Participant
from adapters.participant.worker import ParticipantWorker
from adapters.postgres.database import make_engine
from adapters.postgres.store import PostgresStore
from adapters.rabbitmq.connection import open_channel
from adapters.rabbitmq.topology import DEAD_QUEUE, REPLIES_QUEUE, REQUESTS_QUEUE, Topology
from adapters.runtime import Orchestrator
from adapters.settings import Settings
from orchestrator import Saga
from orchestrator.messages import Command, Exchange, Reply
from orchestrator.registry import Registry
from tests.fixtures.settings import fast_settings
from tests.fuzz.probes import SAGA, SERVICE, Probe

# Small enough that an oversized probe costs the broker little, large enough for any
# valid message the strategies make.
MAX_MESSAGE_BYTES = 64 * 1024


class Ticket(BaseModel):
    model_config = ConfigDict(extra="allow")  # fuzzed inputs carry fields of their own

    ticket_id: str


fuzz_ticket = Saga(SAGA, version=1, input=Ticket, timeout=30)
fuzz_ticket.remote("file", command=f"{SERVICE}.file", compensation=f"{SERVICE}.unfile")
fuzz_ticket.remote("stamp", command=f"{SERVICE}.stamp", pivot=True)
STEPS = ("file", "stamp")


def desk() -> Participant:
    participant = Participant(SERVICE)

    @participant.handler(f"{SERVICE}.file")
    async def file(cmd: Command) -> dict[str, Any]:
        return {"filed": cmd.payload.get("ticket_id")}

    @participant.handler(f"{SERVICE}.unfile")
    async def unfile(cmd: Command) -> None:
        return None

    @participant.handler(f"{SERVICE}.stamp")
    async def stamp(cmd: Command) -> dict[str, Any]:
        return {"stamped": True}

    @participant.handler(f"{SERVICE}.echo")
    async def echo(cmd: Command) -> dict[str, Any]:
        return {"step": cmd.step, "attempt": cmd.attempt}

    return participant


@dataclass
class FuzzSystem:
    settings: Settings
    topology: Topology
    orchestrator: Orchestrator
    worker: ParticipantWorker
    store: PostgresStore
    channel: AbstractRobustChannel
    spy: AbstractQueue
    logs: list[EventDict]
    # By message id: what reached the dead queue; by correlation id: the participant's
    # final answers at the spy queue.
    dead: dict[str, AbstractIncomingMessage] = field(default_factory=dict)
    answers: dict[str, Reply] = field(default_factory=dict)

    async def publish(self, probe: Probe, message_id: str) -> None:
        """The probe as it is, bytes and properties, to where its kind of message goes."""
        if probe.queue == "requests":
            if probe.routing_key:
                exchange = await self._exchange(Exchange.SAGAS)
                routing_key = probe.routing_key
            else:  # straight into the queue, with a routing key it does not expect
                exchange, routing_key = self.channel.default_exchange, self._name(REQUESTS_QUEUE)
        elif probe.queue == "replies":
            exchange, routing_key = self.channel.default_exchange, self._name(REPLIES_QUEUE)
        else:
            exchange, routing_key = await self._exchange(Exchange.COMMANDS), probe.routing_key
        await exchange.publish(
            aio_pika.Message(
                probe.body,
                content_type=probe.content_type,
                message_id=message_id,
                reply_to=probe.reply_to,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=routing_key,
            mandatory=True,
        )

    async def start(self, key: str) -> None:
        body = {"saga": SAGA, "key": key, "input": {"ticket_id": key}}
        exchange = await self._exchange(Exchange.SAGAS)
        await exchange.publish(
            aio_pika.Message(
                json.dumps(body).encode(),
                content_type="application/json",
                message_id=key,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key="start",
            mandatory=True,
        )

    def _name(self, logical: str) -> str:
        return self.topology.name(logical)

    async def _exchange(self, logical: str) -> aio_pika.abc.AbstractExchange:
        return await self.channel.get_exchange(self._name(logical), ensure=False)


@pytest.fixture
def captured_logs() -> Iterator[list[EventDict]]:
    with structlog.testing.capture_logs() as logs:
        yield logs


@pytest.fixture
async def fuzz_system(
    database_url: str,
    topology: Topology,
    amqp_url: str,
    amqp_connection: AbstractRobustConnection,
    captured_logs: list[EventDict],
) -> AsyncIterator[FuzzSystem]:
    settings = fast_settings(
        database_url,
        amqp_url,
        topology.prefix,
        prefetch=50,
        max_message_bytes=MAX_MESSAGE_BYTES,
    )
    orchestrator = Orchestrator(settings, registry=Registry([fuzz_ticket]))
    await orchestrator.start()
    worker_channel = await open_channel(amqp_connection)
    worker = ParticipantWorker(
        desk(),
        worker_channel,
        topology,
        clock=utcnow,
        prefetch=50,
        max_message_bytes=MAX_MESSAGE_BYTES,
    )
    await worker.start()
    channel = await open_channel(amqp_connection)
    spy = await channel.declare_queue(
        f"{topology.prefix}spy-{uuid.uuid4().hex[:6]}", exclusive=True
    )
    db = make_engine(database_url, pool_size=2)
    system = FuzzSystem(
        settings, topology, orchestrator, worker, PostgresStore(db), channel, spy, captured_logs
    )

    async def on_dead(message: AbstractIncomingMessage) -> None:
        system.dead[message.message_id or f"no-id-{uuid.uuid4().hex}"] = message

    async def on_answer(message: AbstractIncomingMessage) -> None:
        reply = Reply.model_validate_json(message.body)
        if reply.outcome != "heartbeat":
            system.answers[message.correlation_id or ""] = reply

    dead = await channel.get_queue(topology.name(DEAD_QUEUE), ensure=False)
    await dead.consume(on_dead, no_ack=True)
    await spy.consume(on_answer, no_ack=True)
    try:
        yield system
    finally:
        await worker.stop()
        await system.orchestrator.stop()
        await worker_channel.close()
        await channel.close()
        await db.dispose()
