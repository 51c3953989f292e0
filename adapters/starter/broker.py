"""The relay's side of RabbitMQ: a connection opened when first needed, and again after it
failed, with a confirming channel and the engine's publisher on it.

A publish that does not finish within `timeout` (a broker that stopped answering, a network
that drops packets) fails like one the broker refused: the relay must not hold its rows
locked for ever. After any failure but an unroutable message the connection is dropped, so
the next attempt starts from a fresh one rather than waiting on the robust connection's own
reconnect schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection

from adapters.amqp_urls import node_urls
from adapters.rabbitmq.connection import connect, open_channel
from adapters.rabbitmq.publisher import RabbitPublisher
from adapters.rabbitmq.topology import Topology
from adapters.redaction import redact_text
from orchestrator.errors import PublishFailed
from orchestrator.messages import OutboxMessage

PUBLISH_TIMEOUT = 30.0


class Broker:
    """The publisher port (orchestrator.ports.Publisher) for the relay."""

    def __init__(
        self, amqp_url: str, prefix: str = "", *, timeout: float = PUBLISH_TIMEOUT
    ) -> None:
        node_urls(amqp_url)  # a malformed list fails here, saying what to write, not per publish
        self.amqp_url = amqp_url
        self.topology = Topology(prefix)
        self.timeout = timeout
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._publisher: RabbitPublisher | None = None

    def __repr__(self) -> str:
        return f"Broker({redact_text(self.amqp_url)!r}, prefix={self.topology.prefix!r})"

    async def publish(self, messages: Sequence[OutboxMessage]) -> None:
        """Return once the broker confirmed every message; raise PublishFailed naming those
        it did not (all of them when it could not be reached in time)."""
        try:
            async with asyncio.timeout(self.timeout):
                publisher = await self._connected()
                await publisher.publish(messages)
        except PublishFailed:
            if self._channel is None or self._channel.is_closed:
                await self.close()
            raise
        except Exception as exc:
            await self.close()
            why = (
                f"no confirm within {self.timeout}s"
                if isinstance(exc, TimeoutError)
                else redact_text(f"{type(exc).__name__}: {exc}")
            )
            raise PublishFailed([(m.message_id, why) for m in messages]) from exc

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        self._channel = self._publisher = None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()

    async def _connected(self) -> RabbitPublisher:
        if self._publisher is None:
            self._connection = await connect(self.amqp_url, name="saga-starter-relay")
            self._channel = await open_channel(self._connection)
            self._publisher = RabbitPublisher(self._channel, self.topology)
        return self._publisher
