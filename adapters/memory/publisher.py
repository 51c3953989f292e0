"""In-memory Publisher for unit tests: records what was published, can be told to fail."""

from __future__ import annotations

from collections.abc import Sequence

from orchestrator.errors import PublishFailed
from orchestrator.messages import OutboxMessage


class MemoryPublisher:
    def __init__(self) -> None:
        self.published: list[OutboxMessage] = []
        # The broker is down: a publish raises PublishFailed, as one nothing confirms does.
        self.down = False

    async def publish(self, messages: Sequence[OutboxMessage]) -> None:
        if not messages:
            return
        if self.down:
            raise PublishFailed([(m.message_id, "broker down") for m in messages])
        self.published.extend(messages)

    def routing_keys(self) -> list[str]:
        return [m.routing_key for m in self.published]
