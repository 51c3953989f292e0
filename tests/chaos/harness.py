"""One chaos run: its own PostgreSQL and RabbitMQ, TCP proxies in front of them, the relay
between orchestrators and participants, `saga run` replicas and the shop as real processes,
a steady stream of orders, the seeded fault schedule, then the invariants and the table.

    deployment processes ──▶ proxy ──▶ own PostgreSQL (temp cluster, free port)
                         ──▶ proxy ──▶ own RabbitMQ node  ◀── relay (duplicates, reorders,
                                                              drops) between the prefixes
    harness (feeder, checks) ─────────▶ both servers directly

A profile with `rabbit_nodes` > 1 runs a RabbitMQ cluster of its own instead of one node
(tests/chaos/cluster.py), which everyone, processes and harness, reaches through the list of
its nodes in SAGA_AMQP_URL, not through the proxy: a dead node is left for another.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters.postgres.database import make_engine
from adapters.postgres.migrate import upgrade
from adapters.postgres.store import PostgresStore
from adapters.postgres.tables import outbox, saga_history
from adapters.rabbitmq.connection import connect, open_channel
from adapters.rabbitmq.topology import DEAD_QUEUE, REPLIES_QUEUE, REQUESTS_QUEUE, Topology
from examples.demo import CUSTOMERS, STOCK
from examples.processes import Processes
from examples.shop import schema
from orchestrator.ports import SagaQuery
from orchestrator.state import SagaStatus
from tests.chaos import figures, plants
from tests.chaos.cluster import OwnRabbitCluster
from tests.chaos.excuses import Timed, explain
from tests.chaos.injector import Injector, Record
from tests.chaos.invariants import Verdict, verify
from tests.chaos.profiles import Profile
from tests.chaos.proxy import FaultyProxy
from tests.chaos.relay import DroppingRelay
from tests.chaos.schedule import plan
from tests.chaos.servers import OwnPostgres, OwnRabbit
from tests.chaos.workload import Order, Requests, feed, plan_orders
from tests.e2e.history_check import TERMINAL
from tests.e2e.test_many_orchestrators import (
    consumer_count,
    finished_count,
    outbox_empty,
    read_history,
)
from tests.fixtures.polling import eventually
from tests.fixtures.rabbitmq import leftovers

log = structlog.get_logger(__name__)

SERVICES = ("customers", "inventory", "payments", "notifications")
# How long every saga may take to become terminal once the feeding is over: the order
# saga's step timeout is 30 s, and a lost reply costs one timeout and a retry.
SETTLE_SECONDS = 150.0
# The broker's consumer timeout: a `long-` order's stock reservation takes longer; the shop
# acks a command whose handler runs past DETACH_AFTER_SECONDS, well before it.
CONSUMER_TIMEOUT_MS = 5000
LONG_STEP_SECONDS = 8.0
DETACH_AFTER_SECONDS = 2.0


@dataclass
class Result:
    seed: int
    profile: str
    verdict: Verdict
    text: str
    seconds: float
    workdir: Path
    notes: list[str] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.verdict.problems()


@dataclass
class Deployment:
    """Everything a run starts, and stops again whatever happened."""

    profile: Profile
    seed: int
    workdir: Path
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    upstream: Topology = field(default_factory=lambda: Topology("chaos-o."))
    downstream: Topology = field(default_factory=lambda: Topology("chaos-p."))
    proxies: dict[str, FaultyProxy] = field(default_factory=dict)
    relay: DroppingRelay | None = None
    procs: Processes | None = None
    db: AsyncEngine | None = None
    requests: Requests | None = None

    def __post_init__(self) -> None:
        self.pg = OwnPostgres(self.workdir / "postgres")
        self.cluster = (
            OwnRabbitCluster(
                self.workdir / "rabbitmq",
                self.run_id,
                self.profile.rabbit_nodes,
                consumer_timeout=CONSUMER_TIMEOUT_MS,
            )
            if self.profile.rabbit_nodes > 1
            else None
        )
        self.rabbit = (
            self.cluster.nodes[0]
            if self.cluster is not None
            else OwnRabbit(
                self.workdir / "rabbitmq", node_id=self.run_id, consumer_timeout=CONSUMER_TIMEOUT_MS
            )
        )

    @property
    def broker_url(self) -> str:
        """The harness's own way to the broker: the node, or the list of the cluster's."""
        return self.cluster.url() if self.cluster is not None else self.rabbit.url()

    async def up(self, arms: dict[str, str]) -> tuple[AsyncEngine, Injector]:
        await asyncio.gather(self.pg.start(), (self.cluster or self.rabbit).start())
        await upgrade(self.pg.url("chaos"))
        db = self.db = make_engine(self.pg.url("chaos"), pool_size=3)
        await schema.create(db)
        await schema.seed(db, CUSTOMERS, STOCK)
        self.proxies = {"postgres": FaultyProxy("postgres", self.pg.port)}
        if self.cluster is None:
            self.proxies["rabbitmq"] = FaultyProxy("rabbitmq", self.rabbit.port)
        for proxy in self.proxies.values():
            await proxy.start()
        self.relay = DroppingRelay(
            self.broker_url,
            self.upstream,
            self.downstream,
            SERVICES,
            copies=self.profile.copies,
            seed=self.seed,
            drop_rate=self.profile.drop_rate,
            lose_replies=self.profile.lost_replies,
        )
        await self.relay.start()
        through_proxy = self.pg.url("chaos", port=self.proxies["postgres"].listen_port)
        (self.workdir / "logs").mkdir()
        self.procs = Processes(
            env={
                "SAGA_DATABASE_URL": through_proxy,
                "SAGA_AMQP_URL": (
                    self.broker_url
                    if self.cluster is not None
                    else self.rabbit.url(port=self.proxies["rabbitmq"].listen_port)
                ),
                "SAGA_AMQP_PREFIX": self.upstream.prefix,
                "SAGA_LOG_FORMAT": "json",
                "SAGA_HTTP_BIND": "",
                "SAGA_TIMER_INTERVAL": "0.2",
                "SAGA_RELAY_INTERVAL": "0.5",
                "SAGA_RELAY_AGE": "2.0",
                "SAGA_DB_POOL_SIZE": "8",
                "SAGA_PREFETCH": "50",
                "SHOP_DATABASE_URL": through_proxy,
                "SHOP_SLOW_SECONDS": "3",
                "SHOP_LONG_SECONDS": str(LONG_STEP_SECONDS),
                **(
                    {}
                    if self.profile.max_active is None
                    else {"SAGA_MAX_ACTIVE": str(self.profile.max_active)}
                ),
            },
            log_dir=self.workdir / "logs",
        )
        injector = Injector(
            self.procs,
            self.pg,
            self.rabbit,
            self.proxies,
            orchestrators=[f"orchestrator-{i}" for i in range(self.profile.orchestrators)],
            shops=[f"shop-{i}" for i in range(self.profile.shops)],
            shop_env={
                "SAGA_AMQP_PREFIX": self.downstream.prefix,
                "SAGA_PREFETCH": "20",
                "SAGA_DETACH_AFTER": str(DETACH_AFTER_SECONDS),
            },
            seed=self.seed,
            cluster=self.cluster,
        )
        injector.start_all(arms)
        await _consuming(self.broker_url, self.upstream, self.downstream, self.profile)
        self.requests = Requests(self.broker_url, self.upstream)
        return db, injector

    async def down(self, *, failed: bool) -> None:
        if self.procs is not None:
            if failed:
                self.procs.print_log_tails()
            # SIGKILL: a graceful stop is not under test, and with the servers about to go
            # it would only wait (a process whose broker is gone waits to reconnect).
            for name in list(self.procs.procs):
                self.procs.kill(name)
            self.procs.stop_all()
        if self.requests is not None:
            await self.requests.close()
        if self.relay is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.relay.stop(), 30)
        for proxy in self.proxies.values():
            await proxy.stop()
        if self.db is not None:
            await self.db.dispose()
        await (self.cluster or self.rabbit).stop()
        await self.pg.stop()


async def run(
    profile: Profile, seed: int, keep: bool = False, plant: frozenset[str] = frozenset()
) -> Result:
    """One run of `profile`; `plant` names bugs to plant (tests/chaos/plants.py)."""
    plants.check(plant)
    began_run = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="saga-chaos-"))
    deployment = Deployment(profile, seed, workdir)
    ok = False
    try:
        phases: list[tuple[str, str]] = []

        def phase(name: str, since: float) -> float:
            phases.append((f"phase: {name}", f"{time.monotonic() - since:.1f} s"))
            return time.monotonic()

        mark = time.monotonic()
        orchestrators = [f"orchestrator-{i}" for i in range(profile.orchestrators)]
        db, injector = await deployment.up(plants.arms(orchestrators, plant))
        mark = phase("servers and processes up", mark)
        assert deployment.requests is not None and deployment.relay is not None
        orders = plants.plan(
            plan_orders(profile.sagas, deployment.run_id, profile.random_cancels, seed), plant
        )
        stop = asyncio.Event()
        supervisor = asyncio.create_task(injector.supervise(stop))
        began, began_wall = time.monotonic(), time.time()
        chaos = asyncio.create_task(injector.run(plan(profile, seed), began, stop))
        planted = asyncio.create_task(plants.stop_a_participant(injector, profile.warmup, plant))
        fed = await feed(
            deployment.requests,
            db,
            orders,
            rate=profile.rate,
            max_in_flight=profile.max_in_flight,
            began=began,
            seed=seed,
        )
        await chaos
        await planted
        mark = phase("feeding (faults included)", began)
        await _settle(db, len(orders))
        stop.set()
        await supervisor
        mark = phase("settling", mark)

        verdict = await _judge(deployment, db, injector, orders, plant)
        terminal = await _terminal_times(db)
        phase("checking", mark)
        last_fault = max((r.ended for r in injector.records), default=began_wall)
        extra = [
            ("orchestrators / participant processes", f"{profile.orchestrators} / {profile.shops}"),
            ("offered rate", f"{profile.rate:.0f} starts/s over {fed.feeding_seconds:.0f} s"),
            ("cancels sent", str(len(fed.cancelled))),
            ("starts/cancels published again", str(deployment.requests.resent)),
            (
                "relay: copies / requeued / lost replies",
                f"{profile.copies} / {deployment.relay.dropped} / {len(deployment.relay.lost)}",
            ),
            ("armed fault points fired", str(len(injector.fired))),
            ("processes that exited by themselves", str(len(injector.unexpected))),
            ("faults that could not be injected", str(len(injector.skipped))),
            *phases,
            ("run took", f"{time.monotonic() - began_run:.0f} s"),
        ]
        text = figures.table(
            verdict,
            figures.recoveries(injector.records, terminal, profile.rate),
            terminal_after_last_fault=max(terminal) - last_fault if terminal else None,
            extra=extra,
        )
        text += "\n\n" + figures.timeline(terminal, injector.records, began_wall)
        notes = [
            *(f"{r.kind}: {r.detail}" for r in injector.records if r.kind == "node kill -9"),
            *(f"skipped: {s}" for s in injector.skipped),
            *(
                f"{e.name} exited by itself (rc {e.returncode}):\n{e.log_tail}"
                for e in injector.unexpected
            ),
            *(
                f"outcome of {k}: {v}, {verdict.excused.get(k, 'NOT explained by any fault')}"
                for k, v in list(verdict.unexpected_outcomes.items())[:20]
            ),
        ]
        result = Result(
            seed,
            profile.name,
            verdict,
            text,
            time.monotonic() - began_run,
            workdir,
            notes,
            injector.records,
            injector.skipped,
        )
        ok = result.ok
        return result
    finally:
        await deployment.down(failed=not ok)
        if ok and not keep:
            shutil.rmtree(workdir, ignore_errors=True)


async def _judge(
    deployment: Deployment,
    db: AsyncEngine,
    injector: Injector,
    orders: list[Order],
    plant: frozenset[str],
) -> Verdict:
    """The invariants over the data (tests/chaos/invariants.py), and what the run saw."""
    assert deployment.relay is not None
    states = {s.key: s for s in await PostgresStore(db).find(SagaQuery(limit=len(orders) * 2))}
    if "ledger" in plant:
        completed = [s.saga_id for s in states.values() if s.status == SagaStatus.COMPLETED]
        await plants.double_an_effect(db, completed)
    dead = await _dead_letters(deployment.broker_url, [deployment.upstream, deployment.downstream])
    verdict = await verify(db, orders, states, await read_history(db), dead)
    unexpected_ids = {k: str(states[k].saga_id) for k in verdict.unexpected_outcomes}
    return replace(
        verdict,
        excused=explain(
            verdict.unexpected_outcomes,
            await _timelines(db, unexpected_ids),
            injector.records,
            deployment.relay.lost,
        ),
        exits=[f"{e.name} (rc {e.returncode})" for e in injector.unexpected],
        unfired=injector.unfired,
        not_injected=list(injector.skipped),
        outbox_left=await _outbox_rows(db),
    )


async def _settle(db: AsyncEngine, count: int) -> None:
    """Wait until every saga is terminal and the outbox is empty, or give up after
    SETTLE_SECONDS: what is unfinished then is reported by the checks, not raised here."""

    async def settled() -> bool:
        with contextlib.suppress(Exception):
            return await finished_count(db) >= count
        return False

    with contextlib.suppress(AssertionError):
        await eventually(settled, timeout=SETTLE_SECONDS, interval=0.5, message="settled")
    with contextlib.suppress(AssertionError):
        await eventually(lambda: outbox_empty(db), timeout=20, message="outbox empty")


async def _consuming(
    amqp_url: str, upstream: Topology, downstream: Topology, profile: Profile
) -> None:
    """Every orchestrator consumes requests and replies, a shop each command queue."""
    wanted = {upstream.name(REQUESTS_QUEUE): profile.orchestrators}
    wanted[upstream.name(REPLIES_QUEUE)] = profile.orchestrators
    wanted |= {downstream.name(Topology.command_queue(s)): profile.shops for s in SERVICES}
    connection = await connect(amqp_url, name="chaos-probe")
    try:

        async def consuming() -> bool:
            for queue, count in wanted.items():
                if await consumer_count(connection, queue) < count:
                    return False
            return True

        await eventually(consuming, timeout=90, interval=0.3, message="every process consuming")
    finally:
        await connection.close()


async def _dead_letters(amqp_url: str, topologies: list[Topology]) -> list[str]:
    connection = await connect(amqp_url, name="chaos-dead-letters")
    try:
        channel = await open_channel(connection)
        found = []
        for topology in topologies:
            for message in await leftovers(channel, topology.name(DEAD_QUEUE)):
                headers = message.headers or {}
                reason = headers.get("x-saga-dead-reason", headers.get("x-first-death-reason"))
                found.append(f"{topology.prefix} {message.routing_key}: {reason!r}")
        return found
    finally:
        await connection.close()


async def _timelines(
    db: AsyncEngine, saga_ids: dict[str, str]
) -> dict[str, tuple[str, list[Timed]]]:
    """key -> (saga id, its history with wall-clock times), for the sagas of `saga_ids`."""
    h = saga_history.c
    key_of = {v: k for k, v in saga_ids.items()}
    found: dict[str, tuple[str, list[Timed]]] = {k: (v, []) for k, v in saga_ids.items()}
    if not saga_ids:
        return found
    async with db.connect() as conn:
        rows = await conn.execute(
            sa.select(h.saga_id, h.at, h.event, h.step, h.detail)
            .where(h.saga_id.in_(list(saga_ids.values())))
            .order_by(h.saga_id, h.seq)
        )
        for r in rows:
            attempt = (r.detail or {}).get("attempt")
            found[key_of[str(r.saga_id)]][1].append(
                Timed(
                    r.at.timestamp(), r.event, r.step, attempt if isinstance(attempt, int) else None
                )
            )
    return found


async def _outbox_rows(db: AsyncEngine) -> int:
    async with db.connect() as conn:
        return int(await conn.scalar(sa.select(sa.func.count()).select_from(outbox)) or 0)


async def _terminal_times(db: AsyncEngine) -> list[float]:
    h = saga_history.c
    async with db.connect() as conn:
        rows = await conn.execute(sa.select(h.at).where(h.event.in_(sorted(TERMINAL))))
        return [r.at.timestamp() for r in rows]
