"""A rolling upgrade with sagas in flight: the previous release's orchestrators
(tests/upgrade/previous_release.txt, extracted from git) and this release's run side by side
over one database and one broker while a stream of orders goes through the example shop.

1. The database is migrated to the previous release's head by the previous release's own
   `saga migrate`; two previous-release orchestrators and the shop start.
2. Orders flow (at most WINDOW unfinished); with sagas in flight, this release's
   `saga migrate` upgrades the schema under the running previous-release orchestrators.
3. Two orchestrators of this release start beside them and take work.
4. One previous-release orchestrator is stopped (SIGTERM: it must exit cleanly on the new
   schema), the other killed (SIGKILL) with sagas in flight; this release finishes them.

Then every order ended as it should (completed, compensated or cancelled by its scenario),
none is missing, the history records every transition once (tests/e2e/history_check.py), the
shop's ledger shows no double effect and no missing compensation, nothing was
dead-lettered, and the schema is at this release's head.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aio_pika.abc import AbstractRobustConnection
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters.postgres.database import make_engine
from adapters.postgres.store import PostgresStore
from adapters.postgres.tables import saga_history, saga_instances
from adapters.rabbitmq.client import send_requests
from adapters.rabbitmq.connection import connect, open_channel
from adapters.rabbitmq.topology import DEAD_QUEUE, REPLIES_QUEUE, REQUESTS_QUEUE, Topology
from examples.demo import CUSTOMERS, STOCK
from examples.shop import schema
from examples.shop.verify import check_effects
from migrations import alembic_config
from orchestrator.messages import CancelSaga, StartSaga
from orchestrator.ports import SagaQuery
from orchestrator.state import FINISHED
from tests.e2e.history_check import Entry, check_history
from tests.e2e.test_many_orchestrators import consumer_count
from tests.fixtures.databases import drop_database
from tests.fixtures.fleet import FLEET
from tests.fixtures.names import owned_name
from tests.fixtures.polling import eventually
from tests.fixtures.postgres import SERVER_URL
from tests.fixtures.rabbitmq import leftovers
from tests.upgrade.releases import (
    ROOT,
    Release,
    ReleaseProcesses,
    extract,
    previous_release,
)

pytestmark = [pytest.mark.e2e, FLEET, pytest.mark.timeout(240)]

ORDERS = 160
WINDOW = 40  # unfinished sagas at most
BATCH = 10  # starts per publish
SHOP_SERVICES = ("customers", "inventory", "payments", "notifications")
PINNED = 2  # the order saga version every order starts on


@dataclass(frozen=True)
class Scenario:
    kind: str
    every: int  # one order in `every` (0: the rest)
    customer: str
    sku: str
    prefix: str  # the shop's knobs ride on the order id (examples/shop/services.py)
    expect: str
    cancel: bool = False


SCENARIOS = [
    Scenario("card declined", 10, "cust-declined", "SKU-BOOK", "", "compensated"),
    Scenario("out of stock", 10, "cust-ok", "SKU-RARE", "", "compensated"),
    Scenario("no credit", 10, "cust-poor", "SKU-BOOK", "", "compensated"),
    Scenario("cancelled mid-flight", 10, "cust-ok", "SKU-LAMP", "slow-", "cancelled", True),
    Scenario("normal", 0, "cust-ok", "SKU-BOOK", "", "completed"),
]


@dataclass(frozen=True)
class Order:
    scenario: Scenario
    key: str
    input: dict[str, Any]

    def requests(self) -> list[tuple[str, Any]]:
        # Pinned to a version both releases load: the previous one has no order v3, and its
        # shop (which runs throughout) does not answer with the ids v3's result models need.
        start = StartSaga(saga="order", key=self.key, input=self.input, version=PINNED)
        if not self.scenario.cancel:
            return [("start", start)]
        # Right behind its start: it lands while the slow stock reservation stalls (or
        # before the start, and is held for it); either way before the pivot.
        return [("start", start), ("cancel", CancelSaga(key=self.key, reason="changed mind"))]


def plan(count: int, run: str) -> list[Order]:
    orders = []
    for i in range(count):
        s = next(s for s in SCENARIOS if s.every == 0 or i % s.every == SCENARIOS.index(s))
        order_id = f"{s.prefix}{run}-{i:04d}"
        body = {
            "order_id": order_id,
            "customer_id": s.customer,
            "amount": f"{10 + i % 90}.50",
            "items": [{"sku": s.sku, "qty": 1 + i % 3}],
        }
        orders.append(Order(s, f"order-{order_id}", body))
    return orders


@pytest.fixture
def previous(tmp_path_factory: pytest.TempPathFactory) -> Release:
    commit = previous_release()
    return Release(f"previous ({commit[:8]})", extract(commit, tmp_path_factory.mktemp("prev")))


@pytest.fixture
async def database_url() -> AsyncIterator[str]:
    """An empty database of its own: the template is at this release's head already."""
    name = owned_name("saga_test_upgrade")
    url = SERVER_URL.set(database=name).render_as_string(hide_password=False)
    yield url
    await drop_database(url)


