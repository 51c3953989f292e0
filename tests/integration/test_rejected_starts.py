"""Starts a sender in any language gets wrong, published raw to the real broker: each one the
orchestrator dead-letters (kept for an operator, with the reason) is announced on
`saga.events` as `<saga>.rejected` (`saga.rejected` when it names no valid saga), so the
sender hears why nothing started. A body that is not even a JSON object is only
dead-lettered. A key reused with other input starts nothing and is recorded in the history
of the saga that has it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aio_pika.abc import AbstractIncomingMessage
from pydantic import BaseModel

from adapters.rabbitmq.consumer import DEAD_REASON_HEADER
from adapters.rabbitmq.topology import DEAD_QUEUE, Topology
from orchestrator import Saga
from tests.fixtures.polling import eventually
from tests.fixtures.rabbitmq import take
from tests.integration.harness import System, drain, running_system
from tests.integration.hosted import Meter

pytestmark = pytest.mark.timeout(60)

DEDUPLICATED = "saga_starts_deduplicated_total"


class Trip(BaseModel):
    trip_id: str
    nights: int


# Nobody serves `trips.*`: a saga that starts waits at its first step, which is all a
# reused key needs.
trip = Saga("trip", version=1, input=Trip, timeout=30)
trip.remote("book", command="trips.book", compensation=None)


@pytest.fixture
async def system(database_url: str, topology: Topology, amqp_url: str) -> AsyncIterator[System]:
    async with running_system(database_url, topology, amqp_url, [trip]) as sys_:
        yield sys_


async def start_raw(system: System, body: dict[str, Any] | bytes) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    await system.publish_raw("sagas", "start", raw)


async def dead_letters(system: System, count: int) -> list[AbstractIncomingMessage]:
    found: list[AbstractIncomingMessage] = []

    async def probe() -> list[AbstractIncomingMessage] | None:
        found.extend(await take(system.channel, system.topology.name(DEAD_QUEUE)))
        return found if len(found) >= count else None

    return await eventually(probe, message=f"{count} dead-lettered starts")


async def test_a_start_that_is_dead_lettered_is_announced_as_rejected(system: System) -> None:
    rejected = await system.spy("saga.events", "*.rejected")
    bad: list[dict[str, Any]] = [
        {"saga": "nosuch", "key": "r-1", "input": {}},
        {"saga": "trip", "key": "r-2", "input": {"trip_id": "t"}},
        {"saga": "trip", "input": {"trip_id": "t", "nights": 2}},
        {"saga": "Not a saga!", "key": "r-4", "input": {}},
        {"saga": 5, "key": "r-5", "input": {}},
    ]
    for body in bad:
        await start_raw(system, body)

    by_key: dict[str | None, dict[str, Any]] = {}

    async def announced() -> bool:
        for message in await take(system.channel, rejected.name):
            event = json.loads(message.body)
            by_key[event["key"]] = {"routing_key": message.routing_key, **event}
        return len(by_key) == len(bad)

    await eventually(announced, message="every bad start announced")
    assert by_key["r-1"]["routing_key"] == "nosuch.rejected"
    assert by_key["r-1"]["error"] == {
        "type": "unknown_saga",
        "message": "no saga named 'nosuch'; known: trip",
    }
    assert by_key["r-2"]["routing_key"] == "trip.rejected"
    assert by_key["r-2"]["error"]["type"] == "invalid_input"
    assert "nights: Field required" in by_key["r-2"]["error"]["message"]
    assert by_key[None]["routing_key"] == "trip.rejected"  # no key: announced all the same
    assert by_key[None]["error"] == {
        "type": "invalid_start",
        "message": "field key: Field required",
    }
    assert by_key["r-4"]["routing_key"] == "saga.rejected"  # no valid saga name in it
    assert by_key["r-4"]["saga"] is None and by_key["r-4"]["error"]["type"] == "unknown_saga"
    assert by_key["r-5"]["routing_key"] == "saga.rejected"
    assert by_key["r-5"]["error"] == {
        "type": "invalid_start",
        "message": "field saga: Input should be a valid string",
    }
    for event in by_key.values():
        assert event["saga_id"] is None and event["status"] == "rejected"

    # Announced, and dead-lettered all the same: the start is kept for an operator.
    dead = await dead_letters(system, len(bad))
    assert sorted(json.loads(m.body).get("key", "") for m in dead) == [
        "",
        "r-1",
        "r-2",
        "r-4",
        "r-5",
    ]
    assert all(m.headers.get(DEAD_REASON_HEADER) for m in dead)
    assert await system.saga_by_key("r-1") is None and await system.saga_by_key("r-2") is None


async def test_a_body_that_is_no_json_object_is_dead_lettered_unannounced(
    system: System,
) -> None:
    rejected = await system.spy("saga.events", "#")
    await start_raw(system, b"{not json")
    await start_raw(system, b'["saga", "trip"]')
    await dead_letters(system, 2)
    # The orchestrator announces before it dead-letters: anything it sent is here by now.
    assert await drain(rejected) == []


async def test_a_key_reused_with_other_input_is_recorded_in_its_sagas_history(
    system: System,
) -> None:
    await start_raw(system, {"saga": "trip", "key": "r-9", "input": {"trip_id": "a", "nights": 2}})
    state = await system.wait_status("r-9", "running")
    meter = Meter()
    for nights in (2, 5):  # the same start again, then the key with other input
        await start_raw(
            system, {"saga": "trip", "key": "r-9", "input": {"trip_id": "a", "nights": nights}}
        )

    async def repeats() -> list[Any] | None:
        if meter.delta(DEDUPLICATED).get("trip") != 2:  # both handled
            return None
        history = await system.history(state.saga_id)
        return [(h.event, h.detail, h.actor) for h in history if h.event == "start_repeated"]

    found = await eventually(repeats, message="the reused key in the saga's history")
    assert found == [
        ("start_repeated", {"same_input": False, "differing_fields": ["nights"]}, "broker")
    ]
    again = await system.saga_by_key("r-9")
    assert again is not None and again.input == {"trip_id": "a", "nights": 2}
