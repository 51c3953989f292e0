"""What the starter's integration tests share: an in-process orchestrator on the order sagas
(the judge of how many sagas each key started), the shop's tables with its starter outbox,
and a spy on the `sagas` exchange that sees every message a relay published, in the order
the broker took them."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from aio_pika.abc import AbstractQueue

from adapters import starter
from adapters.postgres.store import PostgresStore
from adapters.rabbitmq.topology import Topology
from examples.shop.schema import OUTBOX
from orchestrator.messages import Exchange
from orchestrator.ports import SagaQuery
from sagas.order import order_v1
from sagas.order import saga as order_latest
from tests.fixtures.polling import eventually
from tests.integration.harness import System, running_system

ORDER_SAGAS = [order_latest, order_v1]


@dataclass(frozen=True)
class Sent:
    """A message the spy saw: its routing key, message id and body."""

    routing_key: str
    message_id: str
    body: dict[str, Any]

    @property
    def key(self) -> str:
        return str(self.body["key"])


class Spy:
    """A private queue bound to every routing key of the `sagas` exchange."""

    def __init__(self, queue: AbstractQueue) -> None:
        self.queue = queue
        self.seen: list[Sent] = []

    async def take(self) -> list[Sent]:
        """Everything the spy received so far (kept in `seen`, in arrival order)."""
        while (message := await self.queue.get(no_ack=True, fail=False)) is not None:
            self.seen.append(
                Sent(message.routing_key or "", message.message_id or "", json.loads(message.body))
            )
        return self.seen

    async def until(self, count: int, timeout: float = 30.0) -> list[Sent]:
        async def probe() -> list[Sent] | None:
            seen = await self.take()
            return seen if len(seen) >= count else None

        return await eventually(probe, timeout=timeout, message=f"{count} messages published")


@asynccontextmanager
async def order_system(
    database_url: str, topology: Topology, amqp_url: str
) -> AsyncIterator[System]:
    """The orchestrator on the order sagas, no participant (a saga waits at its first steps,
    which is all counting it needs), and the shop's tables (its outbox included)."""
    async with running_system(database_url, topology, amqp_url, ORDER_SAGAS) as system:
        yield system


async def spy(system: System) -> Spy:
    return Spy(await system.spy(Exchange.SAGAS, "#"))


async def sagas_of(store: PostgresStore, key: str) -> int:
    return len(await store.find(SagaQuery(key=key, limit=10)))


async def every_key_started(
    store: PostgresStore, keys: Iterable[str], timeout: float = 30.0
) -> None:
    wanted = set(keys)

    async def probe() -> bool:
        found = await store.find(SagaQuery(limit=len(wanted) * 2 + 10))
        return wanted <= {s.key for s in found}

    await eventually(probe, timeout=timeout, message=f"a saga for each of {len(wanted)} keys")


async def none_started_for(store: PostgresStore, keys: Iterable[str], seconds: float) -> None:
    """Poll for `seconds` that no saga has any of `keys`; fail as soon as one does."""
    deadline = time.monotonic() + seconds
    keys = list(keys)
    while True:
        for key in keys:
            assert await sagas_of(store, key) == 0, f"a saga started for {key}"
        if time.monotonic() > deadline:
            return
        await asyncio.sleep(0.05)


async def outbox_rows(system: System, table: starter.OutboxTable = OUTBOX) -> int:
    async with system.shop.connect() as conn:
        count = await conn.exec_driver_sql(f"SELECT count(*) FROM {table.qualified}")
        return int(count.scalar_one())


def with_port(url: str, port: int) -> str:
    """`url` (an AMQP URL) pointing at `port` on the same host."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit(":", 1)[0] if parts.port else parts.netloc
    return urlunsplit(parts._replace(netloc=f"{netloc}:{port}"))
