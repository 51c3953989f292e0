"""Heartbeats of the participant SDK core: their cadence, and that they never outlive the
handler they stand for."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from adapters.participant.core import (
    MAX_HEARTBEAT_INTERVAL,
    MIN_HEARTBEAT_INTERVAL,
    heartbeat_interval,
    heartbeats,
    report_progress,
)
from orchestrator.messages import Command, Reply
from tests.fixtures.polling import eventually

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def command(
    expires_in: float, *, timeout: float | None = None, report_start: bool = False
) -> Command:
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
        timeout=timeout,
        report_start=report_start,
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


# -- start reports, the timeout's cadence, progress -----------------------------------------------


class Recorder:
    """A `send` that keeps every heartbeat with the monotonic time it was sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[float, Reply]] = []

    async def __call__(self, reply: Reply) -> None:
        self.sent.append((time.monotonic(), reply))

    async def count(self, n: int) -> bool:
        return len(self.sent) >= n

    def gaps(self) -> list[float]:
        times = [t for t, _ in self.sent]
        return [b - a for a, b in itertools.pairwise(times)]

    def results(self) -> list[Any]:
        return [r.result for _, r in self.sent]


async def test_a_start_report_is_sent_at_once() -> None:
    # Without report_start the first heartbeat would wait a third of 30 s.
    cmd = command(expires_in=30, timeout=30, report_start=True)
    send = Recorder()
    entered = time.monotonic()
    async with heartbeats(cmd, datetime.now(UTC), send):
        await eventually(lambda: send.count(1), timeout=5, message="the start report")
    (at, first), *_ = send.sent
    assert at - entered < 5
    assert (first.command_id, first.outcome, first.result) == (cmd.command_id, "heartbeat", None)


async def test_without_a_start_report_a_quick_block_sends_nothing() -> None:
    cmd = command(expires_in=30, timeout=30, report_start=False)
    send = Recorder()
    async with heartbeats(cmd, datetime.now(UTC), send):
        await asyncio.sleep(0)  # let the heartbeat task start: it waits 10 s first
    assert send.sent == []


async def test_after_the_start_report_heartbeats_come_every_third_of_the_timeout() -> None:
    # expires_at is far (30 s): the pace comes from the timeout (0.3 s), not from it.
    cmd = command(expires_in=30, timeout=0.3, report_start=True)
    send = Recorder()
    async with heartbeats(cmd, datetime.now(UTC), send):
        await eventually(lambda: send.count(4), timeout=5, message="four heartbeats")
    assert all(gap >= 0.1 * 0.9 for gap in send.gaps()), send.gaps()


async def test_report_progress_rides_on_the_next_heartbeats() -> None:
    cmd = command(expires_in=30, timeout=0.3, report_start=True)
    send = Recorder()

    async def carrying(details: Any) -> bool:
        return bool(send.sent) and send.sent[-1][1].result == details

    async with heartbeats(cmd, datetime.now(UTC), send):
        await eventually(lambda: send.count(1), timeout=5, message="the start report")
        assert send.results()[0] is None
        report_progress({"done": 5000})
        await eventually(lambda: carrying({"done": 5000}), timeout=5, message="progress 5000")
        seen = len(send.sent)
        await eventually(lambda: send.count(seen + 1), timeout=5, message="one more heartbeat")
        assert send.results()[-1] == {"done": 5000}  # kept until replaced
        report_progress({"done": 9000})
        await eventually(lambda: carrying({"done": 9000}), timeout=5, message="progress 9000")
    results = send.results()
    assert results.index({"done": 9000}) > results.index({"done": 5000})


