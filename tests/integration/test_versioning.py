"""Definition versioning on real PostgreSQL and RabbitMQ: v1 instances held mid-flight while v2
is deployed finish on v1; new starts take v2 (or a pinned v1); a process that lacks a version
unfinished instances run on refuses to start, and says which."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import pytest

from adapters.participant import Participant
from adapters.rabbitmq.topology import Topology
from adapters.runtime import Orchestrator
from orchestrator.errors import MissingDefinition
from orchestrator.messages import Command, StartSaga
from orchestrator.registry import Registry
from orchestrator.state import SagaState
from tests.fixtures.polling import eventually
from tests.fixtures.ticket_sagas import ticket, ticket_v1
from tests.integration.harness import System, running_system
from tests.integration.hosted import events, host

V1_STEPS = ["open", "assign"]
V2_STEPS = ["open", "triage", "assign"]


class Desk:
    """The `tickets` participant. `assign` waits for `release`: sagas stay mid-flight (their
    assign command unanswered) for as long as a test needs."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.assigning: set[UUID] = set()
        self.participant = Participant("tickets")
        self.participant.handler("tickets.open")(self._open)
        self.participant.handler("tickets.triage")(self._triage)
        self.participant.handler("tickets.assign")(self._assign)
        self.participant.handler("tickets.close")(self._close)

    async def _open(self, cmd: Command) -> dict[str, Any]:
        return {"opened": cmd.payload["ticket_id"]}

    async def _triage(self, cmd: Command) -> dict[str, Any]:
        return {"priority": "high"}

    async def _assign(self, cmd: Command) -> dict[str, Any]:
        self.assigning.add(cmd.saga_id)
        await self.release.wait()
        return {"assignee": "ana"}

    async def _close(self, cmd: Command) -> dict[str, Any]:
        return {"closed": cmd.payload["ticket_id"]}

    async def holding(self, *states: SagaState) -> bool:
        return {s.saga_id for s in states} <= self.assigning


@pytest.fixture
async def system(database_url: str, topology: Topology, amqp_url: str) -> AsyncIterator[System]:
    # Before v2 existed: this deploy knows v1 only.
    async with running_system(database_url, topology, amqp_url, [ticket_v1]) as sys_:
        yield sys_


@pytest.fixture
async def desk(system: System) -> AsyncIterator[Desk]:
    desk = Desk()
    await host(system, desk.participant)
    yield desk
    desk.release.set()  # held handlers end before the system stops its workers


async def start(system: System, key: str, version: int | None = None) -> SagaState:
    request = StartSaga(saga="ticket", key=key, input={"ticket_id": key}, version=version)
    await system.send("start", request)
    return await system.wait_status(key, "running", "completed")


async def assert_ran(system: System, key: str, version: int, steps: list[str]) -> None:
    state = await system.wait_status(key, "completed")
    assert state.version == version
    assert [s.name for s in state.steps] == steps
    assert [s.status for s in state.steps] == ["succeeded"] * len(steps)
    history = events(await system.history(state.saga_id))
    assert [step for event, step in history if event == "step_dispatched"] == steps
    assert [step for event, step in history if event == "step_succeeded"] == steps
    assert history[-1] == ("saga_completed", None)


async def test_v1_in_flight_finish_on_v1_while_v2_takes_new_starts(
    system: System, desk: Desk
) -> None:
    old = [await start(system, f"old-{n}") for n in range(3)]
    await eventually(lambda: desk.holding(*old), message="3 v1 sagas held at assign")
    assert {s.version for s in old} == {1}

    # Deploy v2: the new process loads v2 and keeps v1 for the instances still on it.
    await system.restart_orchestrator(Registry([ticket_v1, ticket]))
    new = await start(system, "new-0")
    pinned = await start(system, "pinned-0", version=1)
    assert (new.version, pinned.version) == (2, 1)
    await eventually(lambda: desk.holding(new, pinned), message="the new starts held at assign")
    for state in (*old, pinned):
        current = await system.saga_by_key(state.key)
        assert current is not None and current.status == "running"

    desk.release.set()
    for state in (*old, pinned):
        await assert_ran(system, state.key, 1, V1_STEPS)
    await assert_ran(system, "new-0", 2, V2_STEPS)


async def test_a_process_without_v1_refuses_to_start_until_v1_instances_finish(
    system: System, desk: Desk
) -> None:
    old = [await start(system, f"old-{n}") for n in range(2)]
    await eventually(lambda: desk.holding(*old), message="2 v1 sagas held at assign")

    await system.orchestrator.stop()
    v2_only = Orchestrator(system.settings, registry=Registry([ticket]))
    with pytest.raises(MissingDefinition) as refused:
        await v2_only.start()
    assert str(refused.value) == (
        "saga 'ticket' v1 has 2 unfinished instances but this process does not load it: keep "
        "the v1 definition in your saga modules until they finish (see `saga definitions`)"
    )

    # The deploy is rolled back: a process with v1 finishes them.
    await system.restart_orchestrator(Registry([ticket_v1]))
    desk.release.set()
    for state in old:
        await assert_ran(system, state.key, 1, V1_STEPS)

    # Nothing runs on v1 any more: now a process without it starts, and new starts take v2.
    await system.restart_orchestrator(Registry([ticket]))
    await start(system, "after-0")
    await assert_ran(system, "after-0", 2, V2_STEPS)
