"""Exactly-once effects under everything at-least-once delivery does, on the real PostgreSQL and
RabbitMQ with real processes: every start, command, reply and cancel is delivered three times,
replies are reordered, and the shop is killed (SIGKILL) between a handler's commit and its
reply, again and again, over 200 order sagas of every outcome. The shop's balances, stock and
ledger must end exactly as one execution of each saga would leave them.

The orchestrator and the shop run under two broker prefixes with the chaos relay
(tests/e2e/chaos.py) between them, so every command and reply crosses it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import random
import signal
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters.postgres.database import make_engine
from adapters.postgres.store import PostgresStore
from adapters.postgres.tables import saga_history
from adapters.rabbitmq.client import send_requests
from adapters.rabbitmq.topology import Topology
from adapters.settings import Settings
from examples.demo import CUSTOMERS, STOCK, PlannedOrder, plan_orders, wait_for_consumers
from examples.processes import Processes
from examples.shop import schema
from examples.shop.verify import check_effects
from orchestrator.messages import CancelSaga, StartSaga
from orchestrator.ports import SagaQuery
from orchestrator.state import SagaState, StepStatus
from tests.e2e.chaos import ChaosRelay
from tests.fixtures.fleet import FLEET
from tests.fixtures.polling import eventually
from tests.fixtures.rabbitmq import MakeTopology

pytestmark = [pytest.mark.e2e, FLEET, pytest.mark.timeout(240)]

SERVICES = ("customers", "inventory", "payments", "notifications")
COPIES = 3
SAGAS = 200
POINT = "after_handler_before_reply"
# The shop's lives: each armed one dies at its Nth command; the last one is left to finish.
KILL_AT = (40, 150, 300)


@dataclass
class Life:
    name: str
    kill_at: int | None
    returncode: int | None = None

    def env(self, prefix: str) -> dict[str, str]:
        env = {"SAGA_AMQP_PREFIX": prefix}
        if self.kill_at is not None:
            env["SAGA_FAULT"] = f"{POINT}@{self.kill_at}"
        return env


@pytest.fixture
async def relay(amqp_url: str, make_topology: MakeTopology) -> AsyncIterator[ChaosRelay]:
    # The orchestrator's prefix upstream, the shop's downstream.
    chaos = ChaosRelay(amqp_url, make_topology(), make_topology(), SERVICES, copies=COPIES)
    await chaos.start()
    yield chaos
    await chaos.stop()


@pytest.fixture
def procs(relay: ChaosRelay, database_url: str, tmp_path: Path) -> Iterator[Processes]:
    # Depends on the relay, so the processes stop before it does.
    p = Processes(
        env={
            "SAGA_DATABASE_URL": database_url,
            "SAGA_AMQP_URL": relay.amqp_url,
            "SAGA_AMQP_PREFIX": relay.upstream.prefix,
            "SAGA_LOG_FORMAT": "json",
            "SAGA_TIMER_INTERVAL": "0.1",
            "SAGA_RELAY_INTERVAL": "0.3",
            "SAGA_RELAY_AGE": "0.5",
            "SHOP_DATABASE_URL": database_url,
            # The stalled step a cancel must catch in flight.
            "SHOP_SLOW_SECONDS": "5",
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


async def test_tripled_messages_reordered_replies_and_participant_kills_apply_each_effect_once(
    relay: ChaosRelay, procs: Processes, db: AsyncEngine
) -> None:
    began = time.monotonic()
    plan = plan_orders(SAGAS, f"x{time.monotonic_ns() % 10**6}")
    lives = [Life(f"shop-{i}", n) for i, n in enumerate(KILL_AT)] + [Life("shop-last", None)]

    states = await run_under_chaos(relay, procs, PostgresStore(db), plan, lives)

    # Every saga terminal, with the outcome one execution of it has.
    wrong = {o.key: states[o.key].status.value for o in plan if states[o.key].status != o.expect}
    assert wrong == {}, procs.log_tail("orchestrator")
    # One effect per completed step; every undone order's effects compensated.
    assert await check_effects(db, states) == []
    # Balances, stock and the ledger exactly as one execution of each saga leaves them.
    assert await shop_totals(db) == expected_totals(plan)

    figures = await chaos_was_real(relay, procs, db, lives)
    outcomes = dict(Counter(s.status.value for s in states.values()))
    # The run's figures, for whoever runs it with -s.
    print(
        f"\nexactly-once: {len(plan)} sagas {outcomes}; {figures}; {time.monotonic() - began:.1f}s"
    )


async def run_under_chaos(
    relay: ChaosRelay,
    procs: Processes,
    store: PostgresStore,
    plan: list[PlannedOrder],
    lives: list[Life],
) -> dict[str, SagaState]:
    """Start the processes, send every start three times, cancel the slow orders mid-flight
    (three times each), keep restarting the shop as it dies; the sagas once all finished."""
    upstream = Settings(amqp_url=relay.amqp_url, amqp_prefix=relay.upstream.prefix)
    downstream = Settings(amqp_url=relay.amqp_url, amqp_prefix=relay.downstream.prefix)
    shop = Shop(procs, downstream.amqp_prefix, lives)
    procs.start_orchestrator()
    shop.start()
    await wait_for_consumers(upstream, ["saga.requests", "saga.replies"])
    await wait_for_consumers(downstream, [Topology.command_queue(s) for s in SERVICES])

    copies = [("start", StartSaga(saga="order", key=o.key, input=o.input)) for o in plan] * COPIES
    later = {o.key for o in plan if o.cancel}
    first = [c for c in copies if c[1].key not in later]
    last = [c for c in copies if c[1].key in later]
    random.shuffle(first)
    random.shuffle(last)
    # The orders to cancel start last: starts and cancels share one queue (so a cancel never
    # overtakes its start), and a cancel queued behind 600 starts could reach its saga only
    # after the stalled step is done and the pivot dispatched, when it is refused.
    await send_requests(upstream, first + last)
    await cancel_mid_flight(upstream, store, [o for o in plan if o.cancel], shop)

    async def unarmed() -> bool:
        return not shop.restart_if_dead()

    await eventually(unarmed, timeout=60, interval=0.02, message=f"the shop to die at {POINT}")
    return await eventually(
        lambda: all_finished(store, plan), timeout=150, interval=0.5, message="every saga finished"
    )


@dataclass
class Shop:
    """The shop's successive lives: each armed one dies at the fault point, the next one is
    started in its place, and the last, unarmed one finishes the work."""

    procs: Processes
    prefix: str
    lives: list[Life]

    def start(self) -> None:
        self.procs.start_shop(self.lives[0].name, extra_env=self.lives[0].env(self.prefix))

    def restart_if_dead(self) -> bool:
        """Start the next life if the current one died; False once the last one runs."""
        for life, successor in itertools.pairwise(self.lives):
            if life.returncode is not None:
                continue
            if self.procs.alive(life.name):
                return True
            life.returncode = self.procs.procs.pop(life.name).returncode
            self.procs.start_shop(successor.name, extra_env=successor.env(self.prefix))
            return successor.kill_at is not None
        return False


async def cancel_mid_flight(
    settings: Settings, store: PostgresStore, orders: list[PlannedOrder], shop: Shop
) -> None:
    """Cancel each slow order (three times) once its stalled stock reservation is in flight,
    restarting the shop meanwhile whenever it died."""
    pending = {o.key for o in orders}

    async def all_sent() -> bool:
        shop.restart_if_dead()
        sagas = await store.find(SagaQuery(limit=SAGAS * 2))
        ready = [s.key for s in sagas if s.key in pending and stalled(s)]
        if ready:
            reason = "customer changed their mind"
            cancels = [("cancel", CancelSaga(key=key, reason=reason)) for key in ready] * COPIES
            await send_requests(settings, cancels)
            pending.difference_update(ready)
        return not pending

    await eventually(all_sent, timeout=60, interval=0.1, message="every slow order cancelled")


def stalled(saga: SagaState) -> bool:
    step = saga.step("reserve_stock")
    return step is not None and step.status == StepStatus.RUNNING


async def all_finished(store: PostgresStore, plan: list[PlannedOrder]) -> dict[str, SagaState]:
    sagas = {s.key: s for s in await store.find(SagaQuery(limit=SAGAS * 2))}
    assert set(sagas) <= {o.key for o in plan}
    if len(sagas) < len(plan) or not all(s.finished for s in sagas.values()):
        return {}
    return sagas


@dataclass(frozen=True)
class Totals:
    credit: dict[str, Decimal]
    stock: dict[str, int]
    charged: dict[str, tuple[Decimal, int]]  # customer -> (sum, payments)
    credit_held: dict[str, Decimal]  # customer -> credit reserved and not released
    stock_reservations_held: int
    notifications: int


def expected_totals(plan: list[PlannedOrder]) -> Totals:
    """What one execution of each saga leaves: the seed minus the completed orders."""
    credit = {customer: amount for customer, (amount, _) in CUSTOMERS.items()}
    stock = dict(STOCK)
    charged: dict[str, tuple[Decimal, int]] = {}
    completed = [o for o in plan if o.expect == "completed"]
    for o in completed:
        customer, amount = o.input["customer_id"], Decimal(o.input["amount"])
        credit[customer] -= amount
        total, count = charged.get(customer, (Decimal(0), 0))
        charged[customer] = (total + amount, count + 1)
        for item in o.input["items"]:
            stock[item["sku"]] -= item["qty"]
    return Totals(
        credit=credit,
        stock=stock,
        charged=charged,
        credit_held={customer: total for customer, (total, _) in charged.items()},
        stock_reservations_held=len(completed),
        notifications=len(completed),
    )


async def shop_totals(db: AsyncEngine) -> Totals:
    c, st, p = schema.customers, schema.stock, schema.payments
    cr, sr = schema.credit_reservations, schema.stock_reservations
    count = sa.func.count()
    async with db.connect() as conn:
        credit = {r.id: r.credit for r in await conn.execute(sa.select(c.c.id, c.c.credit))}
        stock = {r.sku: r.qty for r in await conn.execute(sa.select(st.c.sku, st.c.qty))}
        charged = {
            r.customer_id: (r.total, r.n)
            for r in await conn.execute(
                sa.select(
                    p.c.customer_id, sa.func.sum(p.c.amount).label("total"), count.label("n")
                ).group_by(p.c.customer_id)
            )
        }
        credit_held = {
            r.customer_id: r.total
            for r in await conn.execute(
                sa.select(cr.c.customer_id, sa.func.sum(cr.c.amount).label("total"))
                .where(cr.c.released_at.is_(None))
                .group_by(cr.c.customer_id)
            )
        }
        stock_held = await conn.scalar(
            sa.select(count).select_from(sr).where(sr.c.released_at.is_(None))
        )
        notified = await conn.scalar(sa.select(count).select_from(schema.notifications))
    return Totals(credit, stock, charged, credit_held, stock_held or 0, notified or 0)


async def chaos_was_real(
    relay: ChaosRelay, procs: Processes, db: AsyncEngine, lives: list[Life]
) -> str:
    """Check that the duplicates, the reordering and the kills happened; the figures."""
    counts = relay.counts
    assert counts.commands_in > 0
    assert relay.problems[:10] == []  # every command and reply as docs/protocol/ says
    assert counts.commands_out == COPIES * counts.commands_in
    assert counts.replies_out == COPIES * counts.replies_in
    assert counts.mixed_batches > 0

    orchestrator_log = log_events(procs.log_dir / "orchestrator.log")
    duplicate_starts = sum(e["event"] == "saga_start_duplicate" for e in orchestrator_log)
    assert duplicate_starts >= (COPIES - 1) * SAGAS
    ignored = await ignored_replies(db)
    assert ignored["duplicate"] > 0, ignored

    shop_logs = {life.name: log_events(procs.log_dir / f"{life.name}.log") for life in lives}
    replayed = [
        e
        for events in shop_logs.values()
        for e in events
        if e["event"] == "barrier_duplicate_replayed"
    ]
    assert replayed

    # Each armed life died at the fault point, a committed effect's reply unsent; the command
    # came back to a later life and was answered from the barrier, not run again.
    armed = [life for life in lives if life.kill_at is not None]
    assert [life.returncode for life in armed] == [-signal.SIGKILL] * len(armed)
    killed = [crash_command(shop_logs[life.name], life) for life in armed]
    committed = await committed_commands(db, killed)
    assert committed, f"no kill came after a committed effect: {killed}"
    replayed_redelivered = {str(e.get("command_id")) for e in replayed if e.get("redelivered")}
    assert set(committed) <= replayed_redelivered

    return (
        f"{len(armed)} shop kills at {POINT} ({len(committed)} right after a committed effect); "
        f"relay {counts}; duplicate starts {duplicate_starts}; ignored replies {dict(ignored)}; "
        f"barrier replays {len(replayed)} ({len(replayed_redelivered)} redelivered commands)"
    )


async def ignored_replies(db: AsyncEngine) -> Counter[str]:
    """reason -> how many replies the orchestrator recorded as ignored."""
    h = saga_history
    reason = h.c.detail["reason"].as_string()
    async with db.connect() as conn:
        rows = await conn.execute(
            sa.select(reason.label("reason"), sa.func.count().label("n"))
            .where(h.c.event == "reply_ignored")
            .group_by(reason)
        )
        return Counter({str(r.reason): int(r.n) for r in rows})


def log_events(path: Path) -> list[dict[str, Any]]:
    events = []
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict) and "event" in event:
                events.append(event)
    return events


def crash_command(events: list[dict[str, Any]], life: Life) -> str:
    """The command whose reply the life died before sending (its fault point names it)."""
    crashes = [e for e in events if e["event"] == "fault_point_crash"]
    assert [e.get("point") for e in crashes] == [POINT], f"{life.name}: {crashes}"
    return str(crashes[0]["command_id"])


async def committed_commands(db: AsyncEngine, command_ids: list[str]) -> list[str]:
    """Those of the commands whose effect (or stored answer) the barrier holds, committed."""
    t = schema.barrier(db).table
    async with db.connect() as conn:
        rows = await conn.execute(
            sa.select(t.c.command_id).where(
                t.c.command_id.in_([uuid.UUID(c) for c in command_ids]),
                t.c.written_by == t.c.kind,
                t.c.outcome.is_not(None),
            )
        )
        found = {str(c) for c in rows.scalars()}
    return [c for c in command_ids if c in found]
