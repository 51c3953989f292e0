"""Local steps (Python functions run by `saga worker`) travel through RabbitMQ like remote ones,
and a definition changed under a registered version stops the orchestrator from starting."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from pydantic import BaseModel

from adapters.clock import utcnow
from adapters.local_steps import local_steps
from adapters.participant import StepFailed
from adapters.participant.worker import ParticipantWorker
from adapters.rabbitmq.connection import open_channel
from adapters.rabbitmq.topology import Topology
from adapters.runtime import Orchestrator
from orchestrator import DefinitionConflict, Retry, Saga, StepContext
from orchestrator.registry import Registry
from tests.integration.harness import System, running_system


class Report(BaseModel):
    report_id: str
    fail: bool = False


report = Saga("report", version=1, input=Report, timeout=5)
undone: list[str] = []


async def undo_render(ctx: StepContext) -> None:
    undone.append(ctx.input.report_id)  # type: ignore[attr-defined]


@report.local(compensate=undo_render)
async def render(ctx: StepContext) -> dict[str, str]:
    return {"file": f"/reports/{ctx.input.report_id}.pdf"}  # type: ignore[attr-defined]


@report.local(compensate=None)
async def publish(ctx: StepContext) -> dict[str, bool]:
    if ctx.input.fail:  # type: ignore[attr-defined]
        raise StepFailed("cdn_refused", "the CDN refused the upload", retryable=False)
    return {"published": True}


@pytest.fixture
async def system(database_url: str, topology: Topology, amqp_url: str) -> AsyncIterator[System]:
    async with running_system(database_url, topology, amqp_url, [report]) as sys_:
        channel = await open_channel(sys_.connection)
        worker = ParticipantWorker(
            local_steps(Registry([report])), channel, topology, clock=utcnow, prefetch=10
        )
        await worker.start()
        sys_.workers["local"] = worker
        yield sys_


async def test_local_steps_run_in_the_worker(system: System) -> None:
    await system.start_order("r-1", {"report_id": "r1"}, saga="report")
    state = await system.wait_status("r-1", "completed")
    assert state.steps[0].result == {"file": "/reports/r1.pdf"}
    assert state.steps[1].result == {"published": True}


async def test_a_failing_local_step_runs_the_local_compensation(system: System) -> None:
    await system.start_order("r-2", {"report_id": "r2", "fail": True}, saga="report")
    state = await system.wait_status("r-2", "compensated")
    assert state.steps[0].status == "compensated"
    assert "r2" in undone


async def test_changed_definition_under_a_registered_version_is_refused(
    database_url: str, topology: Topology, amqp_url: str
) -> None:
    async with running_system(database_url, topology, amqp_url, [report]) as sys_:
        changed = Saga("report", version=1, input=Report, timeout=5)
        changed.remote("render", command="reports.render", compensation=None)
        with pytest.raises(DefinitionConflict, match="bump"):
            await Orchestrator(sys_.settings, registry=Registry([changed])).start()


class Transfer(BaseModel):
    transfer_id: str


# A compensation that can never succeed: retried with backoff, then the saga is parked.
stubborn = Saga("stubborn", version=1, input=Transfer, timeout=5)
refund_attempts: list[int] = []


async def refund(ctx: StepContext) -> None:
    refund_attempts.append(ctx.attempt)
    raise StepFailed("bank_offline", "the bank does not answer", retryable=True)


@stubborn.local(
    compensate=refund,
    compensation_retry=Retry(max_attempts=3, initial_interval=0.05, max_interval=0.1),
)
async def debit(ctx: StepContext) -> dict[str, bool]:
    return {"debited": True}


@stubborn.local(compensate=None)
async def credit(ctx: StepContext) -> None:
    raise StepFailed("account_closed", "the target account is closed", retryable=False)


async def test_a_compensation_that_keeps_failing_parks_the_saga(
    database_url: str, topology: Topology, amqp_url: str
) -> None:
    async with running_system(database_url, topology, amqp_url, [stubborn]) as sys_:
        channel = await open_channel(sys_.connection)
        worker = ParticipantWorker(
            local_steps(Registry([stubborn])), channel, topology, clock=utcnow, prefetch=10
        )
        await worker.start()
        sys_.workers["local"] = worker
        await sys_.start_order("t-1", {"transfer_id": "t1"}, saga="stubborn")
        state = await sys_.wait_status("t-1", "failed")
        assert refund_attempts == [1, 2, 3]
        assert state.error is not None and state.error["type"] == "compensation_failed"
        assert "bank does not answer" in state.error["message"]
        assert state.steps[0].status == "compensating"  # not undone: an operator must act
        events = [h.event for h in await sys_.history(state.saga_id)]
        assert events.count("compensation_retry_scheduled") == 2
