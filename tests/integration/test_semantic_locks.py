"""Semantic locks on real PostgreSQL and RabbitMQ: "two users edit the same order at once".

The participant below keeps an order's `total`. Editing it is a saga of two steps, a
read-modify-write spread over two transactions: `read_total` copies the total into a scratch
row of the saga, `write_total` writes scratch + delta. Two such sagas that interleave (both
read, then both write) lose one edit: that is the isolation anomaly a saga has and a
semantic lock on `order:{order_id}` prevents.

To make the interleaving happen whenever it can, every `write_total` waits until the other
saga of the test has read (or, when the lock keeps it from ever reading, until a short
patience has run out). The control test without locks shows the update is then really lost,
so the tests with locks could fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from adapters.participant import Participant, StepFailed
from adapters.participant.barrier import Barrier
from adapters.rabbitmq.client import send_requests
from adapters.rabbitmq.topology import Topology
from orchestrator import Retry, Saga
from orchestrator.machine import MarkCompensated
from orchestrator.messages import Command, StartSaga
from orchestrator.state import SagaState
from tests.fixtures.polling import eventually
from tests.integration.harness import System, drain, running_system
from tests.integration.hosted import host

pytestmark = pytest.mark.timeout(90)

INITIAL = 100
SCHEMA = "edits"
ONCE = Retry(max_attempts=1)

metadata = sa.MetaData(schema=SCHEMA)
orders = sa.Table(
    "orders",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("total", sa.Integer, nullable=False),
)
# What `read_total` saw, per saga: the state a saga carries between its two steps.
scratch = sa.Table(
    "scratch",
    metadata,
    sa.Column("saga_id", sa.Uuid, primary_key=True),
    sa.Column("total", sa.Integer, nullable=False),
)


class EditOrder(BaseModel):
    order_id: str
    delta: int
    tag: str  # which of the test's edits this is: the participant's gates go by it
    fail_write: bool = False
    fail_forget: bool = False


def edit_saga(name: str, **lock_options: Any) -> Saga:
    saga = Saga(name, input=EditOrder, timeout=20, **lock_options)
    saga.remote("read_total", command="orders.read_total", compensation="orders.forget", retry=ONCE)
    saga.remote("write_total", command="orders.write_total", retry=ONCE, compensation=None)
    return saga


UNLOCKED = edit_saga("edit_unlocked")
QUEUED = edit_saga("edit_queued", locks=("order:{order_id}",), on_locked="queue")
REJECTING = edit_saga("edit_rejecting", locks=("order:{order_id}",))
WAITING = edit_saga("edit_waiting", locks=("order:{order_id}",), on_locked="wait", lock_wait=2.0)


@dataclass
class Span:
    tag: str
    step: str
    started: float
    ended: float = 0.0


@dataclass
class Orders:
    """The participant's in-process knobs and observations."""

    engine: AsyncEngine
    # write_total waits until this many edits have read, at most `patience` seconds.
    reads_before_write: int = 2
    patience: float = 1.0
    # Per tag: write_total waits for this event (the test holds that edit's pivot).
    hold: dict[str, asyncio.Event] = field(default_factory=dict)
    read_by: set[str] = field(default_factory=set)
    spans: list[Span] = field(default_factory=list)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def total(self, order_id: str = "o-1") -> int:
        async with self.engine.connect() as conn:
            found = await conn.scalar(sa.select(orders.c.total).where(orders.c.id == order_id))
        assert found is not None
        return int(found)

    def span(self, tag: str) -> tuple[float, float]:
        mine = [s for s in self.spans if s.tag == tag]
        return min(s.started for s in mine), max(s.ended for s in mine)

    async def _read(self, tag: str) -> None:
        async with self._changed:
            self.read_by.add(tag)
            self._changed.notify_all()

    async def _wait_for_reads(self) -> None:
        # On timeout the other edit cannot read now (it waits for the lock): write anyway.
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: len(self.read_by) >= self.reads_before_write),
                    self.patience,
                )


