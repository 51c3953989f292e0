"""Semantic locks in the engine, on the in-memory fakes: taken with the start, given back in
the transaction that finishes the saga (not when it is parked), and the three policies for a
start that finds its resource held."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest
from pydantic import BaseModel

from adapters.memory.publisher import MemoryPublisher
from adapters.memory.store import MemoryStore
from orchestrator import Retry, Saga
from orchestrator.engine import Engine
from orchestrator.errors import InvalidInput
from orchestrator.locks import LockWaiter
from orchestrator.machine import MarkCompensated, SkipRequested
from orchestrator.messages import CancelSaga, Command, Reply, ReplyError, StartSaga
from orchestrator.ports import SagaQuery
from orchestrator.registry import Registry
from orchestrator.starting import StartOutcome
from orchestrator.state import SagaState

ONCE = Retry(max_attempts=1)


class Edit(BaseModel):
    order_id: str
    delta: int = 1


def edit_saga(name: str, **lock_options: Any) -> Saga:
    """read (undone by forget) -> write (pivot) -> notify (after the pivot)."""
    saga = Saga(name, input=Edit, timeout=10, locks=("order:{order_id}",), **lock_options)
    saga.remote("read", command="orders.read", compensation="orders.forget", retry=ONCE)
    saga.remote("write", command="orders.write", pivot=True, retry=ONCE)
    saga.remote("notify", command="mail.send", retry=ONCE)
    return saga


REJECT = edit_saga("edit_reject")
QUEUE = edit_saga("edit_queue", on_locked="queue")
WAIT = edit_saga("edit_wait", on_locked="wait", lock_wait=5)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


class Harness:
    def __init__(self) -> None:
        self.clock = Clock()
        self.store = MemoryStore(clock=self.clock)
        self.publisher = MemoryPublisher()
        self.engine = Engine(
            self.store, self.publisher, Registry([REJECT, QUEUE, WAIT]), clock=self.clock
        )

    async def start(self, saga: Saga, key: str, order_id: str = "o1") -> StartOutcome:
        return await self.engine.start(
            StartSaga(saga=saga.name, key=key, input={"order_id": order_id})
        )

    def command(self, saga_id: UUID | None) -> Command:
        """The saga's latest command."""
        found = [
            Command.model_validate({**json.loads(m.body), "command": m.routing_key})
            for m in self.publisher.published
            if m.exchange == "saga.commands" and json.loads(m.body)["saga_id"] == str(saga_id)
        ]
        return found[-1]

    async def answer(self, saga_id: UUID | None, ok: bool = True) -> None:
        cmd = self.command(saga_id)
        error = None if ok else ReplyError(type="no", message="refused", retryable=False)
        await self.engine.reply(
            Reply(
                command_id=cmd.command_id,
                saga_id=cmd.saga_id,
                step=cmd.step,
                outcome="success" if ok else "failure",
                error=error,
            )
        )

    async def finish(self, saga_id: UUID | None) -> None:
        for _ in range(3):
            await self.answer(saga_id)
        assert (await self.state(saga_id)).status == "completed"

    async def state(self, saga_id: UUID | None) -> SagaState:
        assert saga_id is not None
        found = await self.store.get(saga_id)
        assert found is not None
        return found

    async def by_key(self, key: str) -> SagaState | None:
        found = await self.store.find(SagaQuery(key=key, limit=1))
        return found[0] if found else None

    def events(self, status: str) -> list[dict[str, Any]]:
        return [
            json.loads(m.body)
            for m in self.publisher.published
            if m.exchange == "saga.events" and m.routing_key.endswith(f".{status}")
        ]

    async def held(self) -> dict[str, str]:
        return {h.resource: h.key for h in (await self.store.locks()).held}

    async def waiting(self) -> list[str]:
        return [w.key for w in (await self.store.locks()).waiting]


@pytest.fixture
def h() -> Harness:
    return Harness()


