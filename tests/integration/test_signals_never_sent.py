"""Waits that end without their signal, on real PostgreSQL and RabbitMQ: a timeout before the
pivot undoes what was done, one past the pivot parks the saga for an operator, a cancel ends
the wait and undoes the saga, and a paused saga's timeout holds across an orchestrator
restart until it is resumed."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from adapters.rabbitmq.topology import Topology
from orchestrator.machine import PauseRequested, ResumeRequested
from orchestrator.messages import CancelSaga
from orchestrator.state import SagaState
from tests.integration.harness import System, running_system
from tests.integration.hosted import events, host
from tests.integration.signal_sagas import SAGAS, Claims, entries, reached, send_signal

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def system(database_url: str, topology: Topology, amqp_url: str) -> AsyncIterator[System]:
    async with running_system(database_url, topology, amqp_url, SAGAS) as s:
        yield s


@pytest.fixture
async def claims(system: System) -> Claims:
    claims = Claims()
    await host(system, claims.participant())
    return claims


async def test_a_wait_that_times_out_before_the_pivot_undoes_the_saga(
    system: System, claims: Claims
) -> None:
    await system.start_order("t-1", {"claim_id": "t-1"}, saga="claim_quick")
    state = await system.wait_status("t-1", "compensated")
    assert state.error is not None and state.error["step"] == "approval"
    assert state.error["message"] == "no signal 'approval' came within 0.5 s"
    approval = state.step("approval")
    assert approval is not None and approval.error is not None
    assert approval.error["type"] == "wait_timeout"
    history = await system.history(state.saga_id)
    [timed_out] = entries(history, "wait_timed_out")
    assert timed_out["on_timeout"] == "fail" and timed_out["seconds"] >= 0.5
    assert [s for e, s in events(history) if e == "step_compensated"] == ["open"]
    assert len(claims.sent("claims.close", "t-1")) == 1
    assert claims.sent("claims.pay", "t-1") == []


async def test_a_wait_that_times_out_past_the_pivot_parks_the_saga(
    system: System, claims: Claims
) -> None:
    await system.start_order("t-2", {"claim_id": "t-2"}, saga="claim_receipt")
    state = await system.wait_status("t-2", "failed")
    assert state.error is not None and state.error["step"] == "receipt"
    receipt = state.step("receipt")
    assert receipt is not None and receipt.status == "failed"
    assert receipt.error is not None and receipt.error["type"] == "wait_timeout"
    history = events(await system.history(state.saga_id))
    assert ("wait_timed_out", "receipt") in history
    assert not [e for e, _ in history if e.startswith("compensation")], "nothing undone"
    assert len(claims.sent("claims.pay", "t-2")) == 1
    assert claims.sent("claims.close", "t-2") == claims.sent("claims.notify", "t-2") == []


async def test_a_cancel_ends_the_wait_and_undoes_the_saga(system: System, claims: Claims) -> None:
    await system.start_order("t-3", {"claim_id": "t-3"}, saga="claim")
    saga_id = await reached(system, "t-3", "wait_started", "approval")
    await system.send("cancel", CancelSaga(key="t-3", reason="the claimant withdrew"))
    state = await system.wait_status("t-3", "cancelled")
    approval = state.step("approval")
    assert approval is not None and approval.status != "running" and approval.due_at is None
    assert [s for e, s in events(await system.history(saga_id)) if e == "step_compensated"] == [
        "open"
    ]
    assert claims.sent("claims.pay", "t-3") == []
    # The approval that comes after all is refused: the saga waits for nothing now.
    await send_signal(system, "approval", "late", {"approved": True, "by": "ann"}, key="t-3")
    await reached(system, "t-3", "signal_refused", "approval")
    [refused] = entries(await system.history(saga_id), "signal_refused")
    assert refused["reason"] == "finished"


async def test_a_paused_wait_holds_its_timeout_across_a_restart(
    system: System, claims: Claims
) -> None:
    # Two claims wait half a second for their approval, and are paused while they wait.
    paused: dict[str, SagaState] = {}
    for key in ("p-1", "p-2"):
        await system.start_order(key, {"claim_id": key}, saga="claim_quick")
        await reached(system, key, "wait_started", "approval")
        paused[key] = await operate(system, key, PauseRequested("wait for the auditor"))
        assert paused[key].status == "paused"

    await system.restart_orchestrator()
    # Evidence that the new orchestrator's timers run past the paused waits' timeouts: a
    # twin claim, started after the restart, waits as long and times out.
    await system.start_order("p-3", {"claim_id": "p-3"}, saga="claim_quick")
    await system.wait_status("p-3", "compensated")
    for key, before in paused.items():
        held = await system.saga_by_key(key)
        assert held is not None and held.status == "paused"
        assert ("wait_timed_out", "approval") not in events(await system.history(held.saga_id))
        approval, then = held.step("approval"), before.step("approval")
        assert approval is not None and then is not None
        assert approval.status == "running" and approval.due_at == then.due_at

    # p-1 is resumed as it is: its timeout passed while it was paused, so the wait ends.
    await operate(system, "p-1", ResumeRequested("the auditor found nothing"))
    undone = await system.wait_status("p-1", "compensated")
    history = events(await system.history(undone.saga_id))
    assert history.index(("saga_resumed", None)) < history.index(("wait_timed_out", "approval"))
    # p-2 gets its approval while paused: taken, and the saga goes on once resumed.
    await send_signal(system, "approval", "audit-2", {"approved": True, "by": "dee"}, key="p-2")
    saga_id = await reached(system, "p-2", "wait_finished", "approval")
    still = await system.saga_by_key("p-2")
    assert still is not None and still.status == "paused"
    assert claims.sent("claims.pay", "p-2") == [], "nothing dispatched while paused"
    await operate(system, "p-2", ResumeRequested("approved by the auditor"))
    await system.wait_status("p-2", "completed")
    assert ("wait_timed_out", "approval") not in events(await system.history(saga_id))
    [pay] = claims.sent("claims.pay", "p-2")
    assert pay.payload == {"claim_id": "p-2", "approved_by": "dee"}


async def operate(system: System, key: str, action: PauseRequested | ResumeRequested) -> SagaState:
    state, engine = await system.saga_by_key(key), system.orchestrator.engine
    assert state is not None and engine is not None
    return await engine.operate(state.saga_id, action, "operator:alice")
