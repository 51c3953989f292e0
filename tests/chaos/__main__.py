"""`python -m tests.chaos --profile short|long [--seed N] [--keep] [--plant BUG]`: one chaos
run, its table, and exit status 1 when an invariant failed (the seed is printed first, to
replay the schedule)."""

from __future__ import annotations

import argparse
import random
import sys

from adapters import eventloop
from adapters.logging import configure_logging
from tests.chaos.harness import Result, run
from tests.chaos.plants import PLANTS
from tests.chaos.profiles import PROFILES


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="short")
    parser.add_argument("--seed", type=int, help="replay a run's fault schedule and workload")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--plant",
        action="append",
        default=[],
        choices=sorted(PLANTS),
        help="plant a bug the verdict must catch (repeatable; tests/chaos/plants.py)",
    )
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    profile = PROFILES[args.profile]
    # The harness's own log lines stay quiet: the relay's consumers log every message it
    # drops on purpose as a failed handler, and what matters is in the table. The processes
    # log to files in the work directory (--keep keeps it).
    configure_logging("console", "critical")
    print(f"chaos {profile.name}: seed {seed} (--seed {seed} replays it)", flush=True)
    result = eventloop.run(run(profile, seed, keep=args.keep, plant=frozenset(args.plant)))
    report(result)
    return 0 if result.ok else 1


def report(result: Result) -> None:
    print(result.text)
    for note in result.notes:
        print(note)
    problems = result.verdict.problems()
    if problems:
        print(f"\nFAILED: {len(problems)} invariant violation(s) (seed {result.seed}):")
        print("\n".join(problems[:50]))
        print(f"work directory kept: {result.workdir}")
    else:
        print(f"\nPASSED (seed {result.seed}, {result.seconds:.0f} s)")


if __name__ == "__main__":
    sys.exit(main())
