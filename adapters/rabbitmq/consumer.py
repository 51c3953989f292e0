"""Consuming with manual acks: a message is acknowledged only after its handler returned.

The handler commits its effect before it returns, so a crash anywhere before the ack leaves
the message in the queue to be delivered again (at-least-once; handlers deduplicate).
What happens to a message, by how its handler ended:

- returned: ack.
- took the message early (`Delivery.take`, not in batches): acked then; whatever the handler
  does afterwards is its own to answer for, as the broker no longer holds the message.
- raised `Poison` (or a JSON / pydantic validation error escaped it): the message can never
  be processed, so it is published to the dead exchange with the reason in a header, and
  acked once the broker confirmed that copy.
- raised anything else: the failure may be transient (database down), so the message is
  rejected with requeue after a backoff; the quorum queue counts deliveries and dead-letters
  it after its delivery limit, so a message that crashes every time does not loop forever.
  Without the backoff a requeued message comes straight back, and a few seconds of database
  restart would burn through the limit and dead-letter good messages.

Group commit: given a `batch` handler, the consumer hands it every message that is waiting
(up to `max_batch`) in one call, which commits their effects together, and acks them all
after it returned. At most `batch_workers` batches run at once; while they are busy, new
deliveries wait and make the next batch larger, so batches grow with the load and a lone
message is handled at once. If the batch handler raises, its messages are handled one at a
time by `handler`, each settled by how its own handling ended as above: a poison message or
a lost race costs the others nothing but their batching.

Log lines: while a message is handled, every line carries its trace id (from a W3C
`traceparent` header) and whatever the handler bound with `bind_contextvars` (its saga_id,
say), the consumer's own lines about the message included. Both are gone once the message
is settled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import structlog
from aio_pika import DeliveryMode, Message
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from adapters.rabbitmq.delivery import MAX_BODY_BYTES, MAX_REASON_CHARS, Delivery, poison_reason
from adapters.rabbitmq.publisher import RabbitPublisher
from adapters.rabbitmq.topology import Topology
from orchestrator import trace
from orchestrator.messages import Exchange

log = structlog.get_logger(__name__)

# Seconds `Consumer.stop` waits for the broker to confirm the cancel.
CANCEL_TIMEOUT = 5.0

DEAD_REASON_HEADER = "x-saga-dead-reason"
ORIGINAL_QUEUE_HEADER = "x-saga-original-queue"
ORIGINAL_ROUTING_KEY_HEADER = "x-saga-original-routing-key"
ORIGINAL_EXCHANGE_HEADER = "x-saga-original-exchange"


Handler = Callable[[Delivery], Awaitable[None]]
BatchHandler = Callable[[Sequence[Delivery]], Awaitable[None]]
RequeueDelay = Callable[[int], float]
# Told the queue's name each time a message of it was dead-lettered (a metrics counter).
DeadLetterHook = Callable[[str], None]


def _no_hook(_queue: str) -> None:
    return None


def backoff(delivery_count: int) -> float:
    """Seconds to hold a failed message before requeueing it: 0.1 s doubling up to 10 s, so
    the default delivery limit of 10 rides out about 50 s of outage before dead-lettering."""
    return min(0.1 * 2.0 ** min(delivery_count, 10), 10.0)


class Consumer:
    """A running consumer of one queue. `stop()` ends it cleanly."""

    def __init__(
        self,
        queue: AbstractQueue,
        handler: Handler,
        publisher: RabbitPublisher,
        requeue_delay: RequeueDelay = backoff,
        on_dead_letter: DeadLetterHook = _no_hook,
        *,
        batch: BatchHandler | None = None,
        max_batch: int = 100,
        batch_workers: int = 2,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self.queue = queue
        self.handler = handler
        self.publisher = publisher
        self.requeue_delay = requeue_delay
        self.on_dead_letter = on_dead_letter
        self.batch = batch
        self.max_batch = max_batch
        self.batch_workers = batch_workers
        self.max_body_bytes = max_body_bytes
        self.consumer_tag: str | None = None
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._waiting: list[_Waiting] = []
        self._drains: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Begin consuming; `consume()` calls this."""
        self.consumer_tag = await self.queue.consume(self._on_message, no_ack=False)
        log.info("amqp_consumer_started", queue=self.queue.name, consumer_tag=self.consumer_tag)

    async def stop(self, grace: float = 30.0) -> None:
        """Stop receiving, then give the messages being handled `grace` seconds to finish.

        Messages still unacked after that are returned to the queue by the broker when the
        channel closes; nothing is acked early.
        """
        if self.consumer_tag is None:
            return
        tag, self.consumer_tag = self.consumer_tag, None
        try:
            # A robust channel waits for the broker to come back before it cancels: with the
            # broker gone, that is forever, and a SIGTERM would never end the process. A
            # channel that cannot cancel has lost its deliveries to the broker already.
            await asyncio.wait_for(self.queue.cancel(tag), CANCEL_TIMEOUT)
        except Exception as exc:  # TimeoutError, or the channel closed under us
            log.warning("amqp_consumer_cancel_failed", queue=self.queue.name, error=repr(exc))
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=grace)
        log.info(
            "amqp_consumer_stopped",
            queue=self.queue.name,
            consumer_tag=tag,
            unfinished=len(self._in_flight),
        )

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._in_flight.add(task)
        try:
            await self._process(message)
        finally:
            if task is not None:
                self._in_flight.discard(task)

    async def _process(self, message: AbstractIncomingMessage) -> None:
        delivery = Delivery.of(message, self.queue.name, self.max_body_bytes)
        if self.batch is None:
            await self._one(message, delivery)
            return
        waiting = _Waiting(message, delivery, asyncio.get_running_loop().create_future())
        self._waiting.append(waiting)
        if len(self._drains) < self.batch_workers:
            drain = asyncio.create_task(self._drain())
            self._drains.add(drain)
            drain.add_done_callback(self._drains.discard)
        # This task stays until its message is settled: stop() waits for it.
        await waiting.settled

    async def _one(self, message: AbstractIncomingMessage, delivery: Delivery) -> None:
        with _log_scope(delivery):
            await self._settle_after_handling(message, delivery)

    async def _drain(self) -> None:
        assert self.batch is not None
        # Once: the deliveries read from the socket with this one join its batch.
        await asyncio.sleep(0)
        while self._waiting:
            batch = self._waiting[: self.max_batch]
            del self._waiting[: self.max_batch]
            try:
                try:
                    with _log_scope(None):  # what the handler binds ends with the batch
                        await self.batch([w.delivery for w in batch])
                except Exception as exc:
                    log.info(
                        "message_batch_one_by_one",
                        queue=self.queue.name,
                        size=len(batch),
                        error=f"{type(exc).__name__}: {exc}"[:300],
                    )
                    await asyncio.gather(*(self._one(w.message, w.delivery) for w in batch))
                else:
                    for w in batch:
                        await _settle(w.message.ack(), log)
            finally:
                for w in batch:
                    if not w.settled.done():
                        w.settled.set_result(None)

    async def _settle_after_handling(
        self, message: AbstractIncomingMessage, delivery: Delivery
    ) -> None:
        bound = log.bind(
            queue=delivery.queue,
            routing_key=delivery.routing_key,
            message_id=delivery.message_id,
            delivery_count=delivery.delivery_count,
        )
        custody = _Custody(message, bound)
        try:
            await self.handler(replace(delivery, take=custody.take))
        except Exception as exc:
            if custody.taken:
                # Acked already: nothing to requeue or dead-letter. The handler's own answer
                # (a saga's timeout and retry, for a command) covers it.
                bound.exception("message_handler_failed_after_take")
                return
            reason = poison_reason(exc)
            if reason is None:
                bound.exception("message_handler_failed")
                # Requeue: the quorum queue's delivery limit dead-letters a message that
                # keeps failing, so retrying here cannot loop forever.
                await asyncio.sleep(self.requeue_delay(delivery.delivery_count))
                await _settle(message.reject(requeue=True), bound)
                return
            await self._dead_letter(message, delivery, reason[:MAX_REASON_CHARS], bound)
            return
        if not custody.taken:
            await _settle(message.ack(), bound)

    async def _dead_letter(
        self,
        message: AbstractIncomingMessage,
        delivery: Delivery,
        reason: str,
        bound: Any,
    ) -> None:
        copy = Message(
            message.body,
            headers={
                **(message.headers or {}),
                DEAD_REASON_HEADER: reason,
                ORIGINAL_QUEUE_HEADER: delivery.queue,
                ORIGINAL_EXCHANGE_HEADER: delivery.exchange,
                ORIGINAL_ROUTING_KEY_HEADER: delivery.routing_key,
            },
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            delivery_mode=DeliveryMode.PERSISTENT,
            correlation_id=message.correlation_id,
            reply_to=message.reply_to,
            message_id=message.message_id,
            timestamp=message.timestamp,
            type=message.type,
            app_id=message.app_id,
            # user_id is left out: the broker refuses one that is not this connection's user.
            # expiration too: a dead message waits for an operator, however long that takes.
        )
        try:
            await self.publisher.publish_message(
                Exchange.DEAD, delivery.routing_key, copy, mandatory=True
            )
        except Exception:
            bound.exception("message_dead_letter_failed", reason=reason)
            # Not acked, so not lost: it comes back and is judged again.
            await _settle(message.reject(requeue=True), bound)
            return
        bound.warning("message_dead_lettered", reason=reason)
        self.on_dead_letter(delivery.queue)
        await _settle(message.ack(), bound)


