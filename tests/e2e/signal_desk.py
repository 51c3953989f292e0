"""Test doubles on the real broker for tests/e2e/test_many_signals.py: the `desk` participant
of the `review` saga (tests/e2e/review_saga.py), which sends each saga its `verdict` signal
over AMQP as its ticket's plan says, and a watch on the sagas' history that tells it when a
signal was held or taken."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import aio_pika
import sqlalchemy as sa
from aio_pika.abc import AbstractRobustChannel
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters.participant import Participant
from adapters.postgres.tables import saga_history
from adapters.rabbitmq.topology import Topology
from orchestrator.messages import Command, Exchange, SignalSaga


@dataclass(frozen=True)
class Plan:
    """When and how a ticket's saga gets its signal."""

    ticket_id: str
    # Sent while `prepare` is in flight, before the wait begins: held, then taken.
    early: bool
    # Otherwise sent this many seconds after `prepare` was answered: around the wait's start.
    delay: float
    # The same signal (same signal_id) sent again this many seconds after the first.
    again: float | None
    # Once the first was taken, a second signal with another signal_id: refused.
    second: bool
    # Names the saga by its id; else by its key.
    by_id: bool

    @property
    def key(self) -> str:
        return f"review-{self.ticket_id}"

    def verdict(self, sender: str) -> dict[str, Any]:
        return {"ticket_id": self.ticket_id, "sender": sender}


def plan(count: int, seed: int, run_id: str) -> list[Plan]:
    """`count` tickets, a seeded mix: a third early, a quarter sent twice, one in twelve
    followed by a second signal, at moments up to 2 s after `prepare` answered."""
    rng = random.Random(seed)
    tickets = [f"{run_id}-{i:04d}" for i in range(count)]
    early = set(rng.sample(tickets, count // 3))
    again = set(rng.sample(tickets, count // 4))
    second = set(rng.sample(tickets, max(3, count // 12)))
    return [
        Plan(
            ticket_id=t,
            early=t in early,
            delay=rng.uniform(0.0, 2.0),
            again=rng.uniform(0.0, 0.5) if t in again else None,
            second=t in second,
            by_id=rng.random() < 0.5,
        )
        for t in tickets
    ]


class Watch:
    """Which sagas have held or taken their signal, read from `saga_history` every 0.1 s by
    one poller for all of them."""

    def __init__(self, db: AsyncEngine) -> None:
        self.db = db
        self._seen: dict[str, dict[UUID, asyncio.Event]] = {
            "signal_held": defaultdict(asyncio.Event),
            "wait_finished": defaultdict(asyncio.Event),
        }

    async def run(self, stop: asyncio.Event) -> None:
        h = saga_history.c
        query = sa.select(h.saga_id, h.event).where(h.event.in_(sorted(self._seen)))
        while not stop.is_set():
            async with self.db.connect() as conn:
                for row in await conn.execute(query):
                    self._seen[row.event][row.saga_id].set()
            await asyncio.sleep(0.1)

    async def held(self, saga_id: UUID) -> None:
        await asyncio.wait_for(self._seen["signal_held"][saga_id].wait(), 30)

    async def taken(self, saga_id: UUID) -> None:
        await asyncio.wait_for(self._seen["wait_finished"][saga_id].wait(), 30)


class Desk:
    """The `desk` participant. `desk.prepare` sends the saga's signal as its plan says (an
    early one before it answers, once the signal is held; a later one from a task of its
    own); `desk.record` keeps what it is sent. `published` counts the signals sent."""

    def __init__(
        self, channel: AbstractRobustChannel, topology: Topology, plans: list[Plan], watch: Watch
    ) -> None:
        self.channel = channel
        self.topology = topology
        self.plans = {p.ticket_id: p for p in plans}
        self.watch = watch
        self.records: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.published = 0
        self.failures: list[str] = []
        self._begun: set[UUID] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def participant(self) -> Participant:
        desk = Participant("desk")

        @desk.handler("desk.prepare")
        async def prepare(cmd: Command) -> dict[str, Any]:
            plan = self.plans[str(cmd.payload["ticket_id"])]
            if cmd.saga_id not in self._begun:  # a redelivered command sends nothing again
                self._begun.add(cmd.saga_id)
                if plan.early:
                    await self.send(plan, cmd.saga_id, "first")
                    if plan.again is not None:
                        await self.send(plan, cmd.saga_id, "first")
                    await self.watch.held(cmd.saga_id)
                self._spawn(self.later(plan, cmd.saga_id))
            return {"prepared": plan.ticket_id}

        @desk.handler("desk.record")
        async def record(cmd: Command) -> dict[str, Any]:
            self.records[str(cmd.payload["ticket_id"])].append(dict(cmd.payload))
            return {"recorded": True}

        return desk

    async def later(self, plan: Plan, saga_id: UUID) -> None:
        """What is sent after `prepare` answered. The sleeps are the plan's schedule of random
        moments, not waits for a condition."""
        if not plan.early:
            await asyncio.sleep(plan.delay)
            await self.send(plan, saga_id, "first")
            if plan.again is not None:
                await asyncio.sleep(plan.again)
                await self.send(plan, saga_id, "first")
        if plan.second:
            await self.watch.taken(saga_id)
            await self.send(plan, saga_id, "second")

    async def send(self, plan: Plan, saga_id: UUID, sender: str) -> None:
        """Publish the signal `verdict` from `sender`: its signal_id is the ticket's and the
        sender's, so the first signal sent again is the same signal."""
        target: dict[str, Any] = {"saga_id": saga_id} if plan.by_id else {"key": plan.key}
        body = SignalSaga(
            **target,
            signal="verdict",
            signal_id=f"{plan.ticket_id}:{sender}",
            payload=plan.verdict(sender),
        )
        exchange = await self.channel.get_exchange(self.topology.name(Exchange.SAGAS), ensure=False)
        await exchange.publish(
            aio_pika.Message(
                body.model_dump_json(exclude_none=True).encode(),
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key="signal",
            mandatory=True,
        )
        self.published += 1

    def _spawn(self, work: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.failures.append(repr(task.exception()))

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