@pytest.fixture
def env(database_url: str, topology: Topology, amqp_url: str) -> dict[str, str]:
    return {
        "SAGA_DATABASE_URL": database_url,
        "SAGA_AMQP_URL": amqp_url,
        "SAGA_AMQP_PREFIX": topology.prefix,
        "SAGA_MODULES": "sagas.order",
        "SAGA_LOG_FORMAT": "json",
        "SAGA_HTTP_BIND": "",
        "SAGA_TIMER_INTERVAL": "0.1",
        "SAGA_RELAY_INTERVAL": "0.3",
        "SAGA_RELAY_AGE": "2.0",
        "SAGA_PREFETCH": "10",
        "SAGA_DB_POOL_SIZE": "6",
        "SHOP_DATABASE_URL": database_url,
        "SHOP_SLOW_SECONDS": "2.0",
    }


@pytest.fixture
def procs(env: dict[str, str], tmp_path: Path) -> Iterator[ReleaseProcesses]:
    p = ReleaseProcesses(env=env, log_dir=tmp_path)
    yield p
    p.stop_all()


@pytest.fixture
async def broker(amqp_url: str) -> AsyncIterator[AbstractRobustConnection]:
    connection = await connect(amqp_url, name="upgrade-test")
    yield connection
    await connection.close()


def migrate(release: Release, env: dict[str, str]) -> None:
    done = release.python(["-m", "adapters.cli", "migrate"], env)
    assert done.returncode == 0, f"{release.name} migrate:\n{done.stdout}\n{done.stderr}"


def runs_its_own_code(release: Release, env: dict[str, str]) -> str:
    probe = "import adapters, migrations; print(adapters.__file__); print(migrations.__file__)"
    done = release.python(["-c", probe], env)
    assert done.returncode == 0, done.stderr
    return done.stdout


async def revision(db: AsyncEngine) -> str | None:
    async with db.connect() as conn:
        found = await conn.scalar(sa.text("SELECT version_num FROM alembic_version"))
        return None if found is None else str(found)


