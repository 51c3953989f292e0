"""Four `saga run` processes on one database and one broker prefix, killed (SIGKILL) at random
and restarted while 500+ order sagas with parallel groups run through the example shop:
every saga ends as one execution of it would, the history records each transition once, no
timer fires twice and no command is dispatched twice for one attempt.

The mix: orders that complete, a flaky notification that is retried, express orders whose
courier step times out once and is retried (tests/e2e/express_order.py), orders compensated
for want of credit, of stock or of a valid card (one of them after its courier step timed
out), and slow orders cancelled while their stock reservation is in flight.

Starts are fed in batches, at most WINDOW sagas unfinished (see feed_and_cancel). What is
checked comes from `saga_history` (tests/e2e/history_check.py) and the shop's effects ledger;
how many commands went out on the wire more than once (at-least-once publishing, which the
participants' barrier absorbs) is measured by a spy queue and printed, not asserted.

Set SAGA_CHAOS_SEED to replay a run's kill schedule (the seed and the figures are printed;
run with -s to see them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from uuid import UUID

import pytest
import sqlalchemy as sa
from aio_pika.abc import AbstractRobustConnection
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters.postgres.database import make_engine
from adapters.postgres.store import PostgresStore
from adapters.postgres.tables import outbox, saga_history, saga_instances, saga_steps
from adapters.rabbitmq.client import send_requests
from adapters.rabbitmq.connection import connect, open_channel
from adapters.rabbitmq.topology import DEAD_QUEUE, REPLIES_QUEUE, REQUESTS_QUEUE, Topology
from adapters.settings import Settings
from examples.demo import CUSTOMERS, STOCK
from examples.processes import Processes
from examples.shop import schema
from examples.shop.verify import check_effects
from orchestrator.messages import CancelSaga, StartSaga
from orchestrator.ports import SagaQuery
from orchestrator.state import FINISHED
from tests.e2e.fleet import Fleet
from tests.e2e.history_check import DISPATCHES, Entry, check_history
from tests.e2e.wire import CommandSpy, Courier
from tests.fixtures.polling import eventually
from tests.fixtures.rabbitmq import leftovers

# Alone (tests/fixtures/alone.py): four orchestrators and the shop under 520 sagas saturate
# this machine's two cores by themselves, and its feed has 180 s.
pytestmark = [pytest.mark.e2e, pytest.mark.alone, pytest.mark.timeout(300)]

ORCHESTRATORS = 4
SAGAS = 520
MIN_KILLS = 6
# Sagas in flight at most, and starts per publish (see feed_and_cancel).
WINDOW = 100
BATCH = 25
# The stall of a `slow-` order's stock reservation: the window a cancel must land in.
SLOW_SECONDS = 4.0
SHOP_SERVICES = ("customers", "inventory", "payments", "notifications")


@dataclass(frozen=True)
class Scenario:
    kind: str
    share: float  # of all orders; "normal" takes whatever is left
    saga: str
    customer: str
    sku: str
    prefix: str  # the shop's knobs ride on the order id (examples/shop/services.py)
    expect: str
    # (event, step, attempt) every saga of the scenario must have in its history; attempt
    # None: any attempt (under load a step may time out and be retried before it answers).
    shows: tuple[tuple[str, str | None, int | None], ...] = ()
    cancel: bool = False


TIMED_OUT = (("step_timed_out", "book_courier", 1), ("step_retry_scheduled", "book_courier", 1))
SCENARIOS = [
    Scenario("normal", 0.0, "order", "cust-ok", "SKU-BOOK", "", "completed"),
    Scenario(
        "flaky notification",
        0.1,
        "order",
        "cust-ok",
        "SKU-LAMP",
        "flaky-",
        "completed",
        shows=(("step_retry_scheduled", "notify_customer", 1),),
    ),
    Scenario(
        "courier times out", 0.1, "order_express", "cust-ok", "SKU-LAMP", "", "completed", TIMED_OUT
    ),
    Scenario(
        "courier times out, card declined",
        0.05,
        "order_express",
        "cust-declined",
        "SKU-BOOK",
        "",
        "compensated",
        (*TIMED_OUT, ("step_compensated", "book_courier", None)),
    ),
    Scenario("card declined", 0.1, "order", "cust-declined", "SKU-BOOK", "", "compensated"),
    Scenario(
        "out of stock",
        0.1,
        "order",
        "cust-ok",
        "SKU-RARE",
        "",
        "compensated",
        (("step_compensated", "reserve_credit", None),),
    ),
    Scenario(
        "no credit",
        0.1,
        "order",
        "cust-poor",
        "SKU-BOOK",
        "",
        "compensated",
        (("step_compensated", "reserve_stock", None),),
    ),
    Scenario(
        "cancelled mid-flight",
        0.1,
        "order",
        "cust-ok",
        "SKU-LAMP",
        "slow-",
        "cancelled",
        (("saga_cancel_accepted", None, None),),
        cancel=True,
    ),
]


@dataclass(frozen=True)
class Order:
    scenario: Scenario
    key: str
    input: dict[str, Any]

    def start(self) -> tuple[str, StartSaga]:
        return ("start", StartSaga(saga=self.scenario.saga, key=self.key, input=self.input))


def plan(count: int, run_id: str) -> list[Order]:
    normal, *others = SCENARIOS
    picked = [s for s in others for _ in range(max(1, round(count * s.share)))]
    picked += [normal] * (count - len(picked))
    return [Order(s, *order_of(s, f"{run_id}-{i:04d}", i)) for i, s in enumerate(picked)]


class OrderKnobs(Protocol):
    """What `order_of` reads of a scenario (this file's, or the chaos workload's)."""

    @property
    def prefix(self) -> str: ...
    @property
    def customer(self) -> str: ...
    @property
    def sku(self) -> str: ...


def order_of(s: OrderKnobs, number: str, i: int) -> tuple[str, dict[str, Any]]:
    """(key, input) of the `i`th order of a plan, for scenario `s`."""
    order_id = f"{s.prefix}{number}"
    return f"order-{order_id}", {
        "order_id": order_id,
        "customer_id": s.customer,
        "amount": f"{10 + i % 90}.50",
        "items": [{"sku": s.sku, "qty": 1 + i % 3}],
    }


@pytest.fixture
def settings(database_url: str, topology: Topology, amqp_url: str) -> Settings:
    return Settings(database_url=database_url, amqp_url=amqp_url, amqp_prefix=topology.prefix)


@pytest.fixture
def procs(settings: Settings, tmp_path: Path) -> Iterator[Processes]:
    p = Processes(
        env={
            "SAGA_DATABASE_URL": settings.database_url,
            "SAGA_AMQP_URL": settings.amqp_url,
            "SAGA_AMQP_PREFIX": settings.amqp_prefix,
            "SAGA_MODULES": "sagas.order,tests.e2e.express_order",
            "SAGA_LOG_FORMAT": "json",
            "SAGA_TIMER_INTERVAL": "0.1",
            "SAGA_RELAY_INTERVAL": "0.3",
            "SAGA_RELAY_AGE": "2.0",
            # A pool as large as what a process uses at once (6 requests, 6 replies, the
            # sweeps): a connection past the pool is opened and closed per transaction, and
            # that churn costs more than the work on two cores. Four of them, and the shop,
            # stay well inside max_connections. A small prefetch also bounds what a kill
            # hands back to the queues to be delivered again.
            "SAGA_DB_POOL_SIZE": "10",
            "SAGA_PREFETCH": "6",
            "SHOP_DATABASE_URL": settings.database_url,
            "SHOP_SLOW_SECONDS": str(SLOW_SECONDS),
        },
        log_dir=tmp_path,
    )
    yield p
    p.stop_all()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[AsyncEngine]:
    """The test's database: the engine's tables and, in schema `shop`, the shop's."""
    engine = make_engine(database_url, pool_size=3)
    await schema.create(engine)
    await schema.seed(engine, CUSTOMERS, STOCK)
    yield engine
    await engine.dispose()


