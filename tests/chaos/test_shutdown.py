"""`saga run` stops when told to even while its broker is gone: a robust channel would wait
for the broker forever before cancelling a consumer, and the process would never exit on
SIGTERM (seen by the chaos harness tearing down a run with the broker and database down)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from adapters.runtime import Orchestrator
from orchestrator.registry import load_modules
from tests.chaos.servers import OwnRabbit
from tests.fixtures.settings import fast_settings

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


@pytest.fixture
async def rabbit(tmp_path: Path) -> AsyncIterator[OwnRabbit]:
    node = OwnRabbit(tmp_path / "rabbitmq", uuid.uuid4().hex[:8])
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


async def test_stop_ends_while_the_broker_is_down(database_url: str, rabbit: OwnRabbit) -> None:
    settings = fast_settings(database_url, rabbit.url(), "", http_bind="")
    orchestrator = Orchestrator(settings, registry=load_modules(["sagas.order"]))
    await orchestrator.start()
    await rabbit.stop()  # kill -9 of the node: every connection to it is gone
    with capture_logs() as logs:
        # Three consumers (starts, cancels, replies), stopped together, each giving up on its
        # cancel after CANCEL_TIMEOUT (5 s).
        await asyncio.wait_for(orchestrator.stop(), 30)
    events = [e["event"] for e in logs]
    assert events.count("amqp_consumer_cancel_failed") == 3
    assert events[-1] == "orchestrator_stopped"
