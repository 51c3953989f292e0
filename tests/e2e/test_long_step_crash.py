"""A participant killed with SIGKILL in the middle of a long step: the orchestrator notices
when its heartbeats stop (the step's heartbeat timeout, seconds), not at the end of the step's
hour-long start-to-close timeout, retries it on another process, and the effect happens once."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from pydantic import BaseModel

from adapters.rabbitmq.topology import Topology
from examples.processes import Processes
from orchestrator import Retry, Saga
from tests.fixtures.polling import eventually
from tests.fixtures.settings import process_env
from tests.integration.harness import System, running_system
from tests.integration.hosted import detail, events

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

START_TO_CLOSE = 3600.0
HEARTBEAT_TIMEOUT = 2.0


class Job(BaseModel):
    job_id: str


vault_export = Saga("vault_export", version=1, input=Job)
vault_export.remote(
    "export",
    command="vault.export",
    timeout=START_TO_CLOSE,
    heartbeat_timeout=HEARTBEAT_TIMEOUT,
    retry=Retry(max_attempts=3, initial_interval=0.1, jitter=0),
    compensation=None,
)


@pytest.fixture
async def system(database_url: str, topology: Topology, amqp_url: str) -> AsyncIterator[System]:
    async with running_system(database_url, topology, amqp_url, [vault_export]) as sys_:
        yield sys_


@pytest.fixture
def procs(
    database_url: str, topology: Topology, amqp_url: str, tmp_path: Path
) -> Iterator[Processes]:
    p = Processes(env=process_env(database_url, amqp_url, topology.prefix), log_dir=tmp_path)
    yield p
    p.stop_all()


async def test_a_participant_killed_mid_step_is_noticed_by_its_heartbeat_timeout(
    system: System, procs: Processes
) -> None:
    procs.start("vault-1", ["-m", "tests.e2e.long_worker"], {"EXPORT_SECONDS": "30"})
    await system.start_order("export-1", {"job_id": "j1"}, saga="vault_export")

    async def started() -> bool:
        state = await system.saga_by_key("export-1")
        if state is None:
            return False
        return ("step_started", "export") in events(await system.history(state.saga_id))

    await eventually(started, timeout=30, message="attempt 1 reported its start")
    procs.procs["vault-1"].send_signal(signal.SIGKILL)
    procs.procs["vault-1"].wait(timeout=10)
    procs.start("vault-2", ["-m", "tests.e2e.long_worker"], {"EXPORT_SECONDS": "1"})

    state = await system.wait_status("export-1", "completed", "compensated", "failed", timeout=60)
    records = await system.history(state.saga_id)
    assert state.status == "completed", events(records)
    assert state.steps[0].result == {"exported": "j1", "attempt": 2}

    timed_out = [h for h in records if h.event == "step_timed_out"]
    assert [detail(h) for h in timed_out] == [{"attempt": 1, "timeout": "heartbeat"}]
    began = next(h.at for h in records if h.event == "step_started")
    noticed = (timed_out[0].at - began).total_seconds()
    assert noticed < 20 * HEARTBEAT_TIMEOUT < START_TO_CLOSE, noticed

    async with system.shop.connect() as conn:
        rows = (await conn.execute(sa.text("SELECT job_id, attempt FROM vault_effects"))).all()
    assert [tuple(r) for r in rows] == [("j1", 2)]  # attempt 1 died before its commit
