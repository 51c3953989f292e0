"""The names of history events and outcome events (orchestrator/event_names.py): unique
snake_case strings, and the only ones the dashboard's timeline matches on."""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path

import pytest

from orchestrator.event_names import HistoryEvent, Outcome
from orchestrator.state import FINISHED

SNAKE_CASE = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")
DASHBOARD = Path(__file__).parents[2] / "adapters" / "http" / "static" / "saga.js"


@pytest.mark.parametrize("names", [HistoryEvent, Outcome])
def test_the_names_are_unique_snake_case_strings(names: type[StrEnum]) -> None:
    values = [member.value for member in names]
    assert values, names
    assert len(set(values)) == len(values), values
    odd = [v for v in values if not (isinstance(v, str) and SNAKE_CASE.fullmatch(v))]
    assert odd == []
    # A member reads as what is stored and sent.
    assert [m.name for m in names] == [v.upper() for v in values]


def test_every_finished_status_has_its_outcome() -> None:
    assert {Outcome(status.value) for status in FINISHED} == {
        Outcome.COMPLETED,
        Outcome.COMPENSATED,
        Outcome.CANCELLED,
        Outcome.FAILED,
    }


def test_a_name_read_back_as_a_plain_string_equals_its_member() -> None:
    stored = "step_dispatched"  # a plain str, as a row of saga_history gives it
    assert stored == HistoryEvent.STEP_DISPATCHED
    assert stored in {HistoryEvent.STEP_DISPATCHED}
    assert f"{HistoryEvent.STEP_DISPATCHED}" == "step_dispatched"


def test_the_dashboard_matches_only_history_events() -> None:
    """The timeline (saga.js) is written in JavaScript and cannot import the enum: a renamed
    event would silently drop out of it."""
    js = DASHBOARD.read_text()
    saga_lines = re.search(r"SAGA_LINES = new Set\(\[(.*?)\]\)", js, re.DOTALL)
    timeline = re.search(r"function buildTimeline\(.*?\n  }\n", js, re.DOTALL)
    assert saga_lines is not None and timeline is not None
    named = (
        re.findall(r'"(\w+)"', saga_lines[1])
        + re.findall(r'case "(\w+)":', timeline[0])
        + re.findall(r'\.event === "(\w+)"', js)
    )
    assert len(named) > 20, named
    assert sorted(set(named) - set(HistoryEvent)) == []
