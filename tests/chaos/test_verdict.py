"""What fails a chaos run: each rule of the verdict, and which unplanned outcomes a recorded
fault explains (tests/chaos/excuses.py)."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.chaos.excuses import LostReply, Timed, explain
from tests.chaos.injector import Record
from tests.chaos.invariants import Verdict
from tests.chaos.profiles import LONG, SHORT
from tests.chaos.schedule import ORCHESTRATOR_POINTS, PARTICIPANT_POINT, plan


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
        "unexpected_outcomes": {},
    }
    return Verdict(**(fields | overrides))  # type: ignore[arg-type]


def test_a_clean_verdict_passes() -> None:
    assert verdict().problems() == []


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"exits": ["shop-0 (rc 1)"]}, "exited by itself: shop-0 (rc 1)"),
        (
            {"unfired": ["orchestrator-1 armed"]},
            "armed fault point never fired: orchestrator-1 armed",
        ),
        ({"not_injected": ["broker kill -9"]}, "fault not injected: broker kill -9"),
        ({"outbox_left": 3}, "outbox not drained: 3 rows left"),
        (
            {"unexpected_outcomes": {"order-1": "compensated"}},
            "outcome other than planned, no fault explains it: order-1 compensated",
        ),
    ],
)
def test_each_rule_fails_a_run(overrides: dict[str, object], problem: str) -> None:
    assert verdict(**overrides).problems() == [problem]


def test_an_explained_outcome_passes() -> None:
    excused = verdict(
        unexpected_outcomes={"order-1": "compensated"}, excused={"order-1": "lost reply"}
    )
    assert excused.problems() == []


SAGA = "5b8e0f6e-0000-0000-0000-000000000001"


def timed_out_at(at: float) -> tuple[str, list[Timed]]:
    """A saga whose reserve_credit, dispatched at `at`, timed out 30 s later."""
    return SAGA, [
        Timed(at - 1, "saga_started", None, None),
        Timed(at, "step_dispatched", "reserve_credit", 1),
        Timed(at + 30, "step_timed_out", "reserve_credit", 1),
        Timed(at + 31, "saga_compensated", None, None),
    ]


def test_a_lost_reply_of_that_step_explains_its_timeout() -> None:
    lost = [LostReply(SAGA, "reserve_credit", 100.5)]
    found = explain({"k": "compensated"}, {"k": timed_out_at(100)}, [], lost)
    assert found == {"k": "step_timed_out reserve_credit: its reply was lost by the relay"}
    other_step = [LostReply(SAGA, "reserve_stock", 100.5)]
    assert explain({"k": "compensated"}, {"k": timed_out_at(100)}, [], other_step) == {}


def test_a_fault_during_the_attempt_explains_it_and_one_long_before_does_not() -> None:
    during = Record("db restart immediate", 110.0, 112.0, "down 2.0s")
    found = explain({"k": "compensated"}, {"k": timed_out_at(100)}, [during], [])
    assert found == {"k": "step_timed_out reserve_credit: during db restart immediate (down 2.0s)"}
    before = Record("db restart immediate", 50.0, 52.0, "down 2.0s")
    assert explain({"k": "compensated"}, {"k": timed_out_at(100)}, [before], []) == {}


def test_without_a_turning_event_nothing_explains_an_outcome() -> None:
    quiet = (
        SAGA,
        [Timed(100, "saga_started", None, None), Timed(101, "saga_compensated", None, None)],
    )
    everywhere = Record("latency", 0.0, 1000.0)
    assert explain({"k": "compensated"}, {"k": quiet}, [everywhere], []) == {}


@pytest.mark.parametrize("seed", [1, 2, 3, 11, 12345])
def test_the_ci_and_long_profiles_arm_both_kinds_of_point_every_run(seed: int) -> None:
    for profile in (SHORT, LONG):
        arms = [f.arm or "" for f in plan(profile, seed)]
        assert any(a.startswith(tuple(ORCHESTRATOR_POINTS)) for a in arms), arms
        assert any(a.startswith(PARTICIPANT_POINT) for a in arms), arms


def test_the_ci_profile_holds_every_kind_of_fault() -> None:
    kinds = {f.kind for f in plan(SHORT, 5)}
    assert {
        "orchestrator kill",
        "participant kill",
        "broker stop_app",
        "broker kill -9",
        "db restart immediate",
        "proxy reset",
        "proxy stall",
        "latency",
    } <= kinds, kinds
    assert SHORT.lost_replies > 0
