"""The chaos harness's cluster profile: order sagas through a three-node RabbitMQ cluster of
the harness's own, reached through SAGA_AMQP_URL's list of the nodes, while the node leading
the busiest quorum queues is SIGKILLed, boots and rejoins, and then another node is. Every
invariant must hold (tests/chaos/invariants.py): 0 lost, 0 double effects, every saga
terminal, nothing dead-lettered, the outbox drained.

SAGA_CHAOS_SEED replays a run's schedule and workload; run with -s to see the table. About
2-3 minutes: three nodes and the engine on two cores."""

from __future__ import annotations

import pytest

from tests.chaos.ci_run import passing_run
from tests.chaos.profiles import CLUSTER
from tests.fixtures.fleet import FLEET

pytestmark = [pytest.mark.e2e, FLEET, pytest.mark.timeout(480)]


async def test_losing_rabbitmq_nodes_one_after_the_other_keeps_every_invariant() -> None:
    _, result = await passing_run(CLUSTER)
    # Both nodes were killed (a fault that could not be injected is in `skipped`), each after
    # checking that every quorum queue had a replica on all three nodes, and they differ.
    assert result.skipped == [], result.skipped
    kills = [r.detail for r in result.records if r.kind == "node kill -9"]
    assert len(kills) == 2 and all("every queue on 3 nodes" in k for k in kills), kills
    assert kills[0].split()[0] != kills[1].split()[0], kills
