"""The committed protocol files describe the real traffic: the order saga on the real broker
(orders that complete, compensate and are cancelled mid-flight, a refused cancel, a large
order's fraud review signal and a refused signal, starts that are rejected and dead-lettered)
and a heartbeating step, with every message any part of the system published checked against
its JSON Schema and the AsyncAPI document's headers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import BaseModel

from adapters.participant import Participant
from adapters.rabbitmq.topology import Topology
from orchestrator import Saga
from orchestrator.messages import CancelSaga, Command, Exchange, SignalSaga, StartSaga
from orchestrator.state import StepStatus
from sagas.order import saga as order
from tests.fixtures.polling import eventually
from tests.fixtures.wire_schemas import DEAD_LETTER, HEADERS, Tap, tapping
from tests.integration.harness import System, order_input, running_system
from tests.integration.hosted import host


class Tick(BaseModel):
    n: int


# A step with a heartbeat timeout: its command asks for a start report, and the participant
# heartbeats while the handler runs.
ticker = Saga("ticker", version=1, input=Tick)
ticker.remote("tick", command="ticker.tick", timeout=10, heartbeat_timeout=1, compensation=None)


def ticker_participant() -> Participant:
    participant = Participant("ticker")

    @participant.handler("ticker.tick")
    async def tick(cmd: Command) -> dict[str, Any]:
        # Work that lasts longer than a heartbeat interval (a third of heartbeat_timeout),
        # so the run sends heartbeats whose bodies the schemas must accept.
        await asyncio.sleep(0.5)
        return {"ticked": cmd.payload["n"]}

    return participant


@pytest.fixture
async def system(database_url: str, topology: Topology, amqp_url: str) -> AsyncIterator[System]:
    async with running_system(database_url, topology, amqp_url, [order, ticker]) as sys_:
        yield sys_


INVALID_START = json.dumps(
    {"saga": "order", "key": "k-typo", "input": {}, "colour": "red"}
).encode()


async def test_every_message_exchanged_matches_the_committed_protocol_files(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    with tapping(monkeypatch, system.topology) as tap:
        await system.start_participants()
        await host(system, ticker_participant())
        await system.start_order("k-ok", order_input("ok-1"))
        await system.start_order("k-declined", order_input("no-1", customer="cust-declined"))
        await system.start_order("k-slow", order_input("slow-1"))
        await system.start_order("k-big", {**order_input("big-1"), "amount": "1500.00"})
        await system.send("start", StartSaga(saga="ticker", key="k-tick", input={"n": 7}))
        # Starts that make no saga: rejected (announced) and dead-lettered.
        await system.start_order("k-bad-input", {"order_id": "bad-1"})
        await system.send("start", StartSaga(saga="no_such_saga", key="k-nosuch", input={}))
        await system.publish_raw(Exchange.SAGAS, "start", INVALID_START)

        async def stalled() -> bool:
            state = await system.saga_by_key("k-slow")
            step = state.step("reserve_stock") if state else None
            return step is not None and step.status == StepStatus.RUNNING

        await eventually(stalled, message="the slow order's stock reservation in flight")
        await system.send("cancel", CancelSaga(key="k-slow", reason="changed my mind"))
        review = {"approved": True, "reviewer": "desk-ana", "note": ""}
        await system.send(
            "signal",
            SignalSaga(key="k-big", signal="fraud_review", signal_id="r-1", payload=review),
        )
        await system.wait_status("k-big", "completed")
        await system.wait_status("k-ok", "completed")
        await system.wait_status("k-declined", "compensated")
        await system.wait_status("k-slow", "cancelled")
        await system.wait_status("k-tick", "completed")
        await system.send("cancel", CancelSaga(key="k-ok", reason="too late"))
        await system.send(
            "signal",
            SignalSaga(key="k-ok", signal="fraud_review", signal_id="r-2", payload=review),
        )

        expected = {
            "order.completed",
            "order.compensated",
            "order.cancelled",
            "order.cancel_refused",
            "order.signal_refused",
            "order.rejected",
            "no_such_saga.rejected",
            "ticker.completed",
        }
        await eventually(lambda: _announced(tap, expected), message=f"the events {expected}")
        await eventually(lambda: _dead_letters(tap, 3), message="three starts dead-lettered")

    problems, checked = tap.problems(sent_invalid=frozenset({INVALID_START}))
    assert problems == []
    # Every schema (and the dead-letter headers) checked something.
    assert set(checked) == {*HEADERS, DEAD_LETTER}, checked
    assert checked["heartbeat.schema.json"] >= 2  # the start report, then one on the timer


async def _announced(tap: Tap, routing_keys: set[str]) -> bool:
    return routing_keys <= {p.routing_key for p in tap.seen if p.exchange == Exchange.EVENTS}


async def _dead_letters(tap: Tap, count: int) -> bool:
    return sum(p.exchange == Exchange.DEAD for p in tap.seen) >= count