class Feeder:
    """Publishes the orders in batches, at most WINDOW unfinished, up to `limit` sent: the
    test raises the limit step by step, so each step of the upgrade meets sagas in flight."""

    def __init__(self, env: dict[str, str], db: AsyncEngine, orders: list[Order]) -> None:
        from adapters.settings import Settings

        self.settings = Settings(
            database_url=env["SAGA_DATABASE_URL"],
            amqp_url=env["SAGA_AMQP_URL"],
            amqp_prefix=env["SAGA_AMQP_PREFIX"],
        )
        self.db = db
        self.orders = orders
        self.sent = 0
        self.limit = 0

    async def finished(self) -> int:
        i = saga_instances.c
        async with self.db.connect() as conn:
            found = await conn.scalar(
                sa.select(sa.func.count()).where(i.status.in_(sorted(FINISHED)))
            )
        return found or 0

    async def unfinished(self) -> int:
        return self.sent - await self.finished()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            room = min(WINDOW - await self.unfinished(), self.limit - self.sent, BATCH)
            if room > 0:
                batch = self.orders[self.sent : self.sent + room]
                await send_requests(self.settings, [r for o in batch for r in o.requests()])
                self.sent += len(batch)
            else:
                await asyncio.sleep(0.1)  # the pace of the sagas, not a wait for a condition

    async def reach(self, limit: int, *, finished: int = 0, timeout: float = 60) -> None:
        """Raise the limit and wait until it is sent and `finished` sagas have ended."""
        self.limit = limit

        async def there() -> bool:
            return self.sent >= limit and await self.finished() >= finished

        await eventually(there, timeout=timeout, interval=0.1, message=f"{limit} orders sent")


async def consuming(
    broker: AbstractRobustConnection, topology: Topology, wanted: dict[str, int]
) -> None:
    async def ready() -> bool:
        for queue, count in wanted.items():
            if await consumer_count(broker, topology.name(queue)) < count:
                return False
        return True

    await eventually(ready, timeout=60, interval=0.2, message=f"consumers {wanted}")


def worked(log: Path) -> int:
    """Transitions a `saga run` process logged: proof it took part."""
    count = 0
    if log.exists():
        for line in log.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line).get("event")
            except (ValueError, AttributeError):
                continue
            count += event in {"saga_started", "step_succeeded", "step_failed", "saga_completed"}
    return count


async def read_history(db: AsyncEngine) -> list[Entry]:
    h = saga_history.c
    async with db.connect() as conn:
        rows = await conn.execute(sa.select(h.saga_id, h.seq, h.event, h.step, h.detail))
        return [Entry(r.saga_id, r.seq, r.event, r.step, r.detail) for r in rows]


@dataclass
class Upgrade:
    """Everything the upgrade runs on: the two releases, the processes, the broker."""

    previous: Release
    current: Release
    env: dict[str, str]
    procs: ReleaseProcesses
    broker: AbstractRobustConnection
    topology: Topology

    def start(self, release: Release, name: str) -> None:
        module = "examples.shop" if name == "shop" else "adapters.cli"
        self.procs.start_release(release, name, ["-m", module, *(["run"] * (name != "shop"))])

    async def consuming(self, wanted: dict[str, int]) -> None:
        await consuming(self.broker, self.topology, wanted)


@pytest.fixture
def upgrade(
    previous: Release,
    env: dict[str, str],
    procs: ReleaseProcesses,
    broker: AbstractRobustConnection,
    topology: Topology,
) -> Upgrade:
    return Upgrade(previous, Release("current", ROOT), env, procs, broker, topology)


async def test_previous_and_current_release_side_by_side_through_an_upgrade(
    upgrade: Upgrade, database_url: str
) -> None:
    began = time.monotonic()
    previous, current, env, procs = upgrade.previous, upgrade.current, upgrade.env, upgrade.procs
    assert str(previous.root) in runs_its_own_code(previous, env)
    assert str(ROOT) in runs_its_own_code(current, env)
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()

    # 1. The previous release, on its own schema.
    migrate(previous, env)
    db = make_engine(database_url, pool_size=3)
    try:
        old_head = await revision(db)
        assert old_head is not None
        print(f"\nupgrade: {previous.name} at {old_head} -> {current.name} at {head}")
        await schema.create(db)
        await schema.seed(db, CUSTOMERS, STOCK)
        for name in ("old-1", "old-2", "shop"):
            upgrade.start(previous, name)
        await upgrade.consuming(
            {REQUESTS_QUEUE: 2, REPLIES_QUEUE: 2}
            | {Topology.command_queue(s): 1 for s in SHOP_SERVICES}
        )
        orders = plan(ORDERS, f"u{time.monotonic_ns() % 10**6}")
        feeder = Feeder(env, db, orders)
        stop = asyncio.Event()
        feeding = asyncio.create_task(feeder.run(stop))
        try:
            await upgrade_under_load(upgrade, feeder, db, head)
        finally:
            stop.set()
            await feeding
        for name in ("new-1", "new-2", "shop"):
            assert procs.alive(name), procs.log_tail(name, 60)
        await check_outcomes(upgrade, db, orders)
        assert await revision(db) == head
        logged = {
            n: worked(procs.log_dir / f"{n}.log") for n in ("old-1", "old-2", "new-1", "new-2")
        }
        print(
            f"upgrade: {ORDERS} orders, transitions logged {logged}; "
            f"{time.monotonic() - began:.1f}s"
        )
    finally:
        procs.stop_all()
        await db.dispose()


