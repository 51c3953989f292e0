"""Each verdict rule fails a run when its bug is planted (tests/chaos/plants.py): one small
run without faults, with every bug planted at once, must report each of them and nothing else.
The short profile's run (test_chaos_short.py) is the same verdict passing without them."""

from __future__ import annotations

import pytest

from tests.chaos.harness import run
from tests.chaos.plants import PLANTS, UNREACHED
from tests.chaos.profiles import PROOF
from tests.chaos.servers import require_servers
from tests.fixtures.fleet import FLEET

pytestmark = [pytest.mark.e2e, FLEET, pytest.mark.timeout(240)]


async def test_every_planted_bug_fails_the_run() -> None:
    require_servers()
    result = await run(PROOF, seed=7, plant=PLANTS)
    problems = result.verdict.problems()
    print(result.text, *result.notes, sep="\n")

    def found(prefix: str) -> list[str]:
        return [p for p in problems if p.startswith(prefix)]

    assert found("exited by itself: shop-0"), problems
    declined = list(result.verdict.unexpected_outcomes.values())
    assert declined and set(declined) == {"compensated"}, result.verdict.unexpected_outcomes
    assert len(found("outcome other than planned, no fault explains it")) == len(declined)
    assert found("armed fault point never fired: orchestrator-0") == [
        f"armed fault point never fired: orchestrator-0 armed with SAGA_FAULT={UNREACHED}"
    ]
    assert len(found("double effect")) == 1, problems
    planted = ("exited", "outcome other", "armed fault", "double effect")
    assert [p for p in problems if not p.startswith(planted)] == []
