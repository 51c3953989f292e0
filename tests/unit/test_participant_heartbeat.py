"""Heartbeats of the participant SDK core: their cadence, and that they never outlive the
handler they stand for."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from orchestrator.messages import Command, Reply
from orchestrator.participant import heartbeat_interval, heartbeats
from tests.fixtures.polling import eventually

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def command(expires_in: float) -> Command:
    return Command(
        command_id=uuid.uuid4(),
        saga_id=uuid.uuid4(),
        saga="order",
        step="charge_payment",
        kind="action",
        attempt=1,
        idempotency_key="order-42:charge_payment:action",
        payload={},
        expires_at=datetime.now(UTC) + timedelta(seconds=expires_in),
        command="payments.charge",
    )


@pytest.mark.parametrize(
    ("left", "interval"),
    [
        (30.0, 10.0),  # a third of the time left...
        (0.3, 0.1),
        (3600.0, 10.0),  # ...but never longer than 10 s
        (0.06, 0.05),  # ...nor shorter than 50 ms
        (0.0, 0.05),
        (-5.0, 0.05),  # already expired (or the clocks disagree): no busy loop
    ],
)
def test_the_interval_is_a_third_of_the_time_left_within_bounds(
    left: float, interval: float
) -> None:
    assert heartbeat_interval(NOW + timedelta(seconds=left), NOW) == pytest.approx(interval)


def test_a_naive_deadline_is_taken_as_utc() -> None:
    naive = (NOW + timedelta(seconds=3)).replace(tzinfo=None)
    assert heartbeat_interval(naive, NOW) == pytest.approx(1.0)


def beat_tasks(cmd: Command) -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == f"saga-heartbeat:{cmd.command_id}"]


async def test_heartbeats_flow_while_the_block_runs_and_stop_with_it() -> None:
    cmd = command(expires_in=0.3)  # every 0.1 s
    sent: list[Reply] = []

    async def send(reply: Reply) -> None:
        sent.append(reply)

    async with heartbeats(cmd, datetime.now(UTC), send):
        await eventually(lambda: _at_least(sent, 3), timeout=5, message="three heartbeats")
        assert len(beat_tasks(cmd)) == 1

    assert beat_tasks(cmd) == [], "the heartbeat task ended with the block"
    assert {(r.command_id, r.saga_id, r.step, r.outcome) for r in sent} == {
        (cmd.command_id, cmd.saga_id, cmd.step, "heartbeat")
    }


async def test_a_quick_block_sends_no_heartbeat() -> None:
    sent: list[Reply] = []

    async def send(reply: Reply) -> None:
        sent.append(reply)

    cmd = command(expires_in=30)
    async with heartbeats(cmd, datetime.now(UTC), send):
        pass
    assert sent == [] and beat_tasks(cmd) == []


async def test_heartbeats_stop_when_the_block_raises() -> None:
    cmd = command(expires_in=0.15)

    async def send(_reply: Reply) -> None:
        return None

    with pytest.raises(RuntimeError, match="handler blew up"):
        async with heartbeats(cmd, datetime.now(UTC), send):
            raise RuntimeError("handler blew up")
    assert beat_tasks(cmd) == []


async def test_a_failing_send_does_not_stop_the_heartbeats() -> None:
    cmd = command(expires_in=0.15)
    attempts: list[Reply] = []

    async def send(reply: Reply) -> None:
        attempts.append(reply)
        raise ConnectionError("broker gone")

    async with heartbeats(cmd, datetime.now(UTC), send):
        await eventually(lambda: _at_least(attempts, 2), timeout=5, message="a second try")
    assert beat_tasks(cmd) == []


async def test_cancelling_the_handler_stops_the_heartbeats() -> None:
    cmd = command(expires_in=0.15)
    sent: list[Reply] = []
    forever = asyncio.Event()

    async def send(reply: Reply) -> None:
        sent.append(reply)

    async def handler() -> None:
        async with heartbeats(cmd, datetime.now(UTC), send):
            await forever.wait()

    task = asyncio.create_task(handler())
    await eventually(lambda: _at_least(sent, 1), timeout=5, message="a heartbeat")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert beat_tasks(cmd) == []


async def _at_least(items: list[Reply], n: int) -> bool:
    return len(items) >= n
