"""The order saga in the bench: `saga run` with `sagas.order` and the example shop
(`python -m examples.shop`) as participants, on databases and queues of their own.

Orders spread over 50 customers and 20 SKUs (one hot customer row would measure its lock
queue, not the engine); every tenth order's card is declined, so the payment fails at the
pivot and both reservations are compensated -- the same 1 in 10 as the bench saga.
"""

from __future__ import annotations

import argparse
from decimal import Decimal
from pathlib import Path
from typing import Any

from adapters.postgres.database import ensure_database, make_engine
from adapters.postgres.migrate import upgrade
from adapters.settings import Settings
from bench.engine import EngineDb, Publisher, saturate, summary
from bench.sagas import fails
from bench.stats import CpuMeter
from examples.demo import wait_for_consumers
from examples.processes import Processes
from examples.shop import schema

SERVICES = ["customers", "inventory", "payments", "notifications"]
CUSTOMERS = 50
SKUS = 20


def order_input(n: int) -> dict[str, Any]:
    return {
        "order_id": f"bench-{n}",
        "customer_id": "cust-declined" if fails(n) else f"cust-{n % CUSTOMERS}",
        "amount": f"{10 + n % 90}.50",
        "items": [{"sku": f"SKU-{n % SKUS}", "qty": 1}],
    }


async def seed_shop(url: str) -> None:
    await ensure_database(url)
    engine = make_engine(url, pool_size=1)
    try:
        await schema.create(engine)
        customers = {f"cust-{i}": (Decimal("1000000000"), True) for i in range(CUSTOMERS)}
        customers["cust-declined"] = (Decimal("1000000000"), False)
        await schema.seed(engine, customers, {f"SKU-{i}": 1_000_000_000 for i in range(SKUS)})
    finally:
        await engine.dispose()


async def run_order(
    settings: Settings,
    *,
    engine_url: str,
    shop_url: str,
    args: argparse.Namespace,
    log_dir: Path,
    dsn: str,
) -> dict[str, Any]:
    """`args.order_sagas` order sagas at saturation: the figures of `bench.run`'s engine
    phase (no fixed-rate phase, no transaction counts)."""
    await upgrade(engine_url)
    await seed_shop(shop_url)
    procs = Processes(
        env={
            "SAGA_DATABASE_URL": engine_url,
            "SAGA_AMQP_URL": settings.amqp_url,
            "SAGA_AMQP_PREFIX": settings.amqp_prefix,
            "SAGA_MODULES": "sagas.order",
            "SAGA_LOG_FORMAT": "json",
            "SAGA_HTTP_BIND": "",
            "SHOP_DATABASE_URL": shop_url,
        },
        log_dir=log_dir,
    )
    publisher = Publisher(settings, saga="order", input_of=order_input)
    db = EngineDb(dsn, saga="order")
    try:
        procs.start_orchestrator("order-orchestrator")
        procs.start_shop("order-shop")
        queues = ["saga.requests", "saga.replies", *(f"commands.{s}" for s in SERVICES)]
        await wait_for_consumers(settings, queues)
        await publisher.open()
        await db.open()
        meter = CpuMeter({name: proc.pid for name, proc in procs.procs.items()})
        keys = [(f"order-{i}", i) for i in range(args.order_sagas)]
        result, cpu = await saturate(publisher, db, keys, meter, args.timeout)
        n = args.order_sagas
        # "shop": the four example services in one process.
        cpu_per_saga = {k.removeprefix("order-"): v / n for k, v in cpu.items()}
        return {**summary(result, n), "cpu_s_per_saga": cpu_per_saga}
    except BaseException:
        procs.print_log_tails()
        raise
    finally:
        await publisher.close()
        await db.close()
        procs.stop_all()
