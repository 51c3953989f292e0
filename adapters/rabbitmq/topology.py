"""Exchanges, queues and bindings of wire protocol v1, and the one place their arguments live.

RabbitMQ refuses a re-declaration whose arguments differ from the existing queue's
(PRECONDITION_FAILED closes the channel), so every process that declares a queue must compute
exactly the same arguments: they come from `Topology.queue_arguments` and nowhere else.

`saga.dead` is a fanout exchange: both the broker (a quorum queue past its delivery limit) and
our consumers (poison) dead-letter with the message's original routing key, and a fanout routes
every one of them to the dead queue without a catch-all binding or an `x-dead-letter-routing-key`
that would overwrite the routing key an operator needs to see where the message was going.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import structlog
from aio_pika import ExchangeType
from aio_pika.abc import AbstractChannel, AbstractQueue

from orchestrator.messages import REPLY_QUEUE, Exchange

log = structlog.get_logger(__name__)

REQUESTS_QUEUE = "saga.requests"
CANCELS_QUEUE = "saga.cancels"
REPLIES_QUEUE = REPLY_QUEUE
DEAD_QUEUE = "saga.dead"
COMMAND_QUEUE_PREFIX = "commands."

DEFAULT_DELIVERY_LIMIT = 10

EXCHANGE_TYPES: dict[str, ExchangeType] = {
    Exchange.SAGAS: ExchangeType.TOPIC,
    Exchange.COMMANDS: ExchangeType.TOPIC,
    Exchange.EVENTS: ExchangeType.TOPIC,
    Exchange.DEAD: ExchangeType.FANOUT,
}

# The service is the first segment of a command name; it names a queue, so keep it tame.
SERVICE_RE = re.compile(r"^[a-z][a-z0-9_-]*$")


def service_of(command: str) -> str:
    """`payments.charge` -> `payments`: the participant service whose queue gets the command."""
    service, dot, rest = command.partition(".")
    if not dot or not rest or not SERVICE_RE.match(service):
        raise ValueError(
            f"command {command!r} is not '<service>.<command>' (e.g. 'payments.charge'); "
            "its first segment picks the participant's queue"
        )
    return service


class Topology:
    """Maps logical names to the broker's names and declares what wire protocol v1 needs.

    `prefix` isolates one deployment (or one test) on a shared broker; production uses "".
    The default exchange "" is never prefixed. Routing keys are not prefixed either: they
    only mean something within an exchange, and the exchanges are.
    """

    def __init__(self, prefix: str = "", *, delivery_limit: int = DEFAULT_DELIVERY_LIMIT) -> None:
        if delivery_limit < 1:
            raise ValueError(f"delivery_limit must be >= 1, got {delivery_limit}")
        self.prefix = prefix
        self.delivery_limit = delivery_limit
        # Real names this instance declared; tests delete exactly these afterwards.
        self.declared_exchanges: set[str] = set()
        self.declared_queues: set[str] = set()

    def __repr__(self) -> str:
        return f"Topology(prefix={self.prefix!r}, delivery_limit={self.delivery_limit})"

    def name(self, logical: str) -> str:
        return logical if logical == Exchange.DEFAULT else self.prefix + logical

    @staticmethod
    def command_queue(service: str) -> str:
        """The logical name of a participant service's command queue."""
        if not SERVICE_RE.match(service):
            raise ValueError(
                f"service {service!r} is invalid: lowercase letters, digits, '_' and '-', "
                "starting with a letter"
            )
        return COMMAND_QUEUE_PREFIX + service

    @staticmethod
    def services_of(commands: Iterable[str]) -> set[str]:
        return {service_of(c) for c in commands}

    def queue_arguments(self, logical_queue: str) -> dict[str, Any]:
        """Arguments of a queue; the only source of them (a mismatch is PRECONDITION_FAILED)."""
        if logical_queue == DEAD_QUEUE:
            # The end of the line: no limit and nowhere further to dead-letter to.
            return {"x-queue-type": "quorum"}
        return {
            "x-queue-type": "quorum",
            # A message that keeps crashing its consumer (rejected with requeue, or held
            # when the process dies) is moved aside instead of looping forever.
            "x-delivery-limit": self.delivery_limit,
            "x-dead-letter-exchange": self.name(Exchange.DEAD),
            # Quorum queues dead-letter at-most-once by default: a message past its limit is
            # dropped if the dead queue cannot take it right then. at-least-once keeps it until
            # the dead queue confirms; the broker only allows that with reject-publish overflow
            # (which only matters if a max-length policy is ever added: publishers then get a
            # nack they retry on, instead of the oldest messages silently being dropped).
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }

    async def declare_exchange(self, channel: AbstractChannel, logical: str) -> None:
        real = self.name(logical)
        await channel.declare_exchange(real, EXCHANGE_TYPES[logical], durable=True)
        self.declared_exchanges.add(real)

    async def declare_queue(self, channel: AbstractChannel, logical: str) -> AbstractQueue:
        """Declare one queue with its canonical arguments (no bindings); harmless if it exists."""
        real = self.name(logical)
        queue = await channel.declare_queue(
            real, durable=True, arguments=self.queue_arguments(logical)
        )
        self.declared_queues.add(real)
        return queue

    async def declare_core(self, channel: AbstractChannel) -> None:
        """Every exchange, and the requests, cancels, replies and dead queues."""
        for logical in EXCHANGE_TYPES:
            await self.declare_exchange(channel, logical)
        dead = await self.declare_queue(channel, DEAD_QUEUE)
        await dead.bind(self.name(Exchange.DEAD), routing_key="")
        # Cancels have a queue of their own: starts may wait in theirs for room (admission
        # control, adapters/admission.py), and a cancel must not wait behind them. A cancel
        # that overtakes its start is remembered and applied when the start comes.
        sagas = self.name(Exchange.SAGAS)
        requests = await self.declare_queue(channel, REQUESTS_QUEUE)
        await requests.bind(sagas, routing_key="start")
        # Up to 2026-11 starts and cancels shared saga.requests: a broker set up then still
        # routes cancels there too, and a cancel delivered twice changes nothing.
        await requests.unbind(sagas, routing_key="cancel")
        cancels = await self.declare_queue(channel, CANCELS_QUEUE)
        await cancels.bind(sagas, routing_key="cancel")
        # Signals share the cancels' queue: they too must never wait behind starts.
        await cancels.bind(sagas, routing_key="signal")
        # Replies come through the default exchange, which binds every queue by its name.
        await self.declare_queue(channel, REPLIES_QUEUE)
        log.info("amqp_core_declared", prefix=self.prefix)

    async def declare_service(self, channel: AbstractChannel, service: str) -> None:
        """The command queue of one participant service, bound to `<service>.#`."""
        logical = self.command_queue(service)
        # Both exchanges are re-declared so a participant may come up before the orchestrator:
        # the binding needs the commands exchange, the queue's dead-lettering needs the other.
        await self.declare_exchange(channel, Exchange.COMMANDS)
        await self.declare_exchange(channel, Exchange.DEAD)
        queue = await self.declare_queue(channel, logical)
        await queue.bind(self.name(Exchange.COMMANDS), routing_key=f"{service}.#")
        log.info("amqp_service_declared", prefix=self.prefix, service=service)

    async def delete_all(self, channel: AbstractChannel, services: Iterable[str] = ()) -> None:
        """Delete the core, the given services' queues, and whatever this instance declared.

        For test cleanup; deleting a queue that does not exist is not an error in RabbitMQ.
        Refuses an empty prefix: that would be production's queues, messages included.
        """
        if not self.prefix:
            raise RuntimeError("delete_all refuses to delete unprefixed (production) names")
        queues = {self.name(q) for q in (REQUESTS_QUEUE, CANCELS_QUEUE, REPLIES_QUEUE, DEAD_QUEUE)}
        queues |= {self.name(self.command_queue(s)) for s in services}
        queues |= self.declared_queues
        exchanges = {self.name(e) for e in EXCHANGE_TYPES} | self.declared_exchanges
        for queue in sorted(queues):
            await channel.queue_delete(queue)
        for exchange in sorted(exchanges):
            await channel.exchange_delete(exchange)
        self.declared_queues.clear()
        self.declared_exchanges.clear()
