"""The engine reports what happened through `observe`, after commit only, and the metrics
adapter counts it; on the in-memory fakes."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import pytest

from adapters import metrics
from adapters.memory.publisher import MemoryPublisher
from adapters.memory.store import MemoryStore
from orchestrator.engine import Engine
from orchestrator.event_names import HistoryEvent
from orchestrator.messages import Command, OutboxMessage, Reply, StartSaga
from orchestrator.ports import HistoryAppends, SagaTransaction, SearchWrites, Transitions
from orchestrator.registry import Registry
from sagas.order import order_v1 as order_saga  # sequential: these tests follow it step by step

ORDER = {
    "order_id": "o1",
    "customer_id": "c1",
    "amount": "10.00",
    "items": [{"sku": "A", "qty": 1}],
}
NOW = datetime(2026, 1, 1, tzinfo=UTC)

Seen = list[tuple[str, dict[str, Any]]]


def recorder() -> tuple[Seen, Any]:
    seen: Seen = []

    def observe(event: str, detail: Mapping[str, Any]) -> None:
        seen.append((event, dict(detail)))

    return seen, observe


def engine_with(store: MemoryStore, publisher: MemoryPublisher, observe: Any) -> Engine:
    return Engine(store, publisher, Registry([order_saga]), clock=lambda: NOW, observe=observe)


def last_command(publisher: MemoryPublisher) -> Command:
    msg = [m for m in publisher.published if m.exchange == "saga.commands"][-1]
    return Command.model_validate({**json.loads(msg.body), "command": msg.routing_key})


def success(cmd: Command) -> Reply:
    return Reply(command_id=cmd.command_id, saga_id=cmd.saga_id, step=cmd.step, outcome="success")


async def test_every_history_entry_is_observed_with_its_saga_and_step() -> None:
    seen, observe = recorder()
    store, publisher = MemoryStore(clock=lambda: NOW), MemoryPublisher()
    engine = engine_with(store, publisher, observe)
    started = await engine.start(StartSaga(saga="order", key="k", input=ORDER))
    assert started.saga_id is not None
    cmd = last_command(publisher)
    await engine.reply(success(cmd))
    await engine.reply(success(cmd))  # a duplicate

    history = await store.history(started.saga_id)
    assert [e for e, _ in seen] == [h.event for h in history]
    assert seen[-1] == (
        "reply_ignored",
        {
            "reason": "duplicate",
            "command_id": str(cmd.command_id),
            "outcome": "success",
            "saga": "order",
            "saga_id": str(started.saga_id),
            "step": "reserve_credit",
        },
    )


async def test_what_leaves_no_history_is_observed_too() -> None:
    seen, observe = recorder()
    engine = engine_with(MemoryStore(clock=lambda: NOW), MemoryPublisher(), observe)
    start = StartSaga(saga="order", key="k", input=ORDER)
    first = await engine.start(start)
    seen.clear()

    await engine.start(start)
    stray = Reply(command_id=uuid.uuid4(), saga_id=uuid.uuid4(), step="x", outcome="failure")
    assert await engine.reply(stray) is False

    assert seen == [
        ("saga_start_duplicate", {"saga": "order", "key": "k", "saga_id": str(first.saga_id)}),
        (
            "reply_ignored",
            {
                "reason": "unknown saga",
                "saga_id": str(stray.saga_id),
                "step": "x",
                "command_id": str(stray.command_id),
                "outcome": "failure",
            },
        ),
    ]


class _FailingOutbox:
    """A store whose transactions fail when a transition's rows are written, before commit."""

    def __init__(self, inner: MemoryStore) -> None:
        self.inner = inner

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[SagaTransaction]:
        async with self.inner.transaction() as tx:
            yield _Tx(tx)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class _Tx:
    def __init__(self, tx: SagaTransaction) -> None:
        self.tx = tx

    async def save_batch(
        self,
        changes: Transitions,
        appends: HistoryAppends,
        messages: Sequence[OutboxMessage],
        search: SearchWrites = (),
    ) -> list[OutboxMessage]:
        raise ConnectionError("connection lost before commit")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tx, name)


