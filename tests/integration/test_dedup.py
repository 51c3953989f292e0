"""Engine-side deduplication on every inbound path (issue 3), on real PostgreSQL and RabbitMQ.

Each duplicate start, cancel and reply is acknowledged (nothing is left in or returned to its
queue, nothing is dead-lettered), recorded in the saga's history as ignored with its reason
where a saga exists, and counted in the metrics (adapters/metrics.py) under the right label.
Where a reply's timing matters, the test plays the participant and sends replies by hand.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import pytest
from pydantic import BaseModel

from adapters.participant import Participant
from adapters.rabbitmq.client import send_requests
from adapters.rabbitmq.topology import DEAD_QUEUE, REPLIES_QUEUE, REQUESTS_QUEUE, Topology
from orchestrator import Retry, Saga
from orchestrator.messages import REPLY_QUEUE, CancelSaga, Command, Reply, StartSaga
from orchestrator.ports import HistoryRecord, SagaQuery
from tests.fixtures.polling import eventually
from tests.fixtures.rabbitmq import leftovers
from tests.integration.harness import System, running_system
from tests.integration.hosted import Meter, dispatched, events, host, ignored

IGNORED = "saga_replies_ignored_total"
TRANSITIONS = "saga_transitions_total"
STARTS = "saga_starts_deduplicated_total"
DEAD = "saga_messages_dead_lettered_total"


class Ticket(BaseModel):
    ticket_id: str


# Served by the `desk` participant below.
simple = Saga("ticket", version=1, input=Ticket, timeout=5)
simple.remote("file", command="desk.file", compensation=None)

# `hold` blocks until the test lets it go, so the saga stays compensating across the cancels.
held = Saga("ticket_held", version=1, input=Ticket, timeout=5)
held.remote("hold", command="desk.hold", compensation="desk.unhold")

# Nobody consumes `manual.*`: the test reads the command ids from history and replies itself.
# Attempt 1 times out; attempt 2 has 1.5 s for the test's replies, which take milliseconds.
flaky = Saga("ticket_flaky", version=1, input=Ticket)
flaky.remote(
    "route",
    command="manual.route",
    timeout=1.5,
    retry=Retry(max_attempts=2, initial_interval=0.05, max_interval=0.05, jitter=0),
    compensation=None,
)

# One attempt that times out: the saga ends before the reply comes.
lapsed = Saga("ticket_lapsed", version=1, input=Ticket)
lapsed.remote(
    "route", command="manual.route", timeout=0.3, retry=Retry(max_attempts=1), compensation=None
)


@pytest.fixture
async def system(database_url: str, topology: Topology, amqp_url: str) -> AsyncIterator[System]:
    sagas = [simple, held, flaky, lapsed]
    async with running_system(database_url, topology, amqp_url, sagas) as sys_:
        yield sys_


class Desk:
    """The participant for `ticket` and `ticket_held`; counts what its handlers did."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.gate = asyncio.Event()
        self.participant = Participant("desk")
        self.participant.handler("desk.file")(self.file)
        self.participant.handler("desk.hold")(self.hold)
        self.participant.handler("desk.unhold")(self.unhold)

    async def file(self, cmd: Command) -> dict[str, Any]:
        self.calls.append("file")
        return {"filed": cmd.payload["ticket_id"]}

    async def hold(self, cmd: Command) -> None:
        self.calls.append("hold")
        await self.gate.wait()

    async def unhold(self, cmd: Command) -> None:
        self.calls.append("unhold")


@pytest.fixture
async def desk(system: System) -> Desk:
    desk = Desk()
    await host(system, desk.participant)
    return desk


async def send_reply(system: System, reply: Reply) -> None:
    await system.publish_raw(
        "", system.topology.name(REPLY_QUEUE), reply.model_dump_json().encode()
    )


def reply_to(saga_id: UUID, step: str, command_id: str, outcome: str = "success") -> Reply:
    return Reply.model_validate(
        {"command_id": command_id, "saga_id": saga_id, "step": step, "outcome": outcome}
    )


