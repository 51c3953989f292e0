"""The recovery figures of the chaos table, on made-up completion times."""

from __future__ import annotations

from tests.chaos.figures import recoveries
from tests.chaos.injector import Record


def steady(start: float, end: float, rate: float) -> list[float]:
    n = int((end - start) * rate)
    return [start + i / rate for i in range(n)]


def test_an_outage_recovers_when_a_window_is_back_at_rate() -> None:
    # 10/s, nothing from 100 s to 105 s (the outage), then 10/s again.
    times = steady(90, 100, 10) + steady(105, 120, 10)
    [r] = recoveries([Record("broker kill -9", 100.0, 103.0)], times, rate=10)
    assert r.count == 1
    assert r.back_p50 is not None and abs(r.back_p50 - 5.0) < 0.01
    assert r.first_p50 is not None and abs(r.first_p50 - 2.0) < 0.01  # 103 -> 105


def test_a_fault_that_never_dented_throughput_recovers_in_zero() -> None:
    times = steady(90, 120, 10)
    [r] = recoveries([Record("orchestrator kill", 100.0, 100.0)], times, rate=10)
    assert r.back_max == 0.0


def test_throughput_that_never_comes_back_has_no_figure() -> None:
    times = steady(90, 100, 10) + steady(105, 120, 2)  # a fifth of the rate afterwards
    [r] = recoveries([Record("db restart fast", 100.0, 101.0)], times, rate=10)
    assert r.back_max is None
