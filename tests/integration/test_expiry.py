"""An expired command is not executed, and the saga proceeds as for a timeout (issue 3), on real
PostgreSQL and RabbitMQ: commands wait in their queue while no participant runs, past their
`expires_at`; when the participant comes up it refuses them without calling the handler."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from adapters.clock import utcnow
from adapters.participant import Participant
from adapters.rabbitmq.topology import Topology
from orchestrator import Retry, Saga
from orchestrator.messages import Command
from orchestrator.ports import HistoryRecord
from tests.fixtures.polling import eventually
from tests.integration.harness import System, running_system
from tests.integration.hosted import dispatched, events, host, ignored


class Parcel(BaseModel):
    parcel_id: str


# The retry waits long enough (1 s, no jitter) for the test to bring the participant up
# between the first attempt's timeout and the second attempt.
retried = Saga("parcel_retried", version=1, input=Parcel)
retried.remote(
    "ship",
    command="courier.ship",
    timeout=0.5,
    retry=Retry(max_attempts=2, initial_interval=1.0, max_interval=1.0, jitter=0),
    compensation=None,
)

# One attempt only: its timeout sends the saga into compensation of the step before it.
single = Saga("parcel_single", version=1, input=Parcel)
single.remote("hold", command="depot.hold", compensation="depot.release", timeout=5)
single.remote(
    "ship", command="courier.ship", timeout=0.5, retry=Retry(max_attempts=1), compensation=None
)

# For the participant whose clock runs ahead: every command looks expired to it.
skewed = Saga("parcel_skewed", version=1, input=Parcel)
skewed.remote("hold", command="depot.hold", compensation="depot.release", timeout=5)
skewed.remote(
    "ship",
    command="courier.ship",
    timeout=5,
    retry=Retry(max_attempts=2, initial_interval=0.05, max_interval=0.05),
    compensation=None,
)


@pytest.fixture
async def system(database_url: str, topology: Topology, amqp_url: str) -> AsyncIterator[System]:
    async with running_system(database_url, topology, amqp_url, [retried, single, skewed]) as s:
        yield s


def courier(calls: list[tuple[str, int]]) -> Participant:
    participant = Participant("courier")

    @participant.handler("courier.ship")
    async def ship(cmd: Command) -> dict[str, Any]:
        calls.append((cmd.saga, cmd.attempt))
        return {"tracking": f"T-{cmd.attempt}"}

    return participant


def depot(calls: list[tuple[str, str]]) -> Participant:
    participant = Participant("depot")

    @participant.handler("depot.hold")
    async def hold(cmd: Command) -> dict[str, Any]:
        calls.append((cmd.saga, "hold"))
        return {"held": True}

    @participant.handler("depot.release")
    async def release(cmd: Command) -> None:
        calls.append((cmd.saga, "release"))

    return participant


async def history_with(
    system: System, key: str, wanted: tuple[str, str | None]
) -> list[HistoryRecord]:
    async def probe() -> list[HistoryRecord] | None:
        state = await system.saga_by_key(key)
        if state is None:
            return None
        history = await system.history(state.saga_id)
        return history if wanted in events(history) else None

    return await eventually(probe, message=f"{wanted} in the history of {key}")


async def test_an_expired_command_is_refused_and_the_retry_runs(system: System) -> None:
    calls: list[tuple[str, int]] = []
    await system.start_order("p-1", {"parcel_id": "p1"}, saga="parcel_retried")
    # Nobody consumes courier's queue: attempt 1 waits there until it has expired.
    history = await history_with(system, "p-1", ("step_timed_out", "ship"))
    stale = dispatched(history, "ship")[1]

    await host(system, courier(calls))
    state = await system.wait_status("p-1", "completed", "compensated", "failed")

    assert state.status == "completed"
    assert state.steps[0].result == {"tracking": "T-2"}
    assert calls == [("parcel_retried", 2)], "the expired attempt 1 never reached the handler"
    history = await system.history(state.saga_id)
    # Its `expired` refusal reached the orchestrator, which had moved on to attempt 2.
    assert ("stale attempt", stale) in ignored(history)
    assert events(history).count(("step_dispatched", "ship")) == 2


async def test_an_expired_command_is_refused_after_its_saga_compensated(system: System) -> None:
    shipped: list[tuple[str, int]] = []
    depot_calls: list[tuple[str, str]] = []
    await host(system, depot(depot_calls))
    await system.start_order("p-2", {"parcel_id": "p2"}, saga="parcel_single")
    # The timeout is the saga's only news of `ship`: it compensates `hold` and ends.
    state = await system.wait_status("p-2", "compensated", "completed", "failed")
    assert state.status == "compensated"
    history = await system.history(state.saga_id)
    assert ("step_timed_out", "ship") in events(history)
    stale = dispatched(history, "ship")[1]

    await host(system, courier(shipped))
    history = await eventually(
        lambda: _ignored_reply(system, state.saga_id, stale), message="the refusal recorded"
    )

    assert shipped == [], "the expired command never reached the handler"
    assert ("late", stale) in ignored(history)
    # Commands are delivered at least once (the outbox relay may send one again when its
    # publish after commit is slow) and the depot keeps no barrier: one call of each kind.
    assert sorted(set(depot_calls)) == [("parcel_single", "hold"), ("parcel_single", "release")]
    after = await system.saga_by_key("p-2")
    assert after is not None and after.status == "compensated" and after.steps == state.steps


async def test_a_participant_that_finds_every_command_expired_is_treated_as_timing_out(
    system: System,
) -> None:
    """The refusal itself moves the saga: retried like a timeout, then compensated."""
    shipped: list[tuple[str, int]] = []
    depot_calls: list[tuple[str, str]] = []
    await host(system, depot(depot_calls))
    await host(system, courier(shipped), clock=lambda: _ahead(timedelta(minutes=5)))
    await system.start_order("p-3", {"parcel_id": "p3"}, saga="parcel_skewed")

    state = await system.wait_status("p-3", "compensated", "completed", "failed")

    assert state.status == "compensated"
    assert shipped == []
    history = await system.history(state.saga_id)
    assert ("step_timed_out", "ship") not in events(history), "the refusals, not the timer"
    errors = [
        (h.event, (h.detail or {})["error"]["type"])
        for h in history
        if h.event in ("step_retry_scheduled", "step_failed")
    ]
    assert errors == [("step_retry_scheduled", "expired"), ("step_failed", "expired")]
    assert depot_calls == [("parcel_skewed", "hold"), ("parcel_skewed", "release")]


def _ahead(by: timedelta) -> datetime:
    return utcnow() + by


async def _ignored_reply(system: System, saga_id: Any, command_id: str) -> list[HistoryRecord]:
    history = await system.history(saga_id)
    return history if any(cid == command_id for _, cid in ignored(history)) else []