async def test_reject_refuses_a_second_saga_and_names_the_holder(h: Harness) -> None:
    first = await h.start(REJECT, "a")
    assert first.created and await h.held() == {"order:o1": "a"}
    second = await h.start(REJECT, "b")
    assert second == StartOutcome(
        None,
        created=False,
        status=None,
        rejected=f"order:o1 is held by saga {first.saga_id} (key a)",
    )
    [event] = h.events("rejected")
    assert event["saga_id"] is None and event["key"] == "b" and event["saga"] == "edit_reject"
    assert event["error"]["type"] == "locked"
    assert event["error"]["held_by"] == str(first.saga_id)
    assert event["error"]["resource"] == "order:o1"
    assert await h.by_key("b") is None
    # Another order is free; the duplicate start of the holder is a duplicate, not refused.
    assert (await h.start(REJECT, "c", order_id="o2")).created
    again = await h.start(REJECT, "a")
    assert again.saga_id == first.saga_id and not again.created and again.rejected is None
    # Once the holder is done, the same key may start.
    await h.finish(first.saga_id)
    assert await h.held() == {"order:o2": "c"}
    assert (await h.start(REJECT, "b")).created


async def test_the_saga_history_says_when_locks_were_taken_and_given_back(h: Harness) -> None:
    first = await h.start(REJECT, "a")
    assert first.saga_id is not None
    await h.finish(first.saga_id)
    history = await h.store.history(first.saga_id)
    assert history[0].event == "locks_acquired"
    assert history[0].detail == {"resources": ["order:o1"]}
    assert [r.event for r in history[-2:]] == ["saga_completed", "locks_released"]


async def test_queue_starts_the_waiter_when_the_holder_completes(h: Harness) -> None:
    first = await h.start(QUEUE, "a")
    second = await h.start(QUEUE, "b")
    assert second == StartOutcome(None, created=False, status=None, queued=True)
    assert await h.start(QUEUE, "b") == second  # a duplicate start does not queue twice
    assert await h.waiting() == ["b"]
    assert await h.by_key("b") is None
    await h.answer(first.saga_id)
    await h.answer(first.saga_id)
    assert await h.by_key("b") is None  # still waiting: the holder has not finished
    await h.answer(first.saga_id)  # the holder completes; the waiter starts in that transaction
    started = await h.by_key("b")
    assert started is not None and started.status == "running"
    assert await h.held() == {"order:o1": "b"} and await h.waiting() == []
    assert h.command(started.saga_id).step == "read"
    history = await h.store.history(started.saga_id)
    assert history[0].event == "locks_acquired"
    assert history[0].detail is not None and "queued_at" in history[0].detail
    assert history[0].actor == "engine"


async def test_new_starts_queue_behind_waiters_even_when_the_resource_is_free(
    h: Harness,
) -> None:
    holder = await h.start(QUEUE, "a")
    await h.start(QUEUE, "b")
    # The holder fails before its pivot: compensated, it gives the lock to b at once.
    await h.answer(holder.saga_id, ok=True)
    await h.answer(holder.saga_id, ok=False)
    await h.answer(holder.saga_id)  # forget (the compensation of read)
    assert (await h.state(holder.saga_id)).status == "compensated"
    assert await h.held() == {"order:o1": "b"}
    c, d = await h.start(QUEUE, "c"), await h.start(REJECT, "d")
    assert c.queued and d.rejected is not None and "held by saga" in d.rejected
    assert await h.waiting() == ["c"]


async def test_a_parked_holder_keeps_its_lock_until_an_operator_finishes_it(h: Harness) -> None:
    holder = await h.start(QUEUE, "a")
    await h.start(QUEUE, "b")
    await h.answer(holder.saga_id)
    await h.answer(holder.saga_id)
    await h.answer(holder.saga_id, ok=False)  # notify fails past the pivot: parked
    assert (await h.state(holder.saga_id)).status == "failed"
    assert await h.held() == {"order:o1": "a"} and await h.waiting() == ["b"]
    assert await h.engine.sweep_locks() == 0  # the backstop does not take it either
    assert holder.saga_id is not None
    await h.engine.operate(holder.saga_id, SkipRequested("notify", None, "mailed by hand"), "ann")
    assert await h.held() == {"order:o1": "b"} and await h.waiting() == []


async def test_mark_compensated_releases_a_holder_parked_while_compensating(h: Harness) -> None:
    holder = await h.start(QUEUE, "a")
    await h.start(QUEUE, "b")
    await h.answer(holder.saga_id)
    await h.answer(holder.saga_id, ok=False)  # write fails: read is compensated...
    await h.answer(holder.saga_id, ok=False)  # ...and its compensation fails: parked
    assert (await h.state(holder.saga_id)).status == "failed"
    assert await h.held() == {"order:o1": "a"}
    assert holder.saga_id is not None
    await h.engine.operate(holder.saga_id, MarkCompensated("undone by hand"), "ann")
    assert (await h.state(holder.saga_id)).status == "compensated"
    assert await h.held() == {"order:o1": "b"}


