"""Heartbeats on real RabbitMQ and PostgreSQL: a handler that runs far longer than its step's
timeout keeps the step alive, and its heartbeats never outlive it."""

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
from pydantic import BaseModel

from adapters.rabbitmq.connection import open_channel
from adapters.rabbitmq.participant import ParticipantWorker
from adapters.rabbitmq.publisher import RabbitPublisher
from adapters.rabbitmq.topology import REPLIES_QUEUE, Topology
from adapters.runtime import utcnow
from orchestrator import Retry, Saga
from orchestrator.messages import Command, Reply
from orchestrator.participant import Participant
from orchestrator.ports import REPLY_QUEUE, Exchange, OutboxMessage
from tests.fixtures.polling import eventually
from tests.fixtures.rabbitmq import take
from tests.integration.harness import System, running_system
from tests.integration.hosted import events, host


class Job(BaseModel):
    job_id: str


# A timeout ends this saga: one attempt, nothing to compensate.
long_step = Saga("long_step", version=1, input=Job)
# The timeout leaves room for a heartbeat (sent every timeout/3) to be delayed by a loaded
# machine (the full suite runs beside other processes) without the step timing out.
long_step.remote("crunch", command="batch.crunch", timeout=1.0, retry=Retry(max_attempts=1))

WORK_SECONDS = 5.0  # 5x the step's timeout


@pytest.fixture
async def system(database_url: str, topology: Topology, amqp_url: str) -> AsyncIterator[System]:
    async with running_system(database_url, topology, amqp_url, [long_step]) as sys_:
        yield sys_


async def test_a_handler_far_longer_than_its_timeout_completes(system: System) -> None:
    calls: list[int] = []
    batch = Participant("batch")

    @batch.handler("batch.crunch")
    async def crunch(cmd: Command) -> dict[str, Any]:
        calls.append(cmd.attempt)
        await asyncio.sleep(WORK_SECONDS)  # the work itself, not a wait for a condition
        return {"crunched": cmd.payload["job_id"]}

    await host(system, batch)
    await system.start_order("job-1", {"job_id": "j1"}, saga="long_step")

    state = await system.wait_status("job-1", "completed", "compensated", timeout=20)
    history = events(await system.history(state.saga_id))
    assert ("step_timed_out", "crunch") not in history
    assert state.status == "completed"
    assert state.steps[0].result == {"crunched": "j1"}
    assert calls == [1], "one attempt, run once"


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
