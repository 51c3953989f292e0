"""Fan-out on real services: a map step splits a report into chunk commands that run
concurrently (never more than its limit) and a parallel group dispatches its branches
together; a failing chunk has the chunks that succeeded compensated, then the earlier step."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import BaseModel

from adapters.clock import utcnow
from adapters.participant import Participant, StepFailed
from adapters.participant.worker import ParticipantWorker
from adapters.rabbitmq.connection import open_channel
from adapters.rabbitmq.topology import Topology
from orchestrator import Retry, Saga
from orchestrator.definition import GuardContext
from orchestrator.messages import Command
from orchestrator.state import SagaStatus
from tests.integration.harness import System, running_system

CONCURRENCY = 3


class ReportRequest(BaseModel):
    report_id: str
    records: int
    bad_chunk: int | None = None


def chunks(ctx: GuardContext) -> list[Any]:
    """1,000 records per chunk."""
    total = int(ctx.input["records"])
    return [{"from": lo, "to": min(lo + 1000, total)} for lo in range(0, total, 1000)]


report = Saga("report", version=1, input=ReportRequest, timeout=10)
report.remote(
    "open", command="reports.open", compensation="reports.drop", retry=Retry(max_attempts=1)
)
report.map(
    "summarise",
    command="reports.summarise",
    compensation="reports.discard",
    items=chunks,
    concurrency=CONCURRENCY,
    retry=Retry(max_attempts=1),
)
with report.parallel():
    report.remote("mail", command="reports.mail", compensation=None)
    report.remote("archive", command="reports.archive", compensation=None)


class Service:
    """The report service: records what it did, and how many chunks ran at once."""

    def __init__(self) -> None:
        self.running = 0
        self.peak = 0
        self.done: list[tuple[str, int]] = []
        self.discarded: list[tuple[str, int]] = []
        self.dropped: list[str] = []
        self.branches: list[str] = []
        self.both_branches = asyncio.Event()

    def participant(self) -> Participant:
        p = Participant("reports")

        @p.handler("reports.open")
        async def open_(cmd: Command) -> dict[str, str]:
            return {"id": cmd.payload["report_id"]}

        @p.handler("reports.drop")
        async def drop(cmd: Command) -> None:
            self.dropped.append(cmd.payload["report_id"])

        @p.handler("reports.summarise")
        async def summarise(cmd: Command) -> dict[str, int]:
            self.running += 1
            self.peak = max(self.peak, self.running)
            try:
                await asyncio.sleep(0.05)  # the work: lets the other chunks overlap
                if cmd.item["from"] // 1000 == cmd.payload.get("bad_chunk"):
                    raise StepFailed("corrupt", "chunk is corrupt", retryable=False)
                self.done.append((cmd.payload["report_id"], cmd.item["from"]))
                return {"rows": cmd.item["to"] - cmd.item["from"]}
            finally:
                self.running -= 1

        @p.handler("reports.discard")
        async def discard(cmd: Command) -> None:
            self.discarded.append((cmd.payload["report_id"], cmd.item["from"]))

        async def branch(cmd: Command) -> dict[str, str]:
            # Each branch waits until the other has arrived too: only a real fan-out passes.
            self.branches.append(cmd.step)
            if len(self.branches) >= 2:
                self.both_branches.set()
            await asyncio.wait_for(self.both_branches.wait(), timeout=5)
            return {"sent": cmd.step}

        p.handler("reports.mail")(branch)
        p.handler("reports.archive")(branch)
        return p


@pytest.fixture
async def system(database_url: str, topology: Topology, amqp_url: str) -> AsyncIterator[System]:
    async with running_system(database_url, topology, amqp_url, [report]) as sys_:
        yield sys_


async def serve(system: System, service: Service) -> None:
    channel = await open_channel(system.connection)
    worker = ParticipantWorker(
        service.participant(), channel, system.topology, clock=utcnow, prefetch=20
    )
    await worker.start()
    system.workers["reports"] = worker


async def test_a_map_step_runs_chunks_concurrently_and_gathers_their_results(
    system: System,
) -> None:
    service = Service()
    await serve(system, service)
    await system.start_order("r-1", {"report_id": "r1", "records": 12_500}, saga="report")
    state = await system.wait_status("r-1", SagaStatus.COMPLETED)
    rows = [r["rows"] for r in state.results()["summarise"]]
    assert rows == [1000] * 12 + [500]
    assert 1 < service.peak <= CONCURRENCY
    assert sorted(start for _, start in service.done) == list(range(0, 12_500, 1000))
    # The parallel branches both ran; each waited for the other, so they overlapped.
    assert sorted(service.branches) == ["archive", "mail"]
    assert state.results()["mail"] == {"sent": "mail"}
    history = await system.history(state.saga_id)
    dispatched = [h.step for h in history if h.event == "step_dispatched"]
    assert len(dispatched) == len(set(dispatched)) == 1 + 13 + 2


async def test_a_failing_chunk_compensates_the_chunks_that_succeeded(system: System) -> None:
    service = Service()
    await serve(system, service)
    await system.start_order(
        "r-2", {"report_id": "r2", "records": 6000, "bad_chunk": 4}, saga="report"
    )
    state = await system.wait_status("r-2", SagaStatus.COMPENSATED)
    assert state.error is not None and state.error["step"] == "summarise[4]"
    # Exactly the chunks that were done are undone; the report itself is dropped last.
    assert sorted(service.discarded) == sorted(service.done)
    assert service.dropped == ["r2"]
    assert service.branches == []
    history = await system.history(state.saga_id)
    undone = [h.step for h in history if h.event == "step_compensated"]
    assert undone[-1] == "open"
