"""Real processes, real crashes: `saga run` is killed with SIGKILL mid-flight (by the test, and
at each named fault point), restarted, and every saga still ends as it should, with no effect
applied twice by the example shop, the outbox drained and a history of each transition once.

No step may time out: the order saga's steps time out after 30 s, inside the minute the test
waits, and a timeout and its retry would finish a saga whose command a crash lost. The
recovery under test is the relay's and the redelivery's, so a `step_timed_out` fails it."""

from __future__ import annotations

import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from adapters.postgres.database import make_engine
from adapters.postgres.store import PostgresStore
from adapters.rabbitmq.client import send_requests
from adapters.rabbitmq.topology import Topology
from adapters.settings import Settings
from examples.demo import CUSTOMERS, STOCK, PlannedOrder, plan_orders, wait_for_consumers
from examples.processes import Processes
from examples.shop import schema
from examples.shop.verify import check_effects
from orchestrator.messages import StartSaga
from orchestrator.ports import SagaQuery
from orchestrator.state import SagaState
from tests.e2e.crash_log import fault_point_crashes
from tests.e2e.history_check import check_history
from tests.e2e.test_many_orchestrators import outbox_empty, read_history
from tests.fixtures.polling import eventually
from tests.fixtures.settings import process_env

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

QUEUES = [
    "saga.requests",
    "saga.replies",
    "commands.customers",
    "commands.inventory",
    "commands.payments",
    "commands.notifications",
]


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
            SHOP_SLOW_SECONDS="0.5",
        ),
        log_dir=tmp_path,
    )
    yield p
    p.stop_all()


def orders(count: int) -> list[PlannedOrder]:
    # No cancellations here: this test is about crashes. Slow orders keep sagas in flight.
    return [o for o in plan_orders(count, f"e2e{time.monotonic_ns() % 10**6}") if not o.cancel]


async def finished(store: PostgresStore, plan: list[PlannedOrder]) -> dict[str, SagaState] | None:
    states = {}
    for o in plan:
        found = await store.find(SagaQuery(key=o.key, limit=1))
        if not found or not found[0].finished:
            return None
        states[o.key] = found[0]
    return states


async def run_and_check(
    procs: Processes,
    settings: Settings,
    plan: list[PlannedOrder],
    crash: Callable[[PostgresStore], Awaitable[None]],
    fault: str | None = None,
) -> None:
    """Run `plan` through the orchestrator (its first life armed with SAGA_FAULT=`fault`, the
    shop never) and the shop, `crash` it, restart it, and check how everything ended."""
    db = make_engine(settings.database_url, pool_size=2)
    try:
        await schema.create(db)
        await schema.seed(db, CUSTOMERS, STOCK)
        procs.start_orchestrator(extra_env={"SAGA_FAULT": fault} if fault else None)
        procs.start_shop()
        await wait_for_consumers(settings, QUEUES)
        await send_requests(
            settings, [("start", StartSaga(saga="order", key=o.key, input=o.input)) for o in plan]
        )
        store = PostgresStore(db)
        await crash(store)
        procs.start_orchestrator()
        states = await eventually(
            lambda: finished(store, plan), timeout=60, message="every saga finished after restart"
        )
        wrong = {o.key: states[o.key].status for o in plan if states[o.key].status != o.expect}
        assert wrong == {}, procs.log_tail("orchestrator")
        assert await check_effects(db, states) == []
        await eventually(lambda: outbox_empty(db), message="the outbox drained")
        history = await read_history(db)
        statuses = {s.saga_id: s.status.value for s in states.values()}
        assert check_history(history, statuses) == []
        timed_out = [
            f"{e.saga_id} {e.event} {e.step}"
            for e in history
            if e.event in ("step_timed_out", "compensation_timed_out")
        ]
        assert timed_out == [], "a timeout finished what the crash recovery had to"
    finally:
        await db.dispose()


def settings_for(database_url: str, topology: Topology, amqp_url: str) -> Settings:
    return Settings(database_url=database_url, amqp_url=amqp_url, amqp_prefix=topology.prefix)


async def test_sigkill_mid_flight_then_restart(
    procs: Processes, database_url: str, topology: Topology, amqp_url: str
) -> None:
    plan = orders(40)

    async def crash(store: PostgresStore) -> None:
        async def mid_flight() -> bool:
            states = await store.find(SagaQuery(limit=100))
            done = sum(s.finished for s in states)
            return len(states) >= 10 and 0 < done < len(plan)

        await eventually(mid_flight, timeout=30, message="sagas mid-flight")
        procs.kill("orchestrator")

    await run_and_check(procs, settings_for(database_url, topology, amqp_url), plan, crash)


@pytest.mark.parametrize(
    "point",
    [
        "after_commit_before_publish",
        "after_publish_before_outbox_delete",
        "after_commit_before_ack",
    ],
)
async def test_crash_at_fault_point_then_restart(
    procs: Processes, database_url: str, topology: Topology, amqp_url: str, point: str
) -> None:
    plan = orders(20)

    async def crash(_store: PostgresStore) -> None:
        async def died() -> bool:
            return not procs.alive("orchestrator")

        await eventually(died, timeout=30, message=f"the orchestrator to die at {point}")
        dead = procs.procs.pop("orchestrator")
        assert dead.returncode == -signal.SIGKILL, procs.log_tail("orchestrator")
        assert fault_point_crashes(procs.log_dir / "orchestrator.log") == [point]
        assert procs.alive("shop"), "the shop must not crash at the orchestrator's point"

    await run_and_check(
        procs, settings_for(database_url, topology, amqp_url), plan, crash, fault=f"{point}@15"
    )
