"""The shop's fraud desk: it reviews large orders and tells the order saga its verdict with
the signal `fraud_review`, published over AMQP as an outside service in any language would.

The order saga (sagas/order.py, v4) waits before charging an order above REVIEW_ABOVE until
the signal `fraud_review` brings a FraudReview (at most a day; then the order is undone). The
desk finds those orders in the shop's `orders` table once they are `think` seconds old (a
person takes a moment), records its verdict in its table `fraud_reviews`, and publishes it to
exchange `sagas` with routing key `signal` (docs/protocol/signal.schema.json), naming the
order saga by its key.

The desk's table is outbox enough: the starter's outbox carries starts and cancels, and a
verdict needs neither a new saga nor an order of its own. A verdict is written first, then
published from a transaction that marks it sent only once the broker confirmed it: one left
unmarked (the publish failed, the desk stopped in between) goes again on the next sweep. Its
signal_id is fixed per order (`fraud-review:<order id>`), so the saga takes it once however
often it comes, and holds it if it comes before the saga reaches its review.

The desk hears `order.signal_refused`: a verdict refused because no saga has the key yet (the
order's start still on its way: signals never wait behind starts) is sent again; any other
refusal (the order was cancelled, or its review timed out) is final, kept in `refused`.

The reviewer's rule, a knob like the shop's others (examples/shop/services.py): an order
whose id starts with `suspect-` is rejected, every other one approved.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import sqlalchemy as sa
import structlog
from aio_pika.abc import AbstractIncomingMessage
from pydantic import ValidationError
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters.rabbitmq.connection import connect, open_channel
from adapters.rabbitmq.publisher import RabbitPublisher
from adapters.rabbitmq.topology import Topology
from examples.shop.orders import saga_key
from examples.shop.schema import fraud_reviews, orders
from orchestrator.messages import Exchange, OutcomeEvent, SignalSaga
from sagas.order import REVIEW_ABOVE, FraudReview

log = structlog.get_logger(__name__)

REVIEWER = "desk-ana"
SIGNAL = "fraud_review"
SIGNAL_ID_PREFIX = "fraud-review:"
# No saga has the key yet: the verdict goes again.
NOT_STARTED_YET = "unknown_saga"


def review(order_id: str) -> FraudReview:
    """The reviewer's verdict on an order."""
    if order_id.startswith("suspect-"):
        return FraudReview(
            approved=False, reviewer=REVIEWER, note="the card does not match the customer"
        )
    return FraudReview(approved=True, reviewer=REVIEWER)


def signal_of(order_id: str, verdict: FraudReview) -> SignalSaga:
    return SignalSaga(
        key=saga_key(order_id),
        saga="order",
        signal=SIGNAL,
        signal_id=f"{SIGNAL_ID_PREFIX}{order_id}",
        payload=verdict.model_dump(mode="json"),
    )


async def review_of(shop: AsyncEngine, order_id: str) -> FraudReview | None:
    """The desk's verdict on an order, if it made one."""
    r = fraud_reviews.c
    async with shop.connect() as conn:
        row = (
            await conn.execute(
                sa.select(r.approved, r.reviewer, r.note).where(r.order_id == order_id)
            )
        ).first()
    return None if row is None else FraudReview(**row._asdict())


