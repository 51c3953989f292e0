"""Child sagas on real services: a step starts another saga and waits for its outcome; a
failed child fails the step, a compensated step undoes its completed child, and cancelling
the parent cancels the running child."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from pydantic import BaseModel

from adapters.clock import utcnow
from adapters.participant import Participant, StepFailed
from adapters.participant.worker import ParticipantWorker
from adapters.rabbitmq.connection import open_channel
from adapters.rabbitmq.topology import Topology
from orchestrator import Retry, Saga
from orchestrator.definition import GuardContext
from orchestrator.errors import DefinitionError
from orchestrator.messages import CancelSaga, Command
from orchestrator.registry import Registry
from orchestrator.state import SagaStatus
from tests.integration.harness import System, running_system

ONCE = Retry(max_attempts=1)


class Purchase(BaseModel):
    order: str
    truck_fails: bool = False
    card_fails: bool = False
    hold_truck: bool = False


class Shipment(BaseModel):
    order: str
    truck_fails: bool = False
    hold_truck: bool = False


def shipment_input(ctx: GuardContext) -> dict[str, object]:
    return {
        "order": ctx.input["order"],
        "truck_fails": ctx.input["truck_fails"],
        "hold_truck": ctx.input["hold_truck"],
    }


shipment = Saga("shipment", version=1, input=Shipment, timeout=10)
shipment.remote("book_truck", command="fleet.book", compensation="fleet.unbook", retry=ONCE)
shipment.remote("label", command="fleet.label", retry=ONCE, compensation=None)

purchase = Saga("purchase", version=1, input=Purchase, timeout=10)
purchase.remote("reserve", command="store.reserve", compensation="store.release", retry=ONCE)
purchase.child("ship", saga="shipment", input=shipment_input)
purchase.remote("charge", command="store.charge", pivot=True, retry=ONCE)


class World:
    def __init__(self) -> None:
        self.booked: set[str] = set()
        self.reserved: set[str] = set()
        self.truck_taken = asyncio.Event()
        self.release_truck = asyncio.Event()

    def participants(self) -> list[Participant]:
        fleet, store = Participant("fleet"), Participant("store")

        @fleet.handler("fleet.book")
        async def book(cmd: Command) -> dict[str, str]:
            if cmd.payload["hold_truck"]:
                self.truck_taken.set()
                await asyncio.wait_for(self.release_truck.wait(), timeout=10)
            if cmd.payload["truck_fails"]:
                raise StepFailed("no_truck", "no truck free", retryable=False)
            self.booked.add(cmd.payload["order"])
            return {"truck": "T-1"}

        @fleet.handler("fleet.unbook")
        async def unbook(cmd: Command) -> None:
            self.booked.discard(cmd.payload["order"])

        @fleet.handler("fleet.label")
        async def label(cmd: Command) -> dict[str, str]:
            return {"label": f"L-{cmd.payload['order']}"}

        @store.handler("store.reserve")
        async def reserve(cmd: Command) -> None:
            self.reserved.add(cmd.payload["order"])

        @store.handler("store.release")
        async def release(cmd: Command) -> None:
            self.reserved.discard(cmd.payload["order"])

        @store.handler("store.charge")
        async def charge(cmd: Command) -> dict[str, bool]:
            if cmd.payload["card_fails"]:
                raise StepFailed("declined", "card declined", retryable=False)
            return {"charged": True}

        return [fleet, store]


@pytest.fixture
async def world(
    database_url: str, topology: Topology, amqp_url: str
) -> AsyncIterator[tuple[System, World]]:
    world = World()
    async with running_system(database_url, topology, amqp_url, [purchase, shipment]) as system:
        for participant in world.participants():
            channel = await open_channel(system.connection)
            worker = ParticipantWorker(participant, channel, topology, clock=utcnow, prefetch=10)
            await worker.start()
            system.workers[participant.service] = worker
        yield system, world


async def test_the_step_waits_for_the_child_and_takes_its_results(
    world: tuple[System, World],
) -> None:
    system, shop = world
    await system.start_order("p-1", {"order": "o1"}, saga="purchase")
    parent = await system.wait_status("p-1", SagaStatus.COMPLETED)
    child = await system.wait_status(f"{parent.saga_id}:ship", SagaStatus.COMPLETED)
    assert parent.results()["ship"] == {"book_truck": {"truck": "T-1"}, "label": {"label": "L-o1"}}
    assert child.parent is not None and child.parent.saga_id == parent.saga_id
    assert child.input["order"] == "o1"
    assert shop.booked == {"o1"} and shop.reserved == {"o1"}


async def test_a_failed_child_fails_the_step_and_the_parent_compensates(
    world: tuple[System, World],
) -> None:
    system, shop = world
    await system.start_order("p-2", {"order": "o2", "truck_fails": True}, saga="purchase")
    parent = await system.wait_status("p-2", SagaStatus.COMPENSATED)
    child = await system.wait_status(f"{parent.saga_id}:ship", SagaStatus.COMPENSATED)
    assert parent.error is not None and parent.error["step"] == "ship"
    ship = parent.step("ship")
    assert ship is not None and ship.error is not None
    assert ship.error["type"] == "child_compensated"
    assert child.error is not None and child.error["step"] == "book_truck"
    assert shop.reserved == set() and shop.booked == set()


async def test_compensating_the_step_undoes_the_completed_child(
    world: tuple[System, World],
) -> None:
    system, shop = world
    await system.start_order("p-3", {"order": "o3", "card_fails": True}, saga="purchase")
    parent = await system.wait_status("p-3", SagaStatus.COMPENSATED)
    child = await system.wait_status(f"{parent.saga_id}:ship", SagaStatus.CANCELLED)
    history = [h.event for h in await system.history(child.saga_id)]
    assert history.index("saga_completed") < history.index("undo_requested")
    assert "step_compensated" in history and history[-1] == "parent_answered"
    assert shop.booked == set() and shop.reserved == set()


async def test_cancelling_the_parent_cancels_the_running_child(
    world: tuple[System, World],
) -> None:
    system, shop = world
    await system.start_order("p-4", {"order": "o4", "hold_truck": True}, saga="purchase")
    await asyncio.wait_for(shop.truck_taken.wait(), timeout=10)
    await system.send("cancel", CancelSaga(key="p-4", reason="customer changed their mind"))
    parent = await system.wait_status("p-4", SagaStatus.COMPENSATING, SagaStatus.CANCELLED)
    shop.release_truck.set()  # the truck booking in flight answers; the child undoes it
    parent = await system.wait_status("p-4", SagaStatus.CANCELLED)
    child = await system.wait_status(f"{parent.saga_id}:ship", SagaStatus.CANCELLED)
    assert "customer changed their mind" in (child.cancel_reason or "")
    assert shop.booked == set() and shop.reserved == set()


def test_a_compensated_child_step_needs_a_child_without_a_pivot() -> None:
    pivoted = Saga("shipment", version=2, input=Shipment)
    pivoted.remote("go", command="fleet.go", pivot=True)
    with pytest.raises(DefinitionError, match="cannot be undone"):
        Registry([purchase, shipment, pivoted])
    with pytest.raises(DefinitionError, match="not loaded"):
        Registry([purchase])
