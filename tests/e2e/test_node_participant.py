"""The protocol is language-neutral: the order saga runs with the shop's inventory service
written in plain Node.js (examples/node-inventory, following docs/protocol-idempotency.md
alone) in place of the Python one, every inventory command delivered twice, and the Node
process SIGKILLed right after committing an effect and before replying, then restarted. The
shop's tables must end as one execution of each saga leaves them. Commands crafted by the test
check the rest of the rules one by one: a duplicate gets the first answer, an expired command is
refused, a compensation before its action is a null one and refuses the action, a long command
heartbeats, a body that is no command is dead-lettered. Every message the test sees is checked
against docs/protocol/."""

from __future__ import annotations

import json
import shutil
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
import pytest
import sqlalchemy as sa
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters.postgres.database import make_engine
from adapters.postgres.store import PostgresStore
from adapters.rabbitmq.client import send_requests
from adapters.rabbitmq.connection import open_channel
from adapters.rabbitmq.topology import Topology
from adapters.settings import Settings
from examples.demo import CUSTOMERS, STOCK, PlannedOrder, plan_orders, wait_for_consumers
from examples.processes import Processes
from examples.shop import schema
from examples.shop.verify import check_effects
from orchestrator.messages import Exchange, StartSaga
from orchestrator.ports import SagaQuery
from orchestrator.state import SagaState
from tests.e2e.test_exactly_once import log_events
from tests.fixtures.must_run import unavailable
from tests.fixtures.polling import eventually
from tests.fixtures.settings import process_env
from tests.fixtures.wire_schemas import HEADERS, body_errors, header_errors, metadata

NODE = shutil.which("node")
NODE_DIR = Path(__file__).parents[2] / "examples" / "node-inventory"
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


@pytest.fixture(autouse=True)
def node_installed() -> None:
    if NODE is None:
        unavailable(
            "node is not installed: `bash deploy/setup-local.sh` installs it as root, "
            "else prints the command"
        )


PYTHON_SERVICES = ("customers", "payments", "notifications")
QUEUES = ["saga.requests", "saga.replies"] + [
    Topology.command_queue(s) for s in (*PYTHON_SERVICES, "inventory")
]
FAULT = "after_commit_before_reply@4"
SLOW = 1.2  # seconds a `slow-` order stalls in inventory.reserve


@pytest.fixture
def procs(
    database_url: str, topology: Topology, amqp_url: str, tmp_path: Path
) -> Iterator[Processes]:
    p = Processes(
        env=process_env(
            database_url,
            amqp_url,
            topology.prefix,
            SAGA_TIMER_INTERVAL="0.1",
            SAGA_RELAY_INTERVAL="0.3",
            SAGA_RELAY_AGE="0.5",
            SHOP_DATABASE_URL=database_url,
            SHOP_SLOW_SECONDS=str(SLOW),
        ),
        log_dir=tmp_path,
    )
    yield p
    p.stop_all()


