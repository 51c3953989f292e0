"""A process started while PostgreSQL and RabbitMQ do not answer yet (a restart, a deployment
coming up all at once) waits for them and then runs, instead of exiting: `saga run` and a
participant service, as real processes, their servers behind proxies that open late."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from sqlalchemy import make_url

from adapters.rabbitmq.connection import connect
from adapters.rabbitmq.topology import REQUESTS_QUEUE, Topology
from examples.processes import Processes
from tests.chaos.proxy import FaultyProxy
from tests.chaos.servers import free_port
from tests.e2e.test_many_orchestrators import consumer_count
from tests.fixtures.polling import eventually
from tests.fixtures.settings import process_env

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


@pytest.fixture
def ports() -> tuple[int, int]:
    return free_port(), free_port()


@pytest.fixture
def procs(
    database_url: str, amqp_url: str, topology: Topology, tmp_path: Path, ports: tuple[int, int]
) -> Iterator[Processes]:
    pg, rabbit = ports
    db = make_url(database_url).set(port=pg).render_as_string(hide_password=False)
    parts = urlsplit(amqp_url)
    login = parts.netloc.rpartition("@")[0]
    broker = parts._replace(
        netloc=f"{login}@127.0.0.1:{rabbit}" if login else f"127.0.0.1:{rabbit}"
    )
    broker_url = broker.geturl()
    p = Processes(
        env=process_env(db, broker_url, topology.prefix, SHOP_DATABASE_URL=db, SAGA_HTTP_BIND=""),
        log_dir=tmp_path,
    )
    yield p
    p.stop_all()


@pytest.fixture
async def proxies(
    database_url: str, amqp_url: str, ports: tuple[int, int]
) -> AsyncIterator[list[FaultyProxy]]:
    """Not listening until a test starts them: until then, nothing answers on their ports."""
    pg, rabbit = ports
    made = [
        FaultyProxy("postgres", make_url(database_url).port or 5432, listen_port=pg),
        FaultyProxy("rabbitmq", urlsplit(amqp_url).port or 5672, listen_port=rabbit),
    ]
    yield made
    for proxy in made:
        await proxy.stop()


def waiting_for(procs: Processes, name: str) -> set[str]:
    """What the process's log says it waited for at start-up so far."""
    path = procs.log_dir / f"{name}.log"
    lines = path.read_text().splitlines() if path.exists() else []
    return {
        e["waiting_for"]
        for e in (json.loads(line) for line in lines if line.startswith("{"))
        if e.get("event") == "startup_waiting"
    }


async def test_saga_run_and_a_participant_wait_for_their_servers(
    procs: Processes, proxies: list[FaultyProxy], amqp_url: str, topology: Topology
) -> None:
    postgres, rabbitmq = proxies
    procs.start_orchestrator("orchestrator")
    procs.start_shop("shop")

    async def both_waiting_for(server: str) -> bool:
        return server in waiting_for(procs, "orchestrator") & waiting_for(procs, "shop")

    await eventually(lambda: both_waiting_for("PostgreSQL"), timeout=30, message="PostgreSQL")
    await postgres.start()
    await eventually(lambda: both_waiting_for("RabbitMQ"), timeout=30, message="RabbitMQ")
    await rabbitmq.start()
    broker = await connect(amqp_url)
    try:
        queues = [topology.name(REQUESTS_QUEUE), topology.name(Topology.command_queue("payments"))]

        async def consuming() -> bool:
            return all([await consumer_count(broker, q) >= 1 for q in queues])

        await eventually(consuming, timeout=60, message="both consuming")
    finally:
        await broker.close()
    assert procs.alive("orchestrator") and procs.alive("shop")
