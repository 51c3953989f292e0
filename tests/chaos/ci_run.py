"""One chaos run as a pytest test runs it: its servers' programs required (a CI machine
without them fails), the seed from SAGA_CHAOS_SEED or a fresh one, printed to replay it, the
table and the notes printed (`-s` shows them), and every invariant asserted."""

from __future__ import annotations

import os
import random
import shutil

from tests.chaos.harness import Result, run
from tests.chaos.profiles import Profile
from tests.chaos.servers import require_servers


async def passing_run(profile: Profile) -> tuple[int, Result]:
    require_servers()
    assert os.geteuid() != 0 or shutil.which("runuser"), "as root, initdb needs runuser"
    seed = int(os.environ.get("SAGA_CHAOS_SEED") or random.SystemRandom().randrange(2**31))
    print(f"\nchaos {profile.name}: seed {seed} (SAGA_CHAOS_SEED={seed} replays it)")
    result = await run(profile, seed)
    print(result.text)
    print("\n".join(result.notes))
    problems = result.verdict.problems()
    assert problems == [], f"seed {seed}, work directory {result.workdir}:\n" + "\n".join(
        problems[:30]
    )
    return seed, result