async def history_until(
    system: System, saga_id: UUID, done: Any, message: str
) -> list[HistoryRecord]:
    async def probe() -> list[HistoryRecord] | None:
        history = await system.history(saga_id)
        return history if done(history) else None

    return await eventually(probe, message=message)


async def assert_everything_acked(system: System, meter: Meter) -> None:
    """Stop the orchestrator: a message it had not acked goes back to its queue then."""
    await system.orchestrator.stop()
    for queue in (REQUESTS_QUEUE, REPLIES_QUEUE, DEAD_QUEUE):
        left = await leftovers(system.channel, system.topology.name(queue))
        assert [m.body for m in left] == [], f"{queue} still holds messages"
    assert meter.delta(DEAD) == {}


async def test_the_same_start_three_times_starts_one_saga(system: System, desk: Desk) -> None:
    meter = Meter()
    start = StartSaga(saga="ticket", key="t-start", input={"ticket_id": "t1"})
    await send_requests(system.settings, [("start", start)] * 3)

    state = await system.wait_status("t-start", "completed")
    await eventually(lambda: _deduplicated(meter, 2), message="two duplicate starts counted")

    assert len(await system.store.find(SagaQuery(key="t-start"))) == 1
    history = events(await system.history(state.saga_id))
    assert history.count(("saga_started", None)) == 1
    assert history.count(("step_dispatched", "file")) == 1
    assert desk.calls == ["file"]
    assert meter.delta(TRANSITIONS)["saga_started"] == 1
    await assert_everything_acked(system, meter)
    assert meter.delta(STARTS) == {"ticket": 2}


async def test_the_same_cancel_three_times_is_accepted_once(system: System, desk: Desk) -> None:
    meter = Meter()
    await system.start_order("t-cancel", {"ticket_id": "t2"}, saga="ticket_held")

    async def holding() -> bool:
        return desk.calls == ["hold"]

    await eventually(holding, message="hold running")
    cancel = CancelSaga(key="t-cancel", reason="customer withdrew")
    await send_requests(system.settings, [("cancel", cancel)] * 3)
    state = await system.wait_status("t-cancel", "compensating")

    def three_cancels(h: list[HistoryRecord]) -> bool:
        return sum(x.event in ("saga_cancel_accepted", "cancel_ignored") for x in h) == 3

    history = await history_until(system, state.saga_id, three_cancels, "3 cancels recorded")
    cancels = [(h.event, (h.detail or {}).get("reason")) for h in history if "cancel" in h.event]
    assert cancels == [
        ("saga_cancel_accepted", "customer withdrew"),
        ("cancel_ignored", "customer withdrew"),
        ("cancel_ignored", "customer withdrew"),
    ]

    desk.gate.set()  # `hold` succeeds while compensating, so it is undone, once
    state = await system.wait_status("t-cancel", "cancelled")
    assert desk.calls == ["hold", "unhold"]
    await assert_everything_acked(system, meter)
    transitions = meter.delta(TRANSITIONS)
    assert (transitions["saga_cancel_accepted"], transitions["cancel_ignored"]) == (1, 2)


async def test_a_duplicate_reply_is_ignored(system: System, desk: Desk) -> None:
    meter = Meter()
    await system.start_order("t-dup", {"ticket_id": "t3"}, saga="ticket")
    state = await system.wait_status("t-dup", "completed")
    command_id = dispatched(await system.history(state.saga_id), "file")[1]

    await send_reply(system, reply_to(state.saga_id, "file", command_id))
    history = await history_until(system, state.saga_id, ignored, "the duplicate recorded")

    assert ignored(history) == [("duplicate", command_id)]
    after = await system.saga_by_key("t-dup")
    assert after is not None and after.steps == state.steps and after.status == "completed"
    await assert_everything_acked(system, meter)
    assert meter.delta(IGNORED) == {"duplicate": 1}


