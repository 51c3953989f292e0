"""`saga run` checks that every command queue its sagas send to has a consumer. A step sent to
a misspelled service (`hotel.book`, where the participant serves `hotels`) is reported by
queue name in the log, the gauge, `/readyz` (which stays ready) and the step's timeout
error, until a participant for the service comes, which the next check logs."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import httpx
from pydantic import BaseModel
from structlog.testing import capture_logs

from adapters import metrics
from adapters.participant import Participant
from adapters.rabbitmq.topology import Topology
from orchestrator import Retry, Saga
from orchestrator.messages import Command
from tests.fixtures.polling import eventually
from tests.integration.harness import System, running_system
from tests.integration.hosted import detail, host


class Trip(BaseModel):
    trip_id: str


trip = Saga("trip", version=1, input=Trip, timeout=30)
trip.remote(
    "book_hotel", command="hotel.book", compensation=None, timeout=1, retry=Retry(max_attempts=1)
)


def hotel() -> Participant:
    participant = Participant("hotel")

    @participant.handler("hotel.book")
    async def book(command: Command) -> dict[str, Any]:
        return {"room": "12"}

    return participant


def consumers(queue: str) -> float | None:
    return metrics.REGISTRY.get_sample_value("saga_command_queue_consumers", {"queue": queue})


async def readyz(system: System) -> httpx.Response:
    assert system.orchestrator.http is not None
    async with httpx.AsyncClient(base_url=f"http://{system.orchestrator.http.address}") as api:
        return await api.get("/readyz")


async def test_a_queue_nobody_consumes_is_reported_until_its_participant_comes(
    database_url: str, amqp_url: str, topology: Topology
) -> None:
    queue = topology.name("commands.hotel")
    with capture_logs() as logs:
        async with running_system(
            database_url,
            topology,
            amqp_url,
            [trip],
            consumer_check_interval=0.2,
            http_bind="127.0.0.1:0",  # any free port
        ) as system:

            def logged(event: str) -> list[MutableMapping[str, Any]]:
                return [e for e in logs if e["event"] == event and e.get("queue") == queue]

            async def warned_twice() -> list[MutableMapping[str, Any]]:
                # Warned again at every check while nobody consumes.
                found = logged("command_queue_unconsumed")
                return found if len(found) >= 2 else []

            warning = (await eventually(warned_twice, message="command_queue_unconsumed"))[0]
            assert warning["log_level"] == "warning"
            assert warning["service"] == "hotel"
            assert (warning["sagas"], warning["steps"]) == (["trip"], ["trip.book_hotel"])
            assert "service 'hotel'" in warning["hint"] and "hotel.book" in warning["hint"]
            assert consumers(queue) == 0
            ready = await readyz(system)
            assert ready.status_code == 200  # a participant's fault: the API stays up
            assert ready.json()["status"] == "ready"
            assert ready.json()["unconsumed_queues"] == [queue]

            await system.start_order("trip-1", {"trip_id": "t1"}, saga="trip")
            state = await system.wait_status("trip-1", "compensated")
            nobody = f"nobody consumes {queue}: is its participant running"
            assert state.error is not None and nobody in state.error["message"]
            step = state.step("book_hotel")
            assert step is not None and step.error is not None
            assert step.error["unconsumed"] is True
            assert step.error["message"].startswith("no reply within 1s (start-to-close); ")
            history = await system.history(state.saga_id)
            [timed_out] = [detail(h) for h in history if h.event == "step_timed_out"]
            assert timed_out["unconsumed"] == queue

            await host(system, hotel())

            async def consumed() -> list[MutableMapping[str, Any]]:
                return logged("command_queue_consumed")

            [back] = await eventually(consumed, message="command_queue_consumed")
            assert (back["service"], back["consumers"]) == ("hotel", 1)
            assert consumers(queue) == 1
            assert (await readyz(system)).json()["unconsumed_queues"] == []
            await system.start_order("trip-2", {"trip_id": "t2"}, saga="trip")
            await system.wait_status("trip-2", "completed")


tour = Saga("tour", version=1, input=Trip, timeout=30)
tour.remote("ride", command="bus.book", compensation=None)
tour.remote("stay", command="hotel.book", compensation=None)


async def test_a_queue_deleted_since_start_up_counts_as_unconsumed_and_the_check_goes_on(
    database_url: str, amqp_url: str, topology: Topology
) -> None:
    bus, hotel_queue = topology.name("commands.bus"), topology.name("commands.hotel")
    with capture_logs() as logs:
        async with running_system(
            database_url, topology, amqp_url, [tour], consumer_check_interval=0.2
        ) as system:
            await host(system, hotel())
            await system.channel.queue_delete(bus)

            async def bus_warned_twice() -> bool:
                warned = [e for e in logs if e["event"] == "command_queue_unconsumed"]
                return len([e for e in warned if e["queue"] == bus]) >= 2

            await eventually(bus_warned_twice, message="command_queue_unconsumed for the bus")
            # The passive declare of the missing queue closed its channel; the queue after
            # it was still counted, on a new one.
            assert consumers(bus) == 0 and consumers(hotel_queue) == 1
            assert [e for e in logs if e["event"] == "sweep_failed"] == []
            assert system.orchestrator.command_queues.unconsumed_queues() == [bus]
