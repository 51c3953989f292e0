"""An orchestrator and the example shop, in-process, on a fresh database and an isolated
broker namespace: everything real (PostgreSQL, RabbitMQ), nothing mocked."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from uuid import UUID

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractQueue, AbstractRobustConnection
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters.clock import utcnow
from adapters.participant.worker import ParticipantWorker
from adapters.postgres.database import make_engine
from adapters.postgres.store import PostgresStore
from adapters.rabbitmq.client import send_requests
from adapters.rabbitmq.connection import connect, open_channel
from adapters.rabbitmq.topology import Topology
from adapters.runtime import Orchestrator
from adapters.settings import Settings
from examples.demo import CUSTOMERS, STOCK
from examples.shop import schema
from examples.shop.services import Knobs, build
from orchestrator.definition import Saga
from orchestrator.messages import StartSaga
from orchestrator.ports import HistoryRecord, SagaQuery
from orchestrator.registry import Registry
from orchestrator.state import SagaState
from tests.fixtures.polling import eventually
from tests.fixtures.settings import fast_settings

if TYPE_CHECKING:
    from adapters.tracing.saga_spans import SagaSpans


def order_input(
    order_id: str, customer: str = "cust-ok", sku: str = "SKU-BOOK", qty: int = 1
) -> dict[str, Any]:
    return {
        "order_id": order_id,
        "customer_id": customer,
        "amount": "25.00",
        "items": [{"sku": sku, "qty": qty}],
    }


@dataclass
class System:
    settings: Settings
    topology: Topology
    orchestrator: Orchestrator
    store: PostgresStore
    shop: AsyncEngine
    connection: AbstractRobustConnection
    channel: AbstractChannel
    workers: dict[str, ParticipantWorker] = field(default_factory=dict)
    knobs: Knobs = field(default_factory=lambda: Knobs(slow_seconds=1.0))

    async def start_participants(
        self, services: Iterable[str] = ("customers", "inventory", "payments", "notifications")
    ) -> None:
        wanted = set(services)
        for participant in build(self.shop, self.knobs):
            if participant.service in wanted and participant.service not in self.workers:
                channel = await open_channel(self.connection)
                worker = ParticipantWorker(
                    participant, channel, self.topology, clock=utcnow, prefetch=20
                )
                await worker.start()
                self.workers[participant.service] = worker

    async def restart_orchestrator(self, registry: Registry | None = None) -> None:
        """Stop the orchestrator and start a fresh one on the same database, broker and sagas
        (or those of `registry`: a deploy): whatever it knew in memory is gone; only
        PostgreSQL and the queues remain."""
        await self.orchestrator.stop()
        self.orchestrator = Orchestrator(
            self.settings, registry=registry or self.orchestrator.registry
        )
        await self.orchestrator.start()

    async def send(self, routing_key: str, body: BaseModel) -> None:
        await send_requests(self.settings, [(routing_key, body)])

    async def start_order(self, key: str, input: dict[str, Any], saga: str = "order") -> None:
        await self.send("start", StartSaga(saga=saga, key=key, input=input))

    async def saga_by_key(self, key: str) -> SagaState | None:
        found = await self.store.find(SagaQuery(key=key, limit=1))
        return found[0] if found else None

    async def wait_status(self, key: str, *statuses: str, timeout: float = 20.0) -> SagaState:
        async def probe() -> SagaState | None:
            state = await self.saga_by_key(key)
            return state if state is not None and state.status in statuses else None

        return await eventually(probe, timeout=timeout, message=f"saga {key} to reach {statuses}")

    async def history(self, saga_id: UUID) -> list[HistoryRecord]:
        return await self.store.history(saga_id)

    async def spy(self, exchange: str, binding: str) -> AbstractQueue:
        """A private queue that receives a copy of what is published to `exchange`."""
        ex = await self.channel.get_exchange(self.topology.name(exchange), ensure=False)
        queue = await self.channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(ex, binding)
        return queue

    async def publish_raw(
        self, exchange: str, routing_key: str, body: bytes, content_type: str = "application/json"
    ) -> None:
        name = self.topology.name(exchange) if exchange else ""
        ex = (
            self.channel.default_exchange
            if not name
            else await self.channel.get_exchange(name, ensure=False)
        )
        await ex.publish(
            aio_pika.Message(
                body, content_type=content_type, delivery_mode=aio_pika.DeliveryMode.PERSISTENT
            ),
            routing_key=routing_key,
        )


async def drain(queue: AbstractQueue) -> list[dict[str, Any]]:
    """Everything currently in `queue`, as JSON bodies (non-blocking)."""
    out = []
    while (message := await queue.get(no_ack=True, fail=False)) is not None:
        out.append(json.loads(message.body))
    return out


@asynccontextmanager
async def running_system(
    database_url: str,
    topology: Topology,
    amqp_url: str,
    sagas: Iterable[Saga],
    spans: SagaSpans | None = None,
    **settings_overrides: Any,
) -> AsyncIterator[System]:
    """`settings_overrides`: Settings fields of the orchestrator beyond `fast_settings`';
    `spans`: the orchestrator's spans hook (adapters/tracing)."""
    overrides = {"prefetch": 20, **settings_overrides}
    settings = fast_settings(database_url, amqp_url, topology.prefix, **overrides)
    shop = make_engine(database_url, pool_size=5)
    await schema.create(shop)
    await schema.seed(shop, CUSTOMERS, STOCK)
    orchestrator = Orchestrator(settings, registry=Registry(sagas), spans=spans)
    await orchestrator.start()
    connection = await connect(amqp_url)
    channel = await open_channel(connection)
    db = make_engine(database_url, pool_size=2)
    system = System(settings, topology, orchestrator, PostgresStore(db), shop, connection, channel)
    try:
        yield system
    finally:
        for worker in system.workers.values():
            await worker.stop()
        await system.orchestrator.stop()  # the current one: a test may have restarted it
        await connection.close()
        await db.dispose()
        await shop.dispose()