async def test_a_rolled_back_transition_is_not_observed() -> None:
    seen, observe = recorder()
    store = MemoryStore(clock=lambda: NOW)
    engine = Engine(
        _FailingOutbox(store),
        MemoryPublisher(),
        Registry([order_saga]),
        clock=lambda: NOW,
        observe=observe,
    )
    with pytest.raises(ConnectionError):
        await engine.start(StartSaga(saga="order", key="k", input=ORDER))
    assert seen == []


async def test_a_broken_observer_does_not_undo_or_fail_the_transition() -> None:
    def observe(_event: str, _detail: Mapping[str, Any]) -> None:
        raise RuntimeError("metrics backend down")

    store, publisher = MemoryStore(clock=lambda: NOW), MemoryPublisher()
    engine = engine_with(store, publisher, observe)
    started = await engine.start(StartSaga(saga="order", key="k", input=ORDER))
    assert started.saga_id is not None
    assert await engine.reply(success(last_command(publisher))) is True
    state = await store.get(started.saga_id)
    assert state is not None and state.steps[0].status == "succeeded"


def test_metrics_count_transitions_ignored_replies_and_duplicate_starts() -> None:
    before = {
        "stale": metrics.value("saga_replies_ignored_total", reason="stale attempt"),
        "ignored": metrics.value("saga_transitions_total", event="reply_ignored"),
        "done": metrics.value("saga_transitions_total", event="saga_completed"),
        "dup": metrics.value("saga_starts_deduplicated_total", saga="order"),
        "dead": metrics.value("saga_messages_dead_lettered_total", queue="saga.requests"),
    }
    metrics.observe(HistoryEvent.REPLY_IGNORED, {"reason": "stale attempt"})
    metrics.observe(HistoryEvent.SAGA_COMPLETED, {"saga": "order"})
    metrics.observe(HistoryEvent.SAGA_START_DUPLICATE, {"saga": "order"})
    metrics.dead_lettered("saga.requests")
    after = {
        "stale": metrics.value("saga_replies_ignored_total", reason="stale attempt"),
        "ignored": metrics.value("saga_transitions_total", event="reply_ignored"),
        "done": metrics.value("saga_transitions_total", event="saga_completed"),
        "dup": metrics.value("saga_starts_deduplicated_total", saga="order"),
        "dead": metrics.value("saga_messages_dead_lettered_total", queue="saga.requests"),
    }
    assert {k: after[k] - before[k] for k in before} == {
        "stale": 1,
        "ignored": 1,
        "done": 1,
        "dup": 1,
        "dead": 1,
    }
    assert metrics.value("saga_transitions_total", event="saga_start_duplicate") == 0
    text = metrics.render().decode()
    assert 'saga_replies_ignored_total{reason="stale attempt"}' in text


def test_metrics_count_starts_a_semantic_lock_held_back() -> None:
    def counts() -> dict[str, float]:
        return {
            outcome: metrics.value("saga_starts_locked_total", saga="edit", outcome=outcome)
            for outcome in ("rejected", "queued", "lock_wait_expired")
        }

    before = counts()
    metrics.observe(HistoryEvent.SAGA_START_REJECTED, {"saga": "edit", "resource": "order:1"})
    metrics.observe(HistoryEvent.SAGA_START_QUEUED, {"saga": "edit", "resource": "order:1"})
    metrics.observe(HistoryEvent.SAGA_START_QUEUED, {"saga": "edit", "resource": "order:1"})
    metrics.observe(HistoryEvent.LOCK_WAIT_EXPIRED, {"saga": "edit", "resource": "order:1"})
    after = counts()
    assert {k: after[k] - before[k] for k in before} == {
        "rejected": 1,
        "queued": 2,
        "lock_wait_expired": 1,
    }
    assert metrics.value("saga_transitions_total", event="saga_start_queued") == 0
