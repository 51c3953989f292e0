"""The seeded fault schedule of a run: what happens when, decided before the run starts, so a
seed replays the same schedule (the processes' timing, of course, differs from run to run).

The outages (broker, database, stalls) get evenly spaced slots with some jitter, so each has
time to be recovered from and measured before the next; kills and short network faults land
anywhere in between, including during an outage."""

from __future__ import annotations

import random
from dataclasses import dataclass

from adapters.faults import REACHES
from tests.chaos.profiles import Profile

# The points each kind of process reaches (adapters/faults.py).
ORCHESTRATOR_POINTS = sorted(REACHES["orchestrator"])
(PARTICIPANT_POINT,) = REACHES["participant"]

OUTAGES = (
    "broker stop_app",
    "broker kill -9",
    "db restart fast",
    "db restart immediate",
    "proxy stall",
    "node kill -9",
)


@dataclass(frozen=True)
class Fault:
    at: float  # seconds after the first start was offered
    kind: str
    down_for: float = 0.0  # killed process / broker down, stall or latency window length
    arm: str | None = None  # SAGA_FAULT of the restarted process
    target: str = ""  # proxy faults: "postgres", "rabbitmq" or "both"
    delay: float = 0.0  # latency windows: added per chunk


def plan(profile: Profile, seed: int) -> list[Fault]:
    rng = random.Random(seed)
    feeding = profile.sagas / profile.rate
    begin, end = profile.warmup, max(profile.warmup + 1.0, feeding - profile.cooldown)
    span = end - begin

    outages = (
        ["broker stop_app"] * profile.broker_stop_app
        + ["broker kill -9"] * profile.broker_kill9
        + ["db restart fast"] * profile.db_fast
        + ["db restart immediate"] * profile.db_immediate
        + ["proxy stall"] * profile.proxy_stalls
        + ["node kill -9"] * profile.node_kills
    )
    rng.shuffle(outages)
    faults: list[Fault] = []
    slot = span / max(1, len(outages))
    for i, kind in enumerate(outages):
        at = begin + (i + 0.5) * slot + rng.uniform(-0.2, 0.2) * slot
        down = rng.uniform(1.0, 3.0)
        if kind == "proxy stall":
            faults.append(Fault(at, kind, down_for=rng.uniform(2.0, 6.0), target=_target(rng)))
        else:
            faults.append(Fault(at, kind, down_for=down))

    def anywhere() -> float:
        return rng.uniform(begin, end)

    # With `arm_first`, the first kill of each kind restarts its process armed: every run of
    # the profile proves an orchestrator point and a participant point fire.
    for i in range(profile.orchestrator_kills):
        arm = None
        if (i == 0 and profile.arm_first) or rng.random() < profile.armed_restarts:
            arm = f"{rng.choice(ORCHESTRATOR_POINTS)}@{rng.randint(3, 40)}"
        at = begin if i == 0 and profile.arm_first else anywhere()
        faults.append(Fault(at, "orchestrator kill", rng.uniform(0.2, 2.0), arm=arm))
    for i in range(profile.participant_kills):
        arm = None
        if (i == 0 and profile.arm_first) or rng.random() < profile.armed_restarts:
            arm = f"{PARTICIPANT_POINT}@{rng.randint(5, 80)}"
        at = begin if i == 0 and profile.arm_first else anywhere()
        faults.append(Fault(at, "participant kill", rng.uniform(0.2, 2.0), arm=arm))
    for _ in range(profile.proxy_resets):
        faults.append(Fault(anywhere(), "proxy reset", target=_target(rng)))
    for _ in range(profile.latency_windows):
        faults.append(
            Fault(
                anywhere(),
                "latency",
                down_for=rng.uniform(3.0, 8.0),
                delay=rng.uniform(0.02, 0.15),
                target=_target(rng),
            )
        )
    return sorted(faults, key=lambda f: f.at)


def _target(rng: random.Random) -> str:
    return rng.choice(["postgres", "rabbitmq", "both"])