async def test_each_running_command_reports_its_own_progress() -> None:
    send = Recorder()
    cmds = [command(expires_in=30, timeout=0.3, report_start=True) for _ in range(2)]

    async def handler(cmd: Command, done: int) -> None:
        async with heartbeats(cmd, datetime.now(UTC), send):
            report_progress({"done": done})

            async def mine() -> bool:
                return any(
                    r.command_id == cmd.command_id and r.result == {"done": done}
                    for _, r in send.sent
                )

            await eventually(mine, timeout=5, message=f"progress of {cmd.step} {done}")

    await asyncio.gather(handler(cmds[0], 1), handler(cmds[1], 2))
    for _, r in send.sent:
        if r.result is not None:
            assert r.result == {"done": 1 if r.command_id == cmds[0].command_id else 2}


def test_report_progress_outside_a_running_command_is_refused() -> None:
    with pytest.raises(RuntimeError, match="report_progress\\(\\) is for handlers"):
        report_progress({"done": 1})


async def test_report_progress_after_the_block_ended_is_refused() -> None:
    async def send(_reply: Reply) -> None:
        return None

    async with heartbeats(command(expires_in=30), datetime.now(UTC), send):
        report_progress({"done": 1})
    with pytest.raises(RuntimeError, match="while a command runs"):
        report_progress({"done": 2})


async def test_progress_that_is_not_json_fails_in_the_handler() -> None:
    cmd = command(expires_in=30, timeout=0.3, report_start=True)
    send = Recorder()
    async with heartbeats(cmd, datetime.now(UTC), send):
        report_progress({"done": 1})
        with pytest.raises(Exception, match="serialize"):
            report_progress({"when": object()})
        await eventually(lambda: send.count(2), timeout=5, message="two heartbeats")
    assert {"done": 1} in send.results()
    assert all(r in (None, {"done": 1}) for r in send.results())


# -- the schedule, exactly: the waits the heartbeat task asks for ---------------------------------


@pytest.mark.parametrize(
    ("report_start", "expires_in", "timeout", "waits"),
    [
        (True, 30.0, 0.3, [0.0, 0.1, 0.1]),  # at once, then a third of the timeout
        (False, 0.3, 0.3, [0.1, 0.1, 0.1]),  # no start window: the timeout's third from the start
        (False, 30.0, 0.3, [10.0, 0.1, 0.1]),
        (True, 30.0, 0.03, [0.0, MIN_HEARTBEAT_INTERVAL, MIN_HEARTBEAT_INTERVAL]),
        (True, 30.0, 3600.0, [0.0, MAX_HEARTBEAT_INTERVAL, MAX_HEARTBEAT_INTERVAL]),
        # No timeout (an older sender): the deadline sets the pace, never a 50 ms flood.
        (True, 30.0, None, [0.0, 10.0, 10.0]),
        (False, 3.0, None, [1.0, 1.0, 1.0]),
    ],
)
async def test_the_heartbeat_schedule(
    monkeypatch: pytest.MonkeyPatch,
    report_start: bool,
    expires_in: float,
    timeout: float | None,
    waits: list[float],
) -> None:
    """The waits between heartbeats, read off the heartbeat task's sleeps (which return at
    once here), so the bounds are checked without waiting for them."""
    real_sleep = asyncio.sleep
    asked: list[float] = []
    parked = asyncio.Event()

    def sleep(delay: float, *args: Any, **kwargs: Any) -> Coroutine[Any, Any, Any]:
        task = asyncio.current_task()
        if task is None or not task.get_name().startswith("saga-heartbeat:"):
            return real_sleep(delay, *args, **kwargs)
        asked.append(delay)
        return real_sleep(0) if len(asked) < len(waits) else parked.wait()

    monkeypatch.setattr(asyncio, "sleep", sleep)
    cmd = command(expires_in=expires_in, timeout=timeout, report_start=report_start)
    send = Recorder()
    async with heartbeats(cmd, datetime.now(UTC), send):
        await eventually(lambda: _at_least_n(asked, len(waits)), timeout=5, message="waits")
    assert asked == pytest.approx(waits, rel=0.01)


async def _at_least_n(items: list[float], n: int) -> bool:
    return len(items) >= n