def participant(shop: Orders, barrier: Barrier) -> Participant:
    svc = Participant("orders")

    @barrier.guard
    async def read_total(cmd: Command, conn: AsyncConnection) -> dict[str, Any]:
        total = await conn.scalar(
            sa.select(orders.c.total).where(orders.c.id == cmd.payload["order_id"])
        )
        await conn.execute(sa.insert(scratch).values(saga_id=cmd.saga_id, total=total))
        return {"read": total}

    @barrier.guard
    async def write_total(cmd: Command, conn: AsyncConnection) -> dict[str, Any]:
        if cmd.payload["fail_write"]:
            raise StepFailed("refused", "the order cannot take this edit", retryable=False)
        read = await conn.scalar(sa.select(scratch.c.total).where(scratch.c.saga_id == cmd.saga_id))
        assert read is not None
        written = int(read) + int(cmd.payload["delta"])
        await conn.execute(
            sa.update(orders).where(orders.c.id == cmd.payload["order_id"]).values(total=written)
        )
        return {"wrote": written}

    @barrier.guard
    async def forget(cmd: Command, conn: AsyncConnection) -> dict[str, Any]:
        if cmd.payload["fail_forget"]:
            raise StepFailed("stuck", "the scratch row cannot be removed", retryable=False)
        await conn.execute(sa.delete(scratch).where(scratch.c.saga_id == cmd.saga_id))
        return {"forgotten": True}

    @svc.handler("orders.read_total")
    async def on_read(cmd: Command) -> dict[str, Any] | None:
        span = Span(cmd.payload["tag"], cmd.step, time.monotonic())
        shop.spans.append(span)
        result = await read_total(cmd)
        span.ended = time.monotonic()
        await shop._read(cmd.payload["tag"])
        return result

    @svc.handler("orders.write_total")
    async def on_write(cmd: Command) -> dict[str, Any] | None:
        tag = cmd.payload["tag"]
        span = Span(tag, cmd.step, time.monotonic())
        shop.spans.append(span)
        if tag in shop.hold:
            await shop.hold[tag].wait()
        await shop._wait_for_reads()
        result = await write_total(cmd)
        span.ended = time.monotonic()
        return result

    @svc.handler("orders.forget")
    async def on_forget(cmd: Command) -> dict[str, Any] | None:
        return await forget(cmd)

    return svc


@dataclass
class Edits:
    system: System
    shop: Orders

    def edit(self, tag: str, delta: int, **flags: bool) -> dict[str, Any]:
        return {"order_id": "o-1", "delta": delta, "tag": tag, **flags}

    async def start(self, saga: Saga, *edits: dict[str, Any]) -> None:
        """Publish the starts back to back, in one connection: "at once"."""
        await send_requests(
            self.system.settings,
            [("start", StartSaga(saga=saga.name, key=e["tag"], input=e)) for e in edits],
        )

    async def state(self, tag: str) -> SagaState | None:
        return await self.system.saga_by_key(tag)

    async def locks(self) -> tuple[dict[str, str], list[str]]:
        """(resource -> holder key, waiting keys)."""
        view = await self.system.store.locks()
        return {h.resource: h.key for h in view.held}, [w.key for w in view.waiting]

    async def queued(self, *tags: str) -> None:
        async def waiting() -> bool:
            return (await self.locks())[1] == list(tags)

        await eventually(waiting, timeout=20, message=f"{tags} queued")


@pytest.fixture
async def edits(database_url: str, topology: Topology, amqp_url: str) -> AsyncIterator[Edits]:
    sagas = [UNLOCKED, QUEUED, REJECTING, WAITING]
    async with running_system(database_url, topology, amqp_url, sagas) as system:
        async with system.shop.begin() as conn:
            await conn.execute(sa.schema.CreateSchema(SCHEMA, if_not_exists=True))
            await conn.run_sync(metadata.create_all)
            await conn.execute(sa.insert(orders).values(id="o-1", total=INITIAL))
        barrier = Barrier(system.shop, schema=SCHEMA)
        await barrier.install()
        shop = Orders(system.shop)
        await host(system, participant(shop, barrier))
        yield Edits(system, shop)


