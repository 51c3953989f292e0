"""Hosts a `Participant` on RabbitMQ: commands from its service queues, replies to `reply_to`."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

import structlog
from aio_pika.abc import AbstractChannel

from adapters import metrics
from adapters.participant.core import SendReply, heartbeat, heartbeats
from adapters.rabbitmq.consumer import Consumer, consume
from adapters.rabbitmq.delivery import MAX_BODY_BYTES, Delivery, parse
from adapters.rabbitmq.publisher import RabbitPublisher
from adapters.rabbitmq.topology import Topology
from orchestrator import trace
from orchestrator.errors import Poison
from orchestrator.messages import Command, Reply

if TYPE_CHECKING:
    from adapters.participant.handler_spans import HandlerSpans

log = structlog.get_logger(__name__)

Clock = Callable[[], datetime]


# A command's handler holds its message unacked this long at most (SAGA_DETACH_AFTER): well
# under any broker's consumer_timeout (RabbitMQ's default is 30 minutes).
DETACH_AFTER = 60.0
MAX_DETACHED = 100
# How long a detached command's reply is retried through a broker outage.
REPLY_PATIENCE = 60.0


class Hosted(Protocol):
    """What the worker needs of a participant: `Participant`, or a wrapper of one
    (`adapters.faults.FaultyParticipant`)."""

    service: str

    def services(self) -> set[str]: ...

    def expired(self, command: Command, now: datetime) -> bool: ...

    async def handle(self, command: Command, now: datetime) -> Reply: ...


class ParticipantWorker:
    """Consumes the command queues of the participant's services and answers each command.

    A short command is held unacked while its handler runs: the reply is published (and
    confirmed) before the command is acked, so a crash in between redelivers it and the
    handler may run again (the barrier answers from what it stored). A long one must not
    depend on the broker's `consumer_timeout`, so the worker takes custody of it (acks it)
    and from then on the saga's timeouts cover a crash, with a retry whose effect the
    barrier keeps to one:

    - a command with a `heartbeat_timeout` is acked once its start report is confirmed: a
      dead worker is noticed when its heartbeats stop;
    - any other command is acked once its handler has run `detach_after` seconds: then its
      start-to-close timeout covers a crash.

    At most `max_detached` acked commands run at once (each acked one frees a prefetch slot
    for the next command); beyond that a command stays unacked until its handler ends.
    While a handler runs, heartbeats for its command go to the same `reply_to`; they stop
    before the final reply is published.

    A command body over `max_message_bytes` is dead-lettered unread.
    """

    def __init__(
        self,
        participant: Hosted,
        channel: AbstractChannel,
        topology: Topology,
        *,
        clock: Clock,
        prefetch: int = 50,
        detach_after: float = DETACH_AFTER,
        max_detached: int = MAX_DETACHED,
        max_message_bytes: int = MAX_BODY_BYTES,
        spans: HandlerSpans | None = None,
    ) -> None:
        """`spans`: a span around each handler (adapters/participant/handler_spans.py)."""
        self.participant = participant
        self.channel = channel
        self.topology = topology
        self.clock = clock
        self.prefetch = prefetch
        self.detach_after = detach_after
        self.max_detached = max_detached
        self.max_message_bytes = max_message_bytes
        self.spans = spans
        self.publisher = RabbitPublisher(channel, topology)
        self.detached = 0
        self._consumers: list[Consumer] = []

    async def start(self) -> None:
        services = sorted(self.participant.services())
        if not services:
            raise ValueError(f"{self.participant!r} has no handlers: register one before starting")
        # The core too: the replies queue and the dead queue must exist before the first
        # reply or poison message, even if the orchestrator has not started yet.
        await self.topology.declare_core(self.channel)
        for service in services:
            await self.topology.declare_service(self.channel, service)
        for service in services:
            self._consumers.append(
                await consume(
                    self.channel,
                    self.topology.command_queue(service),
                    self.handle,
                    topology=self.topology,
                    prefetch=self.prefetch,
                    on_dead_letter=metrics.dead_lettered,
                    max_body_bytes=self.max_message_bytes,
                )
            )
        log.info("participant_worker_started", service=self.participant.service, queues=services)

    async def stop(self, grace: float = 30.0) -> None:
        consumers, self._consumers = self._consumers, []
        for consumer in consumers:
            await consumer.stop(grace)
        log.info("participant_worker_stopped", service=self.participant.service)

    async def handle(self, delivery: Delivery) -> None:
        """One command: run it, publish the reply, return (the consumer then acks, unless
        the worker took the command earlier)."""
        command = parse(Command, delivery, fields={"command": delivery.routing_key})
        if not delivery.reply_to:
            raise Poison("no reply_to property: the reply would have nowhere to go")
        reply_to = delivery.reply_to
        # The saga's trace context goes back with every reply and heartbeat, as it came.
        context = trace.from_headers(delivery.headers)

        async def send(reply: Reply) -> None:
            await self.publisher.publish_to_queue(
                reply_to,
                reply.model_dump_json().encode(),
                # A fresh id per reply: the orchestrator deduplicates by command_id in the body.
                message_id=uuid.uuid4().hex,
                correlation_id=str(command.command_id),
                headers=dict(context) if context else None,
            )

        now = self.clock()
        # Every log line of this command (the handler's, the barrier's, a fault point's) names
        # it, its saga and trace, and says whether the broker delivered it before (a crash or
        # a requeue left it unacked).
        with structlog.contextvars.bound_contextvars(
            saga_id=str(command.saga_id),
            saga=command.saga,
            step=command.step,
            kind=command.kind,
            attempt=command.attempt,
            command_id=str(command.command_id),
            delivery_count=delivery.delivery_count,
            redelivered=delivery.redelivered,
            **trace.log_fields(context),
        ):
            custody = _Detach(self, delivery)
            reported = False
            if command.report_start and not self.participant.expired(command, now):
                # The start report first, confirmed: from then on the orchestrator counts the
                # heartbeat timeout, so the command can leave the broker's care.
                await send(heartbeat(command))
                reported = True
                if command.heartbeat_timeout is not None:
                    await custody.take("heartbeat_timeout")
            try:
                async with (
                    custody.after(self.detach_after),
                    heartbeats(command, now, send, reported=reported),
                ):
                    # A command whose routing key has no handler gets a failure reply from the
                    # core rather than the dead queue: the saga then compensates instead of
                    # waiting for its timeout.
                    if self.spans is None:
                        reply = await self.participant.handle(command, now)
                    else:
                        reply = await self.spans.run(
                            self.participant.service,
                            command,
                            context,
                            lambda: self.participant.handle(command, now),
                        )
                # The effect is committed, the reply not yet sent: a crash here must be
                # answered from the barrier when the command comes back (or, once taken, by
                # the retry the orchestrator sends), never applied a second time.
                if custody.taken:
                    await _send_until_sent(send, reply)
                else:
                    await send(reply)
            except asyncio.CancelledError:
                # The worker is stopping, or the broker closed the channel (its reason is
                # logged as amqp_channel_closed): the command comes back unless it was taken.
                log.warning("participant_command_cancelled", detached=custody.taken)
                raise
            finally:
                custody.release()


class _Detach:
    """Takes one command from the broker's care: at once, or after the handler has run a
    while; counts it among the worker's detached commands until released."""

    def __init__(self, worker: ParticipantWorker, delivery: Delivery) -> None:
        self.worker = worker
        self.delivery = delivery
        self.taken = False

    async def take(self, why: str) -> None:
        if self.taken or self.delivery.take is None:
            return
        if self.worker.detached >= self.worker.max_detached:
            log.warning("participant_detach_limit", detached=self.worker.detached, why=why)
            return
        self.worker.detached += 1
        self.taken = True
        if await self.delivery.take():
            log.info("participant_command_detached", why=why)
        else:  # the channel is gone: the broker hands the command out again
            self.release()

    def release(self) -> None:
        if self.taken:
            self.taken = False
            self.worker.detached -= 1

    @asynccontextmanager
    async def after(self, seconds: float) -> AsyncIterator[None]:
        """Take the command if the block runs longer than `seconds`."""

        async def later() -> None:
            await asyncio.sleep(seconds)
            await self.take("detach_after")

        task = asyncio.create_task(later(), name="saga-detach")
        try:
            yield
        finally:
            task.cancel()
            await asyncio.wait([task])


async def _send_until_sent(send: SendReply, reply: Reply) -> None:
    """Publish the reply of a command the broker no longer holds: nothing would bring the
    command back, so a broker outage is waited out (the robust channel reconnects) for a
    while; past that the orchestrator's timeout and retry answer for it."""
    delay = 0.1
    deadline = asyncio.get_running_loop().time() + REPLY_PATIENCE
    while True:
        try:
            await send(reply)
            return
        except Exception as exc:
            if asyncio.get_running_loop().time() + delay > deadline:
                log.error("participant_reply_lost", error=str(exc))
                return
            log.warning("participant_reply_retry", error=str(exc), delay=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