class FraudDesk:
    """Its sweeps (review new large orders, send the verdicts not sent) and what it makes of
    a refusal it hears; `running` runs one."""

    def __init__(
        self, shop: AsyncEngine, publisher: RabbitPublisher, *, think: float, interval: float
    ) -> None:
        self.shop = shop
        self.publisher = publisher
        self.think = think
        self.interval = interval

    async def run(self, stop: asyncio.Event) -> None:
        """Review and send every `interval` seconds until `stop` is set."""
        while not stop.is_set():
            try:
                await self.review_new_orders()
                await self.send_verdicts()
            except Exception as exc:  # the database or the broker away: the next sweep retries
                log.warning("fraud_desk_sweep_failed", error=repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)

    async def review_new_orders(self) -> None:
        o, r = orders.c, fraud_reviews.c
        async with self.shop.begin() as conn:
            found = await conn.execute(
                sa.select(o.id).where(
                    o.amount > REVIEW_ABOVE,
                    o.placed_at < sa.func.now() - timedelta(seconds=self.think),
                    ~sa.exists().where(r.order_id == o.id),
                )
            )
            for order_id in found.scalars():
                verdict = review(order_id)
                await conn.execute(
                    insert(fraud_reviews)
                    .values(order_id=order_id, **verdict.model_dump())
                    .on_conflict_do_nothing()
                )
                log.info("fraud_review_made", order_id=order_id, approved=verdict.approved)

    async def send_verdicts(self) -> None:
        """Publish the verdicts not sent yet, marking them sent in the transaction that holds
        them locked: a refusal heard meanwhile waits for the mark, and undoes it."""
        r = fraud_reviews.c
        async with self.shop.begin() as conn:
            unsent = (
                await conn.execute(
                    sa.select(r.order_id, r.approved, r.reviewer, r.note)
                    .where(r.sent_at.is_(None), r.refused.is_(None))
                    .with_for_update(skip_locked=True)
                )
            ).all()
            for row in unsent:
                verdict = FraudReview(approved=row.approved, reviewer=row.reviewer, note=row.note)
                await self.publisher.publish_json(
                    Exchange.SAGAS, "signal", signal_of(row.order_id, verdict)
                )
                await conn.execute(
                    sa.update(fraud_reviews)
                    .where(r.order_id == row.order_id)
                    .values(sent_at=sa.func.now())
                )
                log.info("fraud_review_sent", order_id=row.order_id, approved=row.approved)

    async def on_refused(self, message: AbstractIncomingMessage) -> None:
        try:
            event = OutcomeEvent.model_validate_json(message.body)
        except ValidationError as exc:
            log.warning("fraud_desk_event_unreadable", error=str(exc)[:300])
            return
        error = event.error or {}
        signal_id = str(error.get("signal_id", ""))
        if not signal_id.startswith(SIGNAL_ID_PREFIX):
            return  # someone else's signal
        order_id, reason = signal_id.removeprefix(SIGNAL_ID_PREFIX), str(error.get("reason"))
        again = reason == NOT_STARTED_YET
        change = {"sent_at": None} if again else {"refused": reason}
        async with self.shop.begin() as conn:
            await conn.execute(
                sa.update(fraud_reviews).where(fraud_reviews.c.order_id == order_id).values(change)
            )
        log.info("fraud_review_refused", order_id=order_id, reason=reason, again=again)


@asynccontextmanager
async def running(
    shop: AsyncEngine,
    *,
    amqp_url: str,
    prefix: str,
    think: float = 1.0,
    interval: float = 0.2,
) -> AsyncIterator[FraudDesk]:
    """The fraud desk at work on the shop's orders until the block ends."""
    topology = Topology(prefix)
    connection = await connect(amqp_url, name="fraud-desk")
    try:
        channel = await open_channel(connection)
        await topology.declare_exchange(channel, Exchange.EVENTS)
        await topology.declare_exchange(channel, Exchange.SAGAS)
        desk = FraudDesk(shop, RabbitPublisher(channel, topology), think=think, interval=interval)
        # A queue of the desk's own while it runs: refusals of its verdicts.
        refusals = await channel.declare_queue(exclusive=True, auto_delete=True)
        await refusals.bind(topology.name(Exchange.EVENTS), "order.signal_refused")
        await refusals.consume(desk.on_refused, no_ack=True)
        stop = asyncio.Event()
        task = asyncio.create_task(desk.run(stop))
        try:
            yield desk
        finally:
            stop.set()
            await task
    finally:
        await connection.close()