async def upgrade_under_load(
    upgrade: Upgrade, feeder: Feeder, db: AsyncEngine, head: str | None
) -> None:
    """Steps 2 to 4 of the module docstring, each with sagas in flight."""
    procs = upgrade.procs
    await feeder.reach(50, finished=10)

    # 2. The schema upgrade, under the previous release with sagas in flight.
    feeder.limit = 80
    in_flight, finished = await feeder.unfinished(), await feeder.finished()
    await asyncio.to_thread(migrate, upgrade.current, upgrade.env)
    # Sagas were running when it began, and the previous release kept finishing them.
    assert in_flight > 0
    assert await feeder.finished() > finished
    assert await revision(db) == head

    # 3. This release beside the previous one.
    upgrade.start(upgrade.current, "new-1")
    upgrade.start(upgrade.current, "new-2")
    await upgrade.consuming({REQUESTS_QUEUE: 4, REPLIES_QUEUE: 4})
    await feeder.reach(110)
    await eventually(
        lambda: _both_worked(procs.log_dir),
        timeout=30,
        message="old and new orchestrators both made transitions",
    )

    # 4. The previous release goes: one stopped, one crashed.
    assert await feeder.unfinished() > 0
    code = await asyncio.to_thread(procs.terminate, "old-1")
    assert code == 0, procs.log_tail("old-1", 60)
    await feeder.reach(140)
    assert await feeder.unfinished() > 0
    procs.kill("old-2")
    await feeder.reach(ORDERS)
    await eventually(
        lambda: _all(feeder, ORDERS), timeout=90, interval=0.3, message="every order finished"
    )


async def check_outcomes(upgrade: Upgrade, db: AsyncEngine, orders: list[Order]) -> None:
    """Every order ended as its scenario says, once, with its effects, nothing dead-lettered."""
    states = {s.key: s for s in await PostgresStore(db).find(SagaQuery(limit=ORDERS * 2))}
    wrong = {
        o.key: (o.scenario.kind, states[o.key].status.value if o.key in states else "missing")
        for o in orders
        if o.key not in states or states[o.key].status != o.scenario.expect
    }
    assert wrong == {}
    assert len(states) == ORDERS
    history = await read_history(db)
    problems = check_history(history, {s.saga_id: s.status.value for s in states.values()})
    assert problems == [], "\n".join(problems[:20])
    assert await check_effects(db, states) == []
    channel = await open_channel(upgrade.broker)
    dead = await leftovers(channel, upgrade.topology.name(DEAD_QUEUE))
    assert dead == [], [(m.routing_key, m.headers) for m in dead[:5]]


async def _both_worked(log_dir: Path) -> bool:
    new = worked(log_dir / "new-1.log") + worked(log_dir / "new-2.log")
    old = worked(log_dir / "old-1.log") + worked(log_dir / "old-2.log")
    return new > 0 and old > 0


async def _all(feeder: Feeder, count: int) -> bool:
    return await feeder.finished() == count