@pytest.fixture
async def shop(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(database_url, pool_size=2)
    await schema.create(engine)
    await schema.seed(engine, CUSTOMERS, STOCK)
    yield engine
    await engine.dispose()


class Wire:
    """The test's view of the broker: a copy of every inventory command (each one published
    again at once, so the service gets it twice), of every order event and of every dead
    letter, and a reply queue of its own for the commands it sends."""

    def __init__(self, channel: AbstractRobustChannel, topology: Topology) -> None:
        self.channel = channel
        self.topology = topology
        self.commands: list[AbstractIncomingMessage] = []
        self.events: list[AbstractIncomingMessage] = []
        self.dead: list[AbstractIncomingMessage] = []
        self.replies: list[AbstractIncomingMessage] = []
        self.copied: set[str] = set()
        self.reply_queue: AbstractQueue | None = None

    async def start(self) -> None:
        await self.topology.declare_core(self.channel)
        await self.topology.declare_service(self.channel, "inventory")
        await self._spy(Exchange.COMMANDS, "inventory.#", self._on_command)
        await self._spy(Exchange.EVENTS, "order.*", self._keep(self.events))
        await self._spy(Exchange.DEAD, "", self._keep(self.dead))
        self.reply_queue = await self.channel.declare_queue(exclusive=True, auto_delete=True)
        await self.reply_queue.consume(self._keep(self.replies), no_ack=True)

    async def _spy(self, exchange: str, binding: str, on_message: Any) -> None:
        queue = await self.channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(self.topology.name(exchange), binding)
        await queue.consume(on_message, no_ack=True)

    @staticmethod
    def _keep(into: list[AbstractIncomingMessage]) -> Any:
        async def keep(message: AbstractIncomingMessage) -> None:
            into.append(message)

        return keep

    async def _on_command(self, message: AbstractIncomingMessage) -> None:
        if message.reply_to != self.topology.name("saga.replies"):
            return  # one of the test's own
        self.commands.append(message)
        body = json.loads(message.body)
        if body["command_id"] not in self.copied:  # not the copy itself
            self.copied.add(body["command_id"])
            await self.send(body, message.routing_key or "", message.reply_to)

    async def send(
        self, body: dict[str, Any] | bytes, command: str, reply_to: str | None = None
    ) -> None:
        """Publish a command as the orchestrator does; its answer comes to the test's queue
        unless `reply_to` says otherwise."""
        assert self.reply_queue is not None
        exchange = await self.channel.get_exchange(
            self.topology.name(Exchange.COMMANDS), ensure=False
        )
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        message_id = body["command_id"] if isinstance(body, dict) else uuid.uuid4().hex
        await exchange.publish(
            aio_pika.Message(
                raw,
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=message_id,
                reply_to=reply_to or self.reply_queue.name,
            ),
            routing_key=command,
        )

    async def answers(self, command_id: str, count: int = 1) -> list[dict[str, Any]]:
        """The first `count` messages the test's queue got for `command_id`."""

        async def arrived() -> list[dict[str, Any]] | None:
            bodies = [json.loads(m.body) for m in self.replies]
            mine = [b for b in bodies if b["command_id"] == command_id]
            return mine[:count] if len(mine) >= count else None

        return await eventually(arrived, timeout=15, message=f"{count} answers to {command_id}")


@pytest.fixture
async def wire(
    amqp_connection: AbstractRobustConnection, topology: Topology
) -> AsyncIterator[Wire]:
    channel = await open_channel(amqp_connection)
    w = Wire(channel, topology)
    await w.start()
    yield w
    await channel.close()


def start_node(procs: Processes, name: str, fault: str | None = None) -> None:
    assert NODE is not None
    assert (NODE_DIR / "node_modules").is_dir(), (
        "examples/node-inventory has no node_modules: run `npm ci` there "
        "(deploy/setup-local.sh does)"
    )
    extra = {"NODE_INVENTORY_FAULT": fault} if fault else {}
    procs.start_program(name, [NODE, "src/main.js"], extra, cwd=NODE_DIR)


@pytest.fixture
def settings(database_url: str, topology: Topology, amqp_url: str) -> Settings:
    return Settings(database_url=database_url, amqp_url=amqp_url, amqp_prefix=topology.prefix)


async def test_the_order_saga_with_the_node_inventory_service(
    procs: Processes, shop: AsyncEngine, wire: Wire, settings: Settings
) -> None:
    plan = [o for o in plan_orders(16, f"node{time.monotonic_ns() % 10**6}") if not o.cancel]
    procs.start_orchestrator()
    procs.start_shop(services=PYTHON_SERVICES)
    start_node(procs, "node-1", fault=FAULT)
    await wait_for_consumers(settings, QUEUES)
    starts = [StartSaga(saga="order", key=o.key, input=o.input) for o in plan]
    await send_requests(settings, [("start", s) for s in starts])

    async def died() -> bool:
        return not procs.alive("node-1")

    await eventually(died, timeout=30, message="the Node service to die at its fault point")
    assert procs.procs.pop("node-1").returncode == -signal.SIGKILL
    start_node(procs, "node-2")

    engine = make_engine(settings.database_url, pool_size=1)
    try:
        store = PostgresStore(engine)
        states = await eventually(
            lambda: finished(store, plan), timeout=60, message="every saga finished"
        )
    finally:
        await engine.dispose()
    wrong = {o.key: states[o.key].status for o in plan if states[o.key].status != o.expect}
    assert wrong == {}, procs.log_tail("orchestrator")
    assert {"compensated", "completed"} <= {s.status.value for s in states.values()}
    assert await check_effects(shop, states) == []
    assert await held_reservations(shop) == sum(o.expect == "completed" for o in plan)

    # The killed command came back to the restarted service, answered from its barrier.
    crash = [
        e for e in log_events(procs.log_dir / "node-1.log") if e["event"] == "fault_point_crash"
    ]
    replayed = [
        e for e in log_events(procs.log_dir / "node-2.log") if e["event"] == "duplicate_replayed"
    ]
    assert [c["command_id"] for c in crash] and crash[0]["command_id"] in {
        e["command_id"] for e in replayed if e["redelivered"]
    }
    assert len(wire.copied) >= len(plan)  # every inventory command was delivered twice

    await the_protocol_rules_hold(wire, shop, states, plan)
    assert traffic_problems(wire, starts) == []


async def finished(store: PostgresStore, plan: list[PlannedOrder]) -> dict[str, SagaState]:
    states = {}
    for o in plan:
        found = await store.find(SagaQuery(key=o.key, limit=1))
        if not found or not found[0].finished:
            return {}
        states[o.key] = found[0]
    return states


async def held_reservations(shop: AsyncEngine) -> int:
    sr = schema.stock_reservations
    async with shop.connect() as conn:
        held = await conn.scalar(
            sa.select(sa.func.count()).select_from(sr).where(sr.c.released_at.is_(None))
        )
    return int(held or 0)


async def the_protocol_rules_hold(
    wire: Wire, shop: AsyncEngine, states: dict[str, SagaState], plan: list[PlannedOrder]
) -> None:
    completed = next(o.key for o in plan if o.expect == "completed")
    reserve = next(
        json.loads(m.body)
        for m in wire.commands
        if json.loads(m.body)["saga_id"] == str(states[completed].saga_id)
        and m.routing_key == "inventory.reserve"
    )
    # A duplicate of a command answered long ago: the first answer, not a second effect.
    again = {**reserve, "command_id": str(uuid.uuid4()), "attempt": 2}
    again["expires_at"] = (datetime.now(UTC) + timedelta(seconds=30)).isoformat()
    await wire.send(again, "inventory.reserve")
    [answer] = await wire.answers(again["command_id"])
    step = states[completed].step("reserve_stock")
    assert step is not None
    assert answer["outcome"] == "success" and answer["result"] == step.result
    assert answer["saga_id"] == reserve["saga_id"]  # the incoming command's envelope

    # Expired: refused, retryable, nothing written.
    expired = fresh(reserve, "action", expires_in=-1)
    await wire.send(expired, "inventory.reserve")
    [answer] = await wire.answers(expired["command_id"])
    assert answer["outcome"] == "failure" and answer["error"]["type"] == "expired"
    assert answer["error"]["retryable"] is True

    # A compensation before its action: a null compensation; the action is then refused.
    undo = fresh(reserve, "compensation")
    await wire.send(undo, "inventory.release")
    [answer] = await wire.answers(undo["command_id"])
    assert answer["outcome"] == "success" and answer["result"] == {"null_compensation": True}
    late = {**fresh(reserve, "action"), "saga_id": undo["saga_id"]}
    await wire.send(late, "inventory.reserve")
    [answer] = await wire.answers(late["command_id"])
    assert answer["error"]["type"] == "compensated_already"
    assert answer["error"]["retryable"] is False

    # A long command: heartbeats from its start to its end, then the answer; then undone.
    long = fresh(reserve, "action", heartbeat_timeout=1.0, report_start=True)
    long["payload"] = {**long["payload"], "order_id": "slow-long"}
    await wire.send(long, "inventory.reserve")
    answers = await wire.answers(long["command_id"], count=3)
    assert [a["outcome"] for a in answers[:2]] == ["heartbeat", "heartbeat"]
    done = await eventually(
        lambda: _final(wire, long["command_id"]), timeout=15, message="the long command's answer"
    )
    assert done["outcome"] == "success"
    assert done["result"]["reservation_id"] > 0
    release = {
        **fresh(reserve, "compensation"),
        "saga_id": long["saga_id"],
        "action_result": done["result"],
    }
    await wire.send(release, "inventory.release")
    [answer] = await wire.answers(release["command_id"])
    assert answer["result"] == {"released": len(long["payload"]["items"])}

    async with shop.connect() as conn:
        effects = schema.effects
        written = await conn.scalar(
            sa.select(sa.func.count())
            .select_from(effects)
            .where(effects.c.saga_id.in_([expired["saga_id"], undo["saga_id"]]))
        )
    assert written == 0

    # A body that is no command: dead-lettered, unanswered.
    await wire.send(b'{"command_id": "not a command"}', "inventory.reserve")

    async def dead_lettered() -> bool:
        return any(metadata(m).get("x-first-death-reason") == "rejected" for m in wire.dead)

    await eventually(dead_lettered, timeout=15, message="the bad command in saga.dead")


def fresh(
    template: dict[str, Any], kind: str, expires_in: float = 30, **more: Any
) -> dict[str, Any]:
    """A command of a saga nobody ran: new ids, the given kind and expiry."""
    return {
        **template,
        "command_id": str(uuid.uuid4()),
        "saga_id": str(uuid.uuid4()),
        "kind": kind,
        "attempt": 1,
        "idempotency_key": f"fresh:{uuid.uuid4()}",
        "expires_at": (datetime.now(UTC) + timedelta(seconds=expires_in)).isoformat(),
        **more,
    }


async def _final(wire: Wire, command_id: str) -> dict[str, Any] | None:
    bodies = [json.loads(m.body) for m in wire.replies]
    final = [b for b in bodies if b["command_id"] == command_id and b["outcome"] != "heartbeat"]
    return final[0] if final else None


def traffic_problems(wire: Wire, starts: list[StartSaga]) -> list[str]:
    """Every message the test saw or sent, against docs/protocol/ (bodies and headers)."""
    problems = [
        f"start: {e}"
        for s in starts
        for e in body_errors("start.schema.json", json.loads(s.model_dump_json(exclude_none=True)))
    ]
    seen = (
        [("command.schema.json", m) for m in wire.commands]
        + [("outcome-event.schema.json", m) for m in wire.events]
        + [
            (
                "heartbeat.schema.json"
                if json.loads(m.body)["outcome"] == "heartbeat"
                else "reply.schema.json",
                m,
            )
            for m in wire.replies
        ]
    )
    for name, message in seen:
        errors = body_errors(name, json.loads(message.body))
        errors += header_errors(HEADERS[name], metadata(message))
        problems += [f"{name}: {e}" for e in errors]
    return problems
