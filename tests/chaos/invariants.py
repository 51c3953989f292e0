"""What must hold at the end of a chaos run, checked against the participants' own data (the
shop's effects ledger, one row per applied effect, no unique constraint) and the engine's
(saga_instances, saga_history), and the figures the table shows."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine

from examples.shop.verify import NOTIFY, UNDO, check_effects, ledger
from orchestrator.state import FINISHED, SagaState, SagaStatus
from tests.chaos.workload import Order
from tests.e2e.history_check import Entry, check_history


@dataclass
class Verdict:
    started: int
    outcomes: Counter[str]
    lost: list[str]
    not_terminal: list[str]
    double_effects: list[str]
    missing_compensations: list[str]
    notified_cancelled: list[str]
    history_problems: list[str]
    effect_problems: list[str]
    parked: list[str]
    unexpected_outcomes: dict[str, str]
    dead_letters: list[str] = field(default_factory=list)
    # What the run itself saw (tests/chaos/harness.py): an unplanned outcome passes only with
    # a recorded fault that explains it (key -> the explanation, from `explain`).
    excused: dict[str, str] = field(default_factory=dict)
    exits: list[str] = field(default_factory=list)  # processes that exited by themselves
    unfired: list[str] = field(default_factory=list)  # armed fault points never reached
    not_injected: list[str] = field(default_factory=list)  # faults the schedule held
    outbox_left: int = 0  # rows still in the engine's outbox once every saga is terminal

    def problems(self) -> list[str]:
        """Every violated invariant, one line each (empty: the run passed)."""
        found: list[str] = []
        for label, items in (
            ("lost (started, no saga)", self.lost),
            ("not terminal", self.not_terminal),
            ("double effect", self.double_effects),
            ("missing compensation", self.missing_compensations),
            ("cancelled but notified", self.notified_cancelled),
            ("history", self.history_problems),
            ("shop data", self.effect_problems),
            ("parked (none expected)", self.parked),
            ("dead-lettered", self.dead_letters),
            ("exited by itself", self.exits),
            ("armed fault point never fired", self.unfired),
            ("fault not injected", self.not_injected),
        ):
            found += [f"{label}: {item}" for item in items]
        found += [
            f"outcome other than planned, no fault explains it: {k} {v}"
            for k, v in self.unexpected_outcomes.items()
            if k not in self.excused
        ]
        if self.outbox_left:
            found.append(f"outbox not drained: {self.outbox_left} rows left")
        return found


async def verify(
    shop: AsyncEngine,
    orders: list[Order],
    states: dict[str, SagaState],
    history: list[Entry],
    dead_letters: list[str],
) -> Verdict:
    ours = {o.key: states[o.key] for o in orders if o.key in states}
    lost = [o.key for o in orders if o.key not in states]
    not_terminal = [f"{k} {s.status.value}" for k, s in ours.items() if s.status not in FINISHED]
    # A pivot that never answered parks its saga by design (its charge may stand): an
    # unplanned outcome like any other, which only a fault of the run may explain.
    parked = [
        f"{k}: {(s.error or {}).get('message', s.error)}"
        for k, s in ours.items()
        if s.status == SagaStatus.FAILED and (s.error or {}).get("type") != "pivot_uncertain"
    ]
    unexpected = {
        o.key: ours[o.key].status.value
        for o in orders
        if o.key in ours and ours[o.key].status.value not in o.scenario.expect
    }

    counts = await ledger(shop, [s.saga_id for s in ours.values()])
    doubles = [f"{sid} {cmd} applied {n} times" for (sid, cmd), n in counts.items() if n > 1]
    missing: list[str] = []
    notified: list[str] = []
    for key, state in ours.items():
        sid = str(state.saga_id)
        if state.status in (SagaStatus.COMPENSATED, SagaStatus.CANCELLED):
            missing += [
                f"{key} {state.status.value}: {cmd} never undone"
                for cmd, undo in UNDO.items()
                if counts[(sid, cmd)] and not counts[(sid, undo)]
            ]
        if state.status == SagaStatus.CANCELLED and counts[(sid, NOTIFY)]:
            notified.append(key)
    # check_effects repeats the double effects, missing compensations and notified cancelled
    # orders in its own words; what it adds: completed orders missing an effect or undone,
    # undone orders charged, compensated ones notified.
    finished = {k: s for k, s in ours.items() if s.status in FINISHED - {SagaStatus.FAILED}}
    repeated = ("applied", "never undone", "cancelled but the customer was notified")
    effect_problems = [
        p for p in await check_effects(shop, finished) if not any(r in p for r in repeated)
    ]
    ids = {s.saga_id for s in ours.values()}
    history_problems = check_history(
        [e for e in history if e.saga_id in ids],
        {s.saga_id: s.status.value for s in ours.values()},
    )
    return Verdict(
        started=len(orders),
        outcomes=Counter(s.status.value for s in ours.values()),
        lost=lost,
        not_terminal=not_terminal,
        double_effects=doubles,
        missing_compensations=missing,
        notified_cancelled=notified,
        history_problems=history_problems,
        effect_problems=effect_problems,
        parked=parked,
        unexpected_outcomes=unexpected,
        dead_letters=dead_letters,
    )