def disjoint(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[1] <= b[0] or b[1] <= a[0]


async def test_without_a_lock_interleaved_edits_lose_an_update(edits: Edits) -> None:
    """The control: the test can fail. Both edits read 100; each writes 100 + its delta."""
    edits.shop.patience = 15.0  # both will read: the first write waits for the second read
    await edits.start(UNLOCKED, edits.edit("A", 10), edits.edit("B", 1))
    for tag in ("A", "B"):
        await edits.system.wait_status(tag, "completed")
    total = await edits.shop.total()
    assert total in (INITIAL + 10, INITIAL + 1), "one edit overwrote the other"
    assert total != INITIAL + 11
    assert not disjoint(edits.shop.span("A"), edits.shop.span("B"))


async def test_queue_runs_the_second_edit_after_the_first(edits: Edits) -> None:
    await edits.start(QUEUED, edits.edit("A", 10), edits.edit("B", 1))
    a = await edits.system.wait_status("A", "completed")
    b = await edits.system.wait_status("B", "completed")
    assert await edits.shop.total() == INITIAL + 11
    assert disjoint(edits.shop.span("A"), edits.shop.span("B"))
    first, second = sorted((a, b), key=lambda s: s.created_at)
    # The second saga was created by the first's release, after the first had finished.
    assert second.created_at >= first.updated_at
    history = await edits.system.history(second.saga_id)
    assert history[0].event == "locks_acquired" and "queued_at" in (history[0].detail or {})
    assert await edits.locks() == ({}, [])


async def test_reject_lets_exactly_one_edit_through(edits: Edits) -> None:
    rejected = await edits.system.spy("saga.events", "edit_rejecting.rejected")
    await edits.start(REJECTING, edits.edit("A", 10), edits.edit("B", 1))
    [event] = await eventually(lambda: drain(rejected), message="a rejected event")
    loser = event["key"]
    winner, delta = ("B", 1) if loser == "A" else ("A", 10)
    done = await edits.system.wait_status(winner, "completed")
    assert event["saga_id"] is None and event["status"] == "rejected"
    assert event["error"]["type"] == "locked"
    assert event["error"]["resource"] == "order:o-1"
    assert event["error"]["held_by"] == str(done.saga_id)
    assert await edits.state(loser) is None
    assert await edits.shop.total() == INITIAL + delta
    assert await drain(rejected) == []
    # The rejected start was acked, not dead-lettered: the lock is free now, so it may start.
    await edits.start(REJECTING, edits.edit(loser, 1 if loser == "B" else 10))
    await edits.system.wait_status(loser, "completed")
    assert await edits.shop.total() == INITIAL + 11


async def test_wait_rejects_when_the_holder_takes_too_long(edits: Edits) -> None:
    rejected = await edits.system.spy("saga.events", "edit_waiting.rejected")
    edits.shop.hold["A"] = asyncio.Event()  # A holds the order until the test lets it write
    await edits.start(WAITING, edits.edit("A", 10))
    await eventually(lambda: _read(edits, "A"), message="A has read")
    await edits.start(WAITING, edits.edit("B", 1))
    [event] = await eventually(lambda: drain(rejected), timeout=20, message="B rejected")
    assert event["key"] == "B" and event["error"]["type"] == "lock_wait_expired"
    assert event["error"]["resources"] == ["order:o-1"]
    assert (await edits.locks())[1] == []
    edits.shop.hold["A"].set()
    await edits.system.wait_status("A", "completed")
    assert await edits.state("B") is None
    assert await edits.shop.total() == INITIAL + 10


async def test_wait_starts_the_edit_when_the_holder_finishes_in_time(edits: Edits) -> None:
    edits.shop.hold["A"] = asyncio.Event()
    await edits.start(WAITING, edits.edit("A", 10))
    await eventually(lambda: _read(edits, "A"), message="A has read")
    await edits.start(WAITING, edits.edit("B", 1))
    await edits.queued("B")
    edits.shop.hold["A"].set()
    await edits.system.wait_status("A", "completed")
    await edits.system.wait_status("B", "completed")
    assert await edits.shop.total() == INITIAL + 11


async def test_a_compensated_holder_releases_its_lock(edits: Edits) -> None:
    await edits.start(QUEUED, edits.edit("A", 10, fail_write=True))
    await eventually(lambda: _read(edits, "A"), message="A has read")
    await edits.start(QUEUED, edits.edit("B", 1))
    await edits.system.wait_status("A", "compensated")
    await edits.system.wait_status("B", "completed")
    assert await edits.shop.total() == INITIAL + 1


async def test_a_parked_holder_keeps_its_lock_until_an_operator_finishes_it(
    edits: Edits,
) -> None:
    await edits.start(QUEUED, edits.edit("A", 10, fail_write=True, fail_forget=True))
    await eventually(lambda: _read(edits, "A"), message="A has read")
    await edits.start(QUEUED, edits.edit("B", 1))
    await edits.queued("B")
    parked = await edits.system.wait_status("A", "failed")
    assert parked.error is not None and parked.error["type"] == "compensation_failed"
    engine = edits.system.orchestrator.engine
    assert engine is not None
    assert await engine.sweep_locks() == 0  # nothing to start: the lock stays with A
    assert await edits.locks() == ({"order:o-1": "A"}, ["B"])
    [held] = (await edits.system.store.locks()).held
    assert held.status == "failed"
    await engine.operate(parked.saga_id, MarkCompensated("scratch row removed by hand"), "ann")
    await edits.system.wait_status("B", "completed")
    assert await edits.shop.total() == INITIAL + 1


async def test_locks_and_waiters_survive_a_restart_and_operators_see_them(
    edits: Edits,
) -> None:
    edits.shop.hold["A"] = asyncio.Event()
    await edits.start(QUEUED, edits.edit("A", 10))
    await eventually(lambda: _read(edits, "A"), message="A has read")
    await edits.start(QUEUED, edits.edit("B", 1))
    await edits.queued("B")
    await edits.system.restart_orchestrator()

    listed = await saga_cli(edits.system, "locks", "--json")
    a = await edits.state("A")
    assert a is not None
    [held] = listed["held"]
    assert held["resource"] == "order:o-1" and held["saga_id"] == str(a.saga_id)
    assert held["saga"] == "edit_queued" and held["key"] == "A" and held["status"] == "running"
    [waiting] = listed["waiting"]
    assert waiting["resources"] == ["order:o-1"] and waiting["key"] == "B"
    assert waiting["saga"] == "edit_queued" and waiting["expires_at"] is None

    edits.shop.hold["A"].set()
    await edits.system.wait_status("A", "completed")
    await edits.system.wait_status("B", "completed")
    assert await edits.shop.total() == INITIAL + 11
    assert await saga_cli(edits.system, "locks", "--json") == {"held": [], "waiting": []}


async def _read(edits: Edits, tag: str) -> bool:
    return tag in edits.shop.read_by


async def saga_cli(system: System, *args: str) -> Any:
    """`saga ...` as an operator runs it: a process of its own on the same database."""
    env = {
        **os.environ,
        "SAGA_DATABASE_URL": system.settings.database_url,
        "SAGA_LOG_FORMAT": "json",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "adapters.cli",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    return json.loads(out)