@pytest.fixture
async def broker(amqp_url: str) -> AsyncIterator[AbstractRobustConnection]:
    """The test's own connection: the spy's exclusive queue goes when it closes."""
    connection = await connect(amqp_url, name="many-orchestrators-test")
    yield connection
    await connection.close()


async def test_four_orchestrators_killed_at_random_run_every_saga_once(
    procs: Processes,
    db: AsyncEngine,
    broker: AbstractRobustConnection,
    settings: Settings,
    topology: Topology,
) -> None:
    began = time.monotonic()
    seed = int(os.environ.get("SAGA_CHAOS_SEED") or random.SystemRandom().randrange(2**31))
    print(f"\nmany orchestrators: chaos seed {seed} (SAGA_CHAOS_SEED={seed} replays it)")
    orders = plan(SAGAS, f"m{time.monotonic_ns() % 10**6}")

    spy = CommandSpy(await open_channel(broker), topology)
    await spy.start()
    courier = Courier(await open_channel(broker), topology)
    await courier.start()
    fleet = Fleet(procs, ORCHESTRATORS, seed)
    fleet.start()
    procs.start_shop(extra_env={"SAGA_PREFETCH": "20", "SAGA_DB_POOL_SIZE": "12"})
    await ready(broker, topology)

    stop = asyncio.Event()
    chaos = asyncio.create_task(fleet.chaos(stop))
    try:
        await feed_and_cancel(settings, db, orders, random.Random(seed))
        await eventually(
            lambda: all_finished(db, len(orders)),
            timeout=120,
            interval=0.5,
            message="every saga finished",
        )
    finally:
        stop.set()
        await chaos
        ran_for = time.monotonic() - began
        await courier.stop()

    # Every command the history dispatched is on the wire before anything is counted.
    await eventually(lambda: outbox_empty(db), timeout=30, message="the outbox emptied")
    await spy.drain()
    states = {s.key: s for s in await PostgresStore(db).find(SagaQuery(limit=SAGAS * 2))}
    history = await read_history(db)
    print(summary(orders, states, history, fleet=fleet, spy=spy, courier=courier))
    print(f"chaos ran {ran_for:.1f}s; test took {time.monotonic() - began:.1f}s")

    assert fleet.crashed == {}, {n: procs.log_tail(n) for n in fleet.crashed}
    assert len(fleet.kills) >= MIN_KILLS, f"only {len(fleet.kills)} kills: the run was too quick"

    # Every saga terminal, with the outcome one execution of it has.
    wrong = {
        o.key: (o.scenario.kind, states[o.key].status.value if o.key in states else "missing")
        for o in orders
        if o.key not in states or states[o.key].status != o.scenario.expect
    }
    assert wrong == {}, histories_of(history, states, list(wrong)[:3])

    # Each transition once; no timer fired twice; no command dispatched twice for an attempt.
    problems = check_history(history, {s.saga_id: s.status.value for s in states.values()})
    assert problems == [], "\n".join(problems[:20]) + "\n" + history_of_problem(history, problems)
    # And the scenarios did what they are there for: timeouts, retries, compensations.
    missing = missing_shows(orders, states, history)
    assert missing == {}, histories_of(history, states, list(missing)[:3])

    # The effects, where they happened: once each, and undone where the saga was undone.
    assert await check_effects(db, states) == []

    # Nothing went to the dead queue: a message held by a process killed ten times is
    # dead-lettered by its quorum queue, and its saga would wait for a timeout.
    dead = await leftovers(await open_channel(broker), topology.name(DEAD_QUEUE))
    assert dead == [], [(m.routing_key, m.headers) for m in dead[:5]]

    # Every dispatched command reached the wire (some more than once: see the summary),
    # and no command that the history does not hold.
    dispatched = {
        str(e.detail["command_id"]) for e in history if e.event in DISPATCHES and e.detail
    }
    assert set(spy.copies) == dispatched


