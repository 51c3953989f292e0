"""Engine.signal: a signal finds its saga by id or key, and is taken, held, a duplicate or
refused; every refusal is announced on `saga.events` as `<saga>.signal_refused`."""

from __future__ import annotations

import json
import uuid

import pytest

from adapters.memory.publisher import MemoryPublisher
from adapters.memory.store import MemoryStore
from orchestrator import Saga
from orchestrator.engine import Engine
from orchestrator.messages import SignalSaga, StartSaga
from orchestrator.registry import Registry
from orchestrator.state import SagaStatus, StepStatus
from sagas.order import OrderPlaced
from tests.unit.test_engine import ORDER, Clock

approval = Saga("approval", version=1, input=OrderPlaced)
approval.wait("approve", timeout=3600)
other = Saga("other", version=1, input=OrderPlaced)
other.wait("approve", timeout=3600)


@pytest.fixture
def engine() -> Engine:
    clock = Clock()
    registry = Registry([approval, other])
    return Engine(MemoryStore(clock=clock), MemoryPublisher(), registry, clock=clock)


def published(engine: Engine) -> MemoryPublisher:
    assert isinstance(engine.publisher, MemoryPublisher)
    return engine.publisher


async def started(engine: Engine, saga: str = "approval", key: str = "k") -> uuid.UUID:
    outcome = await engine.start(StartSaga(saga=saga, key=key, input=ORDER))
    assert outcome.saga_id is not None
    return outcome.saga_id


async def test_a_signal_by_id_is_taken_and_completes_the_saga(engine: Engine) -> None:
    saga_id = await started(engine)
    outcome = await engine.signal(
        SignalSaga(saga_id=saga_id, signal="approve", signal_id="s1", payload={"ok": True}),
        "api:ann",
    )
    assert (outcome.result, outcome.saga_id, outcome.status) == (
        "taken",
        saga_id,
        SagaStatus.COMPLETED,
    )
    state = await engine.store.get(saga_id)
    assert state is not None and state.steps[0].result == {"ok": True}
    history = await engine.store.history(saga_id)
    finished = next(h for h in history if h.event == "wait_finished")
    assert finished.actor == "api:ann"
    again = await engine.signal(SignalSaga(saga_id=saga_id, signal="approve", signal_id="s1"))
    assert again.result == "duplicate"
    assert len(await engine.store.history(saga_id)) == len(history)  # nothing recorded


async def test_a_signal_by_key_names_the_saga_when_the_key_is_shared(engine: Engine) -> None:
    first = await started(engine, "approval", "shared")
    await started(engine, "other", "shared")
    ambiguous = await engine.signal(SignalSaga(key="shared", signal="approve", signal_id="a"))
    assert (ambiguous.result, ambiguous.reason) == ("refused", "ambiguous_key")
    assert ambiguous.why == "key 'shared' belongs to sagas approval, other: name the saga"
    named = await engine.signal(
        SignalSaga(key="shared", saga="approval", signal="approve", signal_id="b")
    )
    assert (named.result, named.saga_id) == ("taken", first)


async def test_a_signal_for_no_saga_is_refused_and_announced(engine: Engine) -> None:
    outcome = await engine.signal(
        SignalSaga(key="nobody", saga="approval", signal="approve", signal_id="n1")
    )
    assert (outcome.result, outcome.reason) == ("refused", "unknown_saga")
    assert outcome.why == "no saga named 'approval' has key 'nobody'"
    (event,) = published(engine).published
    assert (event.exchange, event.routing_key) == ("saga.events", "approval.signal_refused")
    assert event.message_id == "signal-refused:nobody:n1"  # the same again on redelivery
    body = json.loads(event.body)
    assert body["saga_id"] is None and body["key"] == "nobody"
    assert body["error"] == {
        "type": "signal_refused",
        "message": "no saga named 'approval' has key 'nobody'",
        "reason": "unknown_saga",
        "signal": "approve",
        "signal_id": "n1",
    }


async def test_a_saga_id_of_another_saga_name_is_not_found(engine: Engine) -> None:
    saga_id = await started(engine)
    outcome = await engine.signal(
        SignalSaga(saga_id=saga_id, saga="other", signal="approve", signal_id="x")
    )
    assert (outcome.result, outcome.reason) == ("refused", "unknown_saga")
    state = await engine.store.get(saga_id)
    assert state is not None and state.steps[0].status == StepStatus.RUNNING


async def test_a_refusal_of_a_known_saga_is_in_its_history(engine: Engine) -> None:
    saga_id = await started(engine)
    outcome = await engine.signal(SignalSaga(saga_id=saga_id, signal="deny", signal_id="d1"))
    assert (outcome.result, outcome.reason) == ("refused", "not_waited_for")
    last = (await engine.store.history(saga_id))[-1]
    assert last.event == "signal_refused" and last.detail is not None
    assert last.detail["signal_id"] == "d1"
    assert published(engine).routing_keys()[-1] == "approval.signal_refused"
