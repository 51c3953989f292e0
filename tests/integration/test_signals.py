"""Signals over AMQP on real PostgreSQL and RabbitMQ: a signal published to the `sagas`
exchange ends a saga's wait, its payload the wait step's result, which later steps build on;
a signal sent while the step before the wait is in flight is held and taken when the wait
begins; the same signal_id again changes nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import structlog
from structlog.testing import capture_logs

from adapters.rabbitmq.topology import Topology
from tests.fixtures.polling import eventually
from tests.integration.harness import System, running_system
from tests.integration.hosted import events, host
from tests.integration.signal_sagas import (
    SAGAS,
    Claims,
    delivered,
    entries,
    reached,
    send_signal,
)

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


async def test_a_signal_ends_the_wait_and_later_steps_build_on_its_payload(
    system: System, claims: Claims
) -> None:
    await system.start_order("c-1", {"claim_id": "c-1"}, saga="claim")
    await reached(system, "c-1", "wait_started", "approval")
    verdict = {"approved": True, "by": "ann"}
    await send_signal(system, "approval", "adjuster-7", verdict, key="c-1", saga="claim")

    state = await system.wait_status("c-1", "completed")
    approval = state.step("approval")
    assert approval is not None and approval.result == verdict
    # pay's payload= and guard read the wait's result: the adjuster is named, and it paid.
    [pay] = claims.sent("claims.pay", "c-1")
    assert pay.payload == {"claim_id": "c-1", "approved_by": "ann"}
    [notify] = claims.sent("claims.notify", "c-1")
    assert notify.payload == pay.payload
    history = await system.history(state.saga_id)
    [finished] = entries(history, "wait_finished")
    assert finished["signal_id"] == "adjuster-7" and finished["held"] is False
    assert entries(history, "signal_refused") == []


async def test_a_rejection_fails_the_guard_that_reads_it_and_the_saga_is_undone(
    system: System, claims: Claims
) -> None:
    await system.start_order("c-2", {"claim_id": "c-2"}, saga="claim")
    saga_id = await reached(system, "c-2", "wait_started", "approval")
    # By saga id this time: the other way to name the saga.
    await send_signal(
        system, "approval", "adjuster-8", {"approved": False, "by": "bo"}, saga_id=saga_id
    )

    state = await system.wait_status("c-2", "compensated")
    assert state.error is not None and state.error["step"] == "pay"
    assert "the guard approved of step 'pay' is false" in state.error["message"]
    assert claims.sent("claims.pay", "c-2") == [], "a rejected claim is never paid"
    assert len(claims.sent("claims.close", "c-2")) == 1
    assert [s for e, s in events(await system.history(saga_id)) if e == "step_compensated"] == [
        "open"
    ]


async def test_a_signal_sent_early_is_held_and_a_duplicate_changes_nothing(
    system: System, claims: Claims
) -> None:
    claims.hold("c-3")  # open stays in flight: the wait has not begun
    await system.start_order("c-3", {"claim_id": "c-3"}, saga="claim")

    async def opening() -> bool:
        state = await system.saga_by_key("c-3")
        return state is not None and state.steps[0].status == "running"

    await eventually(opening, message="open in flight")
    verdict = {"approved": True, "by": "cy"}
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        for _ in range(2):  # a sender that retried: the same signal_id twice
            await send_signal(system, "approval", "adjuster-9", verdict, key="c-3")
        assert await delivered(logs, "adjuster-9", 2) == ["held", "duplicate"]
        state = await system.saga_by_key("c-3")
        assert state is not None and state.status == "running"
        history = events(await system.history(state.saga_id))
        assert history.count(("signal_held", "approval")) == 1
        assert ("wait_started", "approval") not in history

        claims.let_go("c-3")
        done = await system.wait_status("c-3", "completed")
        # Once more after the saga finished: still the same signal, still nothing.
        await send_signal(system, "approval", "adjuster-9", verdict, key="c-3")
        assert await delivered(logs, "adjuster-9", 3) == ["held", "duplicate", "duplicate"]

    approval = done.step("approval")
    assert approval is not None and approval.result == verdict
    history_records = await system.history(done.saga_id)
    [finished] = entries(history_records, "wait_finished")
    assert finished == {"signal_id": "adjuster-9", "held": True, "seconds": 0.0}
    assert ("wait_started", "approval") not in events(history_records)
    assert entries(history_records, "signal_refused") == []
    assert len(claims.sent("claims.pay", "c-3")) == 1
