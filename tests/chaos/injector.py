"""Carries out a fault schedule (tests/chaos/schedule.py) on the running deployment, and keeps
the deployment's processes running: a killed process is started again after its downtime
(armed with a named fault point when the schedule says so), a process that died at its fault
point is started again unarmed, and one that exited by itself is started again and reported.

An armed point counts as fired only when its process died of SIGKILL after logging
`fault_point_crash` for it; a scheduled kill never picks an armed process (it waits for the
point to fire), so an armed point that never fires is a finding (`unfired`), not bad luck.

Every fault is recorded with the wall-clock time it began and ended (the database's
timestamps are wall-clock too), for the recovery figures."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass, field

import structlog

from examples.processes import Processes
from tests.chaos.cluster import OwnRabbitCluster
from tests.chaos.proxy import FaultyProxy
from tests.chaos.schedule import Fault
from tests.chaos.servers import OwnPostgres, OwnRabbit

log = structlog.get_logger(__name__)


@dataclass
class Record:
    kind: str
    began: float  # wall clock
    ended: float  # the fault is over: process restarted, server back, network healed
    detail: str = ""


@dataclass
class Exit:
    name: str
    returncode: int | None
    at: float
    log_tail: str


@dataclass
class Injector:
    procs: Processes
    postgres: OwnPostgres
    rabbit: OwnRabbit
    proxies: dict[str, FaultyProxy]
    orchestrators: list[str]
    shops: list[str]
    shop_env: dict[str, str]
    seed: int
    records: list[Record] = field(default_factory=list)
    unexpected: list[Exit] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    fired: list[str] = field(default_factory=list)  # "name point", each armed point that fired
    cluster: OwnRabbitCluster | None = None  # the profile's RabbitMQ cluster, if it has one

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed + 2)
        self._down: set[str] = set()
        self._armed: dict[str, str] = {}
        self._crashes_before: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # One outage of a server at a time: a stop_app landing while the node still boots
        # from a kill -9 cannot reach it, and would be a harness failure, not a finding.
        self._server_busy = {"broker": asyncio.Lock(), "db": asyncio.Lock()}

    # -- processes ------------------------------------------------------------------------
    def start(self, name: str, arm: str | None = None) -> None:
        extra = {"SAGA_FAULT": arm} if arm else {}
        if name in self.shops:
            self.procs.start_shop(name, extra_env={**self.shop_env, **extra})
        else:
            self.procs.start_orchestrator(name, extra_env=extra)
        if arm:
            self._armed[name] = arm
            self._crashes_before[name] = self._crash_lines(name)
        else:
            self._armed.pop(name, None)

    def _crash_lines(self, name: str) -> int:
        """`fault_point_crash` lines in the process's log (it appends across restarts)."""
        path = self.procs.log_dir / f"{name}.log"
        if not path.exists():
            return 0
        return sum(b"fault_point_crash" in line for line in path.read_bytes().splitlines())

    @property
    def unfired(self) -> list[str]:
        """Armed points whose process is still running: they never fired."""
        return [f"{name} armed with SAGA_FAULT={arm}" for name, arm in self._armed.items()]

    def start_all(self, arms: dict[str, str] | None = None) -> None:
        for name in [*self.orchestrators, *self.shops]:
            self.start(name, (arms or {}).get(name))

    async def supervise(self, stop: asyncio.Event) -> None:
        """Restart whatever died without being killed by the schedule, until `stop`."""
        while not stop.is_set():
            for name in [*self.orchestrators, *self.shops]:
                proc = self.procs.procs.get(name)
                if name in self._down or proc is None or proc.poll() is None:
                    continue
                died = time.time()
                arm = self._armed.pop(name, None)
                logged = self._crash_lines(name) > self._crashes_before.pop(name, 0)
                if arm is not None and proc.returncode == -9 and logged:
                    kind = (
                        "orchestrator fault point"
                        if name in self.orchestrators
                        else ("participant fault point")
                    )
                    self.procs.procs.pop(name)
                    self.start(name)
                    self.fired.append(f"{name} {arm}")
                    self.records.append(Record(kind, died, time.time(), f"{name} {arm}"))
                else:
                    tail = self.procs.log_tail(name, 40)
                    self.unexpected.append(Exit(name, proc.returncode, died, tail))
                    log.warning("chaos_unexpected_exit", name=name, rc=proc.returncode)
                    self.procs.procs.pop(name)
                    self.start(name)
            await _wait(stop, 0.25)

    # -- the schedule ---------------------------------------------------------------------
    async def run(self, schedule: list[Fault], began: float, stop: asyncio.Event) -> None:
        """Inject each fault at its time (seconds after monotonic `began`); return once all
        are over. Each runs in a task of its own: a kill lands on time during an outage."""
        for fault in schedule:
            if await _wait(stop, began + fault.at - time.monotonic()):
                break
            task = asyncio.create_task(self._inject(fault))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        await asyncio.gather(*list(self._tasks))

    async def _inject(self, fault: Fault) -> None:
        began = time.time()
        detail = ""
        kind = fault.kind
        try:
            if kind in ("orchestrator kill", "participant kill"):
                names = self.orchestrators if kind == "orchestrator kill" else self.shops
                alive = await self._running(names)
                if not alive:
                    self.skipped.append(f"{kind} at {fault.at:.1f}s: none unarmed for 30 s")
                    return
                began = time.time()
                victim = self._rng.choice(alive)
                self._down.add(victim)
                self.procs.kill(victim)
                await asyncio.sleep(fault.down_for)  # the schedule: how long it stays dead
                self.start(victim, fault.arm)
                self._down.discard(victim)
                detail = f"{victim} down {fault.down_for:.1f}s" + (
                    f", restarted with SAGA_FAULT={fault.arm}" if fault.arm else ""
                )
            elif kind == "node kill -9":
                began, detail = await self._kill_node(fault)  # began: after any wait its turn
            elif kind.startswith(("broker ", "db restart")):
                began, detail = await self._outage(fault)
            elif kind == "proxy reset":
                count = sum(p.reset_all() for p in self._targets(fault.target))
                detail = f"{fault.target}: {count} connections reset"
            elif kind == "proxy stall":
                counts = await asyncio.gather(
                    *(p.stall(fault.down_for) for p in self._targets(fault.target))
                )
                detail = f"{fault.target}: {fault.down_for:.1f}s, then {sum(counts)} reset"
            elif kind == "latency":
                targets = self._targets(fault.target)
                for p in targets:
                    p.delay = fault.delay
                await asyncio.sleep(fault.down_for)  # the schedule: the window's length
                for p in targets:
                    p.delay = 0.0
                detail = f"{fault.target}: +{fault.delay * 1000:.0f} ms per chunk"
                detail += f" for {fault.down_for:.1f}s"
            else:
                raise ValueError(f"unknown fault {kind}")
        except Exception as exc:
            # A fault that could not be injected is a harness failure, reported, not hidden.
            log.exception("chaos_fault_failed", kind=kind)
            self.skipped.append(f"{kind} at {fault.at:.1f}s failed: {exc!r}"[:300])
            return
        self.records.append(Record(kind, began, time.time(), detail))
        log.info("chaos_fault", kind=kind, detail=detail)

    async def _outage(self, fault: Fault) -> tuple[float, str]:
        """A server down and back; when it began (once the server's last outage was over)
        and what to say of it."""
        kind = fault.kind
        async with self._server_busy["db" if kind.startswith("db ") else "broker"]:
            began = time.time()
            if kind == "broker stop_app":
                await self.rabbit.stop_app()
                await asyncio.sleep(fault.down_for)  # the schedule: the broker's downtime
                await self.rabbit.start_app()
                return began, f"down {time.time() - began:.1f}s"
            if kind == "broker kill -9":
                await self.rabbit.kill9_and_start(fault.down_for)
                return began, f"down {time.time() - began:.1f}s (boot included)"
            await self.postgres.restart(kind.rsplit(" ", 1)[1])
            return began, f"down {time.time() - began:.1f}s"

    async def _kill_node(self, fault: Fault) -> tuple[float, str]:
        if self.cluster is None:
            raise ValueError("node kill -9 needs a cluster: Profile.rabbit_nodes > 1")
        return await self.cluster.kill_busiest_leader(fault.down_for)

    async def _running(self, names: list[str], patience: float = 30.0) -> list[str]:
        """The members of `names` running now and not armed; if none (all down after earlier
        kills, or armed), those once one is back, so a kill is late rather than skipped."""
        deadline = time.monotonic() + patience
        while True:
            alive = [
                n
                for n in names
                if n not in self._down and n not in self._armed and self.procs.alive(n)
            ]
            if alive or time.monotonic() > deadline:
                return alive
            await asyncio.sleep(0.1)  # poll: the restart is another task's

    def _targets(self, target: str) -> list[FaultyProxy]:
        return list(self.proxies.values()) if target == "both" else [self.proxies[target]]


async def _wait(stop: asyncio.Event, seconds: float) -> bool:
    """Whether `stop` was set within `seconds`."""
    if seconds > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()
