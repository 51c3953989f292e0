"""Hosts a `Participant` on RabbitMQ: commands from its service queues, replies to `reply_to`."""

from __future__ import annotations

import uuid

import structlog
from aio_pika.abc import AbstractChannel

from adapters import metrics
from adapters.rabbitmq.consumer import MAX_BODY_BYTES, Consumer, Delivery, consume, parse
from adapters.rabbitmq.publisher import RabbitPublisher
from adapters.rabbitmq.topology import Topology
from orchestrator import trace
from orchestrator.errors import Poison
from orchestrator.messages import Command, Reply
from orchestrator.participant import Participant, heartbeats
from orchestrator.ports import Clock, FaultHook

log = structlog.get_logger(__name__)


def _no_faults(_point: str) -> None:
    return None


class ParticipantWorker:
    """Consumes the command queues of the participant's services and answers each command.

    The reply is published (and confirmed) before the command is acked, so a crash in between
    redelivers the command: the handler may run again, the saga never waits forever.
    While a handler runs, heartbeats for its command go to the same `reply_to`, so a handler
    may outlast the step's timeout; they stop before the final reply is published.

    `faults` is called with `after_handler_before_reply` between the two (crash tests kill the
    process there: `adapters.faults`); it does nothing by default. A command body over
    `max_message_bytes` is dead-lettered unread.
    """

    def __init__(
        self,
        participant: Participant,
        channel: AbstractChannel,
        topology: Topology,
        *,
        clock: Clock,
        prefetch: int = 50,
        faults: FaultHook = _no_faults,
        max_message_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self.participant = participant
        self.channel = channel
        self.topology = topology
        self.clock = clock
        self.prefetch = prefetch
        self.faults = faults
        self.max_message_bytes = max_message_bytes
        self.publisher = RabbitPublisher(channel, topology)
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
        """One command: run it, publish the reply, return (the consumer then acks)."""
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
            async with heartbeats(command, now, send):
                # A command whose routing key has no handler gets a failure reply from the core
                # rather than the dead queue: the saga then compensates instead of waiting for
                # its timeout.
                reply = await self.participant.handle(command, now)
            # The effect is committed, the reply not yet sent: a crash here must be answered
            # from the barrier when the command comes back, never applied a second time.
            self.faults("after_handler_before_reply")
            await send(reply)
