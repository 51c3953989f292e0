"""200 orders placed by a service process (tests/e2e/order_service.py: the order row and its
saga's start in one transaction, the starter's relay in the same process) that is SIGKILLed
again and again at the relay's crash points, alternately between the commit and the publish
and between the broker's confirm and the delete, and restarted each time: exactly one saga
per committed order, none for an order rolled back.

`SAGA_STARTER_CRASH_SEED` replays a run (the seed is printed)."""

from __future__ import annotations

import os
import random
import signal
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from adapters.rabbitmq.topology import Topology
from examples.processes import Processes
from examples.shop.orders import saga_key
from examples.shop.schema import orders
from orchestrator.ports import SagaQuery
from tests.e2e.crash_log import fault_point_crashes
from tests.e2e.order_service import order_id, rolled_back
from tests.fixtures.fleet import FLEET
from tests.fixtures.polling import eventually
from tests.fixtures.settings import process_env
from tests.integration.harness import System
from tests.integration.starter_harness import (
    Spy,
    every_key_started,
    none_started_for,
    order_system,
    spy,
)

pytestmark = [pytest.mark.e2e, FLEET, pytest.mark.timeout(120)]

ORDERS = 200
POINTS = ("starter_after_commit_before_publish", "starter_after_publish_before_delete")
KILLS = 12  # lives armed with a crash point, then one left to finish


@pytest.fixture
async def system(database_url: str, topology: Topology, amqp_url: str) -> AsyncIterator[System]:
    async with order_system(database_url, topology, amqp_url) as system_:
        yield system_


@pytest.fixture
def procs(
    database_url: str, topology: Topology, amqp_url: str, tmp_path: Path
) -> Iterator[Processes]:
    p = Processes(
        env=process_env(
            database_url,
            amqp_url,
            topology.prefix,
            SHOP_DATABASE_URL=database_url,
            ORDERS=str(ORDERS),
        ),
        log_dir=tmp_path,
    )
    yield p
    p.stop_all()


async def run_life(procs: Processes, name: str, fault: str | None) -> int:
    """Start the service and wait for it to end: SIGKILLed at its crash point, or done."""
    procs.start(name, ["-m", "tests.e2e.order_service"], {"SAGA_FAULT": fault} if fault else {})
    proc = procs.procs[name]

    async def ended() -> tuple[int] | None:
        code = proc.poll()
        return None if code is None else (code,)

    [code] = await eventually(
        ended, timeout=30, message=f"{name} to crash or finish ({procs.log_dir})"
    )
    del procs.procs[name]
    return code


async def test_sigkilled_between_commit_publish_and_delete_each_committed_order_starts_one_saga(
    system: System, procs: Processes
) -> None:
    seed = int(os.environ.get("SAGA_STARTER_CRASH_SEED", random.randrange(10**6)))
    print(f"SAGA_STARTER_CRASH_SEED={seed}")
    rng = random.Random(seed)
    sent: Spy = await spy(system)

    deaths: Counter[str] = Counter()
    for life in range(KILLS):
        point = POINTS[life % 2]
        code = await run_life(procs, f"service-{life}", f"{point}@{rng.randint(3, 16)}")
        if code == 0:
            break  # every order placed and relayed before the point was reached
        assert code == -signal.SIGKILL, procs.log_tail(f"service-{life}")
        assert fault_point_crashes(procs.log_dir / f"service-{life}.log") == [point]
        deaths[point] += 1
    assert await run_life(procs, "service-last", None) == 0, procs.log_tail("service-last")
    print(f"deaths: {dict(deaths)}")
    assert deaths[POINTS[0]] >= 1 and deaths[POINTS[1]] >= 1, deaths

    async with system.shop.connect() as conn:
        committed = set((await conn.execute(sa.select(orders.c.id))).scalars())
    assert committed == {order_id(i) for i in range(ORDERS) if not rolled_back(i)}
    committed_keys = {saga_key(o) for o in committed}
    refused_keys = {saga_key(order_id(i)) for i in range(ORDERS) if rolled_back(i)}

    await every_key_started(system.store, committed_keys)
    sagas = Counter(s.key for s in await system.store.find(SagaQuery(limit=ORDERS * 2)))
    assert {k: n for k, n in sagas.items() if n != 1} == {}
    assert set(sagas) == committed_keys
    await none_started_for(system.store, refused_keys, seconds=1.0)

    # What the broker took: every committed start, nothing of a rolled-back one, and the
    # rows confirmed before a crash sent again under their own message id.
    messages = await sent.take()
    assert {m.key for m in messages} == committed_keys
    repeats = [mid for mid, n in Counter(m.message_id for m in messages).items() if n > 1]
    assert repeats, "no row was published twice: the confirm-to-delete crash did not happen"
