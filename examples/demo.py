"""`saga demo`: the orchestrator and the example shop as real processes, a batch of real orders
through RabbitMQ and PostgreSQL — most complete, some are declined or cannot be served and are
compensated, some are cancelled mid-flight, large ones wait for the fraud desk's review — then
a summary and a check of the shop's data.

The orders are placed, and cancelled, through the shop's order service
(examples/shop/orders.py): each order row and its saga's start (or cancel) are written in one
transaction, and the starter's relay, running in this process, publishes them. The shop's
fraud desk (examples/shop/fraud_desk.py), running in this process too, reviews the orders
above 1000 and sends each order saga its verdict as a signal.

With `--serve` (`serving_plan`) the orchestrator serves the dashboard and the API, and after
the summary the demo prints their address, keeping the orchestrator and the shop's services
running until Ctrl-C (SIGINT or SIGTERM), then stops them and exits 0: a newcomer can look at
every saga the demo ran, and act on them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import statistics
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters import starter
from adapters.http.serve import Bind, HttpSetupError, listen, parse_bind
from adapters.postgres.database import ensure_database, make_engine
from adapters.postgres.migrate import upgrade
from adapters.postgres.store import PostgresStore
from adapters.rabbitmq.connection import connect
from adapters.rabbitmq.topology import Topology
from adapters.settings import Settings
from adapters.text_table import render_table
from examples.processes import Processes
from examples.shop import fraud_desk, schema
from examples.shop.fraud_desk import review_of
from examples.shop.orders import cancel_order, place_order
from examples.shop.verify import check_effects, order_effects
from orchestrator.event_names import HistoryEvent
from orchestrator.ports import HistoryRecord, SagaQuery
from orchestrator.state import SagaState
from sagas.order import REVIEW_ABOVE

CUSTOMERS = {
    "cust-ok": (Decimal("1000000"), True),
    "cust-poor": (Decimal("1.00"), True),
    "cust-declined": (Decimal("1000000"), False),
}
STOCK = {"SKU-BOOK": 1_000_000, "SKU-LAMP": 1_000_000, "SKU-RARE": 0}


@dataclass(frozen=True)
class PlannedOrder:
    kind: str
    key: str
    input: dict[str, Any]
    expect: str
    cancel: bool = False

    @property
    def reviewed(self) -> bool:
        """Whether the order saga waits for the fraud desk's review of this order."""
        return Decimal(str(self.input["amount"])) > REVIEW_ABOVE


@dataclass(frozen=True)
class Scenario:
    kind: str
    share: float  # of all orders; "normal" takes whatever is left
    customer: str
    sku: str
    order_prefix: str  # the shop's knobs ride on the order id (see examples/shop/services.py)
    expect: str
    cancel: bool = False
    amount: str | None = None  # above 1000: the order waits for the fraud desk's review


SCENARIOS = [
    Scenario("normal", 0.5, "cust-ok", "SKU-BOOK", "", "completed"),
    Scenario("flaky notification", 0.1, "cust-ok", "SKU-LAMP", "flaky-", "completed"),
    Scenario("card declined", 0.1, "cust-declined", "SKU-BOOK", "", "compensated"),
    Scenario("out of stock", 0.1, "cust-ok", "SKU-RARE", "", "compensated"),
    Scenario("no credit", 0.1, "cust-poor", "SKU-BOOK", "", "compensated"),
    Scenario("cancelled mid-flight", 0.1, "cust-ok", "SKU-LAMP", "slow-", "cancelled", cancel=True),
    # The fraud desk approves the first kind and rejects the second (its rule: the order id).
    Scenario(
        "large, review approved", 0.05, "cust-ok", "SKU-LAMP", "", "completed", amount="1500.00"
    ),
    Scenario(
        "large, review rejected",
        0.05,
        "cust-ok",
        "SKU-LAMP",
        "suspect-",
        "compensated",
        amount="2400.00",
    ),
]


def plan_orders(count: int, run_id: str, *, reviewed: bool = False) -> list[PlannedOrder]:
    """`count` orders of the scenarios' mix. Orders that wait for the fraud desk's review
    are among them only when `reviewed`: something must review them (the demo runs the
    shop's fraud desk), or they wait a day."""
    orders: list[PlannedOrder] = []
    normal, *others = SCENARIOS
    for scenario in others:
        if scenario.amount is not None and not reviewed:
            continue
        for _ in range(max(1, round(count * scenario.share))):
            orders.append(_order(scenario, run_id, len(orders)))
    while len(orders) < count:
        orders.append(_order(normal, run_id, len(orders)))
    return orders


