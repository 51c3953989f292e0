"""The engine shell on the in-memory fakes: one transition = one transaction, outbox first,
publish after commit, relay after a failed publish, idempotent starts, held cancels."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from adapters.memory.publisher import MemoryPublisher
from adapters.memory.store import MemoryStore
from orchestrator.engine import Engine
from orchestrator.errors import InvalidInput, SagaNotFound, UnknownSaga
from orchestrator.messages import CancelSaga, Command, Reply, StartSaga
from orchestrator.ports import SagaQuery
from orchestrator.registry import Registry
from orchestrator.state import SagaState
from sagas.order import order_v1 as order_saga  # sequential: these tests follow it step by step

ORDER = {
    "order_id": "o1",
    "customer_id": "c1",
    "amount": "10.00",
    "items": [{"sku": "A", "qty": 1}],
}


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def parts(clock: Clock) -> tuple[Engine, MemoryStore, MemoryPublisher]:
    store, publisher = MemoryStore(clock=clock), MemoryPublisher()
    return Engine(store, publisher, Registry([order_saga]), clock=clock), store, publisher


def last_command(publisher: MemoryPublisher) -> Command:
    msg = [m for m in publisher.published if m.exchange == "saga.commands"][-1]
    return Command.model_validate({**json.loads(msg.body), "command": msg.routing_key})


def success(cmd: Command, result: object = None) -> Reply:
    return Reply(
        command_id=cmd.command_id,
        saga_id=cmd.saga_id,
        step=cmd.step,
        outcome="success",
        result=result,
    )


async def test_start_is_idempotent_by_key(
    parts: tuple[Engine, MemoryStore, MemoryPublisher],
) -> None:
    engine, _store, publisher = parts
    first = await engine.start(StartSaga(saga="order", key="k", input=ORDER))
    again = await engine.start(StartSaga(saga="order", key="k", input=ORDER))
    assert first.created and not again.created and again.saga_id == first.saga_id
    assert publisher.routing_keys() == ["customers.reserve_credit"]


async def test_bad_starts_raise_errors_that_explain(
    parts: tuple[Engine, MemoryStore, MemoryPublisher],
) -> None:
    engine, _, _ = parts
    with pytest.raises(UnknownSaga, match="known: order"):
        await engine.start(StartSaga(saga="nope", key="k", input={}))
    with pytest.raises(InvalidInput, match="customer_id"):
        await engine.start(StartSaga(saga="order", key="k", input={"order_id": "x"}))


async def test_full_run_publishes_each_command_once_and_the_relay_sweep_empties_the_outbox(
    parts: tuple[Engine, MemoryStore, MemoryPublisher],
) -> None:
    engine, store, publisher = parts
    await engine.start(StartSaga(saga="order", key="k", input=ORDER))
    for _ in range(4):
        await engine.reply(success(last_command(publisher), {"ok": True}))
    assert publisher.routing_keys() == [
        "customers.reserve_credit",
        "inventory.reserve",
        "payments.charge",
        "notifications.order_confirmed",
        "order.completed",
    ]
    # Published after commit, deleted in bulk by the next sweep, which sends none again.
    async with store.transaction() as tx:
        assert len(await tx.claim_outbox(timedelta(days=-1), 100)) == 5
    assert await engine.relay(older_than=timedelta(days=-1)) == 0
    assert len(publisher.published) == 5
    async with store.transaction() as tx:
        assert await tx.claim_outbox(timedelta(days=-1), 100) == []


async def test_published_rows_whose_delete_fails_are_deleted_by_the_next_sweep(
    parts: tuple[Engine, MemoryStore, MemoryPublisher], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, store, publisher = parts
    await engine.start(StartSaga(saga="order", key="k", input=ORDER))
    broken = store.transaction

    def down() -> Any:
        raise ConnectionError("database down")

    monkeypatch.setattr(store, "transaction", down)
    with pytest.raises(ConnectionError):
        await engine.forget_published()
    monkeypatch.setattr(store, "transaction", broken)
    assert await engine.relay(older_than=timedelta(days=-1)) == 0  # deleted, not sent again
    assert publisher.routing_keys() == ["customers.reserve_credit"]
    async with store.transaction() as tx:
        assert await tx.claim_outbox(timedelta(days=-1), 100) == []


async def test_publish_failure_leaves_the_outbox_for_the_relay(
    parts: tuple[Engine, MemoryStore, MemoryPublisher], clock: Clock
) -> None:
    engine, _store, publisher = parts
    publisher.down = True
    outcome = await engine.start(StartSaga(saga="order", key="k", input=ORDER))
    assert outcome.created and publisher.published == []
    publisher.down = False
    assert (
        await engine.relay(older_than=timedelta(seconds=2)) == 0
    )  # too young: still the fast path's
    clock.now += timedelta(seconds=3)
    assert await engine.relay(older_than=timedelta(seconds=2)) == 1
    assert publisher.routing_keys() == ["customers.reserve_credit"]
    assert await engine.relay(older_than=timedelta(seconds=2)) == 0


async def test_timers_fire_timeouts_once(
    parts: tuple[Engine, MemoryStore, MemoryPublisher], clock: Clock
) -> None:
    engine, store, _publisher = parts
    started = await engine.start(StartSaga(saga="order", key="k", input=ORDER))
    assert started.saga_id is not None
    assert await engine.fire_timers() == 0
    clock.now += timedelta(seconds=31)
    assert await engine.fire_timers() == 1
    assert await engine.fire_timers() == 0  # the retry is scheduled later, not due yet
    state = await store.get(started.saga_id)
    assert state is not None and state.steps[0].error is not None
    assert state.steps[0].error["type"] == "timeout"


async def test_cancel_before_start_is_held_then_applied(
    parts: tuple[Engine, MemoryStore, MemoryPublisher],
) -> None:
    engine, store, publisher = parts
    held = await engine.cancel(CancelSaga(key="k", reason="changed mind"))
    assert held.held
    started = await engine.start(StartSaga(saga="order", key="k", input=ORDER))
    assert started.saga_id is not None
    state = await store.get(started.saga_id)
    assert state is not None and state.status == "cancelled"
    assert publisher.routing_keys() == ["order.cancelled"]


async def test_an_operators_cancel_of_an_unknown_key_is_refused_and_holds_nothing(
    parts: tuple[Engine, MemoryStore, MemoryPublisher],
) -> None:
    engine, store, _ = parts
    with pytest.raises(SagaNotFound, match="no saga has key 'typo', and no start with it"):
        await engine.cancel(CancelSaga(key="typo", reason="oops"), hold=False)
    started = await engine.start(StartSaga(saga="order", key="typo", input=ORDER))
    assert started.saga_id is not None
    state = await store.get(started.saga_id)
    assert state is not None and state.status == "running"  # no cancel was waiting for it
    cancelled = await engine.cancel(CancelSaga(key="typo", reason="now"), hold=False)
    assert not cancelled.held and cancelled.sagas == ((started.saga_id, "compensating"),)


async def test_cancel_unknown_saga_id_is_an_error(
    parts: tuple[Engine, MemoryStore, MemoryPublisher],
) -> None:
    engine, _, _ = parts
    with pytest.raises(SagaNotFound):
        await engine.cancel(CancelSaga(saga_id=uuid.uuid4()))


async def test_reply_for_unknown_saga_is_reported(
    parts: tuple[Engine, MemoryStore, MemoryPublisher],
) -> None:
    engine, _, _ = parts
    reply = Reply(command_id=uuid.uuid4(), saga_id=uuid.uuid4(), step="x", outcome="success")
    assert await engine.reply(reply) is False


async def test_history_records_every_transition_with_its_actor(
    parts: tuple[Engine, MemoryStore, MemoryPublisher],
) -> None:
    engine, store, publisher = parts
    started = await engine.start(StartSaga(saga="order", key="k", input=ORDER), actor="test")
    assert started.saga_id is not None
    await engine.cancel(CancelSaga(key="k", reason="stop"), actor="operator:ann")
    await engine.reply(success(last_command(publisher)))  # the in-flight credit reservation
    history = await store.history(started.saga_id)
    assert [h.seq for h in history] == list(range(1, len(history) + 1))
    assert ("saga_cancel_accepted", "operator:ann") in [(h.event, h.actor) for h in history]
    assert history[-1].event == "compensation_dispatched"


async def test_a_batch_of_replies_ends_as_if_they_came_one_by_one(clock: Clock) -> None:
    """Group commit: replies of several sagas, two of them for one saga and one for a saga
    nobody knows, in one call. Every saga ends where applying them one at a time leads."""
    ends = []
    for batched in (False, True):
        store, publisher = MemoryStore(clock=clock), MemoryPublisher()
        engine = Engine(store, publisher, Registry([order_saga]), clock=clock)
        first = [last_command_of(publisher, (await engine.start(start(k))).saga_id) for k in "abc"]
        again = success(first[0])  # a duplicate: ignored, and recorded as such
        stranger = Reply(command_id=uuid.uuid4(), saga_id=uuid.uuid4(), step="x", outcome="success")
        batch = [success(first[0]), success(first[1]), again, stranger, success(first[2])]
        if batched:
            applied = await engine.replies(batch)
        else:
            applied = [await engine.reply(r) for r in batch]
        assert applied == [True, True, True, False, True]
        sagas = sorted(await store.find(SagaQuery()), key=lambda s: s.key)
        ends.append(
            [
                (s.key, s.revision, [st.status for st in s.steps], await _events(store, s))
                for s in sagas
            ]
        )
        assert len(publisher.routing_keys()) == 6  # 3 first commands, 3 second ones
    assert ends[0] == ends[1]
    assert ends[1][0][3].count("reply_ignored") == 1  # the duplicate, in saga a's history


def start(key: str) -> StartSaga:
    return StartSaga(saga="order", key=key, input={**ORDER, "order_id": key})


def last_command_of(publisher: MemoryPublisher, saga_id: uuid.UUID | None) -> Command:
    commands = [
        Command.model_validate({**json.loads(m.body), "command": m.routing_key})
        for m in publisher.published
        if m.exchange == "saga.commands"
    ]
    return [c for c in commands if c.saga_id == saga_id][-1]


async def _events(store: MemoryStore, state: SagaState) -> list[str]:
    return [h.event for h in await store.history(state.saga_id)]


async def test_a_batch_of_starts_ends_as_if_they_came_one_by_one(clock: Clock) -> None:
    """Group commit of starts: a new key, a key started before, a key twice in the batch, a
    key with a held cancel. Same sagas, same statuses, same commands as one at a time."""
    ends = []
    for batched in (False, True):
        store, publisher = MemoryStore(clock=clock), MemoryPublisher()
        engine = Engine(store, publisher, Registry([order_saga]), clock=clock)
        earlier = await engine.start(start("old"))
        await engine.cancel(CancelSaga(key="held", reason="changed my mind"))
        batch = [start("new"), start("old"), start("twice"), start("twice"), start("held")]
        pairs = [(r, None) for r in batch]
        if batched:
            outcomes = await engine.starts(pairs)
        else:
            outcomes = [await engine.start(r) for r in batch]
        assert [o.created for o in outcomes] == [True, False, True, False, True]
        assert outcomes[1].saga_id == earlier.saga_id
        assert outcomes[3].saga_id == outcomes[2].saga_id
        sagas = sorted(await store.find(SagaQuery()), key=lambda s: s.key)
        ends.append([(s.key, s.status, await _events(store, s)) for s in sagas])
        assert sorted(publisher.routing_keys()) == [
            *["customers.reserve_credit"] * 3,  # old, new, twice
            "order.cancelled",  # held: it ends at once
        ]
    assert ends[0] == ends[1]
    assert [(key, status) for key, status, _ in ends[1]] == [
        ("held", "cancelled"),
        ("new", "running"),
        ("old", "running"),
        ("twice", "running"),
    ]


async def test_a_batch_of_starts_with_an_invalid_one_starts_nothing(
    parts: tuple[Engine, MemoryStore, MemoryPublisher],
) -> None:
    engine, store, publisher = parts
    with pytest.raises(InvalidInput, match="customer_id"):
        await engine.starts(
            [(start("a"), None), (StartSaga(saga="order", key="b", input={}), None)]
        )
    assert await store.find(SagaQuery()) == []
    assert publisher.routing_keys() == []
