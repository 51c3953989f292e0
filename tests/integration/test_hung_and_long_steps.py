"""Time limits that hold, on real PostgreSQL and RabbitMQ: a hung handler is cancelled at its
start-to-close timeout and the saga compensates; a long handler that heartbeats completes once
whatever the broker's consumer timeout; a channel the broker closes is logged and resumed.

The tests of the consumer timeout run on a RabbitMQ node of their own (tests/chaos/servers.py)
booted with a short one: the setting is the whole node's, and other tests use the shared broker
at the same time."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import structlog
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from structlog.testing import capture_logs

from adapters.clock import utcnow
from adapters.participant import Participant, StepFailed
from adapters.participant.barrier import Barrier
from adapters.participant.worker import ParticipantWorker
from adapters.postgres.database import make_engine
from adapters.rabbitmq.connection import open_channel
from adapters.rabbitmq.topology import Topology
from orchestrator import Retry, Saga
from orchestrator.messages import Command
from tests.chaos.servers import OwnRabbit
from tests.fixtures.polling import eventually
from tests.integration.harness import System, running_system
from tests.integration.hosted import detail, dispatched, events, host


class Job(BaseModel):
    job_id: str


ONCE = Retry(max_attempts=1)

# A reservation, then a handler that awaits what never comes: 2 attempts of 2 s each.
hung = Saga("hung", version=1, input=Job)
hung.remote("reserve", command="desk.reserve", compensation="desk.release", retry=ONCE)
hung.remote(
    "fetch",
    command="desk.fetch",
    compensation="desk.unfetch",
    timeout=2,
    retry=Retry(max_attempts=2, initial_interval=0.1, jitter=0),
)

# A long step: up to a minute per attempt, a heartbeat at least every second.
heartbeating = Saga("heartbeating", version=1, input=Job)
heartbeating.remote(
    "crunch", command="mill.crunch", timeout=60, heartbeat_timeout=1, retry=ONCE, compensation=None
)

# Longer than the broker's consumer timeout in the test below: one with a heartbeat timeout
# (acked once its start report is confirmed), one without (acked after `detach_after`).
beating_export = Saga("beating_export", version=1, input=Job)
beating_export.remote(
    "export", command="mill.export", timeout=60, heartbeat_timeout=2, retry=ONCE, compensation=None
)
plain_export = Saga("plain_export", version=1, input=Job)
plain_export.remote("export", command="mill.export", timeout=60, retry=ONCE, compensation=None)
quick = Saga("quick", version=1, input=Job)
quick.remote("ping", command="mill.ping", timeout=10, retry=ONCE, compensation=None)

# A step that keeps failing retryably: 50 attempts allowed, but only 2 s in all.
budgeted = Saga("budgeted", version=1, input=Job)
budgeted.remote("reserve", command="desk.reserve", compensation="desk.release", retry=ONCE)
budgeted.remote(
    "flaky",
    command="desk.flaky",
    compensation="desk.unflaky",
    timeout=1,
    retry=Retry(max_attempts=50, initial_interval=0.3, multiplier=1, jitter=0),
    schedule_to_close=2,
)

SAGAS = [hung, heartbeating, beating_export, plain_export, quick, budgeted]
CONSUMER_TIMEOUT_MS = 1500
WORK_SECONDS = 4.0  # well past the consumer timeout


@pytest.fixture
async def system(database_url: str, topology: Topology, amqp_url: str) -> AsyncIterator[System]:
    async with running_system(database_url, topology, amqp_url, SAGAS) as sys_:
        yield sys_


@pytest.fixture
async def effects(database_url: str) -> AsyncIterator[tuple[AsyncEngine, Barrier]]:
    """The participant's own database: a barrier and a table of effects, one row each."""
    engine = make_engine(database_url, pool_size=5)
    async with engine.begin() as conn:
        await conn.execute(
            sa.text("CREATE TABLE mill_effects (job_id text, step text, attempt int)")
        )
    barrier = Barrier(engine, table="mill_barrier")
    await barrier.install()
    yield engine, barrier
    await engine.dispose()


async def effect_rows(engine: AsyncEngine) -> list[tuple[str, str]]:
    async with engine.connect() as conn:
        rows = await conn.execute(sa.text("SELECT job_id, step FROM mill_effects ORDER BY 1"))
        return [(r.job_id, r.step) for r in rows]


@pytest.fixture
async def impatient_broker(tmp_path: Path) -> AsyncIterator[OwnRabbit]:
    """A RabbitMQ node that closes a channel whose delivery stays unacked 1.5 s, checked every
    100 ms."""
    node = OwnRabbit(
        tmp_path / "rabbitmq", uuid.uuid4().hex[:8], consumer_timeout=CONSUMER_TIMEOUT_MS
    )
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