async def ready(broker: AbstractRobustConnection, topology: Topology) -> None:
    """Every orchestrator consumes the requests and replies; the shop its four queues."""
    wanted = {REQUESTS_QUEUE: ORCHESTRATORS, REPLIES_QUEUE: ORCHESTRATORS}
    wanted |= {Topology.command_queue(s): 1 for s in SHOP_SERVICES}

    async def consuming() -> bool:
        for queue, count in wanted.items():
            if await consumer_count(broker, topology.name(queue)) < count:
                return False
        return True

    await eventually(consuming, timeout=60, interval=0.2, message="every process consuming")


async def consumer_count(broker: AbstractRobustConnection, queue: str) -> int:
    # A channel per probe: a passive declare of a queue not declared yet closes its channel.
    channel = await broker.channel()
    try:
        declared = await channel.declare_queue(queue, passive=True)
        return declared.declaration_result.consumer_count or 0
    except Exception:  # not declared yet: the process is still starting
        return 0
    finally:
        if not channel.is_closed:
            await channel.close()


async def feed_and_cancel(
    settings: Settings, db: AsyncEngine, orders: list[Order], rng: random.Random
) -> None:
    """Publish the starts in small batches, keeping at most WINDOW sagas unfinished, and
    cancel each slow order once its stock reservation is in flight (its stall in the shop is
    the window the cancel must land in).

    The machine sets the pace, not the test: 500 starts at once would queue the replies for
    longer than the order saga's 30 s step timeout on two busy cores, and a cancel behind
    hundreds of starts in the requests queue would reach its saga after the stall."""
    starts = [o.start() for o in orders]
    rng.shuffle(starts)
    to_cancel = {o.key for o in orders if o.scenario.cancel}
    sent = 0

    async def all_sent() -> bool:
        nonlocal sent
        ready = await stalled(db, to_cancel)
        if ready:
            reason = "customer changed their mind"
            cancels = [("cancel", CancelSaga(key=k, reason=reason)) for k in sorted(ready)]
            await send_requests(settings, cancels)
            to_cancel.difference_update(ready)
        room = WINDOW - (sent - await finished_count(db))
        if room > 0 and sent < len(starts):
            batch = starts[sent : sent + min(room, BATCH)]
            await send_requests(settings, batch)
            sent += len(batch)
        return sent == len(starts) and not to_cancel

    await eventually(
        all_sent, timeout=180, interval=0.2, message="every start sent, every slow order cancelled"
    )


