"""W3C trace context end to end on real services: a start message's `traceparent` header is
kept with the saga and carried by every command (a child saga's too), outcome event and
reply; the participant logs under its trace id."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from aio_pika import DeliveryMode, Message
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractRobustChannel,
    AbstractRobustConnection,
    HeadersType,
)
from pydantic import BaseModel
from structlog.testing import capture_logs
from structlog.typing import EventDict

from adapters.participant import Participant
from adapters.participant.worker import ParticipantWorker
from adapters.rabbitmq.connection import open_channel
from adapters.rabbitmq.consumer import consume
from adapters.rabbitmq.delivery import Delivery
from adapters.rabbitmq.publisher import RabbitPublisher
from adapters.rabbitmq.topology import REPLIES_QUEUE, Topology
from orchestrator import Retry, Saga
from orchestrator.errors import Poison
from orchestrator.messages import REPLY_QUEUE, Command, Exchange, OutboxMessage, StartSaga
from orchestrator.ports import SagaQuery
from orchestrator.state import SagaStatus
from tests.fixtures.polling import eventually
from tests.fixtures.rabbitmq import take
from tests.integration.harness import System, drain, running_system
from tests.integration.hosted import host

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"
TRACESTATE = "rojo=00f067aa0ba902b7"


class Box(BaseModel):
    ref: str


ONCE = Retry(max_attempts=1)
leg = Saga("traced_leg", version=1, input=Box, timeout=10)
leg.remote("drive", command="vans.drive", retry=ONCE, compensation=None)
trip = Saga("traced_trip", version=1, input=Box, timeout=10)
trip.remote("load", command="depot.load", retry=ONCE, compensation=None)
trip.child("ride", saga="traced_leg")


def recording(service: str, command: str, seen: list[tuple[str, str | None]]) -> Participant:
    """A participant that notes each command's step and the trace id its log lines carry."""
    participant = Participant(service)

    @participant.handler(command)
    async def handle(cmd: Command) -> dict[str, Any]:
        seen.append((cmd.step, structlog.contextvars.get_contextvars().get("trace_id")))
        return {"done": cmd.step}

    return participant


async def start(system: System, key: str, headers: HeadersType | None) -> None:
    """A start request as a caller publishes it, with its tracing headers."""
    body = StartSaga(saga="traced_trip", key=key, input={"ref": key})
    exchange = await system.channel.get_exchange(system.topology.name(Exchange.SAGAS))
    await exchange.publish(
        Message(
            body.model_dump_json().encode(),
            content_type="application/json",
            delivery_mode=DeliveryMode.PERSISTENT,
            headers=headers,
        ),
        routing_key="start",
    )


async def test_a_start_messages_trace_context_follows_the_saga_everywhere(
    database_url: str, topology: Topology, amqp_url: str
) -> None:
    seen: list[tuple[str, str | None]] = []
    async with running_system(database_url, topology, amqp_url, [trip, leg]) as system:
        await host(system, recording("depot", "depot.load", seen))
        await host(system, recording("vans", "vans.drive", seen))
        outcomes = await system.spy(Exchange.EVENTS, "#")
        events: list[AbstractIncomingMessage] = []

        await start(system, "traced", {"traceparent": TRACEPARENT, "tracestate": TRACESTATE})
        parent = await system.wait_status("traced", SagaStatus.COMPLETED)
        await start(system, "untraced", None)
        await system.wait_status("untraced", SagaStatus.COMPLETED)

        async def both_outcomes() -> bool:
            while (message := await outcomes.get(no_ack=True, fail=False)) is not None:
                events.append(message)
            return sum(m.routing_key == "traced_trip.completed" for m in events) == 2

        await eventually(both_outcomes, message="both trips' outcome events")
        legs = await system.store.find(SagaQuery(saga="traced_leg", limit=10))
        children = [s for s in legs if s.parent is not None and s.parent.saga_id == parent.saga_id]
        await drain(outcomes)

    context = {"traceparent": TRACEPARENT, "tracestate": TRACESTATE}
    assert parent.trace == context
    [child] = children
    assert child.trace == context  # its start request carried the headers on
    # Every command of the traced saga and its child ran under the trace id; the untraced
    # saga's commands under none.
    assert sorted(seen, key=str) == sorted(
        [("load", TRACE_ID), ("drive", TRACE_ID), ("load", None), ("drive", None)], key=str
    )
    traced = [m for m in events if (m.headers or {}).get("traceparent") == TRACEPARENT]
    assert sorted((m.routing_key for m in traced), key=str) == [
        "traced_leg.completed",
        "traced_trip.completed",
    ]
    assert all((m.headers or {}).get("tracestate") == TRACESTATE for m in traced)
    untraced = [m for m in events if m not in traced]
    assert [m.routing_key for m in untraced if "traceparent" in (m.headers or {})] == []
    assert len(untraced) == 2  # the untraced trip and its leg


