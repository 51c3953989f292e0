"""Heartbeats on real RabbitMQ: they go to the command's reply_to while its handler runs, and
never outlive it. (A long handler kept alive by them, and a hung one cut off despite them:
test_hung_and_long_steps.py.)"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractRobustChannel,
    AbstractRobustConnection,
)

from adapters.clock import utcnow
from adapters.participant import Participant
from adapters.participant.worker import ParticipantWorker
from adapters.rabbitmq.connection import open_channel
from adapters.rabbitmq.publisher import RabbitPublisher
from adapters.rabbitmq.topology import REPLIES_QUEUE, Topology
from orchestrator.messages import REPLY_QUEUE, Command, Exchange, OutboxMessage, Reply
from tests.fixtures.polling import eventually
from tests.fixtures.rabbitmq import take

# -- the worker alone: what goes to reply_to, and when ---------------------------------------


def command(expires_in: float) -> Command:
    return Command(
        command_id=uuid.uuid4(),
        saga_id=uuid.uuid4(),
        saga="report",
        step="render",
        kind="action",
        attempt=1,
        idempotency_key=f"{uuid.uuid4()}:render:action",
        payload={},
        expires_at=datetime.now(UTC) + timedelta(seconds=expires_in),
        command="reports.render",
    )


@pytest.fixture
async def reports_worker(
    amqp_connection: AbstractRobustConnection, topology: Topology
) -> AsyncIterator[asyncio.Event]:
    """A worker whose handler runs until the test sets the returned event."""
    release = asyncio.Event()
    reports = Participant("reports")

    @reports.handler("reports.render")
    async def render(cmd: Command) -> dict[str, Any]:
        await release.wait()
        return {"pages": 3}

    channel = await open_channel(amqp_connection)
    worker = ParticipantWorker(reports, channel, topology, clock=utcnow, prefetch=10)
    await worker.start()
    yield release
    release.set()
    await worker.stop()
    await channel.close()


async def test_heartbeats_go_to_reply_to_while_the_handler_runs_and_stop_before_the_reply(
    reports_worker: asyncio.Event, amqp_channel: AbstractRobustChannel, topology: Topology
) -> None:
    cmd = command(expires_in=0.3)  # a heartbeat every 0.1 s
    await RabbitPublisher(amqp_channel, topology).publish(
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
    got: list[AbstractIncomingMessage] = []

    async def replies(outcome: str, n: int) -> list[Reply] | None:
        got.extend(await take(amqp_channel, topology.name(REPLIES_QUEUE)))
        parsed = [Reply.model_validate_json(m.body) for m in got]
        return parsed if sum(r.outcome == outcome for r in parsed) >= n else None

    beats = await eventually(lambda: replies("heartbeat", 2), message="two heartbeats")
    assert {(r.command_id, r.saga_id, r.step, r.outcome) for r in beats} == {
        (cmd.command_id, cmd.saga_id, cmd.step, "heartbeat")
    }
    assert {m.correlation_id for m in got} == {str(cmd.command_id)}
    assert heartbeat_tasks(cmd), "heartbeats run while the handler does"

    reports_worker.set()
    final = await eventually(lambda: replies("success", 1), message="the final reply")
    assert final[-1].outcome == "success" and final[-1].result == {"pages": 3}
    # The final reply is published only after the heartbeat task has ended, so none can follow.
    assert heartbeat_tasks(cmd) == []


def heartbeat_tasks(cmd: Command) -> list[asyncio.Task[Any]]:
    name = f"saga-heartbeat:{cmd.command_id}"
    return [t for t in asyncio.all_tasks() if t.get_name() == name]
