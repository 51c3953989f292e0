"""The chaos harness's short profile in CI: a few hundred order sagas on the harness's own
PostgreSQL and RabbitMQ while orchestrators and participants are SIGKILLed (the first of each
restarted armed with a named fault point, which must fire), the broker is stopped and started
and killed and rebooted, the database restarts in immediate mode, connections are reset,
stalled and slowed through the proxy, and the relay duplicates, reorders, drops and loses
messages; hung handlers and steps longer than the broker's consumer timeout ride along. Every
invariant must hold (tests/chaos/invariants.py), no process may exit by itself, and every
unplanned outcome needs a fault that explains it.

SAGA_CHAOS_SEED replays a run's schedule and workload; run with -s to see the table."""

from __future__ import annotations

import pytest

from tests.chaos.ci_run import passing_run
from tests.chaos.profiles import SHORT
from tests.chaos.schedule import plan
from tests.fixtures.fleet import FLEET

pytestmark = [pytest.mark.e2e, FLEET, pytest.mark.timeout(480)]


async def test_short_chaos_profile_keeps_every_invariant() -> None:
    seed, result = await passing_run(SHORT)
    # The run did inject what the profile asks for (the verdict fails a fault it could not
    # inject), and both armed points fired: a quiet run proves nothing.
    kinds = {r.kind for r in result.records}
    assert {f.kind for f in plan(SHORT, seed)} <= kinds, kinds
    assert {"orchestrator fault point", "participant fault point"} <= kinds, kinds
