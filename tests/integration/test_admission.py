"""Admission control end to end: with SAGA_MAX_ACTIVE reached, starts wait in the broker,
cancels do not, and the waiting starts begin as sagas end, none lost."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa

from adapters.rabbitmq.topology import CANCELS_QUEUE, REQUESTS_QUEUE, Topology
from orchestrator.messages import CancelSaga
from orchestrator.ports import SagaQuery
from orchestrator.state import FINISHED, SagaStatus, StepStatus
from sagas.order import order_v1
from tests.fixtures.polling import eventually
from tests.fixtures.rabbitmq import leftovers
from tests.integration.harness import System, order_input, running_system

LIMIT = 2


@pytest.fixture
async def system(database_url: str, topology: Topology, amqp_url: str) -> AsyncIterator[System]:
    # No participants yet: a started saga stays running, its first command waiting in its
    # queue, until the test starts them.
    async with running_system(database_url, topology, amqp_url, [order_v1]) as sys_:
        sys_.settings = sys_.settings.model_copy(update={"max_active": LIMIT})
        await sys_.restart_orchestrator()
        yield sys_


async def _keys(system: System) -> set[str]:
    return {s.key for s in await system.store.find(SagaQuery(limit=100))}


async def test_starts_wait_for_room_and_cancels_do_not(system: System) -> None:
    keys = [f"adm-{n}" for n in range(5)]
    for key in keys:
        await system.start_order(key, order_input(key))
    admission = system.orchestrator.admission
    assert admission is not None and admission.limit == LIMIT

    async def holding() -> bool:
        return admission.held > 0 and await _keys(system) == set(keys[:LIMIT])

    await eventually(holding, message=f"the first {LIMIT} started, the others held")

    # A cancel for a start still waiting goes through at once (its own queue), and is
    # remembered for that start.
    await system.send("cancel", CancelSaga(key=keys[3], reason="changed my mind"))

    async def cancel_held() -> bool:
        async with system.store.db_engine.connect() as conn:
            found: int | None = await conn.scalar(
                sa.text("SELECT count(*) FROM inbox WHERE kind = 'cancel' AND key = :k"),
                {"k": keys[3]},
            )
        return found == 1

    await eventually(cancel_held, message="the cancel of a held start remembered")
    assert await _keys(system) == set(keys[:LIMIT]), "nothing more started meanwhile"

    # Sagas end, the shop's participants answering their commands: room again, and again,
    # until every start has begun. Which held start goes first is not fixed: a consumer
    # works on two batches at once.
    await system.start_participants()

    async def all_begun() -> bool:
        return await _keys(system) == set(keys)

    await eventually(all_begun, message="every held start begun as sagas ended")
    ended = {key: (await system.wait_status(key, *FINISHED)).status for key in keys}
    assert ended == {
        key: SagaStatus.CANCELLED if key == keys[3] else SagaStatus.COMPLETED for key in keys
    }
    cancelled = await system.wait_status(keys[3], "cancelled")
    assert cancelled.cancel_reason == "changed my mind"
    assert [s.status for s in cancelled.steps].count(StepStatus.PENDING) == len(cancelled.steps)
    assert admission.held == 0

    # Every start and cancel was acked: once the orchestrator has stopped (what it had not
    # acked goes back to its queue), its queues hold nothing. A passive declare cannot
    # tell: RabbitMQ 3.10 counts 0 messages in a quorum queue whatever it holds.
    await system.orchestrator.stop()
    for queue in (REQUESTS_QUEUE, CANCELS_QUEUE):
        assert await leftovers(system.channel, system.topology.name(queue)) == [], queue
