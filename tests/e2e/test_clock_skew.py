"""Time is the database's: two `saga run` processes on one database, one on a host clock two
minutes fast (libfaketime), run sagas whose one step takes 5 s of a 30 s timeout. Each
dispatches some of the steps and both sweep the timers, so a process deciding by its own clock
would time the other's steps out at once and dispatch them again (a chaos run saw half of
them run twice). The participant runs on the fast clock too, so one checking expiry by its own
clock would refuse every command as expired. By the database's clock: no step times out, none
is retried, each runs once, and the fast process says what is wrong with its host (the log
line `clock_skew`, `saga_clock_offset_seconds`, a 503 from `/readyz`).
"""

from __future__ import annotations

import glob
import json
import socket
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters.postgres.database import make_engine
from adapters.postgres.tables import saga_history, saga_instances
from adapters.rabbitmq.client import send_requests
from adapters.rabbitmq.connection import connect
from adapters.rabbitmq.topology import REQUESTS_QUEUE, Topology
from adapters.settings import Settings
from examples.demo import wait_for_consumers
from examples.processes import Processes
from orchestrator.messages import StartSaga
from tests.e2e.chore_saga import CHORE_SECONDS, TIMEOUT
from tests.e2e.test_many_orchestrators import consumer_count
from tests.fixtures.polling import eventually
from tests.fixtures.settings import process_env

# Debian's `faketime` package (deploy/setup-local.sh installs it as root).
LIBFAKETIME = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(90),
    pytest.mark.skipif(
        not LIBFAKETIME,
        reason="libfaketime is not installed: `apt-get install faketime` (deploy/setup-local.sh "
        "installs it as root, else prints the command)",
    ),
]

SAGAS = 20
AHEAD = 120.0
SKEW_MAX = 5.0


def fast_clock() -> dict[str, str]:
    """The environment of a process whose host's wall clock runs AHEAD seconds fast. Its
    monotonic clock is left alone, as a wrong wall clock leaves the kernel's."""
    return {
        "LD_PRELOAD": LIBFAKETIME[0],
        "FAKETIME": f"+{AHEAD:g}s",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def settings(database_url: str, topology: Topology, amqp_url: str) -> Settings:
    return Settings(database_url=database_url, amqp_url=amqp_url, amqp_prefix=topology.prefix)


@pytest.fixture
def procs(settings: Settings, tmp_path: Path) -> Iterator[Processes]:
    p = Processes(
        env=process_env(
            settings.database_url,
            settings.amqp_url,
            settings.amqp_prefix,
            SAGA_MODULES="tests.e2e.chore_saga",
            SAGA_TIMER_INTERVAL="0.1",
            SAGA_CLOCK_SKEW_MAX=str(SKEW_MAX),
            # One start at a time per process: the broker hands them out in turn, so each
            # process dispatches some of the steps.
            SAGA_PREFETCH="1",
            SAGA_BATCH_SIZE="1",
        ),
        log_dir=tmp_path,
    )
    yield p
    p.stop_all()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(database_url, pool_size=2)
    yield engine
    await engine.dispose()


async def test_a_process_with_a_fast_clock_times_out_no_step_and_runs_none_twice(
    procs: Processes, settings: Settings, topology: Topology, db: AsyncEngine
) -> None:
    ports = {"true": free_port(), "fast": free_port()}
    procs.start_orchestrator("true", {"SAGA_HTTP_BIND": f"127.0.0.1:{ports['true']}"})
    procs.start_orchestrator(
        "fast", {"SAGA_HTTP_BIND": f"127.0.0.1:{ports['fast']}", **fast_clock()}
    )
    # The worker takes every chore at once: none waits for another's 5 s.
    procs.start(
        "worker", ["-m", "tests.e2e.chore_worker"], {"SAGA_PREFETCH": str(SAGAS), **fast_clock()}
    )
    await wait_for_consumers(settings, [Topology.command_queue("chores")], timeout=60)
    await eventually(
        lambda: both_consume(settings, topology), timeout=60, message="both orchestrators consume"
    )
    for name, port in ports.items():  # HTTP comes last in start-up
        await eventually(partial(serving, port), timeout=30, message=f"{name} serves HTTP")

    # The fast process knows its host is wrong, and says so three ways.
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports['fast']}") as fast:
        ready = await fast.get("/readyz")
        assert ready.status_code == 503, ready.text
        assert ready.json()["checks"]["clock"].startswith(f"this host's clock is {AHEAD:.0f}"), (
            ready.text
        )
        assert ready.json()["checks"]["clock"].endswith(
            f"s ahead of the database's (SAGA_CLOCK_SKEW_MAX is {SKEW_MAX:g} s)"
        ), ready.text
        assert abs(offset(await fast.get("/metrics")) - AHEAD) < SKEW_MAX
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports['true']}") as true:
        ready = await true.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"]["clock"] == "ok"
        assert abs(offset(await true.get("/metrics"))) < SKEW_MAX
    for name in ("fast", "worker"):
        skews = [e for e in log_events(procs, name) if e["event"] == "clock_skew"]
        assert skews, procs.log_tail(name)
        assert skews[0]["level"] == "error"
        assert abs(skews[0]["offset_seconds"] - AHEAD) < SKEW_MAX

    starts = [
        ("start", StartSaga(saga="chore", key=f"chore-{i}", input={"chore_id": f"c{i}"}))
        for i in range(SAGAS)
    ]
    await send_requests(settings, starts)
    # Patience past the step's timeout: a saga ends either way, and the checks below say how.
    await eventually(
        lambda: finished(db),
        timeout=2 * TIMEOUT,
        interval=0.5,
        message=f"all {SAGAS} chore sagas finished",
    )

    statuses = await status_counts(db)
    events = await history_events(db)
    runs = await runs_per_saga(db)
    assert statuses == {"completed": SAGAS}, (statuses, events)
    assert events["step_timed_out"] == 0, events
    assert events["step_retry_scheduled"] == 0, events
    assert events["step_dispatched"] == SAGAS, events
    assert sorted(runs.values()) == [1] * SAGAS, runs
    # Both processes dispatched steps, so each swept timers of steps the other one set.
    dispatched = {
        name: sum(e["event"] == "step_dispatched" for e in log_events(procs, name))
        for name in ("true", "fast")
    }
    assert all(dispatched.values()), dispatched
    expired = [
        e for e in log_events(procs, "worker") if e["event"] == "participant_command_expired"
    ]
    assert expired == []
    print(f"\nclock skew: steps dispatched {dispatched}, each run once ({CHORE_SECONDS:g} s)")