class _Custody:
    """Who holds one message: the broker until `take` acks it, the handler from then on."""

    def __init__(self, message: AbstractIncomingMessage, bound: Any) -> None:
        self.message = message
        self.bound = bound
        self.taken = False

    async def take(self) -> bool:
        if not self.taken:
            try:
                await self.message.ack()
            except Exception as exc:
                # The channel is gone: the broker requeues the message, which comes again.
                self.bound.warning("message_take_failed", error=str(exc))
                return False
            self.taken = True
        return True


@dataclass(frozen=True)
class _Waiting:
    """A delivery waiting for its batch; `settled` resolves once it is acked or handed back."""

    message: AbstractIncomingMessage
    delivery: Delivery
    settled: asyncio.Future[None]


@contextmanager
def _log_scope(delivery: Delivery | None) -> Iterator[None]:
    """Log fields for one message (None: a batch): its trace id now, the handler's binds
    later; restored as they were when the message is done. A batch runs in a long-lived
    task, whose binds would otherwise name every later batch's lines."""
    saved = structlog.contextvars.get_contextvars()
    if delivery is not None:
        structlog.contextvars.bind_contextvars(
            **trace.log_fields(trace.from_headers(delivery.headers))
        )
    try:
        yield
    finally:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(**saved)


async def _settle(outcome: Awaitable[None], bound: Any) -> None:
    try:
        await outcome
    except Exception as exc:
        # The channel went away: the broker requeues every unacked message of it, so this one
        # is delivered again (the handler's effect is idempotent) rather than lost.
        bound.warning("message_settle_failed", error=str(exc))


