"""The chaos harness's cluster profile: order sagas through a three-node RabbitMQ cluster of
the harness's own, reached through SAGA_AMQP_URL's list of the nodes, while the node leading
the busiest quorum queues is SIGKILLed, boots and rejoins, and then another node is. Every
invariant must hold (tests/chaos/invariants.py): 0 lost, 0 double effects, every saga
terminal, nothing dead-lettered, the outbox drained.

SAGA_CHAOS_SEED replays a run's schedule and workload; run with -s to see the table. About
2-3 minutes: three nodes and the engine on two cores."""

from __future__ import annotations

import os
import random
import shutil

import pytest

from tests.chaos.harness import run
from tests.chaos.profiles import CLUSTER
from tests.chaos.servers import PG_BIN, RABBIT_BIN

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(480),
    pytest.mark.skipif(
        not (PG_BIN / "initdb").exists() or not (RABBIT_BIN / "rabbitmq-server").exists(),
        reason="needs PostgreSQL's and RabbitMQ's server binaries to run servers of its own",
    ),
]


async def test_losing_rabbitmq_nodes_one_after_the_other_keeps_every_invariant() -> None:
    assert os.geteuid() != 0 or shutil.which("runuser"), "as root, initdb needs runuser"
    seed = int(os.environ.get("SAGA_CHAOS_SEED") or random.SystemRandom().randrange(2**31))
    print(f"\nchaos cluster: seed {seed} (SAGA_CHAOS_SEED={seed} replays it)")
    result = await run(CLUSTER, seed)
    print(result.text)
    print("\n".join(result.notes))
    problems = result.verdict.problems()
    assert problems == [], f"seed {seed}, work directory {result.workdir}:\n" + "\n".join(
        problems[:30]
    )
    # Both nodes were killed (a fault that could not be injected is in `skipped`), each after
    # checking that every quorum queue had a replica on all three nodes, and they differ.
    assert result.skipped == [], result.skipped
    kills = [r.detail for r in result.records if r.kind == "node kill -9"]
    assert len(kills) == 2 and all("every queue on 3 nodes" in k for k in kills), kills
    assert kills[0].split()[0] != kills[1].split()[0], kills
