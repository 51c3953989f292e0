"""The cluster profile's faults, without servers: the schedule holds the two node kills and
nothing else, and the victim is the node leading the busiest queues, never the node killed
last."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.cluster import OwnRabbitCluster, QueueInfo
from tests.chaos.profiles import CLUSTER
from tests.chaos.schedule import plan


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_the_cluster_profile_kills_two_nodes_and_does_nothing_else(seed: int) -> None:
    assert [f.kind for f in plan(CLUSTER, seed)] == ["node kill -9", "node kill -9"]


def queue(name: str, leader: str, messages: int) -> QueueInfo:
    return QueueInfo(name, leader, ("a", "b", "c"), messages)


def test_the_victim_leads_the_busiest_queues_and_was_not_killed_last(tmp_path: Path) -> None:
    cluster = OwnRabbitCluster(tmp_path, "t")
    a, b, c = (n.node for n in cluster.nodes)
    queues = [queue("replies", a, 5), queue("requests", b, 40), queue("commands", b, 3)]
    assert cluster._busiest(queues).node == b
    cluster.killed.append(b)
    assert cluster._busiest(queues).node == a
    # Idle queues: the node leading more of them.
    assert cluster._busiest([queue("x", c, 0), queue("y", c, 0), queue("z", a, 0)]).node == c
