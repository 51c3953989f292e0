"""Signals a saga cannot take, published over AMQP to the real broker: each is refused,
recorded in the saga's history where there is a saga, and announced on `saga.events` as
`<saga>.signal_refused` with the reason, so the sender hears why; the saga goes on as if it
had not come. A body that is no signal at all is dead-lettered with its reason."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue

from adapters.rabbitmq.consumer import DEAD_REASON_HEADER, ORIGINAL_ROUTING_KEY_HEADER
from adapters.rabbitmq.topology import Topology
from orchestrator.messages import Exchange
from tests.fixtures.polling import eventually
from tests.integration.harness import System, drain, running_system
from tests.integration.hosted import host
from tests.integration.signal_sagas import SAGAS, Claims, entries, reached, send_signal

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def system(database_url: str, topology: Topology, amqp_url: str) -> AsyncIterator[System]:
    async with running_system(database_url, topology, amqp_url, SAGAS) as s:
        await host(s, Claims().participant())
        yield s


class Refusals:
    """The `*.signal_refused` events a spy queue received, by signal_id, routing key added."""

    def __init__(self, queue: AbstractQueue) -> None:
        self.queue = queue
        self.found: dict[str, dict[str, Any]] = {}

    async def wait(self, count: int) -> dict[str, dict[str, Any]]:
        """Every event so far, once `count` came."""

        async def probe() -> dict[str, dict[str, Any]] | None:
            while (message := await self.queue.get(no_ack=True, fail=False)) is not None:
                event = json.loads(message.body)
                self.found[event["error"]["signal_id"]] = {
                    "routing_key": message.routing_key,
                    **event,
                }
            return self.found if len(self.found) >= count else None

        return await eventually(probe, message=f"{count} signal_refused events")


async def test_signals_the_saga_cannot_take_are_recorded_and_announced(system: System) -> None:
    refused = Refusals(await system.spy(Exchange.EVENTS, "*.signal_refused"))
    await system.start_order("r-1", {"claim_id": "r-1"}, saga="claim")
    saga_id = await reached(system, "r-1", "wait_started", "approval")
    await send_signal(system, "refund", "s-name", {"approved": True, "by": "ann"}, key="r-1")
    await send_signal(system, "approval", "s-payload", {"approved": "maybe"}, key="r-1")

    events = await refused.wait(2)
    assert events["s-name"]["routing_key"] == "claim.signal_refused"
    assert events["s-name"]["saga_id"] == str(saga_id) and events["s-name"]["key"] == "r-1"
    assert events["s-name"]["error"] == {
        "type": "signal_refused",
        "message": "saga claim v1 never waits for signal 'refund'; it waits for: approval",
        "reason": "not_waited_for",
        "signal": "refund",
        "signal_id": "s-name",
    }
    assert events["s-payload"]["error"]["reason"] == "invalid_payload"
    assert "approved" in events["s-payload"]["error"]["message"]

    # Neither ended the wait: the right signal still does.
    await send_signal(system, "approval", "s-good", {"approved": True, "by": "ann"}, key="r-1")
    state = await system.wait_status("r-1", "completed")
    # And one for the finished saga is refused too.
    await send_signal(system, "approval", "s-late", {"approved": False, "by": "bo"}, key="r-1")
    late = (await refused.wait(3))["s-late"]
    assert late["routing_key"] == "claim.signal_refused" and late["saga_id"] == str(saga_id)
    assert late["error"]["reason"] == "finished"
    assert late["error"]["message"] == "the saga is completed: it waits for nothing"

    history = await system.history(state.saga_id)
    recorded = {d["signal_id"]: d for d in entries(history, "signal_refused")}
    assert {i: d["reason"] for i, d in recorded.items()} == {
        "s-name": "not_waited_for",
        "s-payload": "invalid_payload",
        "s-late": "finished",
    }
    assert [h.step for h in history if h.event == "signal_refused"] == [
        None,
        "approval",
        "approval",
    ]
    [finished] = entries(history, "wait_finished")
    assert finished["signal_id"] == "s-good"
    approval = state.step("approval")
    assert approval is not None and approval.result == {"approved": True, "by": "ann"}


async def test_a_signal_for_no_saga_is_announced(system: System) -> None:
    refused = Refusals(await system.spy(Exchange.EVENTS, "*.signal_refused"))
    await send_signal(system, "approval", "s-nobody", {}, key="nobody", saga="claim")
    await send_signal(system, "approval", "s-unnamed", {}, key="nobody")

    events = await refused.wait(2)
    assert events["s-nobody"]["routing_key"] == "claim.signal_refused"
    assert events["s-nobody"]["saga_id"] is None and events["s-nobody"]["key"] == "nobody"
    assert events["s-nobody"]["error"]["reason"] == "unknown_saga"
    assert events["s-nobody"]["error"]["message"] == "no saga named 'claim' has key 'nobody'"
    # No saga name in the signal, and no saga to take one from.
    assert events["s-unnamed"]["routing_key"] == "saga.signal_refused"
    assert events["s-unnamed"]["saga"] is None
    assert events["s-unnamed"]["error"]["message"] == "no saga has key 'nobody'"


async def test_a_body_that_is_no_signal_is_dead_lettered_with_its_reason(system: System) -> None:
    dead = await system.spy(Exchange.DEAD, "#")
    announced = await system.spy(Exchange.EVENTS, "#")
    await system.start_order("r-2", {"claim_id": "r-2"}, saga="claim")
    saga_id = await reached(system, "r-2", "wait_started", "approval")
    bad: list[bytes] = [
        b"{not json",
        json.dumps({"key": "r-2", "signal": "approval", "payload": {}}).encode(),
        json.dumps(
            {"key": "r-2", "saga_id": str(saga_id), "signal": "approval", "signal_id": "s-1"}
        ).encode(),
        json.dumps({"key": "r-2", "signal": "Approval!", "signal_id": "s-2"}).encode(),
    ]
    for body in bad:
        await system.publish_raw(Exchange.SAGAS, "signal", body)

    found: list[AbstractIncomingMessage] = []

    async def all_dead() -> list[AbstractIncomingMessage] | None:
        while (message := await dead.get(no_ack=True, fail=False)) is not None:
            found.append(message)
        return found if len(found) >= len(bad) else None

    await eventually(all_dead, message="every bad signal dead-lettered")
    reasons = {m.body: str((m.headers or {})[DEAD_REASON_HEADER]) for m in found}
    assert reasons[bad[0]].startswith("invalid JSON")
    assert reasons[bad[1]] == "field signal_id: Field required"
    assert "give exactly one of 'key' or 'saga_id'" in reasons[bad[2]]
    assert reasons[bad[3]].startswith("field signal: String should match pattern")
    assert {(m.headers or {})[ORIGINAL_ROUTING_KEY_HEADER] for m in found} == {"signal"}

    # Nothing reached the saga, which waits on; nothing was announced.
    state = await system.saga_by_key("r-2")
    assert state is not None and state.status == "running"
    history = await system.history(saga_id)
    assert entries(history, "signal_refused") == entries(history, "wait_finished") == []
    assert [e for e in await drain(announced) if e["status"] == "signal_refused"] == []
