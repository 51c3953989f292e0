"""Time limits on real PostgreSQL and RabbitMQ: a command left in its queue past the step's
schedule-to-start timeout is never executed; a slow but started step is kept alive by its
start report; a saga stuck mid-way is compensated when its deadline passes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import BaseModel

from adapters.participant import Participant
from adapters.rabbitmq.topology import Topology
from orchestrator import Retry, Saga
from orchestrator.messages import Command
from tests.fixtures.polling import eventually
from tests.integration.harness import System, running_system
from tests.integration.hosted import detail, events, host, ignored


class Parcel(BaseModel):
    parcel_id: str


# Two attempts, each allowed 0.3 s in the queue; running may take up to 5 s once started.
queued = Saga("parcel_queued", version=1, input=Parcel)
queued.remote(
    "ship",
    command="courier.ship",
    timeout=5,
    schedule_to_start=0.3,
    retry=Retry(max_attempts=2, initial_interval=0.05, max_interval=0.05, jitter=0),
    compensation=None,
)

# A whole-saga deadline of 1 s; the courier's timeout alone would wait 30 s.
bounded = Saga("parcel_bounded", version=1, input=Parcel, deadline=1.0)
bounded.remote("hold", command="depot.hold", compensation="depot.release", timeout=5)
bounded.remote(
    "ship", command="courier.ship", timeout=30, retry=Retry(max_attempts=1), compensation=None
)


@pytest.fixture
async def system(database_url: str, topology: Topology, amqp_url: str) -> AsyncIterator[System]:
    async with running_system(database_url, topology, amqp_url, [queued, bounded]) as s:
        yield s


def courier(calls: list[int], *, seconds: float = 0.0, hang: asyncio.Event | None = None) -> Any:
    participant = Participant("courier")

    @participant.handler("courier.ship")
    async def ship(cmd: Command) -> dict[str, Any]:
        calls.append(cmd.attempt)
        if hang is not None:
            await hang.wait()
        await asyncio.sleep(seconds)  # the handler's own work, longer than its start window
        return {"tracking": f"T-{cmd.attempt}"}

    return participant


def depot(calls: list[str]) -> Participant:
    participant = Participant("depot")

    @participant.handler("depot.hold")
    async def hold(cmd: Command) -> dict[str, Any]:
        calls.append("hold")
        return {"held": True}

    @participant.handler("depot.release")
    async def release(cmd: Command) -> dict[str, Any]:
        calls.append("release")
        return {"released": True}

    return participant


async def test_a_command_left_in_the_queue_past_schedule_to_start_is_never_executed(
    system: System,
) -> None:
    # No courier runs: both attempts sit in the queue past their start window.
    await system.start_order("q-1", {"parcel_id": "q-1"}, saga="parcel_queued")
    state = await system.wait_status("q-1", "compensated")
    history = await system.history(state.saga_id)
    timeouts = [detail(h)["timeout"] for h in history if h.event == "step_timed_out"]
    assert timeouts == ["schedule_to_start", "schedule_to_start"]

    # The courier finally comes up and takes both stale commands: it refuses them unrun.
    calls: list[int] = []
    await host(system, courier(calls))

    async def both_refused() -> list[tuple[str, str]] | None:
        found = ignored(await system.history(state.saga_id))
        return found if len(found) == 2 else None

    refused = await eventually(both_refused, message="both stale commands answered")
    assert [reason for reason, _ in refused] == ["late", "late"]
    assert calls == []


async def test_a_started_step_may_run_past_its_start_window(system: System) -> None:
    calls: list[int] = []
    # 1 s of work against a 0.3 s start window: the start report moves the deadline to the
    # 5 s start-to-close timeout.
    await host(system, courier(calls, seconds=1.0))
    await system.start_order("q-2", {"parcel_id": "q-2"}, saga="parcel_queued")
    state = await system.wait_status("q-2", "completed")
    history = events(await system.history(state.saga_id))
    assert ("step_started", "ship") in history
    assert ("step_timed_out", "ship") not in history
    assert calls == [1]


async def test_the_saga_deadline_compensates_a_saga_stuck_mid_way(system: System) -> None:
    depot_calls: list[str] = []
    stuck = asyncio.Event()  # never set: the courier hangs
    await host(system, depot(depot_calls))
    await host(system, courier([], hang=stuck))
    await system.start_order("d-1", {"parcel_id": "d-1"}, saga="parcel_bounded")
    state = await system.wait_status("d-1", "compensated", timeout=10)

    assert state.error is not None and state.error["type"] == "deadline_exceeded"
    history = events(await system.history(state.saga_id))
    assert history.index(("saga_deadline_exceeded", None)) < history.index(
        ("step_compensated", "hold")
    )
    # The in-flight ship was cut off at the deadline, not waited for (its timeout is 30 s).
    assert ("step_failed", "ship") in history and ("step_timed_out", "ship") not in history
    assert depot_calls == ["hold", "release"]
    stuck.set()  # let the hung handler finish so the worker stops cleanly