async def test_a_reply_of_an_older_attempt_is_stale(system: System) -> None:
    meter = Meter()
    await system.start_order("t-stale", {"ticket_id": "t4"}, saga="ticket_flaky")
    saga = await eventually(lambda: system.saga_by_key("t-stale"), message="the saga")
    assert saga is not None

    def two_attempts(h: list[HistoryRecord]) -> bool:
        return len(dispatched(h, "route")) == 2

    history = await history_until(system, saga.saga_id, two_attempts, "attempt 2 dispatched")
    assert ("step_timed_out", "route") in events(history)
    first, second = dispatched(history, "route")[1], dispatched(history, "route")[2]

    # Attempt 1 fails at last, while attempt 2 is in flight: stale. (A late success of attempt
    # 1 would be the step's: every attempt's effect is the same, under one idempotency key.)
    await send_reply(system, reply_to(saga.saga_id, "route", first, outcome="failure"))
    await history_until(system, saga.saga_id, ignored, "the stale reply recorded")
    await send_reply(system, reply_to(saga.saga_id, "route", second))
    state = await system.wait_status("t-stale", "completed")

    history = await system.history(state.saga_id)
    assert ignored(history) == [("stale attempt", first)]
    assert state.steps[0].attempt == 2
    await assert_everything_acked(system, meter)
    assert meter.delta(IGNORED) == {"stale attempt": 1}


async def test_a_reply_after_the_timeout_moved_on_is_late(system: System) -> None:
    meter = Meter()
    await system.start_order("t-late", {"ticket_id": "t5"}, saga="ticket_lapsed")
    state = await system.wait_status("t-late", "compensated")
    history = await system.history(state.saga_id)
    assert ("step_timed_out", "route") in events(history)
    command_id = dispatched(history, "route")[1]

    await send_reply(system, reply_to(state.saga_id, "route", command_id))
    history = await history_until(system, state.saga_id, ignored, "the late reply recorded")

    assert ignored(history) == [("late", command_id)]
    after = await system.saga_by_key("t-late")
    assert after is not None and after.status == "compensated" and after.steps == state.steps
    await assert_everything_acked(system, meter)
    assert meter.delta(IGNORED) == {"late": 1}


async def test_a_reply_for_an_unknown_step_is_ignored(system: System, desk: Desk) -> None:
    meter = Meter()
    await system.start_order("t-step", {"ticket_id": "t6"}, saga="ticket")
    state = await system.wait_status("t-step", "completed")

    stray = str(uuid.uuid4())
    await send_reply(system, reply_to(state.saga_id, "no_such_step", stray))
    history = await history_until(system, state.saga_id, ignored, "the stray reply recorded")

    assert ignored(history) == [("unknown step", stray)]
    await assert_everything_acked(system, meter)
    assert meter.delta(IGNORED) == {"unknown step": 1}


async def test_a_reply_for_an_unknown_saga_is_acked_and_counted(system: System) -> None:
    """No saga row, so nothing to record it in: the log line and the counter are all."""
    meter = Meter()
    await send_reply(system, reply_to(uuid.uuid4(), "file", str(uuid.uuid4()), "failure"))

    async def counted() -> bool:
        return meter.delta(IGNORED) == {"unknown saga": 1}

    await eventually(counted, message="the reply counted as ignored")
    await assert_everything_acked(system, meter)
    assert meter.delta(IGNORED) == {"unknown saga": 1}
    assert meter.delta(TRANSITIONS) == {"reply_ignored": 1}


async def test_an_unreadable_reply_is_dead_lettered_and_counted(system: System) -> None:
    """The contrast: ignored replies are acked, a reply that cannot be read is moved aside."""
    meter = Meter()
    replies = system.topology.name(REPLY_QUEUE)
    await system.publish_raw("", replies, b'{"outcome": "success"}')

    async def counted() -> bool:
        return meter.delta(DEAD) == {replies: 1}

    await eventually(counted, message="the dead-lettered reply counted")
    await system.orchestrator.stop()
    [dead] = await leftovers(system.channel, system.topology.name(DEAD_QUEUE))
    assert dead.body == b'{"outcome": "success"}'
    assert await leftovers(system.channel, replies) == []
    assert meter.delta(IGNORED) == {}


async def _deduplicated(meter: Meter, n: int) -> bool:
    return meter.delta(STARTS).get("ticket") == n
