"""Readiness under a blocked broker connection: while a memory alarm on the node blocks
publishers, `saga run`'s `/readyz` answers 503 naming the alarm, and `saga_amqp_blocked` is 1
with `saga_amqp_blocked_seconds_total` growing; once the alarm clears, 200 again, and the start
that waited is dispatched.

The alarm blocks every publisher of its node, so the test runs on a RabbitMQ node of its own
(tests/chaos/servers.py), never on the shared broker that other tests use at the same time;
the watermark is put back in a finally.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from adapters.runtime import Orchestrator
from adapters.settings import Settings
from tests.chaos.servers import OwnRabbit
from tests.fixtures.polling import eventually

LOW = "0.0000001"  # of the machine's memory: any node is above it
NORMAL = "0.4"  # RabbitMQ's default


@pytest.fixture
async def own_broker(tmp_path: Path) -> AsyncIterator[OwnRabbit]:
    node = OwnRabbit(tmp_path / "rabbitmq", uuid.uuid4().hex[:8])
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


@pytest.fixture
async def orchestrator(database_url: str, own_broker: OwnRabbit) -> AsyncIterator[Orchestrator]:
    settings = Settings(
        database_url=database_url,
        amqp_url=own_broker.url(),
        amqp_prefix=f"t-{uuid.uuid4().hex[:8]}.",
        http_bind="127.0.0.1:0",
    )
    async with Orchestrator(settings) as running:
        yield running


def metric(text: str, name: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"no {name} in /metrics")


async def test_readiness_is_503_naming_the_alarm_while_the_broker_blocks_publishing(
    orchestrator: Orchestrator, own_broker: OwnRabbit
) -> None:
    assert orchestrator.http is not None
    async with httpx.AsyncClient(
        base_url=f"http://{orchestrator.http.address}", timeout=30
    ) as http:
        ready = await http.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"]["rabbitmq_publishing"] == "ok"
        scraped = (await http.get("/metrics")).text
        assert metric(scraped, "saga_amqp_blocked") == 0
        assert metric(scraped, "saga_amqp_blocked_seconds_total") == 0

        await own_broker.ctl("set_vm_memory_high_watermark", LOW)
        try:
            # The broker tells a connection it is blocked when it publishes: a start makes
            # the orchestrator publish its first commands, and waits for the alarm to clear.
            start = asyncio.create_task(
                http.post(
                    "/api/sagas",
                    json={"saga": "order", "key": "during-alarm", "input": order_input()},
                )
            )

            async def unready() -> dict[str, Any] | None:
                answer = await http.get("/readyz")
                return answer.json() if answer.status_code == 503 else None

            problem = await eventually(unready, timeout=30, message="/readyz went 503")
            assert problem["checks"]["rabbitmq_publishing"] == (
                "blocked by the broker: low on memory"
            )
            assert (
                "rabbitmq_publishing check failed: blocked by the broker: low on memory"
                in (problem["detail"])
            )
            assert problem["checks"]["rabbitmq"] == "ok"  # it connects; it may not publish
            assert not start.done()
            scraped = (await http.get("/metrics")).text
            assert metric(scraped, "saga_amqp_blocked") == 1
            first = metric(scraped, "saga_amqp_blocked_seconds_total")

            async def grown() -> float | None:
                now = metric((await http.get("/metrics")).text, "saga_amqp_blocked_seconds_total")
                return now if now > first else None

            await eventually(grown, timeout=10, message="blocked seconds grow during the block")
        finally:
            await own_broker.ctl("set_vm_memory_high_watermark", NORMAL)

        async def ready_again() -> bool:
            return (await http.get("/readyz")).status_code == 200

        await eventually(ready_again, timeout=30, message="/readyz 200 once the alarm cleared")
        started = await asyncio.wait_for(start, timeout=30)
        assert started.status_code == 201, started.text
        scraped = (await http.get("/metrics")).text
        assert metric(scraped, "saga_amqp_blocked") == 0
        total = metric(scraped, "saga_amqp_blocked_seconds_total")
        assert total > 0
        assert metric((await http.get("/metrics")).text, "saga_amqp_blocked_seconds_total") == total


def order_input() -> dict[str, Any]:
    return {
        "order_id": "o-alarm",
        "customer_id": "c-1",
        "amount": "25.00",
        "items": [{"sku": "SKU-BOOK", "qty": 1}],
    }