def _order(scenario: Scenario, run_id: str, i: int) -> PlannedOrder:
    order_id = f"{scenario.order_prefix}{run_id}-{i:04d}"
    return PlannedOrder(
        kind=scenario.kind,
        key=f"order-{order_id}",
        input={
            "order_id": order_id,
            "customer_id": scenario.customer,
            "amount": scenario.amount or f"{10 + i % 90}.50",
            "items": [{"sku": scenario.sku, "qty": 1 + i % 3}],
        },
        expect=scenario.expect,
        cancel=scenario.cancel,
    )


async def wait_for_consumers(settings: Settings, queues: list[str], timeout: float = 30.0) -> None:
    topology = Topology(settings.amqp_prefix)
    connection = await connect(settings.amqp_url)
    deadline = time.monotonic() + timeout
    try:
        for queue in queues:
            while True:
                # A plain channel: a passive declare of a queue not declared yet closes it,
                # which is this probe's expected answer, not something to log as a fault.
                channel = await connection.channel()
                try:
                    declared = await channel.declare_queue(topology.name(queue), passive=True)
                    count = declared.declaration_result.consumer_count
                except Exception:  # not declared yet: the process is still starting
                    count = 0
                finally:
                    if not channel.is_closed:
                        await channel.close()
                if count:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no consumer on {queue} after {timeout}s")
                await asyncio.sleep(0.2)
    finally:
        await connection.close()


def shop_url_for(settings: Settings) -> str:
    """SHOP_DATABASE_URL, as the shop's services read it, or `saga_shop` beside the engine's
    database."""
    return os.environ.get("SHOP_DATABASE_URL") or (
        make_url(settings.database_url)
        .set(database="saga_shop")
        .render_as_string(hide_password=False)
    )


@dataclass(frozen=True)
class Serving:
    """Where `--serve` serves the dashboard, and the read token it needs, if any."""

    bind: Bind
    api_tokens: str  # SAGA_API_TOKENS for the orchestrator
    read_token: str | None  # made for this demo when the API needs tokens

    @property
    def url(self) -> str:
        return f"http://{self.bind}/"


def serving_plan(settings: Settings) -> Serving:
    """SAGA_HTTP_BIND (127.0.0.1:8080 when empty), checked free now. The API needs tokens when
    SAGA_API_TOKENS has some, or the bind is not loopback: the demo then adds a read token of
    its own (`demo-viewer`), to print. Raises HttpSetupError for a bad or taken address."""
    bind = parse_bind(settings.http_bind.strip() or "127.0.0.1:8080")
    try:
        listen(bind).close()  # before any process starts
    except HttpSetupError as exc:
        cause = exc.__cause__
        why = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(exc)
        raise HttpSetupError(
            f"cannot serve the dashboard on {bind}: {why}; set SAGA_HTTP_BIND to a free "
            "host:port, e.g. SAGA_HTTP_BIND=127.0.0.1:8081"
        ) from exc
    tokens = settings.api_tokens.get_secret_value()
    if not tokens and bind.loopback:
        return Serving(bind, "", None)
    read_token = secrets.token_urlsafe(18)
    viewer = f"demo-viewer:read:{read_token}"
    return Serving(bind, f"{tokens},{viewer}" if tokens else viewer, read_token)


