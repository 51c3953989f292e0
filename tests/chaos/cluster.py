"""The harness's own three-node RabbitMQ cluster: three `OwnRabbit` nodes on free loopback
ports (AMQP and Erlang distribution each), sharing one Erlang cookie, joined into one cluster
with `rabbitmqctl join_cluster`, so that the engine's quorum queues, declared once the cluster
has formed, get a replica on every node.

The fault it carries out: SIGKILL of the node that leads the busiest queues (most messages,
ready and unacknowledged, in the quorum queues whose Raft leader it is), then its boot, and
the wait until it is back in the cluster and no quorum queue depends on a single node any
more (`rabbitmq-queues check_if_node_is_quorum_critical`): only then may the next node die,
or a queue would lose its majority, which no client could ride through."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from tests.chaos.servers import RABBIT_BIN, OwnRabbit, run
from tests.fixtures.polling import eventually

log = structlog.get_logger(__name__)

# How long a restarted node may take to be a full member again (boot, Mnesia sync, every
# quorum queue's replica caught up), on a loaded two-core machine with three nodes on it.
REJOIN_SECONDS = 180.0


@dataclass(frozen=True)
class QueueInfo:
    name: str
    leader: str
    members: tuple[str, ...]
    messages: int


@dataclass
class OwnRabbitCluster:
    """Nodes `chaos-<id>-0@localhost` ... `-<size-1>@localhost`, each under `root/node-<i>`."""

    root: Path
    cluster_id: str
    size: int = 3
    consumer_timeout: int | None = None  # each node's, as OwnRabbit takes it
    nodes: list[OwnRabbit] = field(init=False)
    killed: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.nodes = [
            OwnRabbit(
                self.root / f"node-{i}",
                node_id=f"{self.cluster_id}-{i}",
                consumer_timeout=self.consumer_timeout,
            )
            for i in range(self.size)
        ]
        # One node outage at a time: a second kill while the first node is still away (or its
        # replicas not yet caught up) would take the quorum queues below their majority.
        self._outage = asyncio.Lock()

    def url(self) -> str:
        """Every node's AMQP URL, comma-separated: SAGA_AMQP_URL's form for a cluster."""
        return ",".join(node.url() for node in self.nodes)

    async def start(self) -> None:
        cookie = secrets.token_hex(20)
        for node in self.nodes:
            home = node.root / "home"
            home.mkdir(parents=True, exist_ok=True)
            path = home / ".erlang.cookie"
            path.write_text(cookie)
            os.chmod(path, 0o400)  # Erlang refuses a cookie others may read
        await asyncio.gather(*(node.start() for node in self.nodes))
        seed, *others = self.nodes
        for node in others:
            await node.stop_app()
            await node.ctl("join_cluster", seed.node)
            await node.start_app()
        await seed.ctl("await_online_nodes", str(self.size), "--timeout", "120")
        log.info("chaos_cluster_formed", nodes=[n.node for n in self.nodes])

    async def stop(self) -> None:
        await asyncio.gather(*(node.stop() for node in self.nodes))

    async def queues(self, via: OwnRabbit | None = None) -> list[QueueInfo]:
        """Every quorum queue with its leader, members and messages (ready and unacked)."""
        ask = via or self._running()[0]
        text = await ask.ctl(
            "list_queues",
            *("--quiet", "--formatter", "json"),
            *("name", "type", "leader", "members", "messages"),
        )
        return [
            QueueInfo(row["name"], row["leader"], tuple(row["members"]), int(row["messages"] or 0))
            for row in json.loads(text)
            if row["type"] == "quorum"
        ]

    async def kill_busiest_leader(self, down_for: float) -> tuple[float, str]:
        """SIGKILL the node leading the queues that hold the most messages (the node killed
        last is spared), boot it `down_for` seconds later, wait until it has rejoined; first
        waits for the outage before it to be over. Returns when the kill came (wall clock)
        and what was done, for the run's record."""
        async with self._outage:
            queues = await self.queues()
            thin = [q.name for q in queues if len(q.members) < self.size]
            if thin:
                raise RuntimeError(f"quorum queues with fewer than {self.size} members: {thin}")
            victim = self._busiest(queues)
            led = [q for q in queues if q.leader == victim.node]
            killed_at, began = time.time(), time.monotonic()
            await victim.kill9_and_start(down_for)
            booted = time.monotonic() - began
            await self._rejoined(victim)
            self.killed.append(victim.node)
            return killed_at, (
                f"{victim.node} (leader of {len(led)} of {len(queues)} queues holding "
                f"{sum(q.messages for q in led)} of {sum(q.messages for q in queues)} "
                f"messages; every queue on {self.size} nodes) down {booted:.1f}s (boot included), "
                f"rejoined after {time.monotonic() - began:.1f}s"
            )

    def _busiest(self, queues: list[QueueInfo]) -> OwnRabbit:
        load: Counter[str] = Counter()
        for queue in queues:
            load[queue.leader] += queue.messages + 1  # +1: an idle leader still leads
        spared = set(self.killed[-1:])
        candidates = [n for n in self.nodes if n.node not in spared] or self.nodes
        return max(candidates, key=lambda n: load[n.node])

    async def _rejoined(self, node: OwnRabbit) -> None:
        others = [n for n in self.nodes if n is not node]

        async def back() -> bool:
            try:
                await others[0].ctl("await_online_nodes", str(self.size), "--timeout", "5")
                # Non-zero while some quorum queue would lose its majority without `node`'s
                # partners: the rejoined replicas have not caught up yet.
                for other in others:
                    await run(
                        [
                            str(RABBIT_BIN / "rabbitmq-queues"),
                            *("-n", other.node, "check_if_node_is_quorum_critical"),
                        ],
                        other.env(),
                    )
            except RuntimeError:
                return False
            return True

        await eventually(back, timeout=REJOIN_SECONDS, interval=1.0, message=f"{node.node} back")

    def _running(self) -> list[OwnRabbit]:
        return [n for n in self.nodes if n.process is not None and n.process.returncode is None]
