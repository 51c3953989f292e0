"""`saga signal` on the database, as an operator types it: the engine of the command takes
the signal (the saga goes on, its next command published to RabbitMQ and no outbox row
left behind), a repeat with the printed id changes nothing, and each way it can go wrong
has its exit code. The same over --url: tests/http/test_cli_api.py."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from uuid import UUID

import pytest
from aio_pika.abc import AbstractRobustChannel
from sqlalchemy import text

from adapters.clock import utcnow
from adapters.memory.publisher import MemoryPublisher
from adapters.postgres.store import PostgresStore
from adapters.rabbitmq.topology import Topology
from orchestrator.engine import Engine
from orchestrator.messages import Reply, StartSaga
from orchestrator.registry import Registry
from orchestrator.state import StepStatus
from sagas import order
from tests.fixtures.rabbitmq import take

pytestmark = pytest.mark.timeout(120)

BIG_ORDER = {
    "order_id": "o-cli",
    "customer_id": "c-1",
    "amount": "2500.00",
    "items": [{"sku": "SKU-BOOK", "qty": 1}],
}
APPROVED = json.dumps({"approved": True, "reviewer": "ann"})


async def at_review(store: PostgresStore, key: str) -> UUID:
    """An order saga v4 waiting for `fraud_review`, walked there by an engine of the test's."""
    publisher = MemoryPublisher()
    engine = Engine(store, publisher, Registry([order.saga]), clock=utcnow)
    started = await engine.start(StartSaga(saga="order", key=key, input=BIG_ORDER))
    assert started.saga_id is not None
    for message in publisher.published:
        command = json.loads(message.body)
        reply = Reply(
            command_id=command["command_id"],
            saga_id=started.saga_id,
            step=command["step"],
            outcome="success",
            result={"reservation_id": 3},
        )
        await engine.reply(reply)
    await engine.forget_published()  # as `saga run` does: no outbox row left behind
    return started.saga_id


async def saga(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "adapters.cli",
        *args,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_a_signal_on_the_database_is_taken_once_and_the_saga_goes_on(
    database_url: str,
    pg_store: PostgresStore,
    amqp_url: str,
    topology: Topology,
    amqp_channel: AbstractRobustChannel,
) -> None:
    await topology.declare_core(amqp_channel)
    await topology.declare_service(amqp_channel, "payments")
    env = {
        "SAGA_DATABASE_URL": database_url,
        "SAGA_AMQP_URL": amqp_url,
        "SAGA_AMQP_PREFIX": topology.prefix,
        "SAGA_LOG_FORMAT": "json",
    }
    saga_id = await at_review(pg_store, "cli-review")

    code, out, err = await saga(
        env, "signal", "cli-review", "fraud_review", "--payload", APPROVED, "--who", "ann"
    )
    assert code == 0, err
    said = re.fullmatch(
        rf"{saga_id}: signal fraud_review \(id (\S+)\) taken; the saga is running\n", out
    )
    assert said is not None, out
    signal_id = said.group(1)
    UUID(signal_id)  # made up, and printed so that it can be sent again
    state = await pg_store.get(saga_id)
    assert state is not None
    review, charge = state.step("fraud_review"), state.step("charge_payment")
    assert review is not None and review.status == StepStatus.SUCCEEDED
    assert review.result == {"approved": True, "reviewer": "ann"}  # as sent
    assert charge is not None and charge.status == StepStatus.RUNNING
    [command] = await take(amqp_channel, topology.name("commands.payments"))
    assert command.routing_key == "payments.charge"
    history = await pg_store.history(saga_id)
    finished = next(h for h in history if h.event == "wait_finished")
    assert finished.actor == "operator:ann"
    async with pg_store._engine.connect() as conn:  # what it published left no outbox row
        assert await conn.scalar(text("SELECT count(*) FROM outbox")) == 0

    again = await saga(
        env, "signal", str(saga_id), "fraud_review", "--payload", APPROVED, "--id", signal_id
    )
    assert again[:2] == (
        0,
        f"{saga_id}: signal fraud_review (id {signal_id}) was held or taken already: "
        "nothing changed\n",
    )

    refused, unknown, bad_json, not_object, bad_name = await asyncio.gather(
        saga(env, "signal", "cli-review", "refund", "--id", "r-1"),
        saga(env, "signal", "nobody", "fraud_review"),
        saga(env, "signal", "cli-review", "fraud_review", "--payload", "{approved"),
        saga(env, "signal", "cli-review", "fraud_review", "--payload", "[1]"),
        saga(env, "signal", "cli-review", "Fraud-Review"),
    )
    assert refused[0] == 1 and refused[1] == ""
    assert (
        "refused: saga order v4 never waits for signal 'refund'; it waits for: fraud_review "
        "(reason not_waited_for; signal id r-1)"
    ) in refused[2]
    assert unknown[0] == 3 and "error: no saga has key 'nobody' (reason unknown_saga" in unknown[2]
    assert bad_json[0] == 2 and "--payload is not valid JSON" in bad_json[2]
    assert not_object[0] == 2 and "--payload must be a JSON object" in not_object[2]
    assert bad_name[0] == 2 and "signal: String should match pattern" in bad_name[2]
