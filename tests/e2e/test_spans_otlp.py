"""Spans from real processes, configured as an operator would, by OTEL_* variables alone:
`saga run` and the example shop export over OTLP/HTTP to a receiver, and the spans of a
completed order and a compensated one join into one tree per saga across the two processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.postgres.database import make_engine
from adapters.postgres.store import PostgresStore
from adapters.rabbitmq.client import send_requests
from adapters.rabbitmq.topology import Topology
from adapters.settings import Settings
from examples.demo import CUSTOMERS, STOCK, wait_for_consumers
from examples.processes import Processes
from examples.shop import schema
from orchestrator import trace
from orchestrator.messages import StartSaga
from orchestrator.ports import SagaQuery
from orchestrator.state import SagaState, SagaStatus
from tests.e2e.otlp_receiver import Receiver, receiving
from tests.fixtures.polling import eventually
from tests.fixtures.settings import process_env
from tests.integration.harness import order_input

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

QUEUES = ["saga.requests", "saga.replies", "commands.payments", "commands.notifications"]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as receiver:
        yield receiver


@pytest.fixture
def procs(
    database_url: str, topology: Topology, amqp_url: str, tmp_path: Path, receiver: Receiver
) -> Iterator[Processes]:
    p = Processes(
        env=process_env(
            database_url,
            amqp_url,
            topology.prefix,
            SHOP_DATABASE_URL=database_url,
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
            OTEL_BSP_SCHEDULE_DELAY="100",  # ms: export soon, the test waits for it
        ),
        log_dir=tmp_path,
    )
    yield p
    p.stop_all()


async def test_two_processes_export_one_span_tree_per_saga(
    procs: Processes, receiver: Receiver, database_url: str, topology: Topology, amqp_url: str
) -> None:
    settings = Settings(database_url=database_url, amqp_url=amqp_url, amqp_prefix=topology.prefix)
    db = make_engine(database_url, pool_size=2)
    try:
        await schema.create(db)
        await schema.seed(db, CUSTOMERS, STOCK)
        procs.start_orchestrator()
        procs.start_shop(extra_env={"OTEL_SERVICE_NAME": "shop"})
        await wait_for_consumers(settings, QUEUES)
        orders = {
            "otlp-ok": order_input("otlp-ok"),
            "otlp-declined": order_input("otlp-declined", customer="cust-declined"),
        }
        await send_requests(
            settings,
            [("start", StartSaga(saga="order", key=k, input=i)) for k, i in orders.items()],
        )
        store = PostgresStore(db)

        async def finished() -> dict[str, SagaState] | None:
            found = {k: await store.find(SagaQuery(key=k, limit=1)) for k in orders}
            done = {k: s[0] for k, s in found.items() if s and s[0].finished}
            return done if len(done) == len(orders) else None

        states = await eventually(finished, timeout=60, message="both orders finished")
    finally:
        await db.dispose()
    assert {k: s.status for k, s in states.items()} == {
        "otlp-ok": SagaStatus.COMPLETED,
        "otlp-declined": SagaStatus.COMPENSATED,
    }, procs.log_tail("orchestrator")

    async def saga_spans() -> list[str] | None:
        names = [s.name for s in receiver.received() if s.name.startswith("saga ")]
        return names if len(names) == 2 else None

    await eventually(saga_spans, timeout=20, message="both sagas' spans exported")
    procs.stop_all()  # each process exports what it still holds as it stops
    spans = receiver.received()
    for key, state in states.items():
        own = [s for s in spans if s.attributes.get("saga.id") == str(state.saga_id)]
        [saga] = [s for s in own if s.name == "saga order"]
        attempts = [s for s in own if s.service == "saga-orchestrator" and s is not saga]
        handlers = [s for s in own if s.service == "shop"]
        # Each saga is a trace of its own (started without trace context): its id's hex.
        assert {s.trace_id for s in own} == {state.saga_id.hex}, key
        assert (saga.span_id, saga.parent_id) == (trace.saga_span_id(state.saga_id), None)
        assert saga.attributes["saga.outcome"] == state.status.value
        assert attempts and all(s.parent_id == saga.span_id for s in attempts), key
        # Every command was handled once, under the span of the attempt that sent it.
        by_command = {s.attributes["saga.command_id"]: s for s in attempts}
        assert sorted(h.attributes["saga.command_id"] for h in handlers) == sorted(by_command)
        for handled in handlers:
            attempt = by_command[handled.attributes["saga.command_id"]]
            assert handled.parent_id == attempt.span_id
            assert handled.name == f"handle {handled.attributes['saga.command']}"
            assert attempt.start_ns <= handled.start_ns <= handled.end_ns <= attempt.end_ns
    declined = [
        s.attributes.get("error.type")
        for s in spans
        if s.attributes.get("saga.id") == str(states["otlp-declined"].saga_id)
        and s.attributes.get("saga.outcome") == "failed"
    ]
    assert declined and set(declined) <= {"card_declined"}, declined
