"""Four `saga run` processes on one database and broker prefix, 200 sagas that each wait for a
signal (tests/e2e/review_saga.py), and each saga's signal published over AMQP at a seeded
random moment (tests/e2e/signal_desk.py): a third while the step before the wait is in flight
(held, then taken when the wait begins), the others up to 2 s after it answered, a quarter
sent twice with the same signal_id, and a few followed, once taken, by a second signal with
another signal_id. Whichever process takes each one: every saga completes with the payload of
its first signal as the wait's result (and the step after it sent that), each signal applied
once (one wait_finished per saga, a duplicate changes nothing), every second signal refused,
recorded and announced as `review.signal_refused`, and nothing dead-lettered.

Set SAGA_SIGNALS_SEED to replay a run's plan (the seed and the figures are printed; run with
-s to see them)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel, AbstractRobustConnection
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters.clock import utcnow
from adapters.participant.worker import ParticipantWorker
from adapters.postgres.database import make_engine
from adapters.postgres.store import PostgresStore
from adapters.rabbitmq.connection import connect, open_channel
from adapters.rabbitmq.topology import (
    CANCELS_QUEUE,
    DEAD_QUEUE,
    REPLIES_QUEUE,
    REQUESTS_QUEUE,
    Topology,
)
from examples.processes import Processes
from orchestrator.messages import Exchange, StartSaga
from orchestrator.ports import SagaQuery
from orchestrator.state import SagaState
from tests.e2e.history_check import Entry, check_history
from tests.e2e.signal_desk import Desk, Plan, Watch, plan
from tests.e2e.test_many_orchestrators import (
    all_finished,
    consumer_count,
    log_events,
    read_history,
)
from tests.fixtures.fleet import FLEET
from tests.fixtures.polling import eventually
from tests.fixtures.rabbitmq import leftovers
from tests.fixtures.settings import process_env

pytestmark = [pytest.mark.e2e, FLEET, pytest.mark.timeout(180)]

ORCHESTRATORS = 4
SAGAS = 200


@pytest.fixture
def procs(
    database_url: str, topology: Topology, amqp_url: str, tmp_path: Path
) -> Iterator[Processes]:
    p = Processes(
        env=process_env(
            database_url,
            amqp_url,
            topology.prefix,
            SAGA_MODULES="tests.e2e.review_saga",
            SAGA_TIMER_INTERVAL="0.1",
            SAGA_RELAY_INTERVAL="0.3",
            SAGA_RELAY_AGE="2.0",
            SAGA_DB_POOL_SIZE="8",
        ),
        log_dir=tmp_path,
    )
    yield p
    p.stop_all()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(database_url, pool_size=3)
    yield engine
    await engine.dispose()


@pytest.fixture
async def broker(amqp_url: str) -> AsyncIterator[AbstractRobustConnection]:
    """The test's own connection: its spy queues go when it closes."""
    connection = await connect(amqp_url, name="many-signals-test")
    yield connection
    await connection.close()


async def test_signals_at_random_moments_to_four_orchestrators_are_each_applied_once(
    procs: Processes,
    db: AsyncEngine,
    broker: AbstractRobustConnection,
    topology: Topology,
) -> None:
    began = time.monotonic()
    seed = int(os.environ.get("SAGA_SIGNALS_SEED") or random.SystemRandom().randrange(2**31))
    print(f"\nmany signals: seed {seed} (SAGA_SIGNALS_SEED={seed} replays the plan)")
    plans = plan(SAGAS, seed, f"s{time.monotonic_ns() % 10**6}")

    for i in range(ORCHESTRATORS):
        procs.start_orchestrator(f"orchestrator-{i}")
    channel = await open_channel(broker)
    await topology.declare_core(channel)
    refused = await hear_refusals(channel, topology)
    stop = asyncio.Event()
    watch = Watch(db)
    watching = asyncio.create_task(watch.run(stop))
    desk = Desk(channel, topology, plans, watch)
    worker = ParticipantWorker(
        desk.participant(), await open_channel(broker), topology, clock=utcnow, prefetch=SAGAS
    )
    try:
        await worker.start()
        await ready(broker, topology)
        print(f"ready after {time.monotonic() - began:.1f}s")
        await start_sagas(channel, topology, plans)
        await eventually(
            lambda: all_finished(db, SAGAS), timeout=90, interval=0.5, message="every saga finished"
        )
        to_send = sum(1 + (p.again is not None) + p.second for p in plans)

        async def all_sent() -> bool:
            return desk.published >= to_send and len(refused) >= sum(p.second for p in plans)

        await eventually(all_sent, timeout=30, message="every signal sent, every refusal heard")
        results = await eventually(
            lambda: delivered(procs, to_send), timeout=30, message="every signal handled"
        )
    finally:
        stop.set()
        await watching
        await desk.stop()
        await worker.stop()
    took = time.monotonic() - began

    assert desk.failures == []
    states = {s.key: s for s in await PostgresStore(db).find(SagaQuery(limit=SAGAS * 2))}
    history = await read_history(db)
    print(figures(plans, results, history, took))
    check_outcomes(plans, states, desk)
    check_signals(plans, states, history)
    announced = sorted(json.loads(m.body)["error"]["signal_id"] for m in refused)
    assert announced == sorted(f"{p.ticket_id}:second" for p in plans if p.second)
    assert results["duplicate"] == sum(p.again is not None for p in plans)
    assert results["refused"] == sum(p.second for p in plans)
    assert results["taken"] + results["held"] == SAGAS
    assert results["held"] >= sum(p.early for p in plans)

    # Each transition recorded once, whichever process made it; nothing dead-lettered.
    problems = check_history(history, {s.saga_id: s.status.value for s in states.values()})
    assert problems == [], "\n".join(problems[:20])
    dead = await leftovers(channel, topology.name(DEAD_QUEUE))
    assert dead == [], [(m.routing_key, m.headers) for m in dead[:5]]