async def run_demo(settings: Settings, orders: int = 40, serve: Serving | None = None) -> bool:
    run_id = uuid.uuid4().hex[:6]
    shop_url = shop_url_for(settings)
    print(f"demo {run_id}: preparing databases and broker ...", flush=True)
    await upgrade(settings.database_url)
    await ensure_database(shop_url)
    shop = make_engine(shop_url, pool_size=2)
    engine_db = make_engine(settings.database_url, pool_size=2)
    await schema.create(shop)
    await schema.seed(shop, CUSTOMERS, STOCK)
    log_dir = Path(tempfile.mkdtemp(prefix="saga-demo-"))
    procs = Processes(
        env={
            "SAGA_DATABASE_URL": settings.database_url,
            "SAGA_AMQP_URL": settings.amqp_url,
            "SAGA_AMQP_PREFIX": settings.amqp_prefix,
            "SAGA_LOG_FORMAT": "json",
            # Without --serve the demo ends with its summary: no dashboard to keep, and no
            # port to clash with a `saga run` already serving one on this machine.
            "SAGA_HTTP_BIND": "" if serve is None else str(serve.bind),
            "SAGA_API_TOKENS": settings.api_tokens.get_secret_value()
            if serve is None
            else serve.api_tokens,
            "SHOP_DATABASE_URL": shop_url,
            "SHOP_SLOW_SECONDS": "2.0",
        },
        log_dir=log_dir,
    )
    try:
        procs.start_orchestrator()
        procs.start_shop()
        await wait_for_consumers(
            settings,
            [
                "saga.requests",
                "saga.replies",
                "commands.customers",
                "commands.inventory",
                "commands.payments",
                "commands.notifications",
            ],
        )
        plan = plan_orders(orders, run_id, reviewed=True)
        print(
            f"placing {len(plan)} orders through the shop's order service (each order row and "
            f"its saga's start in one transaction); {sum(o.reviewed for o in plan)} are above "
            f"{REVIEW_ABOVE} and wait for the fraud desk's review ...",
            flush=True,
        )
        started = time.monotonic()
        url, prefix = settings.amqp_url, settings.amqp_prefix
        async with (
            starter.relaying(shop, amqp_url=url, prefix=prefix, table=schema.OUTBOX),
            fraud_desk.running(shop, amqp_url=url, prefix=prefix),
        ):
            for o in plan:
                async with shop.begin() as conn:
                    await place_order(conn, o.input)
            store = PostgresStore(engine_db)
            to_cancel = [o for o in plan if o.cancel]
            await _cancel_mid_flight(shop, store, to_cancel)
            states = await _wait_finished(store, plan, timeout=90.0)
            elapsed = time.monotonic() - started
            ok = _print_summary(plan, states, elapsed)
            ok &= await _print_reviews(shop, store, [o for o in plan if o.reviewed], states)
            ok &= await _show_late_cancel(
                shop, store, next(o for o in plan if o.expect == "completed")
            )
        problems = await check_effects(
            shop, {o.key: states[o.key] for o in plan if o.key in states}
        )
        if problems:
            print("\nshop data check FAILED:")
            for p in problems:
                print(f"  - {p}")
        else:
            print(
                "\nshop data check: every completed order charged once; every undone order "
                "released its credit and stock; 0 double effects."
            )
        print(f"\nprocess logs: {log_dir}")
        if serve is not None:
            ok &= await _serve_until_interrupted(serve, procs)
        return ok and not problems
    finally:
        procs.stop_all()
        await shop.dispose()
        await engine_db.dispose()


