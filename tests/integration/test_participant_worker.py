"""A participant hosted on a real broker: command in through saga.commands, reply out."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aio_pika import DeliveryMode, Message
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel, AbstractRobustConnection

from adapters.faults import FaultyParticipant
from adapters.participant import Participant, StepFailed
from adapters.participant.worker import ParticipantWorker
from adapters.rabbitmq.connection import open_channel
from adapters.rabbitmq.consumer import DEAD_REASON_HEADER
from adapters.rabbitmq.publisher import RabbitPublisher
from adapters.rabbitmq.topology import DEAD_QUEUE, REPLIES_QUEUE, Topology
from orchestrator.messages import REPLY_QUEUE, Command, Exchange, OutboxMessage, Reply
from tests.fixtures.polling import eventually
from tests.fixtures.rabbitmq import leftovers, take


def command(name: str, *, expires_in: float = 300, **payload: Any) -> Command:
    return Command(
        command_id=uuid.uuid4(),
        saga_id=uuid.uuid4(),
        saga="order",
        step="charge_payment",
        kind="action",
        attempt=1,
        idempotency_key=f"order-{uuid.uuid4().hex[:6]}:charge_payment:action",
        payload=payload,
        expires_at=datetime.now(UTC) + timedelta(seconds=expires_in),
        command=name,
    )


class Harness:
    def __init__(self, channel: AbstractRobustChannel, topology: Topology) -> None:
        self.channel = channel
        self.topology = topology
        self.publisher = RabbitPublisher(channel, topology)
        self.replies: list[AbstractIncomingMessage] = []

    async def send(self, cmd: Command) -> None:
        """As the engine does: the outbox row for the command, published with confirms."""
        await self.publisher.publish(
            [
                OutboxMessage(
                    exchange=Exchange.COMMANDS,
                    routing_key=cmd.command,
                    body=cmd.model_dump_json().encode(),
                    message_id=str(cmd.command_id),
                    reply_to=REPLY_QUEUE,
                )
            ]
        )

    async def reply_to(self, cmd: Command) -> tuple[Reply, AbstractIncomingMessage]:
        async def probe() -> AbstractIncomingMessage | None:
            self.replies += await take(self.channel, self.topology.name(REPLIES_QUEUE))
            return next((m for m in self.replies if m.correlation_id == str(cmd.command_id)), None)

        message = await eventually(probe, timeout=15, message=f"a reply to {cmd.command}")
        assert message is not None
        return Reply.model_validate_json(message.body), message


@pytest.fixture
async def calls() -> list[Command]:
    return []


@pytest.fixture
async def worker_channel(
    amqp_connection: AbstractRobustConnection,
) -> AsyncIterator[AbstractRobustChannel]:
    channel = await open_channel(amqp_connection)
    yield channel
    await channel.close()


@pytest.fixture
async def worker(
    worker_channel: AbstractRobustChannel, topology: Topology, calls: list[Command]
) -> AsyncIterator[ParticipantWorker]:
    participant = Participant("payments")

    @participant.handler("payments.charge")
    async def charge(cmd: Command) -> dict[str, Any] | None:
        calls.append(cmd)
        return {"charged": cmd.payload["amount"]}

    @participant.handler("payments.decline")
    async def decline(cmd: Command) -> dict[str, Any] | None:
        calls.append(cmd)
        raise StepFailed("insufficient_funds", "card declined", retryable=False)

    @participant.handler("inventory.reserve")
    async def reserve(cmd: Command) -> dict[str, Any] | None:
        calls.append(cmd)
        return {"reserved": True}

    worker = ParticipantWorker(
        participant, worker_channel, topology, clock=lambda: datetime.now(UTC), prefetch=10
    )
    await worker.start()
    yield worker
    await worker.stop()


@pytest.fixture
def harness(amqp_channel: AbstractRobustChannel, topology: Topology) -> Harness:
    return Harness(amqp_channel, topology)


async def test_a_command_is_answered_on_the_reply_queue(
    worker: ParticipantWorker, harness: Harness, calls: list[Command]
) -> None:
    cmd = command("payments.charge", amount=25)

    await harness.send(cmd)
    reply, message = await harness.reply_to(cmd)

    assert (reply.command_id, reply.saga_id, reply.step) == (cmd.command_id, cmd.saga_id, cmd.step)
    assert (reply.outcome, reply.result) == ("success", {"charged": 25})
    assert calls == [cmd]  # the command name came from the routing key
    assert message.delivery_mode == DeliveryMode.PERSISTENT
    assert message.content_type == "application/json"
    assert message.routing_key == harness.topology.name(REPLIES_QUEUE)


async def test_every_service_of_the_participant_is_consumed(
    worker: ParticipantWorker, harness: Harness
) -> None:
    cmd = command("inventory.reserve")
    await harness.send(cmd)
    reply, _ = await harness.reply_to(cmd)
    assert reply.result == {"reserved": True}


async def test_a_business_failure_is_replied(worker: ParticipantWorker, harness: Harness) -> None:
    cmd = command("payments.decline")
    await harness.send(cmd)
    reply, _ = await harness.reply_to(cmd)
    assert reply.outcome == "failure"
    assert reply.error is not None
    assert (reply.error.type, reply.error.retryable) == ("insufficient_funds", False)


async def test_a_command_without_a_handler_gets_a_failure_reply_not_the_dead_queue(
    worker: ParticipantWorker, harness: Harness, amqp_channel: AbstractRobustChannel
) -> None:
    cmd = command("payments.teleport")  # routed to commands.payments, nobody handles it
    await harness.send(cmd)
    reply, _ = await harness.reply_to(cmd)
    assert reply.error is not None
    assert (reply.outcome, reply.error.type, reply.error.retryable) == (
        "failure",
        "unknown_command",
        False,
    )
    assert await leftovers(amqp_channel, harness.topology.name(DEAD_QUEUE)) == []


async def test_an_expired_command_is_refused_without_running(
    worker: ParticipantWorker, harness: Harness, calls: list[Command]
) -> None:
    cmd = command("payments.charge", expires_in=-1, amount=1)
    await harness.send(cmd)
    reply, _ = await harness.reply_to(cmd)
    assert reply.error is not None
    assert (reply.error.type, reply.error.retryable) == ("expired", True)
    assert calls == []


async def test_a_malformed_command_is_dead_lettered_and_the_next_one_answered(
    worker: ParticipantWorker, harness: Harness, amqp_channel: AbstractRobustChannel
) -> None:
    body = command("payments.charge", amount=1).model_dump_json()
    broken = body.replace('"attempt":1', '"attempt":"first"')
    assert broken != body
    await harness.publisher.publish_message(
        Exchange.COMMANDS,
        "payments.charge",
        Message(
            broken.encode(),
            content_type="application/json",
            message_id="broken",
            reply_to=harness.topology.name(REPLY_QUEUE),
        ),
    )
    good = command("payments.charge", amount=2)
    await harness.send(good)

    reply, _ = await harness.reply_to(good)
    assert reply.result == {"charged": 2}

    async def dead() -> list[AbstractIncomingMessage]:
        return await take(amqp_channel, harness.topology.name(DEAD_QUEUE))

    [message] = await eventually(dead, message="the broken command dead-lettered")
    assert message.message_id == "broken"
    assert "field attempt:" in str((message.headers or {})[DEAD_REASON_HEADER])
    assert [m for m in harness.replies if m.correlation_id != str(good.command_id)] == []


async def test_a_command_without_reply_to_is_dead_lettered(
    worker: ParticipantWorker, harness: Harness, amqp_channel: AbstractRobustChannel
) -> None:
    cmd = command("payments.charge", amount=3)
    await harness.publisher.publish_message(
        Exchange.COMMANDS,
        cmd.command,
        Message(cmd.model_dump_json().encode(), content_type="application/json", message_id="m"),
    )

    async def dead() -> list[AbstractIncomingMessage]:
        return await take(amqp_channel, harness.topology.name(DEAD_QUEUE))

    [message] = await eventually(dead, message="the command dead-lettered")
    assert "no reply_to" in str((message.headers or {})[DEAD_REASON_HEADER])


async def test_a_stopped_worker_takes_no_more_commands(
    worker: ParticipantWorker, harness: Harness, amqp_channel: AbstractRobustChannel
) -> None:
    await worker.stop()
    cmd = command("payments.charge", amount=4)
    await harness.send(cmd)

    [left] = await leftovers(amqp_channel, harness.topology.name("commands.payments"))
    assert left.message_id == str(cmd.command_id)
    assert await take(amqp_channel, harness.topology.name(REPLIES_QUEUE)) == []


async def test_the_fault_point_comes_after_the_handler_and_before_the_reply(
    worker_channel: AbstractRobustChannel,
    harness: Harness,
    topology: Topology,
    amqp_channel: AbstractRobustChannel,
) -> None:
    participant = Participant("payments")
    calls: list[Command] = []
    reached: list[tuple[str, int]] = []  # (point, handler calls so far)

    @participant.handler("payments.charge")
    async def charge(cmd: Command) -> dict[str, Any] | None:
        calls.append(cmd)
        return {"charged": cmd.payload["amount"]}

    def crash_once(point: str) -> None:
        reached.append((point, len(calls)))
        if len(reached) == 1:
            # What SAGA_FAULT does with SIGKILL, short of killing the test: the handler is
            # done, the reply never sent, the command not acked, so it comes back.
            raise RuntimeError("crashed between the handler and its reply")

    worker = ParticipantWorker(
        FaultyParticipant(participant, crash_once),
        worker_channel,
        topology,
        clock=lambda: datetime.now(UTC),
        prefetch=10,
    )
    await worker.start()
    try:
        cmd = command("payments.charge", amount=5)
        await harness.send(cmd)
        reply, _ = await harness.reply_to(cmd)
    finally:
        await worker.stop()

    assert reply.result == {"charged": 5}
    point = "after_handler_before_reply"
    assert reached == [(point, 1), (point, 2)]  # each time after the handler ran
    # The first delivery died before replying: the only reply is the redelivery's.
    assert [m.correlation_id for m in harness.replies] == [str(cmd.command_id)]
    assert await leftovers(amqp_channel, topology.name(REPLIES_QUEUE)) == []
