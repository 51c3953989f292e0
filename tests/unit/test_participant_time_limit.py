"""The participant SDK holds a handler to its start-to-close timeout: past it the handler is
cancelled (its cleanup runs) and the answer is a retryable timeout; heartbeats, which keep
coming meanwhile, never buy it time. With a heartbeat timeout they come every third of it."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from adapters.participant.core import Participant, heartbeats
from orchestrator.messages import Command, Reply
from tests.fixtures.polling import eventually


def command(timeout: float | None, heartbeat_timeout: float | None = None) -> Command:
    return Command(
        command_id=uuid.uuid4(),
        saga_id=uuid.uuid4(),
        saga="report",
        step="render",
        kind="action",
        attempt=1,
        idempotency_key="r-1:render:action",
        payload={},
        expires_at=datetime.now(UTC) + timedelta(seconds=60),
        timeout=timeout,
        heartbeat_timeout=heartbeat_timeout,
        report_start=heartbeat_timeout is not None,
        command="reports.render",
    )


async def test_a_hung_handler_is_cancelled_at_its_timeout_and_its_cleanup_runs() -> None:
    reports = Participant("reports")
    cleaned: list[str] = []

    @reports.handler("reports.render")
    async def render(cmd: Command) -> dict[str, Any]:
        try:
            await asyncio.Event().wait()  # never set
        finally:
            cleaned.append("closed")
        return {}

    began = time.monotonic()
    reply = await reports.handle(command(timeout=0.2), datetime.now(UTC))
    assert time.monotonic() - began < 5
    assert reply.outcome == "failure" and reply.error is not None
    assert (reply.error.type, reply.error.retryable) == ("timeout", True)
    assert "start-to-close timeout of 0.2s" in reply.error.message
    assert cleaned == ["closed"]


async def test_a_handler_that_finishes_in_time_is_not_touched() -> None:
    reports = Participant("reports")

    @reports.handler("reports.render")
    async def render(cmd: Command) -> dict[str, Any]:
        await asyncio.sleep(0.01)
        return {"pages": 2}

    reply = await reports.handle(command(timeout=5), datetime.now(UTC))
    assert (reply.outcome, reply.result) == ("success", {"pages": 2})


async def test_a_timeout_the_handler_raises_itself_is_a_crash_not_the_steps_timeout() -> None:
    reports = Participant("reports")

    @reports.handler("reports.render")
    async def render(cmd: Command) -> dict[str, Any]:
        async with asyncio.timeout(0.01):  # the handler's own call timing out
            await asyncio.sleep(1)  # a slow call, cut short by the timeout above
        return {}

    reply = await reports.handle(command(timeout=30), datetime.now(UTC))
    assert reply.error is not None
    assert (reply.error.type, reply.error.retryable) == ("TimeoutError", True)


async def test_a_command_without_a_timeout_runs_unbounded_as_older_senders_expect() -> None:
    reports = Participant("reports")

    @reports.handler("reports.render")
    async def render(cmd: Command) -> dict[str, Any]:
        await asyncio.sleep(0.05)
        return {"ok": True}

    reply = await reports.handle(command(timeout=None), datetime.now(UTC))
    assert reply.outcome == "success"


async def test_heartbeats_come_every_third_of_the_heartbeat_timeout() -> None:
    sent: list[tuple[float, Reply]] = []

    async def send(reply: Reply) -> None:
        sent.append((time.monotonic(), reply))

    cmd = command(timeout=3600, heartbeat_timeout=1.2)  # alone: every 10 s
    began = time.monotonic()
    async with heartbeats(cmd, datetime.now(UTC), send, reported=True):

        async def four() -> bool:
            return len(sent) >= 4

        await eventually(four, timeout=10, message="four heartbeats")
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(sent)]
    assert all(0.3 <= gap <= 0.9 for gap in gaps), gaps
    # `reported`: the caller sent the start report, so none goes out at once.
    assert sent[0][0] - began >= 0.3