async def test_a_participant_sends_its_reply_with_the_commands_trace_context(
    amqp_connection: AbstractRobustConnection,
    amqp_channel: AbstractRobustChannel,
    topology: Topology,
) -> None:
    seen: list[tuple[str, str | None]] = []
    channel = await open_channel(amqp_connection)
    worker = ParticipantWorker(
        recording("depot", "depot.load", seen), channel, topology, clock=lambda: datetime.now(UTC)
    )
    await worker.start()
    try:
        cmd = Command(
            command_id=uuid.uuid4(),
            saga_id=uuid.uuid4(),
            saga="traced_trip",
            step="load",
            kind="action",
            attempt=1,
            idempotency_key="k:load:action",
            payload={"ref": "r"},
            expires_at=datetime.now(UTC) + timedelta(minutes=5),
            command="depot.load",
        )
        await RabbitPublisher(amqp_channel, topology).publish(
            [
                OutboxMessage(
                    exchange=Exchange.COMMANDS,
                    routing_key=cmd.command,
                    body=cmd.model_dump_json().encode(),
                    message_id=str(cmd.command_id),
                    reply_to=REPLY_QUEUE,
                    headers={"traceparent": TRACEPARENT},
                )
            ]
        )
        replies: list[AbstractIncomingMessage] = []

        async def reply() -> AbstractIncomingMessage | None:
            replies.extend(await take(amqp_channel, topology.name(REPLIES_QUEUE)))
            return next((m for m in replies if m.correlation_id == str(cmd.command_id)), None)

        message = await eventually(reply, timeout=15, message="the participant's reply")
    finally:
        await worker.stop()
        await channel.close()
    assert message is not None
    assert (message.headers or {}).get("traceparent") == TRACEPARENT
    assert seen == [("load", TRACE_ID)]


async def test_the_consumers_lines_about_a_message_carry_its_trace_and_the_handlers_fields(
    amqp_connection: AbstractRobustConnection,
    amqp_channel: AbstractRobustChannel,
    topology: Topology,
) -> None:
    await topology.declare_core(amqp_channel)
    channel = await open_channel(amqp_connection)
    contexts: list[dict[str, Any]] = []

    async def handler(delivery: Delivery) -> None:
        contexts.append(structlog.contextvars.get_contextvars())
        structlog.contextvars.bind_contextvars(saga_id="s-1", step="load")
        raise Poison("cannot be handled")

    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        consumer = await consume(channel, REPLY_QUEUE, handler, topology=topology, prefetch=1)
        try:
            publisher = RabbitPublisher(amqp_channel, topology)
            sent: list[tuple[str, HeadersType | None]] = [
                ("traced", {"traceparent": TRACEPARENT}),
                ("plain", None),
            ]
            for message_id, headers in sent:
                await publisher.publish_message(
                    Exchange.DEFAULT,
                    topology.name(REPLY_QUEUE),
                    Message(b"{}", message_id=message_id, headers=headers),
                )

            async def both_dead() -> list[EventDict]:
                dead = [e for e in logs if e["event"] == "message_dead_lettered"]
                return dead if len(dead) == 2 else []

            dead = await eventually(both_dead, message="both messages dead-lettered")
        finally:
            await consumer.stop()
            await channel.close()
    by_id = {line["message_id"]: line for line in dead}
    assert by_id["traced"]["trace_id"] == TRACE_ID
    assert "trace_id" not in by_id["plain"]
    assert all((line["saga_id"], line["step"]) == ("s-1", "load") for line in dead)
    # What one message's handler bound is gone when the next one is handled.
    assert [c.get("saga_id") for c in contexts] == [None, None]
