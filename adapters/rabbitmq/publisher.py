"""Publishing with publisher confirms: a publish returns only once the broker holds the message."""

from __future__ import annotations

import asyncio
import uuid
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import structlog
from aio_pika import DeliveryMode, Message
from aio_pika.abc import AbstractChannel, AbstractExchange, HeadersType
from pydantic import BaseModel

from adapters.rabbitmq.topology import Topology
from orchestrator.errors import PublishFailed
from orchestrator.messages import Exchange, OutboxMessage

log = structlog.get_logger(__name__)

JSON = "application/json"


class RabbitPublisher:
    """`orchestrator.ports.Publisher` over one confirming channel.

    The channel must come from `adapters.rabbitmq.connection.open_channel` (confirms on,
    returns raised); anything else could report success for a message the broker dropped.
    """

    def __init__(self, channel: AbstractChannel, topology: Topology) -> None:
        if not channel.publisher_confirms or not getattr(channel, "on_return_raises", False):
            raise ValueError(
                "RabbitPublisher needs a channel with publisher_confirms=True and "
                "on_return_raises=True: open it with adapters.rabbitmq.connection.open_channel"
            )
        self.channel = channel
        self.topology = topology
        self._exchanges: dict[str, AbstractExchange] = {}

    async def publish(self, messages: Sequence[OutboxMessage]) -> None:
        """Publish the batch concurrently and wait for every confirm; raise PublishFailed
        naming each message that failed.

        Messages for the events exchange are not mandatory: an outcome event nobody has
        subscribed to is not an error. Everything else (commands, replies, requests) must
        reach a queue, so an unroutable one raises instead of vanishing.
        """
        if not messages:
            return
        results = await asyncio.gather(
            *(
                self._send(
                    m.exchange,
                    self._routing_key(m.exchange, m.routing_key),
                    Message(
                        m.body,
                        content_type=JSON,
                        delivery_mode=DeliveryMode.PERSISTENT,
                        message_id=m.message_id,
                        reply_to=self.topology.name(m.reply_to) if m.reply_to else None,
                        headers=dict(m.headers) if m.headers else None,
                    ),
                    mandatory=m.exchange != Exchange.EVENTS,
                )
                for m in messages
            ),
            # Let every publish finish: callers need to know which ones the broker holds.
            return_exceptions=True,
        )
        failures = [
            (m.message_id, _describe(r))
            for m, r in zip(messages, results, strict=True)
            if isinstance(r, BaseException)
        ]
        if failures:
            log.warning("amqp_publish_failed", count=len(failures), total=len(messages))
            raise PublishFailed(failures)

    async def publish_json(
        self,
        exchange: str,
        routing_key: str,
        body: BaseModel | bytes,
        headers: Mapping[str, Any] | None = None,
        *,
        message_id: str | None = None,
        reply_to: str | None = None,
        mandatory: bool = True,
    ) -> None:
        """Publish one JSON message to a logical exchange and wait for its confirm.

        For the default exchange `routing_key` is a logical queue name and is mapped too.
        """
        payload = body.model_dump_json().encode() if isinstance(body, BaseModel) else body
        message = Message(
            payload,
            content_type=JSON,
            delivery_mode=DeliveryMode.PERSISTENT,
            message_id=message_id or uuid.uuid4().hex,
            reply_to=self.topology.name(reply_to) if reply_to else None,
            headers=dict(headers) if headers else None,
        )
        await self._confirmed(
            exchange, self._routing_key(exchange, routing_key), message, mandatory=mandatory
        )

    async def publish_to_queue(
        self,
        queue: str,
        body: bytes,
        *,
        message_id: str,
        correlation_id: str | None = None,
        headers: HeadersType | None = None,
    ) -> None:
        """Publish to a queue by its real name (e.g. a message's `reply_to`) through the
        default exchange, mandatory, and wait for the confirm."""
        message = Message(
            body,
            content_type=JSON,
            delivery_mode=DeliveryMode.PERSISTENT,
            message_id=message_id,
            correlation_id=correlation_id,
            headers=headers,
        )
        await self._confirmed(Exchange.DEFAULT, queue, message, mandatory=True)

    async def publish_message(
        self, exchange: str, routing_key: str, message: Message, *, mandatory: bool = True
    ) -> None:
        """Publish a prepared message to a logical exchange (routing key taken as is)."""
        await self._confirmed(exchange, routing_key, message, mandatory=mandatory)

    async def _confirmed(
        self, exchange: str, routing_key: str, message: Message, *, mandatory: bool
    ) -> None:
        try:
            await self._send(exchange, routing_key, message, mandatory=mandatory)
        except Exception as exc:
            raise PublishFailed([(message.message_id or "", _describe(exc))]) from exc

    async def _send(
        self, exchange: str, routing_key: str, message: Message, *, mandatory: bool
    ) -> None:
        target = await self._exchange(exchange)
        in_flight = _IN_FLIGHT.setdefault(self.channel, {})
        message_id = message.message_id or ""
        # aiormq matches a Basic.Return to its publish by message_id, one entry per id per
        # channel: two unconfirmed publishes sharing an id (an outbox row sent right after
        # commit and again by the relay) could have the return charged to the wrong one and
        # the unroutable one reported as confirmed. So publishes of one id take turns.
        while (earlier := in_flight.get(message_id)) is not None:
            await asyncio.wait([earlier])
        turn = asyncio.get_running_loop().create_future()
        in_flight[message_id] = turn
        try:
            # With confirms on and returns raised, aio-pika raises DeliveryError on a nack and
            # PublishError on an unroutable mandatory message; returning means the broker has it.
            await target.publish(message, routing_key, mandatory=mandatory)
        finally:
            del in_flight[message_id]
            turn.set_result(None)

    async def _exchange(self, logical: str) -> AbstractExchange:
        found = self._exchanges.get(logical)
        if found is None:
            if logical == Exchange.DEFAULT:
                found = self.channel.default_exchange
            else:
                # A handle only, no round trip: the topology declares exchanges, and publishing
                # to a missing one fails with NOT_FOUND anyway.
                found = await self.channel.get_exchange(self.topology.name(logical), ensure=False)
            self._exchanges[logical] = found
        return found

    def _routing_key(self, exchange: str, routing_key: str) -> str:
        # Through the default exchange the routing key is a queue name, which is prefixed.
        return self.topology.name(routing_key) if exchange == Exchange.DEFAULT else routing_key


# Per channel (several publishers may share one): message_id -> resolved when its publish ends.
_IN_FLIGHT: weakref.WeakKeyDictionary[AbstractChannel, dict[str, asyncio.Future[None]]] = (
    weakref.WeakKeyDictionary()
)


def _describe(exc: BaseException) -> str:
    text = str(exc) or exc.__class__.__name__
    return f"{exc.__class__.__name__}: {text}"
