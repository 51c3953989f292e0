"""What fails a chaos run: an unplanned outcome only where no fault excuses it."""

from __future__ import annotations

from collections import Counter

from tests.chaos.invariants import Verdict
from tests.chaos.profiles import LONG, OVERLOAD, OVERLOAD_UNLIMITED, SHORT


def verdict(**overrides: object) -> Verdict:
    fields: dict[str, object] = {
        "started": 2,
        "outcomes": Counter({"completed": 1, "compensated": 1}),
        "lost": [],
        "not_terminal": [],
        "double_effects": [],
        "missing_compensations": [],
        "notified_cancelled": [],
        "history_problems": [],
        "effect_problems": [],
        "parked": [],
        "unexpected_outcomes": {"order-1": "compensated"},
    }
    return Verdict(**(fields | overrides))  # type: ignore[arg-type]


def test_an_unplanned_outcome_fails_a_run_only_when_outcomes_must_hold() -> None:
    assert verdict().problems() == []
    assert verdict(outcomes_must_hold=True).problems() == [
        "outcome other than planned: order-1 compensated"
    ]
    assert verdict(outcomes_must_hold=True, unexpected_outcomes={}).problems() == []


def test_only_the_profiles_without_faults_hold_outcomes() -> None:
    assert SHORT.injects_faults and LONG.injects_faults
    assert not OVERLOAD.injects_faults and not OVERLOAD_UNLIMITED.injects_faults
    assert OVERLOAD.max_active and OVERLOAD_UNLIMITED.max_active == 0
