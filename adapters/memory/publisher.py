"""In-memory Publisher for unit tests: records what was published, can be told to fail."""

from __future__ import annotations

from collections.abc import Sequence

from orchestrator.messages import OutboxMessage


class BrokerDown(ConnectionError):
    """Raised by MemoryPublisher while `down` is set, like a publish without a confirm."""


class MemoryPublisher:
    def __init__(self) -> None:
        self.published: list[OutboxMessage] = []
        self.down = False

    async def publish(self, messages: Sequence[OutboxMessage]) -> None:
        if self.down:
            raise BrokerDown("broker unavailable")
        self.published.extend(messages)

    def routing_keys(self) -> list[str]:
        return [m.routing_key for m in self.published]
