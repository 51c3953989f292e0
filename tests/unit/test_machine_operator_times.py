"""The times operators ask about: since when a saga is in its status, and how long each
step's command took (the latency the metrics histogram)."""

from __future__ import annotations

from datetime import timedelta

from orchestrator.state import SagaStatus
from tests.unit.builders import T0, Run, three_steps


def test_status_since_moves_only_when_the_status_does() -> None:
    run = Run(three_steps())
    assert run.state.status_since == T0
    run.now = T0 + timedelta(seconds=3)
    run.succeed()  # reserve: still running
    assert run.state.status_since == T0
    run.now = T0 + timedelta(seconds=5)
    run.fail("declined", retryable=False)  # charge: compensating from now
    assert run.status() == SagaStatus.COMPENSATING
    assert run.state.status_since == T0 + timedelta(seconds=5)


def test_a_success_records_how_long_its_command_took() -> None:
    run = Run(three_steps())
    assert run.step("reserve").dispatched_at == T0
    run.now = T0 + timedelta(seconds=1.25)
    run.succeed()
    assert run.detail("step_succeeded", "reserve") == {"attempt": 1, "seconds": 1.25}
    assert run.step("charge").dispatched_at == T0 + timedelta(seconds=1.25)
    run.now += timedelta(seconds=2)
    run.fail("declined", retryable=False)
    run.now += timedelta(seconds=0.5)
    run.succeed()  # the compensation of reserve
    assert run.detail("step_compensated", "reserve")["seconds"] == 0.5
