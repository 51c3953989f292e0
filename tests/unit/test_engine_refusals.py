"""A refused operator action leaves a trace in the saga's history (who, what, why it was
refused), written in a transaction of its own; the saga itself is left as it was."""

from __future__ import annotations

import uuid

import pytest

from adapters.memory.publisher import MemoryPublisher
from adapters.memory.store import MemoryStore
from orchestrator.engine import Engine
from orchestrator.errors import OperationRefused, SagaNotFound
from orchestrator.machine import PauseRequested, ResumeRequested, SkipRequested
from orchestrator.messages import CancelSaga, StartSaga
from orchestrator.registry import Registry
from sagas.order import order_v1
from tests.unit.test_engine import ORDER, Clock


@pytest.fixture
def engine() -> Engine:
    clock = Clock()
    return Engine(MemoryStore(clock=clock), MemoryPublisher(), Registry([order_v1]), clock=clock)


async def started(engine: Engine) -> uuid.UUID:
    outcome = await engine.start(StartSaga(saga="order", key="k", input=ORDER))
    assert outcome.saga_id is not None
    return outcome.saga_id


async def test_a_refused_action_is_recorded_with_who_what_and_why(engine: Engine) -> None:
    saga_id = await started(engine)
    before = await engine.store.get(saga_id)
    with pytest.raises(OperationRefused, match="only a paused saga can be resumed") as refused:
        await engine.operate(saga_id, ResumeRequested("carry on"), "operator:ann")
    assert await engine.store.get(saga_id) == before  # the saga did not move
    last = (await engine.store.history(saga_id))[-1]
    assert (last.event, last.actor, last.step) == ("operator_action_refused", "operator:ann", None)
    assert last.detail == {"action": "resume", "reason": "carry on", "why": str(refused.value)}


async def test_a_refused_skip_names_its_step(engine: Engine) -> None:
    saga_id = await started(engine)
    with pytest.raises(OperationRefused):
        await engine.operate(
            saga_id, SkipRequested("reserve_credit", {"ok": True}, "done by hand"), "api:bo"
        )
    last = (await engine.store.history(saga_id))[-1]
    assert (last.event, last.step, last.actor) == (
        "operator_action_refused",
        "reserve_credit",
        "api:bo",
    )
    assert last.detail is not None and last.detail["action"] == "skip"
    assert "result" not in last.detail  # what a refused skip offered is not kept


async def test_an_action_without_a_reason_is_refused_and_recorded(engine: Engine) -> None:
    saga_id = await started(engine)
    with pytest.raises(OperationRefused, match="say why"):
        await engine.operate(saga_id, PauseRequested("  "), "operator:ann")
    last = (await engine.store.history(saga_id))[-1]
    assert last.event == "operator_action_refused"
    assert last.detail is not None and last.detail["action"] == "pause"


async def test_an_accepted_action_records_no_refusal(engine: Engine) -> None:
    saga_id = await started(engine)
    await engine.operate(saga_id, PauseRequested("looking into it"), "operator:ann")
    events = [h.event for h in await engine.store.history(saga_id)]
    assert "saga_paused" in events and "operator_action_refused" not in events


async def test_an_unknown_saga_is_not_found_and_nothing_is_recorded(engine: Engine) -> None:
    missing = uuid.uuid4()
    with pytest.raises(SagaNotFound):
        await engine.operate(missing, PauseRequested("why not"), "operator:ann")
    with pytest.raises(OperationRefused):  # no reason, no saga: refused, nothing to record in
        await engine.operate(missing, PauseRequested(""), "operator:ann")
    assert await engine.store.history(missing) == []


async def test_a_refused_cancel_is_in_the_history_with_its_actor(engine: Engine) -> None:
    """Cancel records its own refusal (`cancel_refused`) in the transaction that decided it.
    Past the pivot is covered end to end in tests/integration/test_http_api.py; here a
    saga that is cancelled already (a cancel held for its key ends it at its start)."""
    held = await engine.cancel(CancelSaga(key="k", reason="changed my mind"), "broker")
    assert held.held
    saga_id = await started(engine)
    again = await engine.cancel(CancelSaga(saga_id=saga_id, reason="again"), "api:bo")
    assert again.refused == "the saga is already cancelled"
    last = (await engine.store.history(saga_id))[-1]
    assert (last.event, last.actor) == ("cancel_refused", "api:bo")
    assert last.detail == {"reason": "again", "why": again.refused}