async def stalled(db: AsyncEngine, keys: set[str]) -> set[str]:
    """Those of the keys whose saga's stock reservation is in flight."""
    i, s = saga_instances.c, saga_steps.c
    async with db.connect() as conn:
        found = await conn.execute(
            sa.select(i.key)
            .join_from(saga_instances, saga_steps, s.saga_id == i.id)
            .where(i.key.in_(sorted(keys)), s.name == "reserve_stock", s.status == "running")
        )
        return set(found.scalars())


async def finished_count(db: AsyncEngine) -> int:
    i = saga_instances.c
    async with db.connect() as conn:
        found = await conn.scalar(sa.select(sa.func.count()).where(i.status.in_(sorted(FINISHED))))
    return found or 0


async def all_finished(db: AsyncEngine, count: int) -> bool:
    return await finished_count(db) == count


async def outbox_empty(db: AsyncEngine) -> bool:
    async with db.connect() as conn:
        return await conn.scalar(sa.select(sa.func.count()).select_from(outbox)) == 0


async def read_history(db: AsyncEngine) -> list[Entry]:
    h = saga_history.c
    async with db.connect() as conn:
        rows = await conn.execute(
            sa.select(h.saga_id, h.seq, h.event, h.step, h.detail).order_by(h.saga_id, h.seq)
        )
        return [Entry(r.saga_id, r.seq, r.event, r.step, r.detail) for r in rows]