async def test_wait_expires_unless_the_holder_finishes_in_time(h: Harness) -> None:
    holder = await h.start(WAIT, "a")
    assert (await h.start(WAIT, "late")).queued
    assert await h.engine.sweep_locks() == 0
    h.clock.now += timedelta(seconds=5)
    assert await h.engine.sweep_locks() == 1
    [event] = h.events("rejected")
    assert event["key"] == "late" and event["error"]["type"] == "lock_wait_expired"
    assert event["error"]["resources"] == ["order:o1"]
    assert await h.waiting() == []
    assert (await h.start(WAIT, "in_time")).queued
    h.clock.now += timedelta(seconds=4)
    await h.finish(holder.saga_id)
    in_time = await h.by_key("in_time")
    assert in_time is not None and in_time.status == "running"
    assert await h.by_key("late") is None


async def test_an_expired_waiter_no_longer_bars_the_ones_behind_it(h: Harness) -> None:
    holder = await h.start(WAIT, "a")
    assert (await h.start(WAIT, "w")).queued
    h.clock.now += timedelta(seconds=1)
    assert (await h.start(QUEUE, "q")).queued
    await h.finish(holder.saga_id)  # w's turn: it starts
    w = await h.by_key("w")
    assert w is not None and await h.waiting() == ["q"]
    h.clock.now += timedelta(seconds=10)
    await h.finish(w.saga_id)
    assert await h.held() == {"order:o1": "q"}


async def test_cancelling_a_waiting_start_ends_it_and_moves_the_queue(h: Harness) -> None:
    holder = await h.start(QUEUE, "a")
    await h.start(QUEUE, "b")
    await h.start(QUEUE, "c")
    outcome = await h.engine.cancel(CancelSaga(key="b", reason="changed mind"))
    b = await h.by_key("b")
    assert b is not None and b.status == "cancelled" and b.cancel_reason == "changed mind"
    assert outcome.sagas == ((b.saga_id, b.status),) and not outcome.held
    assert all(s.status == "pending" for s in b.steps)
    assert await h.waiting() == ["c"]
    await h.finish(holder.saga_id)
    assert await h.held() == {"order:o1": "c"}


async def test_an_operators_cancel_finds_a_start_waiting_for_its_lock(h: Harness) -> None:
    await h.start(QUEUE, "a")
    await h.start(QUEUE, "b")
    # No saga has key "b" yet, but its start waits in the queue: not an unknown key.
    outcome = await h.engine.cancel(CancelSaga(key="b", reason="typo-proof"), hold=False)
    b = await h.by_key("b")
    assert b is not None and b.status == "cancelled"
    assert outcome.sagas == ((b.saga_id, b.status),) and not outcome.held
    assert await h.waiting() == []


async def test_a_start_cancelled_before_it_arrived_takes_no_lock(h: Harness) -> None:
    assert (await h.engine.cancel(CancelSaga(key="a", reason="early"))).held
    outcome = await h.start(QUEUE, "a")
    assert outcome.created and outcome.status == "cancelled"
    assert await h.held() == {}
    assert (await h.start(QUEUE, "b")).created


async def test_the_backstop_sweep_starts_a_waiter_whose_resources_are_free(h: Harness) -> None:
    # A waiter left behind (another transaction had it when its resource was freed).
    async with h.store.transaction() as tx:
        await tx.enqueue_lock_waiter(
            LockWaiter(
                saga=QUEUE.name,
                version=1,
                key="left",
                input={"order_id": "o9", "delta": 1},
                resources=("order:o9",),
                enqueued_at=h.clock.now,
            )
        )
    assert await h.engine.sweep_locks() == 1
    left = await h.by_key("left")
    assert left is not None and left.status == "running"
    assert await h.held() == {"order:o9": "left"}


async def test_a_lock_field_without_a_value_is_invalid_input(h: Harness) -> None:
    class Maybe(BaseModel):
        order_id: str | None = None

    saga = Saga("maybe", input=Maybe, locks=("order:{order_id}",))
    saga.remote("write", command="orders.write", compensation=None)
    engine = Engine(h.store, h.publisher, Registry([saga]), clock=h.clock)
    with pytest.raises(InvalidInput, match="needs a value for 'order_id'"):
        await engine.start(StartSaga(saga="maybe", key="k", input={}))