async def both_consume(settings: Settings, topology: Topology) -> bool:
    connection = await connect(settings.amqp_url)
    try:
        return await consumer_count(connection, topology.name(REQUESTS_QUEUE)) == 2
    finally:
        await connection.close()


async def serving(port: int) -> bool:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        try:
            return (await client.get("/healthz")).status_code == 200
        except httpx.TransportError:
            return False


def offset(metrics: httpx.Response) -> float:
    assert metrics.status_code == 200, metrics.text
    for family in text_string_to_metric_families(metrics.text):
        for sample in family.samples:
            if sample.name == "saga_clock_offset_seconds":
                return float(sample.value)
    raise AssertionError("no saga_clock_offset_seconds in /metrics")


def log_events(procs: Processes, name: str) -> list[dict[str, Any]]:
    path = procs.log_dir / f"{name}.log"
    events = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and "event" in event:
            events.append(event)
    return events


async def finished(db: AsyncEngine) -> bool:
    counts = await status_counts(db)
    return sum(counts.values()) == SAGAS and set(counts) <= {"completed", "compensated", "failed"}


async def status_counts(db: AsyncEngine) -> dict[str, int]:
    i = saga_instances.c
    async with db.connect() as conn:
        rows = await conn.execute(sa.select(i.status, sa.func.count()).group_by(i.status))
        return {status: count for status, count in rows.all()}


async def history_events(db: AsyncEngine) -> Counter[str]:
    async with db.connect() as conn:
        return Counter((await conn.execute(sa.select(saga_history.c.event))).scalars())


async def runs_per_saga(db: AsyncEngine) -> dict[str, int]:
    async with db.connect() as conn:
        rows = await conn.execute(
            sa.text("SELECT saga_id::text, count(*) FROM chore_runs GROUP BY saga_id")
        )
        return {saga: count for saga, count in rows.all()}