def missing_shows(
    orders: list[Order], states: dict[str, Any], history: list[Entry]
) -> dict[str, list[tuple[str, str | None, int | None]]]:
    """key -> what the saga's history lacks of what its scenario exists to show."""
    seen: dict[UUID, set[tuple[str, str | None, int | None]]] = {}
    for e in history:
        seen.setdefault(e.saga_id, set()).update(
            {(e.event, e.step, e.attempt), (e.event, e.step, None)}
        )
    missing = {
        o.key: [s for s in o.scenario.shows if s not in seen.get(states[o.key].saga_id, set())]
        for o in orders
    }
    return {key: lacks for key, lacks in missing.items() if lacks}


def histories_of(history: list[Entry], states: dict[str, Any], keys: list[str]) -> str:
    """The histories of a few sagas, for a failure message."""
    ids = {states[k].saga_id: k for k in keys if k in states}
    return "\n".join(
        f"{ids[e.saga_id]} {e.seq} {e.event} {e.step or ''} {dict(e.detail or {})}"
        for e in history
        if e.saga_id in ids
    )


def history_of_problem(history: list[Entry], problems: list[str]) -> str:
    """The history of the saga the first check_history problem names."""
    return "\n".join(
        f"{e.seq} {e.event} {e.step or ''} {dict(e.detail or {})}"
        for e in history
        if problems[0].startswith(str(e.saga_id))
    )


def summary(
    orders: list[Order],
    states: dict[str, Any],
    history: list[Entry],
    *,
    fleet: Fleet,
    spy: CommandSpy,
    courier: Courier,
) -> str:
    """The run's figures, for whoever runs it with -s."""
    outcomes = Counter(s.status.value for s in states.values())
    events = Counter(e.event for e in history)
    shown = (
        "step_dispatched",
        "compensation_dispatched",
        "step_timed_out",
        "step_retry_scheduled",
        "saga_cancel_accepted",
        "cancel_refused",
        "reply_ignored",
    )
    duplicated = spy.duplicated()
    service = {
        str(e.detail["command_id"]): str(e.detail["command"]).split(".")[0]
        for e in history
        if e.event in DISPATCHES and e.detail
    }
    by_service = Counter(service.get(cid, "?") for cid in duplicated)
    log_dir = fleet.procs.log_dir
    logged = [e for n in fleet.names for e in log_events(log_dir / f"{n}.log")]
    relayed = sum(e.get("count", 0) for e in logged if e["event"] == "outbox_relayed")
    starts_again = sum(e["event"] == "saga_start_duplicate" for e in logged)
    replays = sum(
        e["event"] == "barrier_duplicate_replayed" for e in log_events(log_dir / "shop.log")
    )
    per_member = ", ".join(
        f"{n} {c}" for n, c in sorted(Counter(k.name for k in fleet.kills).items())
    )
    span = fleet.kills[-1].at if fleet.kills else 0.0
    fewest = min((k.alive_after for k in fleet.kills), default="-")
    return "\n".join(
        [
            f"sagas: {len(orders)} in {len(SCENARIOS)} scenarios; outcomes {dict(outcomes)}",
            f"kills: {len(fleet.kills)} SIGKILLs over {span:.0f}s ({per_member}); "
            f"fewest left running {fewest}",
            "history: " + ", ".join(f"{name} {events[name]}" for name in shown),
            f"wire: {sum(spy.copies.values())} publishes of {len(spy.copies)} commands; "
            f"{len(duplicated)} published more than once "
            f"({sum(duplicated.values()) - len(duplicated)} extra copies, by service "
            f"{dict(by_service)}); the courier dropped {courier.dropped} first attempts",
            f"absorbed: shop barrier replays {replays}, duplicate starts {starts_again}, "
            f"outbox rows relayed {relayed}",
        ]
    )


def log_events(path: Path) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    if not path.exists():
        return events
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict) and "event" in event:
                events.append(event)
    return events