def purchase(child: Saga) -> Saga:
    """A parent saga whose pivot is a child edit saga."""
    saga = Saga(f"buy_{child.name}", input=Edit, timeout=10)
    saga.remote("prep", command="orders.prep", compensation="orders.unprep", retry=ONCE)
    saga.child("edit", saga=child.name, pivot=True)
    return saga


BUY_REJECT, BUY_QUEUE = purchase(REJECT), purchase(QUEUE)


class Family(Harness):
    def __init__(self) -> None:
        super().__init__()
        registry = Registry([REJECT, QUEUE, WAIT, BUY_REJECT, BUY_QUEUE])
        self.engine = Engine(self.store, self.publisher, registry, clock=self.clock)
        self.relayed = 0

    async def relay(self) -> None:
        """Deliver what the engine published to `sagas` and `saga.replies` since last time."""
        while self.relayed < len(self.publisher.published):
            message = self.publisher.published[self.relayed]
            self.relayed += 1
            if message.exchange == "sagas" and message.routing_key == "start":
                await self.engine.start(StartSaga.model_validate_json(message.body))
            elif message.routing_key == "saga.replies":
                await self.engine.reply(Reply.model_validate_json(message.body))


async def test_a_rejected_child_fails_its_parents_step_at_once() -> None:
    f = Family()
    holder = await f.start(REJECT, "holder")
    parent = await f.start(BUY_REJECT, "p")
    await f.answer(parent.saga_id)  # prep succeeds: the child's start is published
    await f.relay()
    [event] = f.events("rejected")
    assert event["saga"] == "edit_reject" and event["error"]["held_by"] == str(holder.saga_id)
    state = await f.state(parent.saga_id)
    assert state.status == "compensating"
    edit = state.step("edit")
    assert edit is not None and edit.status == "failed"
    assert state.error is not None and "held by saga" in state.error["message"]
    await f.answer(parent.saga_id)  # unprep
    assert (await f.state(parent.saga_id)).status == "compensated"


async def test_a_queued_child_keeps_its_parent_and_answers_it() -> None:
    f = Family()
    holder = await f.start(QUEUE, "holder")
    parent = await f.start(BUY_QUEUE, "p")
    await f.answer(parent.saga_id)
    await f.relay()
    [waiting] = (await f.store.locks()).waiting
    assert waiting.parent is not None and waiting.parent.saga_id == parent.saga_id
    await f.finish(holder.saga_id)
    child = await f.by_key(f"{parent.saga_id}:edit")
    assert child is not None and child.parent == waiting.parent
    await f.finish(child.saga_id)
    await f.relay()
    assert (await f.state(parent.saga_id)).status == "completed"


class Strict(BaseModel):
    order_id: str
    delta: int


def strict_child() -> Saga:
    saga = Saga("strict_edit", input=Strict, timeout=10)
    saga.remote("write", command="orders.write", retry=ONCE, compensation=None)
    return saga


async def test_a_child_that_cannot_start_fails_its_parents_step_at_once() -> None:
    # The parent hands the child an input its model refuses (no `delta`): the start is not
    # dead-lettered silently while the parent waits for its 30-day timeout.
    parent_saga = Saga("buy_strict", input=Edit, timeout=10)
    parent_saga.remote("prep", command="orders.prep", compensation="orders.unprep", retry=ONCE)
    parent_saga.child("edit", saga="strict_edit", input=lambda ctx: {"order_id": "o1"}, pivot=True)
    f = Family()
    f.engine = Engine(f.store, f.publisher, Registry([strict_child(), parent_saga]), clock=f.clock)
    parent = await f.start(parent_saga, "p")
    await f.answer(parent.saga_id)  # prep succeeds: the child's start is published
    await f.relay()
    [event] = f.events("rejected")
    assert event["saga"] == "strict_edit" and event["error"]["type"] == "invalid_input"
    state = await f.state(parent.saga_id)
    assert state.status == "compensating"
    edit = state.step("edit")
    assert edit is not None and edit.status == "failed"
    assert "delta" in (state.error or {}).get("message", "")


async def test_a_top_level_start_with_bad_input_still_raises_for_the_dead_queue() -> None:
    f = Family()
    f.engine = Engine(f.store, f.publisher, Registry([strict_child()]), clock=f.clock)
    with pytest.raises(InvalidInput, match="delta"):
        await f.engine.start(StartSaga(saga="strict_edit", key="k", input={"order_id": "o"}))