async def hear_refusals(
    channel: AbstractRobustChannel, topology: Topology
) -> list[AbstractIncomingMessage]:
    """Every `review.signal_refused` event published from now on, as it comes."""
    refused: list[AbstractIncomingMessage] = []
    spy = await channel.declare_queue(exclusive=True, auto_delete=True)
    await spy.bind(topology.name(Exchange.EVENTS), "review.signal_refused")

    async def heard(message: AbstractIncomingMessage) -> None:
        refused.append(message)

    await spy.consume(heard, no_ack=True)
    return refused


async def start_sagas(
    channel: AbstractRobustChannel, topology: Topology, plans: list[Plan]
) -> None:
    sagas = await channel.get_exchange(topology.name(Exchange.SAGAS), ensure=False)
    for p in plans:
        start = StartSaga(saga="review", key=p.key, input={"ticket_id": p.ticket_id})
        await sagas.publish(
            aio_pika.Message(
                start.model_dump_json(exclude_none=True).encode(),
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key="start",
            mandatory=True,
        )


def check_outcomes(plans: list[Plan], states: dict[str, SagaState], desk: Desk) -> None:
    """Every saga completed, its wait's result the first signal's payload, and the step after
    the wait was sent that payload."""
    wrong = {
        p.key: states[p.key].status.value for p in plans if states[p.key].status != "completed"
    }
    assert wrong == {}
    for p in plans:
        verdict = states[p.key].step("verdict")
        assert verdict is not None and verdict.result == p.verdict("first"), p
        records = desk.records[p.ticket_id]
        assert records and all(r == p.verdict("first") for r in records), p


def check_signals(plans: list[Plan], states: dict[str, SagaState], history: list[Entry]) -> None:
    """Each signal applied once: one wait_finished per saga, taking the first signal; every
    early one held before its wait began; only the second signals refused, and recorded."""
    by_saga = {states[p.key].saga_id: p for p in plans}
    finishes: dict[UUID, list[dict[str, Any]]] = {saga_id: [] for saga_id in by_saga}
    refusals: dict[UUID, list[dict[str, Any]]] = {saga_id: [] for saga_id in by_saga}
    for e in history:
        if e.event == "wait_finished":
            finishes[e.saga_id].append(dict(e.detail or {}))
        elif e.event == "signal_refused":
            refusals[e.saga_id].append(dict(e.detail or {}))
    for saga_id, p in by_saga.items():
        [finish] = finishes[saga_id]
        assert finish["signal_id"] == f"{p.ticket_id}:first", p
        if p.early:
            assert finish["held"] is True, p
        expected = [f"{p.ticket_id}:second"] if p.second else []
        assert [r["signal_id"] for r in refusals[saga_id]] == expected, p
        assert all(r["reason"] in ("wait_over", "finished") for r in refusals[saga_id]), p


async def ready(broker: AbstractRobustConnection, topology: Topology) -> None:
    """Every orchestrator consumes the requests, the cancels (signals too) and the replies."""
    queues = (REQUESTS_QUEUE, CANCELS_QUEUE, REPLIES_QUEUE)

    async def consuming() -> bool:
        counts = [await consumer_count(broker, topology.name(q)) for q in queues]
        return all(c >= ORCHESTRATORS for c in counts)

    await eventually(consuming, timeout=60, interval=0.2, message="every orchestrator consuming")


async def delivered(procs: Processes, count: int) -> Counter[str] | None:
    """What the orchestrators made of the signals (taken, held, duplicate, refused), by their
    `signal_delivered` log lines, once they handled `count`."""
    results = Counter(
        str(e.get("result"))
        for name in procs.procs
        if name.startswith("orchestrator-")
        for e in log_events(procs.log_dir / f"{name}.log")
        if e["event"] == "signal_delivered"
    )
    return results if sum(results.values()) >= count else None


def figures(plans: list[Plan], results: Counter[str], history: list[Entry], took: float) -> str:
    """The run's figures, for whoever runs it with -s."""
    waited = [
        float((e.detail or {}).get("seconds", 0))
        for e in history
        if e.event == "wait_finished" and not (e.detail or {}).get("held")
    ]
    return "\n".join(
        [
            f"sagas {len(plans)}: early {sum(p.early for p in plans)}, sent twice "
            f"{sum(p.again is not None for p in plans)}, second signal "
            f"{sum(p.second for p in plans)}, by saga id {sum(p.by_id for p in plans)}",
            f"signals handled: {dict(results)}",
            f"waits that took a signal while running: {len(waited)}, longest "
            f"{max(waited, default=0):.2f}s",
            f"took {took:.1f}s",
        ]
    )
