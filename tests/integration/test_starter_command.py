"""`saga relay`, the starter's relay as a process of its own: it refuses a database without
the outbox table at once (exit 2, saying what to do), relays what a service committed,
serves its metrics on --metrics-port, and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from adapters.rabbitmq.topology import Topology
from examples.shop.orders import place_order
from tests.fixtures.polling import eventually
from tests.fixtures.settings import process_env
from tests.integration.harness import System, order_input
from tests.integration.starter_harness import order_system, outbox_rows

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def system(database_url: str, topology: Topology, amqp_url: str) -> AsyncIterator[System]:
    async with order_system(database_url, topology, amqp_url) as system_:
        yield system_


def relay_env(database_url: str, amqp_url: str, topology: Topology) -> dict[str, str]:
    return {**os.environ, **process_env(database_url, amqp_url, topology.prefix)}


async def test_a_database_without_the_outbox_table_is_refused_at_once(
    database_url: str, amqp_url: str, topology: Topology
) -> None:
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "adapters.cli", "relay", "--database", database_url),
        env=relay_env(database_url, amqp_url, topology),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _out, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 2
    assert err.decode().strip().splitlines()[-1] == (
        "error: the database has no table saga_starter_outbox: create it with "
        "adapters.starter.install(conn) or the DDL in docs/starter.md"
    )


async def test_saga_relay_relays_serves_its_metrics_and_stops_on_sigterm(
    system: System, database_url: str, amqp_url: str, topology: Topology, tmp_path: Path
) -> None:
    log = tmp_path / "relay.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "adapters.cli", "relay", "--database", database_url),
            *("--schema", "shop", "--metrics-port", "0"),
            env=relay_env(database_url, amqp_url, topology),
            stdout=out,
            stderr=out,
        )
    try:

        async def logged(event: str) -> dict[str, object] | None:
            for line in log.read_text().splitlines():
                if line.startswith("{") and json.loads(line)["event"] == event:
                    found: dict[str, object] = json.loads(line)
                    return found
            return None

        serving = await eventually(lambda: logged("starter_metrics_serving"), message="metrics")
        async with system.shop.begin() as conn:
            key = await place_order(conn, order_input("o-cmd"))
        await system.wait_status(key, "running")
        assert await outbox_rows(system) == 0

        async def scraped() -> str | None:
            async with httpx.AsyncClient() as client:
                text = (await client.get(f"http://127.0.0.1:{serving['port']}/metrics")).text
            # The gauges are read from the table at most once a second.
            return text if "saga_starter_rows_waiting 0.0" in text else None

        metrics = await eventually(scraped, message="the gauge to show the outbox empty")
        assert 'saga_starter_rows_published_total{kind="start"} 1.0' in metrics

        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=20) == 0
        assert await logged("starter_relay_stopped")
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