@pytest.fixture
async def impatient_system(database_url: str, impatient_broker: OwnRabbit) -> AsyncIterator[System]:
    """The system on the impatient node (which is thrown away with everything declared on it)."""
    topology = Topology(f"t-{uuid.uuid4().hex[:8]}.")
    async with running_system(database_url, topology, impatient_broker.url(), SAGAS) as sys_:
        yield sys_


async def set_consumer_timeout(node: OwnRabbit, ms: int) -> None:
    """The node's consumer timeout for channels opened from now on."""
    await node.ctl("eval", f"application:set_env(rabbit, consumer_timeout, {ms}).")
    out = await node.ctl("eval", "application:get_env(rabbit, consumer_timeout).")
    assert out.strip() == f"{{ok,{ms}}}", out


# -- a hung handler ---------------------------------------------------------------------------


def desk_answering(*undos: str) -> Participant:
    """The desk service, answering its reservation, its release and `undos` at once; the
    test adds the handler under test."""
    desk = Participant("desk")

    async def done(cmd: Command) -> dict[str, Any]:
        return {"done": cmd.command}

    for command in ("desk.reserve", "desk.release", *undos):
        desk.handler(command)(done)
    return desk


async def test_a_hung_handler_is_cancelled_and_the_saga_compensates(system: System) -> None:
    cleaned: list[int] = []
    desk = desk_answering("desk.unfetch")

    @desk.handler("desk.fetch")
    async def fetch(cmd: Command) -> dict[str, Any]:
        try:
            await asyncio.Event().wait()  # what never comes: a call without a timeout
        finally:
            cleaned.append(cmd.attempt)
        raise AssertionError("unreachable")

    await host(system, desk)
    loop = asyncio.get_running_loop()
    began = loop.time()
    await system.start_order("hung-1", {"job_id": "h1"}, saga="hung")

    state = await system.wait_status("hung-1", "compensated", timeout=15)
    took = loop.time() - began
    assert took < 15
    records = await system.history(state.saga_id)
    assert sorted(dispatched(records, "fetch")) == [1, 2]
    # Each attempt ended by its start-to-close timeout: seen by the orchestrator's timer, or
    # answered first by the participant that cancelled the handler.
    ends = [
        detail(h)["error"]["type"]
        for h in records
        if h.step == "fetch" and h.event in ("step_retry_scheduled", "step_failed")
    ]
    assert ends == ["timeout", "timeout"]
    assert ("step_compensated", "reserve") in events(records)  # the earlier step undone
    # Each attempt's handler was cancelled: its cleanup ran, nothing is left running.
    await eventually(lambda: _value(sorted(cleaned) == [1, 2]), message="both cleanups ran")


async def test_schedule_to_close_ends_a_step_before_its_attempts_run_out(system: System) -> None:
    tries: list[int] = []
    desk = desk_answering("desk.unflaky")

    @desk.handler("desk.flaky")
    async def flaky(cmd: Command) -> dict[str, Any]:
        tries.append(cmd.attempt)
        raise StepFailed("supplier_busy", "try again later")  # retryable

    await host(system, desk)
    await system.start_order("budget-1", {"job_id": "b1"}, saga="budgeted")
    state = await system.wait_status("budget-1", "compensated", "failed", timeout=20)
    records = await system.history(state.saga_id)
    assert state.status == "compensated", events(records)
    assert 2 <= len(tries) < 50  # the budget, not the retry policy, ended it
    failed = next(h for h in records if h.event == "step_failed" and h.step == "flaky")
    error = detail(failed)["error"]
    assert (error["type"], error["timeout"]) == ("timeout", "schedule_to_close")
    # The budget ends between two attempts (the next has no room: the last failure is the
    # cause) or, on a slow machine, while an attempt is still in flight (its timer fires).
    budget_timers = [
        detail(h)
        for h in records
        if h.event == "step_timed_out" and detail(h)["timeout"] == "schedule_to_close"
    ]
    if "cause" in error:
        # The last attempt's failure: the participant's, or, when the budget left it too
        # little time to be taken, its refusal as expired.
        assert error["cause"]["type"] in ("supplier_busy", "expired"), error
        assert budget_timers == []
    else:
        assert len(budget_timers) == 1, records
    assert ("step_compensated", "reserve") in events(records)


# -- a long handler that heartbeats -------------------------------------------------------------


async def test_a_handler_ten_times_its_heartbeat_timeout_completes_once(system: System) -> None:
    calls: list[int] = []
    mill = Participant("mill")

    @mill.handler("mill.crunch")
    async def crunch(cmd: Command) -> dict[str, Any]:
        calls.append(cmd.attempt)
        await asyncio.sleep(10.0)  # the work itself: 10x the heartbeat timeout
        return {"crunched": cmd.payload["job_id"]}

    await host(system, mill)
    await system.start_order("beat-1", {"job_id": "b1"}, saga="heartbeating")

    state = await system.wait_status("beat-1", "completed", "failed", "compensated", timeout=30)
    history = events(await system.history(state.saga_id))
    assert state.status == "completed", history
    assert ("step_started", "crunch") in history
    assert ("step_timed_out", "crunch") not in history
    assert state.steps[0].result == {"crunched": "b1"}
    assert calls == [1]


