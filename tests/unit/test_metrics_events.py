"""The metrics adapter matches the engine's observed events by `HistoryEvent` member
(adapters/metrics.py): each event a metric cares about moves exactly that metric."""

from __future__ import annotations

from typing import Any

import pytest

from adapters import metrics
from orchestrator.event_names import HistoryEvent

SAGA = "unit_events"
Sample = tuple[str, tuple[tuple[str, str], ...]]


def sample(name: str, **labels: str) -> Sample:
    return name, tuple(sorted(labels.items()))


def transition(event: HistoryEvent) -> Sample:
    return sample("saga_transitions_total", event=event.value)


def counts() -> dict[Sample, float]:
    """Every counter and histogram count of the registry, by name and labels."""
    return {
        sample(s.name, **s.labels): s.value
        for family in metrics.REGISTRY.collect()
        for s in family.samples
        if s.name.endswith(("_total", "_count"))
    }


E = HistoryEvent
STEP = {"saga": SAGA, "step": "pack[2]", "seconds": 0.5}
# event, its detail, and the samples it moves by one.
CASES: list[tuple[HistoryEvent, dict[str, Any], set[Sample]]] = [
    (E.SAGA_STARTED, {"saga": SAGA}, {sample("saga_instances_started_total", saga=SAGA)}),
    *(
        (
            event,
            {"saga": SAGA},
            {sample("saga_instances_finished_total", saga=SAGA, status=status)},
        )
        for event, status in [
            (E.SAGA_COMPLETED, "completed"),
            (E.SAGA_COMPENSATED, "compensated"),
            (E.SAGA_CANCELLED, "cancelled"),
            (E.SAGA_FAILED, "failed"),
        ]
    ),
    (
        E.STEP_SUCCEEDED,
        STEP,
        {sample("saga_step_seconds_count", saga=SAGA, step="pack", kind="action")},
    ),
    (
        E.STEP_COMPENSATED,
        STEP,
        {
            sample("saga_step_seconds_count", saga=SAGA, step="pack", kind="compensation"),
            sample("saga_steps_compensated_total", saga=SAGA),
        },
    ),
    (
        E.STEP_RETRY_SCHEDULED,
        {"saga": SAGA},
        {sample("saga_retries_scheduled_total", saga=SAGA, kind="action")},
    ),
    (
        E.COMPENSATION_RETRY_SCHEDULED,
        {"saga": SAGA},
        {sample("saga_retries_scheduled_total", saga=SAGA, kind="compensation")},
    ),
    (E.REPLY_IGNORED, {"reason": "late"}, {sample("saga_replies_ignored_total", reason="late")}),
    (E.STEP_DISPATCHED, {"saga": SAGA}, set()),  # counted as a transition only
    # A wait step is named after its signal.
    (
        E.WAIT_FINISHED,
        {"saga": SAGA, "step": "approve", "signal_id": "s-1", "held": False, "seconds": 90.0},
        {
            sample("saga_signals_received_total", saga=SAGA, signal="approve", result="taken"),
            sample("saga_wait_seconds_count", saga=SAGA, signal="approve", outcome="signalled"),
        },
    ),
    (  # a signal held before: counted when it came (signal_held), timed at 0 here
        E.WAIT_FINISHED,
        {"saga": SAGA, "step": "approve", "signal_id": "s-1", "held": True, "seconds": 0.0},
        {sample("saga_wait_seconds_count", saga=SAGA, signal="approve", outcome="signalled")},
    ),
    (
        E.SIGNAL_HELD,
        {"saga": SAGA, "step": "approve", "signal_id": "s-1"},
        {sample("saga_signals_received_total", saga=SAGA, signal="approve", result="held")},
    ),
    (
        E.WAIT_TIMED_OUT,
        {"saga": SAGA, "step": "approve", "on_timeout": "fail", "seconds": 3600.0},
        {sample("saga_wait_seconds_count", saga=SAGA, signal="approve", outcome="timed_out")},
    ),
    (
        E.SIGNAL_REFUSED,
        {"saga": SAGA, "step": None, "signal": "deny", "reason": "not_waited_for"},
        {sample("saga_signals_refused_total", saga=SAGA, signal="deny", reason="not_waited_for")},
    ),
    (  # no saga found: the engine tells the observer with saga None
        E.SIGNAL_REFUSED,
        {"saga": None, "signal": "approve", "signal_id": "n1", "reason": "unknown_saga"},
        {sample("saga_signals_refused_total", saga="", signal="approve", reason="unknown_saga")},
    ),
]
# Starts that started nothing: counted apart, never as a transition.
UNSTARTED: list[tuple[HistoryEvent, Sample]] = [
    (E.SAGA_START_DUPLICATE, sample("saga_starts_deduplicated_total", saga=SAGA)),
    (E.SAGA_START_REJECTED, sample("saga_starts_locked_total", saga=SAGA, outcome="rejected")),
    (E.SAGA_START_QUEUED, sample("saga_starts_locked_total", saga=SAGA, outcome="queued")),
    (
        E.LOCK_WAIT_EXPIRED,
        sample("saga_starts_locked_total", saga=SAGA, outcome="lock_wait_expired"),
    ),
]


def moved_by(event: HistoryEvent, detail: dict[str, Any]) -> dict[Sample, float]:
    before = counts()
    metrics.observe(event, detail)
    return {k: v - before.get(k, 0.0) for k, v in counts().items() if v != before.get(k, 0.0)}


def case_id(value: object) -> str:
    """A parameter's test id, the same in every process (xdist's workers must collect the same
    tests): a set shown with its members sorted, not in its hash order."""
    shown = sorted(value) if isinstance(value, set) else value
    return str(shown)[:40]


@pytest.mark.parametrize(("event", "detail", "moves"), CASES, ids=case_id)
def test_an_event_moves_its_metrics_and_counts_as_a_transition(
    event: HistoryEvent, detail: dict[str, Any], moves: set[Sample]
) -> None:
    assert moved_by(event, detail) == dict.fromkeys({*moves, transition(event)}, 1.0)


@pytest.mark.parametrize(("event", "moves"), UNSTARTED, ids=case_id)
def test_a_start_that_started_nothing_moves_only_its_own_counter(
    event: HistoryEvent, moves: Sample
) -> None:
    assert moved_by(event, {"saga": SAGA, "resource": "order:1"}) == {moves: 1.0}


def test_the_tables_name_history_events_and_every_one_is_tested_above() -> None:
    named = [
        metrics._NO_HISTORY,
        *metrics._LOCKED,
        *metrics._LATENCY,
        *metrics._RETRIES,
        *metrics._FINISHED,
        *metrics._WAITED,
        HistoryEvent.SIGNAL_HELD,
        HistoryEvent.SIGNAL_REFUSED,
        HistoryEvent.SAGA_STARTED,
        HistoryEvent.REPLY_IGNORED,
    ]
    assert all(type(e) is HistoryEvent for e in named), named
    tested = {event for event, _, _ in CASES} | {event for event, _ in UNSTARTED}
    assert set(named) <= tested
