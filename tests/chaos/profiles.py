"""How big a chaos run is and how many faults of each kind it injects.

`short` is the CI profile (a pytest test, well under a minute of chaos on a loaded two-core
machine); `long` is the one whose figures docs/guarantees.md publishes. `overload` injects
no fault: it offers starts well past what the machine carries, with no client-side cap, so
that the engine's own admission control (SAGA_MAX_ACTIVE) is what keeps the run sane;
`overload-unlimited` is the same with admission control off, to show what it prevents.
`proof` is a small run with no fault, for the planted bugs (tests/chaos/plants.py).
`cluster` runs on a three-node RabbitMQ cluster and kills its nodes, one after the other."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Profile:
    name: str
    sagas: int
    rate: float  # starts per second, offered at a steady pace
    # Unfinished sagas at most: the feeder holds back starts beyond it, as a client with
    # backpressure would. Without it, a machine slower than the rate builds a backlog longer
    # than the steps' 30 s timeouts and the run collapses into retries (docs/guarantees.md).
    max_in_flight: int
    orchestrators: int
    shops: int
    # Faults, by kind: how many the schedule holds.
    orchestrator_kills: int
    participant_kills: int
    # Of the killed processes, those restarted with a named fault point armed (they die
    # again by themselves at that point: between commit and publish, and so on).
    armed_restarts: float  # share of restarts
    broker_stop_app: int
    broker_kill9: int
    db_fast: int
    db_immediate: int
    proxy_resets: int
    proxy_stalls: int
    latency_windows: int
    # The relay: copies of every command and reply, requeued ("dropped") share, replies lost.
    copies: int
    drop_rate: float
    lost_replies: int
    # Orders cancelled at a random moment after their start (besides the `slow-` orders,
    # cancelled while their stock reservation is in flight).
    random_cancels: float
    # SAGA_MAX_ACTIVE for the orchestrators: None leaves the default.
    max_active: int | None = None
    # The first kill of each kind restarts its process armed, at the start of the faults.
    arm_first: bool = False

    # Seconds of steady load before the first fault and after the last one.
    warmup: float = 4.0
    cooldown: float = 6.0
    # RabbitMQ nodes: more than one is a cluster (tests/chaos/cluster.py), reached through
    # SAGA_AMQP_URL's list of nodes rather than the proxy; `node_kills` SIGKILLs its nodes.
    rabbit_nodes: int = 1
    node_kills: int = 0


SHORT = Profile(
    name="short",
    sagas=300,
    rate=12.0,
    max_in_flight=200,
    orchestrators=2,
    shops=1,
    orchestrator_kills=3,
    participant_kills=2,
    armed_restarts=0.4,
    broker_stop_app=1,
    broker_kill9=1,
    db_fast=0,
    db_immediate=1,
    proxy_resets=1,
    proxy_stalls=1,
    latency_windows=1,
    copies=2,
    drop_rate=0.02,
    lost_replies=3,
    random_cancels=0.1,
    warmup=3.0,
    cooldown=4.0,
    arm_first=True,
)

LONG = Profile(
    name="long",
    sagas=5000,
    rate=8.0,
    max_in_flight=250,
    orchestrators=3,
    shops=2,
    orchestrator_kills=24,
    participant_kills=8,
    armed_restarts=0.35,
    broker_stop_app=2,
    broker_kill9=2,
    db_fast=2,
    db_immediate=2,
    proxy_resets=6,
    proxy_stalls=3,
    latency_windows=4,
    copies=2,
    drop_rate=0.02,
    lost_replies=12,
    random_cancels=0.1,
    arm_first=True,
)

OVERLOAD = Profile(
    name="overload",
    sagas=2000,
    rate=60.0,
    max_in_flight=1_000_000,  # no client-side backpressure: everything offered is sent
    orchestrators=2,
    shops=1,
    orchestrator_kills=0,
    participant_kills=0,
    armed_restarts=0.0,
    broker_stop_app=0,
    broker_kill9=0,
    db_fast=0,
    db_immediate=0,
    proxy_resets=0,
    proxy_stalls=0,
    latency_windows=0,
    copies=2,
    drop_rate=0.0,
    lost_replies=0,
    random_cancels=0.1,
    max_active=150,
)
OVERLOAD_UNLIMITED = replace(OVERLOAD, name="overload-unlimited", max_active=0)

# No fault at all: the run the planted bugs go into (tests/chaos/plants.py).
PROOF = replace(
    OVERLOAD,
    name="proof",
    sagas=60,
    rate=15.0,
    max_in_flight=200,
    max_active=None,
    warmup=1.0,
    cooldown=1.0,
)

# A three-node RabbitMQ cluster under a steady stream of orders: the node leading the busiest
# queues is killed, booted again and rejoins, then another node is killed (docs/guarantees.md,
# "Node loss"). No other fault, so what the table shows is the cost of losing a node.
CLUSTER = replace(
    OVERLOAD,
    name="cluster",
    sagas=360,
    rate=6.0,
    # Three nodes replicating every message on two cores: fewer unfinished sagas than the
    # other profiles allow, so that a queue never holds more than a step's timeout of work.
    max_in_flight=60,
    max_active=None,
    rabbit_nodes=3,
    node_kills=2,
)

PROFILES = {p.name: p for p in (SHORT, LONG, OVERLOAD, OVERLOAD_UNLIMITED, PROOF, CLUSTER)}
