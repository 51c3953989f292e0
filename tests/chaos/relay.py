"""The duplicating, reordering relay of tests/e2e/chaos.py, which also drops messages.

What "dropped" can mean with at-least-once delivery, honestly:

- dropped before the ack (`drop_rate`): the relay takes a command or a reply and fails before
  acknowledging it, as a consumer that dies or loses its channel mid-message does. The broker
  keeps the message and delivers it again (RabbitMQ never loses a confirmed, persistent
  message of a quorum queue): the delivery is late and counted by the queue's delivery limit,
  not lost.
- lost for good (`lose_replies`): the relay acknowledges a reply and throws it away, as a
  participant that took a command and never answered does (its own bug, or a crash of a
  system behind it). No broker can bring that back; the engine's step timeout must notice,
  and the retry's command is answered from the participant's barrier (no second effect).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence

from adapters.rabbitmq.delivery import Delivery
from adapters.rabbitmq.publisher import RabbitPublisher
from adapters.rabbitmq.topology import Topology
from tests.chaos.excuses import LostReply
from tests.e2e.chaos import ChaosRelay


class DroppedOnPurpose(Exception):
    """Raised by the relay's handler: the consumer requeues the message (not poison)."""


class DroppingRelay(ChaosRelay):
    def __init__(
        self,
        amqp_url: str,
        upstream: Topology,
        downstream: Topology,
        services: Sequence[str],
        *,
        copies: int,
        seed: int,
        drop_rate: float,
        lose_replies: int,
        lose_rate: float = 0.01,
    ) -> None:
        super().__init__(amqp_url, upstream, downstream, services, copies=copies, seed=seed)
        self.drop_rate = drop_rate
        self.lose_budget = lose_replies
        self.lose_rate = lose_rate
        self.dropped = 0
        self.lost: list[LostReply] = []
        self._drops = random.Random(seed + 1)

    async def _forward_command(self, publisher: RabbitPublisher, delivery: Delivery) -> None:
        if self._drops.random() < self.drop_rate:
            self.dropped += 1
            raise DroppedOnPurpose("command dropped before its ack")
        await super()._forward_command(publisher, delivery)

    async def _buffer_reply(self, delivery: Delivery) -> None:
        roll = self._drops.random()
        if self.lose_budget > 0 and roll < self.lose_rate and b'"heartbeat"' not in delivery.body:
            self.lose_budget -= 1
            reply = json.loads(delivery.body)
            self.lost.append(LostReply(str(reply["saga_id"]), str(reply["step"]), time.time()))
            return  # acknowledged, never forwarded: the step's timeout must notice
        if roll < self.drop_rate:
            self.dropped += 1
            raise DroppedOnPurpose("reply dropped before its ack")
        await super()._buffer_reply(delivery)
