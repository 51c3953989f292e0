"""What a chaos run asks of the engine: order sagas of every outcome, offered at a steady rate,
some of them cancelled mid-flight.

Two sagas run side by side: the order saga's latest version (`sagas/order.py`, credit and
stock reserved in a parallel group, reservation ids and the charge passed on; amounts stay
below its fraud review) and v1 of the same saga, pinned
by the start (`"version": 1`; the same steps one after the other, nothing passed on). The
shop's behaviour rides on the order (examples/shop/services.py): customers without credit or
with a declined card, a SKU out of stock, `flaky-` notifications that fail once, `slow-`
stock reservations that stall (the window a cancel must land in), `long-` ones that take
longer than the broker's consumer timeout and `hung-` ones that hang until the step's time
limit cancels them.

Cancels: every `slow-` order is cancelled once its stock reservation is seen in flight, and a
share of the normal orders at a random moment after its start. A cancel that arrives after
the pivot is refused, so those orders may end `completed`; either way a cancelled order must
never be charged or notified.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aio_pika
import structlog
from aio_pika.abc import AbstractExchange, AbstractRobustConnection
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters.rabbitmq.connection import connect, open_channel
from adapters.rabbitmq.topology import Topology
from orchestrator.messages import CancelSaga, Exchange, StartSaga
from tests.e2e.test_many_orchestrators import finished_count, order_of, stalled

log = structlog.get_logger(__name__)

COMPLETED = frozenset({"completed"})
COMPENSATED = frozenset({"compensated"})
CANCEL_OR_COMPLETE = frozenset({"cancelled", "completed"})


@dataclass(frozen=True)
class Scenario:
    kind: str
    share: float  # of all orders; "normal" takes whatever is left
    customer: str
    sku: str
    prefix: str
    expect: frozenset[str]
    cancel: str | None = None  # "stalled" or "random"


SCENARIOS = [
    Scenario("normal", 0.0, "cust-ok", "SKU-BOOK", "", COMPLETED),
    Scenario("flaky notification", 0.08, "cust-ok", "SKU-LAMP", "flaky-", COMPLETED),
    Scenario("card declined", 0.08, "cust-declined", "SKU-BOOK", "", COMPENSATED),
    Scenario("out of stock", 0.06, "cust-ok", "SKU-RARE", "", COMPENSATED),
    Scenario("no credit", 0.06, "cust-poor", "SKU-BOOK", "", COMPENSATED),
    # The participant's time limit cancels the hung first attempt; the retry completes.
    Scenario("hung handler", 0.01, "cust-ok", "SKU-BOOK", "hung-", COMPLETED),
    # Longer than the harness broker's consumer timeout (harness.py): acked once detached.
    Scenario("longer than the consumer timeout", 0.02, "cust-ok", "SKU-BOOK", "long-", COMPLETED),
    Scenario(
        "cancelled while stalled",
        0.05,
        "cust-ok",
        "SKU-LAMP",
        "slow-",
        CANCEL_OR_COMPLETE,
        "stalled",
    ),
]
RANDOM_CANCEL = Scenario(
    "cancelled at random", 0.0, "cust-ok", "SKU-BOOK", "", CANCEL_OR_COMPLETE, "random"
)
V1_SHARE = 0.25  # of the orders, pinned to the sequential v1


@dataclass(frozen=True)
class Order:
    scenario: Scenario
    key: str
    input: dict[str, Any]
    version: int | None

    def start(self) -> StartSaga:
        return StartSaga(saga="order", key=self.key, input=self.input, version=self.version)


def plan_orders(count: int, run_id: str, random_cancels: float, seed: int) -> list[Order]:
    rng = random.Random(seed)
    normal, *others = SCENARIOS
    picked = [s for s in [*others, RANDOM_CANCEL] for _ in range(_share(s, random_cancels, count))]
    picked += [normal] * (count - len(picked))
    rng.shuffle(picked)
    return [
        Order(s, *order_of(s, f"{run_id}-{i:05d}", i), 1 if rng.random() < V1_SHARE else None)
        for i, s in enumerate(picked)
    ]


def _share(s: Scenario, random_cancels: float, count: int) -> int:
    share = random_cancels if s is RANDOM_CANCEL else s.share
    return max(1, round(count * share))


class Requests:
    """Publishes starts and cancels straight to the broker (not through the proxy: the
    harness's own traffic is not under test), on one connection that is opened again after
    the broker went away. A batch that fails is sent again whole: the start's key makes a
    repeated start a no-op, which is one more duplicate the engine must absorb."""

    def __init__(self, amqp_url: str, topology: Topology) -> None:
        self.amqp_url = amqp_url
        self.topology = topology
        self.resent = 0
        self._connection: AbstractRobustConnection | None = None
        self._exchange: AbstractExchange | None = None

    async def send(self, requests: Sequence[tuple[str, BaseModel]]) -> None:
        while True:
            try:
                await asyncio.wait_for(self._publish(requests), timeout=15)
                return
            except Exception as exc:
                log.info("chaos_request_send_failed", error=repr(exc)[:200], count=len(requests))
                self.resent += len(requests)
                await self.close()
                await asyncio.sleep(0.5)  # the broker is restarting: try again shortly

    async def _publish(self, requests: Sequence[tuple[str, BaseModel]]) -> None:
        if self._exchange is None:
            self._connection = await connect(self.amqp_url, name="chaos-feeder")
            channel = await open_channel(self._connection)
            self._exchange = await channel.get_exchange(
                self.topology.name(Exchange.SAGAS), ensure=False
            )
        exchange = self._exchange
        await asyncio.gather(
            *(
                exchange.publish(
                    aio_pika.Message(
                        body.model_dump_json(exclude_none=True).encode(),
                        content_type="application/json",
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    routing_key=routing_key,
                    mandatory=True,
                )
                for routing_key, body in requests
            )
        )

    async def close(self) -> None:
        self._exchange = None
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._connection.close(), 5)
            self._connection = None


@dataclass
class FeedResult:
    sent: dict[str, float]  # key -> wall time its start was confirmed
    cancelled: dict[str, float]  # key -> wall time its cancel was confirmed
    feeding_seconds: float


async def feed(
    requests: Requests,
    db: AsyncEngine,
    orders: list[Order],
    *,
    rate: float,
    max_in_flight: int,
    began: float,
    seed: int,
    cancel_deadline: float = 60.0,
) -> FeedResult:
    """Offer the starts at `rate` per second from monotonic time `began`, never more than
    `max_in_flight` unfinished, and send the cancels: a random-cancel order's 0-3 s after its
    start, a slow order's once its stock reservation is seen running."""
    rng = random.Random(seed)
    finished = 0
    sent: dict[str, float] = {}
    cancelled: dict[str, float] = {}
    random_due: list[tuple[float, str]] = []
    stalled_keys = {o.key for o in orders if o.scenario.cancel == "stalled"}
    i = 0
    last_poll = 0.0
    while i < len(orders) or random_due or (stalled_keys & set(sent)):
        now = time.monotonic()
        due = min(len(orders), int((now - began) * rate) + 1, finished + max_in_flight)
        if due > i:
            batch = orders[i:due]
            await requests.send([("start", o.start()) for o in batch])
            confirmed = time.time()
            for o in batch:
                sent[o.key] = confirmed
                if o.scenario.cancel == "random":
                    random_due.append((time.monotonic() + rng.uniform(0.0, 3.0), o.key))
            i = due
        ripe = [key for at, key in random_due if at <= now]
        if ripe:
            random_due = [(at, key) for at, key in random_due if at > now]
            await _cancel(requests, ripe, cancelled)
        if now - last_poll > 0.3:
            last_poll = now
            with contextlib.suppress(Exception):  # the database may be restarting
                finished = await finished_count(db)
                ready = await stalled(db, stalled_keys & set(sent))
                if ready:
                    stalled_keys -= ready
                    await _cancel(requests, sorted(ready), cancelled)
        if i >= len(orders) and time.monotonic() - began > len(orders) / rate + cancel_deadline:
            # Whatever slow order was never seen stalled (it went by during an outage) is
            # cancelled now, late: it may be refused.
            await _cancel(requests, sorted(stalled_keys & set(sent)), cancelled)
            stalled_keys.clear()
        await asyncio.sleep(0.05)  # the feeder's tick
    return FeedResult(sent, cancelled, time.monotonic() - began)


async def _cancel(requests: Requests, keys: list[str], cancelled: dict[str, float]) -> None:
    reason = "customer changed their mind"
    await requests.send([("cancel", CancelSaga(key=k, reason=reason)) for k in keys])
    for key in keys:
        cancelled[key] = time.time()
