"""A sweep of `saga run` that keeps failing (the database is down) waits longer each time,
up to a cap, so a 50 ms timer sweep does not spend the process logging its failures."""

from __future__ import annotations

from adapters.runtime import SWEEP_BACKOFF_CAP, sweep_wait


def test_a_healthy_sweep_waits_its_interval() -> None:
    assert sweep_wait(0.05, 0) == 0.05
    assert sweep_wait(60.0, 0) == 60.0


def test_each_failure_in_a_row_doubles_the_wait_up_to_the_cap() -> None:
    waits = [sweep_wait(0.05, n) for n in range(1, 12)]
    assert waits[:4] == [0.1, 0.2, 0.4, 0.8]
    assert waits == sorted(waits) and waits[-1] == SWEEP_BACKOFF_CAP


def test_a_sweep_slower_than_the_cap_keeps_its_own_interval() -> None:
    assert sweep_wait(60.0, 5) == 60.0