# -- longer than the broker's consumer timeout -------------------------------------------------


def mill_participant(barrier: Barrier, calls: list[tuple[str, str]]) -> Participant:
    """`mill.export` writes its effect through the barrier and works WORK_SECONDS;
    `mill.ping` answers at once."""
    mill = Participant("mill")

    @mill.handler("mill.export")
    @barrier.guard
    async def export(cmd: Command, conn: AsyncConnection) -> dict[str, Any]:
        calls.append((cmd.saga, cmd.payload["job_id"]))
        await conn.execute(
            sa.text("INSERT INTO mill_effects VALUES (:job, :step, :attempt)"),
            {"job": cmd.payload["job_id"], "step": cmd.step, "attempt": cmd.attempt},
        )
        await asyncio.sleep(WORK_SECONDS)  # the work itself, longer than the consumer timeout
        return {"exported": cmd.payload["job_id"]}

    @mill.handler("mill.ping")
    async def ping(cmd: Command) -> dict[str, Any]:
        return {"pong": cmd.payload["job_id"]}

    return mill


async def worker(system: System, participant: Participant, **options: Any) -> ParticipantWorker:
    channel = await open_channel(system.connection)
    hosted = ParticipantWorker(
        participant, channel, system.topology, clock=utcnow, prefetch=10, **options
    )
    await hosted.start()
    system.workers[participant.service] = hosted
    return hosted


async def test_steps_longer_than_the_consumer_timeout_complete_exactly_once(
    impatient_system: System, effects: tuple[AsyncEngine, Barrier]
) -> None:
    system = impatient_system
    engine, barrier = effects
    calls: list[tuple[str, str]] = []
    with capture_logs() as logs:
        await worker(system, mill_participant(barrier, calls), detach_after=0.5)
        await system.start_order("exp-beat", {"job_id": "e1"}, saga="beating_export")
        await system.start_order("exp-plain", {"job_id": "e2"}, saga="plain_export")
        for key in ("exp-beat", "exp-plain"):
            state = await system.wait_status(key, "completed", "compensated", "failed", timeout=30)
            assert state.status == "completed", events(await system.history(state.saga_id))
        # The worker serves the next command.
        await system.start_order("ping-1", {"job_id": "p1"}, saga="quick")
        assert (await system.wait_status("ping-1", "completed", timeout=15)).status == "completed"

    assert sorted(calls) == [("beating_export", "e1"), ("plain_export", "e2")]
    assert await effect_rows(engine) == [("e1", "export"), ("e2", "export")]
    detached = sorted(e["why"] for e in logs if e["event"] == "participant_command_detached")
    assert detached == ["detach_after", "heartbeat_timeout"]
    assert [e for e in logs if e["event"] == "amqp_channel_closed"] == []


async def test_a_channel_the_broker_closes_is_logged_and_the_worker_resumes(
    impatient_system: System, impatient_broker: OwnRabbit, effects: tuple[AsyncEngine, Barrier]
) -> None:
    """With nothing detached, the broker's consumer timeout closes the channel under a long
    command, again at each redelivery: the worker says why each time, and consumes again.
    Once the broker's timeout is long again, the command completes once."""
    system = impatient_system
    engine, barrier = effects
    calls: list[tuple[str, str]] = []
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        await worker(system, mill_participant(barrier, calls), max_detached=0)
        await system.start_order("held", {"job_id": "h1"}, saga="plain_export")
        closed = await eventually(
            lambda: _value([e for e in logs if e["event"] == "amqp_channel_closed"]),
            message="the broker closed the worker's channel",
        )
        cut = await eventually(
            lambda: _value([e for e in logs if e["event"] == "participant_command_cancelled"]),
            message="the worker said its command was cut off",
        )
        await set_consumer_timeout(impatient_broker, 1_800_000)  # channels reopened from now on
        state = await system.wait_status("held", "completed", "compensated", "failed", timeout=40)
        assert state.status == "completed", events(await system.history(state.saga_id))
        await system.start_order("ping-2", {"job_id": "p2"}, saga="quick")
        assert (await system.wait_status("ping-2", "completed", timeout=15)).status == "completed"

    assert "acknowledgement" in closed[0]["reason"] and "timed out" in closed[0]["reason"]
    assert cut[0]["step"] == "export"
    assert await effect_rows(engine) == [("h1", "export")]
    assert len(calls) >= 2  # cut off at least once, then run to the end


async def _value(value: Any) -> Any:
    return value
