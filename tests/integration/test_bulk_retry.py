"""Bulk retry on real PostgreSQL and RabbitMQ (issue 23): 200 sagas parked by a mail
outage past their pivot are retried with one request to the API, or one `saga retry
--status failed --step notify_customer` on the database, once the mailer is back. Every one
carries on and completes, its history holding the retry with its actor and reason; one that
another operator retried singly between the listing and its turn is refused as changed and
reported, not retried twice."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from uuid import UUID

import httpx
import pytest

from adapters.http.app import create_app
from adapters.participant import Participant, StepFailed
from adapters.rabbitmq.client import send_requests
from adapters.rabbitmq.topology import Topology
from orchestrator.bulk import BATCH
from orchestrator.machine import RetryRequested
from orchestrator.messages import Command, StartSaga
from orchestrator.ports import SagaQuery
from orchestrator.state import SagaStatus
from tests.fixtures.polling import eventually
from tests.fixtures.row_lock import row_locked
from tests.fixtures.settings import process_env
from tests.integration.bulk_sagas import parcel
from tests.integration.harness import System, running_system
from tests.integration.hosted import host
from tests.integration.test_cli_signal import saga

pytestmark = pytest.mark.timeout(240)

SAGAS = 200
PARKED = SagaQuery(status=SagaStatus.FAILED, step="notify_customer", limit=SAGAS + 1)
REASON = "mail server is back (INC-77)"


class Mailer:
    """The shop's participants; the mailer is down until `up`."""

    def __init__(self) -> None:
        self.up = False

    def participants(self) -> list[Participant]:
        depot, courier, mailer = Participant("depot"), Participant("courier"), Participant("mailer")

        @depot.handler("depot.hold")
        async def hold(cmd: Command) -> dict[str, Any]:
            return {"shelf": "A1"}

        @depot.handler("depot.release")
        async def release(cmd: Command) -> dict[str, Any]:
            return {"released": True}

        @courier.handler("courier.ship")
        async def ship(cmd: Command) -> dict[str, Any]:
            return {"tracking": "T-1"}

        @mailer.handler("mailer.notify")
        async def notify(cmd: Command) -> dict[str, Any]:
            if not self.up:
                raise StepFailed("smtp_down", "the mail server does not answer")
            return {"sent": True}

        return [depot, courier, mailer]


@pytest.fixture
async def system(database_url: str, topology: Topology, amqp_url: str) -> AsyncIterator[System]:
    async with running_system(database_url, topology, amqp_url, [parcel]) as s:
        yield s


async def parked_by_an_outage(system: System) -> tuple[Mailer, list[UUID]]:
    """200 sagas parked at notify_customer, the mailer then back up; their ids as listed
    (newest activity first)."""
    mailer = Mailer()
    for participant in mailer.participants():
        await host(system, participant)
    starts = [
        ("start", StartSaga(saga="bulk_parcel", key=f"p-{n}", input={"parcel_id": str(n)}))
        for n in range(SAGAS)
    ]
    await send_requests(system.settings, starts)

    async def all_parked() -> list[UUID] | None:
        found = await system.store.find(PARKED)
        return [s.saga_id for s in found] if len(found) == SAGAS else None

    listed = await eventually(all_parked, timeout=90, message=f"{SAGAS} sagas to park")
    mailer.up = True
    return mailer, listed


async def retried_meanwhile(
    system: System, database_url: str, listed: list[UUID], bulk: Callable[[], Awaitable[Any]]
) -> tuple[Any, UUID]:
    """Run `bulk` while the test holds the lock of the first saga its first batch locks
    (the lowest id of the first batch listed): once it waits for it, it has listed the 200,
    and another operator retries one saga it has not locked yet (the highest id). Returns
    what `bulk` returned and the saga retried singly."""
    first = min(listed[:BATCH])
    single = max(listed)
    engine = system.orchestrator.engine
    assert engine is not None
    async with row_locked(database_url, first) as held:
        task = asyncio.ensure_future(bulk())
        await held.waited_for()
        await engine.operate(single, RetryRequested("tried this one first"), "operator:bob")
    return await task, single


async def all_completed_with_their_retry(system: System, actor: str, single: UUID) -> None:
    async def completed() -> bool:
        counts = await system.store.count_by_status("bulk_parcel")
        return counts[SagaStatus.COMPLETED] == SAGAS

    await eventually(completed, timeout=90, message=f"all {SAGAS} sagas to complete")
    for state in await system.store.find(SagaQuery(saga="bulk_parcel", limit=SAGAS)):
        history = await system.history(state.saga_id)
        retries = [(h.actor, h.detail) for h in history if h.event == "saga_retried"]
        refusals = [h for h in history if h.event == "operator_action_refused"]
        if state.saga_id == single:
            assert retries == [("operator:bob", {"reason": "tried this one first"})]
            [refused] = refusals
            assert refused.actor == actor and refused.detail is not None
            assert refused.detail["why"].startswith("changed since it was listed")
        else:
            assert retries == [(actor, {"reason": REASON})], state.key
            assert refusals == []


async def test_bulk_retry_over_the_api(system: System, database_url: str) -> None:
    _, listed = await parked_by_an_outage(system)
    app = create_app(system.settings, system.store, system.orchestrator.engine)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://api.test", timeout=120
    ) as client:

        async def bulk() -> httpx.Response:
            body = {
                "filter": {"status": "failed", "step": "notify_customer"},
                "reason": REASON,
                "who": "alice",
            }
            return await client.post("/api/bulk/retry", json=body)

        answer, single = await retried_meanwhile(system, database_url, listed, bulk)

    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert (result["matched"], result["more"]) == (SAGAS, False)
    assert result["counts"] == {
        "applied": SAGAS - 1,
        "changed": 1,
        "not_applicable": 0,
        "gone": 0,
        "not_loaded": 0,
    }
    [refusal] = result["refusals"]
    assert (refusal["saga_id"], refusal["outcome"]) == (str(single), "changed")
    await all_completed_with_their_retry(system, "api:alice", single)


async def test_bulk_retry_with_the_cli_on_the_database(
    system: System, database_url: str, topology: Topology, amqp_url: str
) -> None:
    _, listed = await parked_by_an_outage(system)
    env = process_env(
        database_url, amqp_url, topology.prefix, SAGA_MODULES="tests.integration.bulk_sagas"
    )
    args = ["retry", "--status", "failed", "--step", "notify_customer", "-r", REASON]

    async def bulk() -> tuple[int, str, str]:
        return await saga(env, *args, "--who", "carol")

    (code, out, err), single = await retried_meanwhile(system, database_url, listed, bulk)

    lines = out.splitlines()
    assert (code, lines[0]) == (
        1,
        f"retry: {SAGAS} saga(s) matched, {SAGAS - 1} acted on, 1 refused (changed 1)",
    ), err
    assert lines[2] == "refused:"
    assert (
        lines[3].startswith(f"  {single} (bulk_parcel p-") and " changed: changed since" in lines[3]
    )
    await all_completed_with_their_retry(system, "operator:carol", single)