async def _serve_until_interrupted(serve: Serving, procs: Processes) -> bool:
    """Print the dashboard's address once it answers, then wait for Ctrl-C (SIGINT) or
    SIGTERM, or for a process to die; False when the dashboard never answered or a process
    died."""
    if not await _answers(serve, timeout=30.0):
        print(f"\nthe dashboard does not answer at {serve.url}: see the orchestrator's log")
        return False
    print(f"\ndashboard: {serve.url}", flush=True)
    print(f"API: {serve.url}docs", flush=True)
    if serve.read_token is not None:
        print(
            f"read token (made for this demo, paste it into the dashboard): {serve.read_token}",
            flush=True,
        )
    print(
        "the orchestrator and the shop's services keep running; Ctrl-C stops them",
        flush=True,
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        while not stop.is_set():
            dead = [name for name in procs.procs if not procs.alive(name)]
            if dead:
                print(f"\n{', '.join(dead)} stopped: see its log; stopping the demo")
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    print("\nstopping the orchestrator and the shop ...", flush=True)
    return True


async def _answers(serve: Serving, timeout: float) -> bool:
    """The orchestrator's HTTP server answers /healthz."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=serve.url, timeout=2.0) as http:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get("/healthz")).status_code == 200:
                    return True
            await asyncio.sleep(0.2)
    return False


async def _cancel_mid_flight(
    shop: AsyncEngine, store: PostgresStore, orders: list[PlannedOrder]
) -> None:
    """Cancel each slow order once its stock reservation is under way (the step stalls
    there), through the order service."""
    pending = {o.key: o for o in orders}
    deadline = time.monotonic() + 30
    while pending and time.monotonic() < deadline:
        for key in list(pending):
            found = await store.find(SagaQuery(key=key, limit=1))
            step = found[0].step("reserve_stock") if found else None
            if step is not None and step.status == "running":
                async with shop.begin() as conn:
                    await cancel_order(
                        conn, str(pending[key].input["order_id"]), "customer changed their mind"
                    )
                del pending[key]
        await asyncio.sleep(0.1)


async def _wait_finished(
    store: PostgresStore, plan: list[PlannedOrder], timeout: float
) -> dict[str, SagaState]:
    deadline = time.monotonic() + timeout
    states: dict[str, SagaState] = {}
    while time.monotonic() < deadline:
        for o in plan:
            if o.key in states and states[o.key].finished:
                continue
            found = await store.find(SagaQuery(key=o.key, limit=1))
            if found:
                states[o.key] = found[0]
        if len(states) == len(plan) and all(s.finished for s in states.values()):
            break
        await asyncio.sleep(0.2)
    return states


def _print_summary(plan: list[PlannedOrder], states: dict[str, SagaState], elapsed: float) -> bool:
    rows = []
    all_ok = True
    for scenario in SCENARIOS:
        kind = scenario.kind
        group = [o for o in plan if o.kind == kind]
        if not group:
            continue
        got = Counter(states[o.key].status.value if o.key in states else "missing" for o in group)
        expect = group[0].expect
        ok = got == Counter({expect: len(group)})
        all_ok &= ok
        durations = [
            (states[o.key].updated_at - states[o.key].created_at).total_seconds() * 1000
            for o in group
            if o.key in states
        ]
        rows.append(
            [
                kind,
                str(len(group)),
                expect,
                ", ".join(f"{k} {v}" for k, v in sorted(got.items())),
                f"{statistics.median(durations):.0f}" if durations else "-",
                f"{max(durations):.0f}" if durations else "-",
                "ok" if ok else "UNEXPECTED",
            ]
        )
    print()
    print(
        render_table(
            ["scenario", "orders", "expected", "outcome", "p50 ms", "max ms", "check"], rows
        )
    )
    finished = sum(1 for s in states.values() if s.finished)
    verdict = "OK" if all_ok else "UNEXPECTED OUTCOMES"
    print(f"\n{finished}/{len(plan)} sagas finished in {elapsed:.1f}s; overall: {verdict}")
    return all_ok


async def _print_reviews(
    shop: AsyncEngine, store: PostgresStore, plan: list[PlannedOrder], states: dict[str, SagaState]
) -> bool:
    """Per reviewed order: the fraud desk's verdict, how long the saga waited for it, and what
    the shop's tables show: approved and charged, or rejected and its reservations released."""
    rows, all_ok = [], True
    for o in plan:
        state = states.get(o.key)
        order_id = str(o.input["order_id"])
        verdict = await review_of(shop, order_id)
        if state is None or verdict is None:
            rows.append([o.key, str(o.input["amount"]), "no review", "-", "-", "-", "UNEXPECTED"])
            all_ok = False
            continue
        waited = _waited(await store.history(state.saga_id))
        charged, released = await order_effects(shop, state.saga_id)
        if verdict.approved:
            shop_says = f"charged {charged}" if charged is not None else "not charged"
            ok = state.status == "completed" and charged is not None
        else:
            shop_says = "reservations released" if released else "reservations HELD"
            ok = state.status == "compensated" and released and charged is None
        all_ok &= ok
        rows.append(
            [
                o.key,
                str(o.input["amount"]),
                f"{'approved' if verdict.approved else 'rejected'} by {verdict.reviewer}",
                waited,
                state.status.value,
                shop_says,
                "ok" if ok else "UNEXPECTED",
            ]
        )
    print("\nfraud review (the saga waits for the desk's signal before charging):")
    print(
        render_table(
            ["order", "amount", "review", "saga waited", "outcome", "shop data", "check"], rows
        )
    )
    return all_ok


def _waited(history: list[HistoryRecord]) -> str:
    """How long the saga's review step waited for the verdict; none when the verdict came
    before the saga reached it (held for it)."""
    for h in history:
        if h.event == HistoryEvent.WAIT_FINISHED and h.detail is not None:
            return "0 s: came first" if h.detail.get("held") else f"{h.detail['seconds']:.1f} s"
    return "-"


async def _show_late_cancel(shop: AsyncEngine, store: PostgresStore, order: PlannedOrder) -> bool:
    """A cancel for a completed order (past its pivot) is refused, and says why."""
    async with shop.begin() as conn:
        await cancel_order(conn, str(order.input["order_id"]), "too late")
    saga = (await store.find(SagaQuery(key=order.key, limit=1)))[0]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        refusals = [
            h for h in await store.history(saga.saga_id) if h.event == HistoryEvent.CANCEL_REFUSED
        ]
        if refusals:
            why = (refusals[0].detail or {}).get("why")
            print(f"\ncancel of {order.key} after its pivot: refused ({why})")
            return True
        await asyncio.sleep(0.1)
    print(f"\ncancel of {order.key} after its pivot: NOT refused within 10s")
    return False
