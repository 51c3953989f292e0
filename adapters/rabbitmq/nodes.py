"""A robust connection to one node of a RabbitMQ cluster that moves to another when its node
goes away.

aio-pika's robust connection reconnects to the one URL it was given, so with a node down for
good it would retry that node forever while the rest of the cluster serves the queues (quorum
queues elect a new leader on a live node within seconds). `NodesConnection` holds every
node's URL: each time its connection closes, or an attempt to connect fails, the next attempt
goes to the next node of the list, round and round; aio-pika then restores the channels,
declarations and consumers on that node as it does on a reconnect to the same one. Between
failed attempts it waits aio-pika's `reconnect_interval` (5 s), so a list of dead nodes is not
hammered."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import structlog
from aio_pika import RobustConnection
from yarl import URL

from adapters.redaction import redact_text

log = structlog.get_logger(__name__)


class NodesConnection(RobustConnection):
    """Connects to `urls[0]` first; after each close or failed attempt, to the next URL."""

    def __init__(self, urls: Sequence[str], **kwargs: Any) -> None:
        if not urls:
            raise ValueError("NodesConnection needs at least one URL")
        super().__init__(URL(urls[0]), **kwargs)
        self.nodes = [URL(url) for url in urls]
        self._current = 0

    async def _on_connection_close(self, closing: asyncio.Future[Any]) -> None:
        # Before the first connection, connect() tries the nodes itself (and says why each
        # failed): nothing to tell yet.
        if not self._close_called and len(self.nodes) > 1 and self.connection_attempt:
            left = self.url
            self._current = (self._current + 1) % len(self.nodes)
            self.url = self.nodes[self._current]
            log.warning(
                "amqp_next_node",
                left=redact_text(str(left)),
                next=redact_text(str(self.url)),
                reason=_reason(closing),
            )
        await super()._on_connection_close(closing)


def _reason(closing: asyncio.Future[Any]) -> str | None:
    if closing.cancelled():
        return None
    exc = closing.exception()
    return None if exc is None else redact_text(f"{type(exc).__name__}: {exc}")
