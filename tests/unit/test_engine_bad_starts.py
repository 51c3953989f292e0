"""Starts that go wrong, on the in-memory fakes: a key reused with other input is flagged
(a warning, `start_repeated` in the saga's history, `input_differs` in the outcome), and a
start the broker's consumer dead-letters is announced as `<saga>.rejected`."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from structlog.testing import capture_logs

from adapters.memory.publisher import MemoryPublisher
from adapters.memory.store import MemoryStore
from orchestrator.engine import Engine
from orchestrator.error_info import ErrorInfo
from orchestrator.errors import InvalidInput, UnknownSaga
from orchestrator.messages import OutcomeEvent, StartSaga
from orchestrator.registry import Registry
from orchestrator.starting import start_error
from sagas.order import order_v1

ORDER: dict[str, object] = {
    "order_id": "o1",
    "customer_id": "c1",
    "amount": "10.00",
    "items": [{"sku": "A", "qty": 1}],
}
OTHER = {**ORDER, "customer_id": "c2", "amount": "99.00"}


@pytest.fixture
def parts() -> tuple[Engine, MemoryStore, MemoryPublisher]:
    def clock() -> datetime:
        return datetime(2026, 1, 1, tzinfo=UTC)

    store, publisher = MemoryStore(clock=clock), MemoryPublisher()
    return Engine(store, publisher, Registry([order_v1]), clock=clock), store, publisher


def start(input: dict[str, object], key: str = "k") -> StartSaga:
    return StartSaga(saga="order", key=key, input=input)


async def test_a_repeat_with_the_same_input_is_a_plain_duplicate(
    parts: tuple[Engine, MemoryStore, MemoryPublisher],
) -> None:
    engine, store, _ = parts
    first = await engine.start(start(ORDER))
    with capture_logs() as logs:
        # The validated input is what is compared: a quantity as a string is the same one.
        again = await engine.start(start({**ORDER, "items": [{"sku": "A", "qty": "1"}]}))
    assert again.saga_id == first.saga_id and not again.created and not again.input_differs
    assert first.saga_id is not None
    assert "start_repeated" not in [h.event for h in await store.history(first.saga_id)]
    assert [e for e in logs if e["log_level"] == "warning"] == []


async def test_a_key_reused_with_other_input_is_flagged(
    parts: tuple[Engine, MemoryStore, MemoryPublisher],
) -> None:
    engine, store, publisher = parts
    first = await engine.start(start(ORDER))
    assert first.saga_id is not None
    with capture_logs() as logs:
        again = await engine.start(start(OTHER), actor="api:ann")
    assert again.saga_id == first.saga_id and not again.created and again.input_differs
    [repeat] = [h for h in await store.history(first.saga_id) if h.event == "start_repeated"]
    assert repeat.detail == {"same_input": False, "differing_fields": ["amount", "customer_id"]}
    assert repeat.actor == "api:ann"
    [warning] = [e for e in logs if e["log_level"] == "warning"]
    assert warning["event"] == "start_key_reused_with_other_input"
    assert warning["key"] == "k" and warning["saga_id"] == str(first.saga_id)
    state = await store.get(first.saga_id)
    assert state is not None and state.input["customer_id"] == "c1"  # nothing changed
    assert publisher.routing_keys() == ["customers.reserve_credit"]  # nothing sent again


async def test_a_batch_of_starts_flags_a_reused_key_too(
    parts: tuple[Engine, MemoryStore, MemoryPublisher],
) -> None:
    engine, store, _ = parts
    first = await engine.start(start(ORDER))
    assert first.saga_id is not None
    outcomes = await engine.starts(
        [(start(ORDER, "new"), None), (start(OTHER), None), (start(ORDER), None)]
    )
    assert [(o.created, o.input_differs) for o in outcomes] == [
        (True, False),
        (False, True),
        (False, False),
    ]
    history = [h.event for h in await store.history(first.saga_id)]
    assert history.count("start_repeated") == 1


async def test_a_dead_lettered_start_is_announced_as_rejected(
    parts: tuple[Engine, MemoryStore, MemoryPublisher],
) -> None:
    engine, _, publisher = parts
    with pytest.raises(UnknownSaga) as unknown:
        await engine.start(StartSaga(saga="nosuch", key="k1", input={}))
    with pytest.raises(InvalidInput) as invalid:
        await engine.start(start({"order_id": "x"}, "k2"))
    await engine.reject_start("nosuch", "k1", start_error(unknown.value), message_id="m1")
    await engine.reject_start("order", "k2", start_error(invalid.value), message_id="m2")
    bad = ErrorInfo(type="invalid_start", message="field key: Field required")
    await engine.reject_start(None, None, bad, message_id="m3")

    events = [m for m in publisher.published if m.exchange == "saga.events"]
    assert [(m.routing_key, m.message_id) for m in events] == [
        ("nosuch.rejected", "m1"),
        ("order.rejected", "m2"),
        ("saga.rejected", "m3"),
    ]
    bodies = [OutcomeEvent.model_validate(json.loads(m.body)) for m in events]
    assert [(b.saga_id, b.saga, b.key, b.status) for b in bodies] == [
        (None, "nosuch", "k1", "rejected"),
        (None, "order", "k2", "rejected"),
        (None, None, None, "rejected"),
    ]
    assert [b.error for b in bodies] == [
        {"type": "unknown_saga", "message": "no saga named 'nosuch'; known: order"},
        {"type": "invalid_input", "message": str(invalid.value)},
        {"type": "invalid_start", "message": "field key: Field required"},
    ]
    assert "customer_id: Field required" in str(invalid.value)
