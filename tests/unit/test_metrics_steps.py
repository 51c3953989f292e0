"""Step latency, retries, compensations and saga outcomes as the metrics adapter counts them
from the engine's observed events (adapters/metrics.py)."""

from __future__ import annotations

from adapters import metrics
from orchestrator.event_names import HistoryEvent

SAGA = "unit_metered"


def histogram(step: str, kind: str) -> tuple[float, float]:
    labels = {"saga": SAGA, "step": step, "kind": kind}
    return (
        metrics.value("saga_step_seconds_count", **labels),
        metrics.value("saga_step_seconds_sum", **labels),
    )


def test_step_latency_goes_to_a_histogram_under_the_map_steps_name() -> None:
    before = {kind: histogram("pack", kind) for kind in ("action", "compensation")}
    one_second = metrics.value(
        "saga_step_seconds_bucket", saga=SAGA, step="pack", kind="action", le="1.0"
    )
    metrics.observe(HistoryEvent.STEP_SUCCEEDED, {"saga": SAGA, "step": "pack[0]", "seconds": 0.5})
    metrics.observe(HistoryEvent.STEP_SUCCEEDED, {"saga": SAGA, "step": "pack[11]", "seconds": 2.0})
    metrics.observe(
        HistoryEvent.STEP_COMPENSATED, {"saga": SAGA, "step": "pack[0]", "seconds": 0.25}
    )
    # Sent by a version that did not record when: counted as a transition, not timed.
    metrics.observe(HistoryEvent.STEP_SUCCEEDED, {"saga": SAGA, "step": "pack[1]"})

    after = {kind: histogram("pack", kind) for kind in ("action", "compensation")}
    assert after["action"][0] - before["action"][0] == 2
    assert after["action"][1] - before["action"][1] == 2.5
    assert after["compensation"][0] - before["compensation"][0] == 1
    assert after["compensation"][1] - before["compensation"][1] == 0.25
    bucket = metrics.value(
        "saga_step_seconds_bucket", saga=SAGA, step="pack", kind="action", le="1.0"
    )
    assert bucket - one_second == 1
    assert metrics.value("saga_step_seconds_count", saga=SAGA, step="pack[0]", kind="action") == 0


def test_retries_compensations_starts_and_outcomes_are_counted_by_saga() -> None:
    def read() -> dict[str, float]:
        return {
            "retry": metrics.value("saga_retries_scheduled_total", saga=SAGA, kind="action"),
            "undo_retry": metrics.value(
                "saga_retries_scheduled_total", saga=SAGA, kind="compensation"
            ),
            "undone": metrics.value("saga_steps_compensated_total", saga=SAGA),
            "started": metrics.value("saga_instances_started_total", saga=SAGA),
            "compensated": metrics.value(
                "saga_instances_finished_total", saga=SAGA, status="compensated"
            ),
            "parked": metrics.value("saga_instances_finished_total", saga=SAGA, status="failed"),
        }

    before = read()
    for event in (
        "saga_started",
        "step_retry_scheduled",
        "step_retry_scheduled",
        "compensation_retry_scheduled",
        "step_compensated",
        "saga_compensated",
        "saga_failed",
    ):
        metrics.observe(HistoryEvent(event), {"saga": SAGA, "step": "pack"})
    after = read()
    assert {k: after[k] - before[k] for k in before} == {
        "retry": 2,
        "undo_retry": 1,
        "undone": 1,
        "started": 1,
        "compensated": 1,
        "parked": 1,
    }


def test_step_labels_drop_only_an_item_number() -> None:
    assert metrics.step_label("ship[3]") == "ship"
    assert metrics.step_label("ship") == "ship"
    assert metrics.step_label("odd[name]") == "odd[name]"
    assert metrics.step_label(None) == ""
