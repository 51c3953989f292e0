"""The ladder for what cannot finish, on real PostgreSQL and RabbitMQ: a compensation that
keeps failing parks the saga, and an operator's retry finishes it once the participant is
fixed; a parked step is skipped with a result; a parked compensation is marked done by hand;
a paused saga dispatches nothing, across an orchestrator restart, until resumed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import BaseModel

from adapters.participant import Participant, StepFailed
from adapters.rabbitmq.topology import Topology
from orchestrator import OperationRefused, Retry, Saga
from orchestrator.machine import (
    MarkCompensated,
    OperatorEvent,
    PauseRequested,
    ResumeRequested,
    RetryRequested,
    SkipRequested,
)
from orchestrator.messages import Command
from orchestrator.state import SagaState
from tests.fixtures.polling import eventually
from tests.integration.harness import System, running_system
from tests.integration.hosted import events, host

QUICK = Retry(max_attempts=3, initial_interval=0.05, max_interval=0.05, jitter=0)


class Parcel(BaseModel):
    parcel_id: str


# hold (undoable) -> ship (pivot) -> label (retriable, never undone)
parcel = Saga("parcel_ops", version=1, input=Parcel, timeout=5, compensation_retry=QUICK)
parcel.remote("hold", command="depot.hold", compensation="depot.release")
parcel.remote("ship", command="courier.ship", pivot=True, retry=Retry(max_attempts=1))
parcel.remote("label", command="printer.label", retry=QUICK)

# hold -> nap (a durable sleep) -> ship
napping = Saga("parcel_nap", version=1, input=Parcel, timeout=5)
napping.remote("hold", command="depot.hold", compensation="depot.release")
napping.sleep("nap", seconds=0.3)
napping.remote("ship", command="courier.ship", compensation=None)


class Shop:
    """Three participants whose failures the test switches on and off."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.release_broken = False
        self.ship_declines = False
        self.printer_broken = False

    def participants(self) -> list[Participant]:
        depot, courier, printer = (
            Participant("depot"),
            Participant("courier"),
            Participant("printer"),
        )

        @depot.handler("depot.hold")
        async def hold(cmd: Command) -> dict[str, Any]:
            self.calls.append("hold")
            return {"shelf": "A1"}

        @depot.handler("depot.release")
        async def release(cmd: Command) -> dict[str, Any]:
            self.calls.append("release")
            if self.release_broken:
                raise StepFailed("depot_offline", "the depot's system is down", retryable=True)
            return {"released": True}

        @courier.handler("courier.ship")
        async def ship(cmd: Command) -> dict[str, Any]:
            self.calls.append("ship")
            if self.ship_declines:
                raise StepFailed("no_courier", "no courier today", retryable=False)
            return {"tracking": "T-1"}

        @printer.handler("printer.label")
        async def label(cmd: Command) -> dict[str, Any]:
            self.calls.append("label")
            if self.printer_broken:
                raise StepFailed("jammed", "the printer is jammed", retryable=True)
            return {"label": "L-1"}

        return [depot, courier, printer]


@pytest.fixture
async def system(database_url: str, topology: Topology, amqp_url: str) -> AsyncIterator[System]:
    async with running_system(database_url, topology, amqp_url, [parcel, napping]) as s:
        yield s


@pytest.fixture
async def shop(system: System) -> Shop:
    shop = Shop()
    for participant in shop.participants():
        await host(system, participant)
    return shop


async def act(system: System, key: str, action: OperatorEvent) -> SagaState:
    state, engine = await system.saga_by_key(key), system.orchestrator.engine
    assert state is not None and engine is not None
    return await engine.operate(state.saga_id, action, "operator:alice")


async def test_a_compensation_failing_n_times_parks_and_retry_finishes_it(
    system: System, shop: Shop
) -> None:
    shop.ship_declines, shop.release_broken = True, True
    await system.start_order("c-1", {"parcel_id": "c-1"}, saga="parcel_ops")
    parked = await system.wait_status("c-1", "failed")
    assert parked.error is not None and parked.error["type"] == "compensation_failed"
    assert shop.calls.count("release") == QUICK.max_attempts
    with pytest.raises(OperationRefused, match="paused"):
        await act(system, "c-1", ResumeRequested("wrong button"))

    shop.release_broken = False  # the depot is fixed
    await act(system, "c-1", RetryRequested("depot back online"))
    done = await system.wait_status("c-1", "compensated")
    hold = done.step("hold")
    assert hold is not None and hold.status == "compensated"
    history = await system.history(done.saga_id)
    [retried] = [h for h in history if h.event == "saga_retried"]
    assert retried.actor == "operator:alice"
    assert retried.detail == {"reason": "depot back online"}
    assert shop.calls.count("release") == QUICK.max_attempts + 1


async def test_a_step_parked_past_the_pivot_is_skipped_with_a_result(
    system: System, shop: Shop
) -> None:
    shop.printer_broken = True
    await system.start_order("s-1", {"parcel_id": "s-1"}, saga="parcel_ops")
    parked = await system.wait_status("s-1", "failed")
    assert parked.error is not None and parked.error["type"] == "retries_exhausted"

    await act(system, "s-1", SkipRequested("label", {"label": "hand-written"}, "printed by hand"))
    done = await system.wait_status("s-1", "completed")
    assert done.results()["label"] == {"label": "hand-written"}
    assert shop.calls.count("release") == 0  # past the pivot nothing is undone


async def test_a_parked_compensation_is_marked_done_by_hand(system: System, shop: Shop) -> None:
    shop.ship_declines, shop.release_broken = True, True
    await system.start_order("m-1", {"parcel_id": "m-1"}, saga="parcel_ops")
    await system.wait_status("m-1", "failed")
    await act(system, "m-1", MarkCompensated("released the shelf by hand, ticket OPS-7"))
    done = await system.wait_status("m-1", "compensated")
    history = await system.history(done.saga_id)
    [marked] = [h for h in history if h.event == "step_marked_compensated"]
    assert marked.step == "hold" and marked.actor == "operator:alice"
    assert marked.detail == {"note": "released the shelf by hand, ticket OPS-7"}


async def test_pause_holds_dispatch_across_a_restart_and_resume_continues(
    system: System, shop: Shop
) -> None:
    await system.start_order("p-1", {"parcel_id": "p-1"}, saga="parcel_nap")
    state = await system.wait_status("p-1", "running")

    async def napping_now() -> bool:
        return ("sleep_started", "nap") in events(await system.history(state.saga_id))

    await eventually(napping_now, message="the saga to reach its sleep")
    paused = await act(system, "p-1", PauseRequested("inspect the parcel first"))
    assert paused.status == "paused"

    await system.restart_orchestrator()
    # Evidence that the new orchestrator's timers run past the paused nap's wake-up time: a
    # twin saga, started after the restart, sleeps the same nap and completes.
    await system.start_order("p-2", {"parcel_id": "p-2"}, saga="parcel_nap")
    await system.wait_status("p-2", "completed")

    held = await system.saga_by_key("p-1")
    assert held is not None and held.status == "paused"
    history = events(await system.history(held.saga_id))
    assert ("sleep_finished", "nap") not in history
    assert ("step_dispatched", "ship") not in history

    await act(system, "p-1", ResumeRequested("parcel inspected"))
    done = await system.wait_status("p-1", "completed")
    history = events(await system.history(done.saga_id))
    assert history.index(("saga_resumed", None)) < history.index(("sleep_finished", "nap"))
    assert shop.calls.count("ship") == 2  # once per saga