async def consume(
    channel: AbstractChannel,
    queue: str,
    handler: Handler,
    *,
    topology: Topology,
    prefetch: int,
    requeue_delay: RequeueDelay = backoff,
    on_dead_letter: DeadLetterHook = _no_hook,
    batch: BatchHandler | None = None,
    max_batch: int = 100,
    batch_workers: int = 2,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> Consumer:
    """Consume the logical queue `queue` (mapped through `topology`) with `handler`.

    The channel must come from `open_channel` (the dead-letter copy is published with
    confirms on it). The queue is declared with its canonical arguments, which is harmless
    when it exists and lets a robust channel re-declare it after a reconnect. Bindings are
    the topology's business (`declare_core`, `declare_service`).
    """
    if prefetch < 1:
        raise ValueError(f"prefetch must be >= 1, got {prefetch}")
    # Per consumer (global_=False): handlers run concurrently up to this many unacked messages.
    await channel.set_qos(prefetch_count=prefetch)
    declared = await topology.declare_queue(channel, queue)
    consumer = Consumer(
        declared,
        handler,
        RabbitPublisher(channel, topology),
        requeue_delay,
        on_dead_letter,
        batch=batch,
        max_batch=max_batch,
        batch_workers=batch_workers,
        max_body_bytes=max_body_bytes,
    )
    await consumer.start()
    return consumer
